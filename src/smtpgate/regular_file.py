"""Open a file to read only when it is a regular file, without hanging on the way.

A named pipe (FIFO) given as ``--config`` or ``--log``, or set as ``[auth].log_file``,
blocked ``open()`` until some process opened it for writing, which nobody would: the
command hung forever. A device (``/dev/zero``) was read without end. ``open_regular``
opens with ``O_NONBLOCK`` (an open of a FIFO for reading then returns at once), looks
at what it opened (``fstat`` of the descriptor, so nothing can swap the file between
the look and the read), and refuses anything but a regular file.
"""

from __future__ import annotations

import errno
import io
import os
import stat
from pathlib import Path

_KINDS = (
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISDIR, "a directory"),
)


def kind_of(mode: int) -> str:
    """What a file of ``mode`` is, in words: ``a named pipe (FIFO)``."""
    for test, words in _KINDS:
        if test(mode):
            return words
    return "not a regular file"


class NotRegularFile(OSError):
    """The path names something other than a regular file (a FIFO, a device...).

    An OSError, so a caller that reports ``cannot read PATH: {e.strerror}`` says it
    in its own words: ``cannot read /tmp/p: it is a named pipe (FIFO), not a
    regular file``."""

    def __init__(self, path: Path, mode: int) -> None:
        super().__init__(errno.EINVAL, f"it is {kind_of(mode)}, not a regular file", str(path))
        self.path = path
        self.kind = kind_of(mode)


def open_regular(path: Path) -> io.BufferedReader:
    """``path`` opened to read in binary, when it is a regular file.

    Raises:
        NotRegularFile: it is a FIFO, a device, a socket or a directory.
        OSError: it cannot be opened (FileNotFoundError, PermissionError, ...).
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFile(path, mode)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
