"""Free space on the spool's file system, and the reserve MAIL keeps on it.

Why: a full disk should not first show as a failed write at the end of DATA,
after the client has sent every octet, and it should never fill up: the guard's
and the accounts' SQLite files usually share the file system with the spool,
and a write that fails there refuses logins. So, like Postfix's
``queue_minfree``, MAIL is answered ``452 4.3.1`` (RFC 5321 §4.2.2 "insufficient
system storage", RFC 3463 X.3.1 "mail system full") while the free space is
below the reserve, or below the reserve plus the size the client declared
(RFC 1870 §6.2). The client keeps its message and tries again later.

``statvfs`` only reads the file system's counters: fast on a local disk, but it
can hang on a stalled network file system. So it runs on a thread, at most once
every `MAX_AGE` seconds, and MAIL is judged by the last figure (the reserve
covers what a second of intake can write). The space available to an
unprivileged process is what counts (``f_bavail``): the blocks ext4 keeps for
root are not the spool's.

A file system can also run out of inodes with bytes to spare (many small files:
Maildirs), and then every new file fails with the same ENOSPC. So MAIL is also
answered ``452 4.3.1`` while fewer than `MIN_FREE_INODES` inodes are free
(``f_favail``; a file system that counts none, such as btrfs, is not checked).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from smtpgate.smtp import replies as R

log = logging.getLogger("smtpgate.queue")

#: Seconds a measurement is used before the next one is started.
MAX_AGE = 1.0
#: Seconds between two warnings that MAIL is being refused.
WARN_EVERY = 60.0
#: Free inodes under which MAIL is refused, as under the byte reserve. Well below
#: the blank files' reserve (`blanks.INODE_RESERVE`), so our own stock never causes it.
MIN_FREE_INODES = 1000
#: ``errno`` values of a write that failed for want of space (disk full, quota).
OUT_OF_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})


def out_of_space(error: BaseException | None) -> bool:
    """True if ``error``, or an error it was raised from, is a full disk or quota."""
    seen = 0
    while error is not None and seen < 8:
        if isinstance(error, OSError) and error.errno in OUT_OF_SPACE:
            return True
        error, seen = error.__cause__ or error.__context__, seen + 1
    return False


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged process may still write on ``path``'s file system."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def free_inodes(path: Path) -> int | None:
    """Inodes an unprivileged process may still make on ``path``'s file system;
    None if it counts none (btrfs reports ``f_files`` 0)."""
    st = os.statvfs(path)
    return st.f_favail if st.f_files > 0 else None


class SpoolSpace:
    """The reserve check of one worker process (see the module docstring).

    ``reserve`` is in bytes (0: MAIL is not checked; a write that finds the disk
    full is still answered 452 4.3.1, by the intake)."""

    def __init__(self, directory: Path, reserve: int, *,
                 measure: Callable[[Path], int] = free_bytes,
                 inodes: Callable[[Path], int | None] = free_inodes,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.directory = directory
        self.reserve = reserve
        self._measure = measure
        self._measure_inodes = inodes
        self._clock = clock
        self._free: int | None = None
        self._free_inodes: int | None = None
        self._measured = -float("inf")
        self._refreshing: asyncio.Future[None] | None = None
        self._warned = -float("inf")

    def measure_now(self) -> None:
        """Measure in the calling thread (start-up, before the event loop serves)."""
        self._store(self._measure(self.directory), self._measure_inodes(self.directory))

    def refused(self, declared: int | None = None) -> R.Reply | None:
        """The reply to a MAIL that declared ``declared`` octets (None: no SIZE), or
        None to go on. Starts a new measurement in the background when due."""
        if self.reserve <= 0:
            return None
        if self._clock() - self._measured >= MAX_AGE and self._refreshing is None:
            self._refresh()
        inodes = self._free_inodes
        if inodes is not None and inodes < MIN_FREE_INODES:
            return self._refuse(f"{inodes} free inodes, under the {MIN_FREE_INODES} kept free",
                                "files are removed (df -i shows what is left)")
        free = self._free
        if free is None:
            return None  # never measured (the measurement failed): no grounds to refuse
        need = self.reserve + (declared or 0)
        if free >= need:
            return None
        return self._refuse(
            f"{free // 1_000_000} MB free, under the {self.reserve // 1_000_000} MB kept in "
            "reserve (queue.min_free_space)"
            + (f" plus a declared SIZE of {declared}" if declared else ""),
            "there is room")

    def _refuse(self, what: str, until: str) -> R.Reply:
        """The storage-full reply, and a warning at most once every `WARN_EVERY` seconds."""
        now = self._clock()
        if now - self._warned >= WARN_EVERY:
            self._warned = now
            full = R.INSUFFICIENT_STORAGE
            log.warning("spool file system of %s has %s: MAIL is answered %d %s until %s",
                        self.directory, what, full.code, full.enhanced, until)
        return R.INSUFFICIENT_STORAGE

    def _refresh(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._refreshing = loop.run_in_executor(None, self._measure_quietly)
        self._refreshing.add_done_callback(self._refreshed)

    def _measure_quietly(self) -> None:
        try:
            self._store(self._measure(self.directory), self._measure_inodes(self.directory))
        except OSError as e:
            log.warning("cannot read the free space of %s: %s", self.directory, e)
            self._measured = self._clock()  # not again before MAX_AGE; keep the last figure

    def _refreshed(self, done: asyncio.Future[None]) -> None:
        self._refreshing = None

    def _store(self, free: int, inodes: int | None) -> None:
        self._free = free
        self._free_inodes = inodes
        self._measured = self._clock()
