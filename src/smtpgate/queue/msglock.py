"""One message at a time: the delivery worker and ``smtpgate queue`` take turns.

The delivery worker holds an exclusive ``flock`` on a message's spool file for
the whole of an attempt: from reading its state, through the deliverer, to
recording the outcome (or removing the message). A queue command (hold,
release, flush, delete, bounce) takes the same lock before it reads or changes
the message. So a command never deletes a message a deliverer is handing over
(it waits for the attempt to end, then finds the message delivered, or not),
and a worker never overwrites a state a command has just written: it reads the
state only once it holds the lock.

The lock is on the inode, not the name: after taking it, the holder checks that
the name still leads to the same inode, since the message may have been removed
(delivered) between the ``open`` and the ``flock``. The kernel drops the lock
when its holder dies, even by ``kill -9``.
"""

from __future__ import annotations

import fcntl
import os
import time
from typing import Self


class MessageBusy(Exception):
    """Another process holds the message (an attempt is in progress)."""


class MessageLock:
    """A held lock on one message file; `release` (or the ``with`` block) drops it."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    @property
    def fd(self) -> int:
        """The locked file, open for reading (the holder may read the message
        through it instead of opening it again).

        Raises:
            ValueError: the lock was released.
        """
        if self._fd is None:
            raise ValueError("message lock released")
        return self._fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def try_lock(path: str) -> MessageLock | None:
    """The lock on the message file at ``path`` without waiting; None when there is
    no such message (any more). Fast enough for the event loop: an open and a
    non-blocking flock.

    Raises:
        MessageBusy: another process holds it.
        OSError: the file exists but cannot be opened.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise MessageBusy(path) from None
    except BaseException:
        os.close(fd)
        raise
    try:
        same = os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        same = False
    if not same:  # removed (or recycled) between our open and our flock
        os.close(fd)
        return None
    return MessageLock(fd)


def held_elsewhere(path: str) -> bool:
    """True when another process holds the lock of the message at ``path`` right
    now: the delivery worker is attempting it (or a queue command is changing it,
    for a moment). False when nobody does, or there is no such message.

    For ``queue list``: a shared lock taken and dropped at once, without waiting,
    is the one portable way to ask ``flock``. A worker that wants the message in
    that instant finds it busy and looks again a moment later, as it does for a
    queue command; the probe changes nothing.

    Raises:
        OSError: the file exists but cannot be opened.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # drops the shared lock, if taken
    return False


#: How often a waiting command tries the lock again. An attempt on a local
#: Maildir takes milliseconds; one on a relay takes as long as the relay does.
_POLL = 0.05


def wait_lock(path: str, timeout: float) -> MessageLock | None:
    """`try_lock`, retried for up to ``timeout`` seconds (for the CLI). Blocking.

    Raises:
        MessageBusy: still held by another process after ``timeout``.
        OSError: as `try_lock`.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            return try_lock(path)
        except MessageBusy:
            if time.monotonic() >= deadline:
                raise
        time.sleep(_POLL)
