"""``smtpgate status`` when the running server's status file is damaged: a real server
started as the integration tests start it, stopped with SIGSTOP (so it does not
rewrite the file in between) while the file holds a value the server never writes.

``float(doc["updated"])`` of a string or null was a ValueError/TypeError traceback;
now the server is shown running with the file named as damaged (exit 1, as stale).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import Server, serving


@pytest.fixture
def srv(tmp_path: Path) -> Iterator[Server]:
    yield from serving(tmp_path / "srv")


def _family(pid: int) -> list[int]:
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True,
                              check=False).stdout.split()
    return [pid, *(p for c in children for p in _family(int(c)))]


def test_a_damaged_status_file_is_named(srv: Server) -> None:
    assert srv.proc is not None
    pids = _family(srv.proc.pid)
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        status_file = srv.root / "smtpgate.status.json"
        for updated in ('"abc"', "null"):
            status_file.write_text(f'{{"updated": {updated}, "pid": {srv.proc.pid}}}')
            done = srv.cli("status", "--json", check=False)
            assert done.returncode == 1, done.stderr
            assert "Traceback" not in done.stderr
            server = json.loads(done.stdout)["server"]
            assert server["running"] is True and server["stale"] is True
            assert server["why"].startswith(f"the status file {status_file} is damaged")
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
