"""Run a function as user nobody, for the tests of files the server's user may not read."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

#: The uid and gid of nobody/nogroup on Debian.
NOBODY = 65534


def run_as_nobody(fn: Callable[[], Any]) -> Any:
    """``fn()``'s result (anything JSON can carry), computed in a forked child that
    dropped to user nobody when we are root; else here, as ourselves (not root, a file
    of mode 0 keeps us out too). Call ``fn`` once beforehand when it imports modules:
    nobody may not be able to read them."""
    if os.geteuid() != 0:
        return json.loads(json.dumps(fn()))
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(read)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            os.write(write, json.dumps(fn()).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    return json.loads(data)
