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

import logging
import os
from pathlib import Path

log = logging.getLogger("smtpgate.queue")

_DIR = "flush"
_ALL = "all"
#: Entries of flush/ that could not be removed, each logged once per process.
_stuck: set[Path] = set()


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
    taken = []
    for name in names:
        try:
            os.unlink(d / name)
        except FileNotFoundError:
            pass
        except OSError as e:
            # Not a request this worker made way for (a directory, a file it may
            # not remove): taken, it would be asked for again at every scan; raised,
            # it failed every scan, so nothing was delivered any more.
            if d / name not in _stuck:
                _stuck.add(d / name)
                log.warning("queue: %s is no flush request and cannot be removed (%s); "
                            "ignored, remove it", d / name, e.strerror or e)
            continue
        taken.append(name)
    return _ALL in taken, [n for n in taken if n != _ALL]
