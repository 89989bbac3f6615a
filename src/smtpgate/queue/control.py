"""Requests from ``smtpgate queue`` to a running delivery worker, through the spool.

The worker keeps its schedule in memory (see `worker`), so a message whose next
attempt a command moved forward (flush, release) must be pointed out to it. A
request is an empty file in ``<spool>/flush/`` named after the queue id (or
``all``); the worker takes the requests at each scan of the spool (at least
every second) and deletes them. The truth stays in the message's state file,
which the command changed under the message lock first: a request that is lost
(the server restarts) costs nothing, since a restart reads every state anyway.
No socket, no signal: the spool directory is the one thing the command and the
server share, whoever runs them.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

_DIR = "flush"
_ALL = "all"


def request_flush(spool_dir: Path, qid: str | None) -> None:
    """Ask the worker to look at ``qid`` (every message if None) now. Blocking."""
    d = spool_dir / _DIR
    d.mkdir(mode=0o700, exist_ok=True)
    name = _ALL if qid is None else qid
    fd = os.open(d / name, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    os.close(fd)


def take_flush_requests(spool_dir: Path) -> tuple[bool, list[str]]:
    """(flush everything?, ids to flush), removing the requests. Blocking."""
    d = spool_dir / _DIR
    try:
        names = os.listdir(d)
    except FileNotFoundError:
        return False, []
    for name in names:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(d / name)
    return _ALL in names, [n for n in names if n != _ALL]
