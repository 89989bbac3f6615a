"""The server log: one line per record, times in ISO 8601 with the zone, to stderr
(the journal under systemd, each line with its ``<N>`` priority there) or to
``[server] log_file``, reopened on SIGHUP and SIGUSR1 so that log rotation can move
the file away."""

from __future__ import annotations

import errno
import io
import logging
import os
import sys
from datetime import datetime
from functools import lru_cache
from pathlib import Path

_FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"


class IsoFormatter(logging.Formatter):
    """``2026-03-01T14:03:07.412+01:00``: local time with its offset, so lines from
    hosts in different zones (or across a DST change) still sort and compare."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        # The second and its offset are worked out once per second (a busy server
        # logs hundreds of lines in one); rounded to the microsecond first, as
        # datetime.fromtimestamp does.
        whole = int(record.created)
        micro = round((record.created - whole) * 1e6)
        if micro >= 1_000_000:
            whole, micro = whole + 1, micro - 1_000_000
        second, offset = _second(whole)
        return f"{second}.{micro // 1000:03d}{offset}"


@lru_cache(maxsize=4)
def _second(second: int) -> tuple[str, str]:
    """``2026-03-01T14:03:07`` and ``+01:00`` for a whole second, local time."""
    stamp = datetime.fromtimestamp(second).astimezone().isoformat(timespec="seconds")
    return stamp[:19], stamp[19:]


class ReopenableFileHandler(logging.FileHandler):
    """Appends (``O_APPEND``: several processes share the file, each record is one
    write); ``reopen`` opens the path anew after the file was renamed.

    A record the file will not take (its file system full: ``ENOSPC``, an I/O
    error) goes to stderr (the journal under systemd) instead, and stderr is told
    once, in one line, why, and again when the file takes records again. Why: the
    logging module's own answer was a "--- Logging error ---" traceback with the
    whole call stack on stderr for every record, and the record itself lost; a
    record half-written stayed in the stream's buffer to come out later.
    """

    #: Why the file would not take the last record (None: it took it).
    _failing: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = (self.format(record) + self.terminator).encode("utf-8", "backslashreplace")
        except RecursionError:  # as logging.StreamHandler.emit
            raise
        except Exception:  # noqa: BLE001 - a record that does not format is a bug: logging's report
            self.handleError(record)
            return
        try:
            if self.stream is None:
                self.stream = self._open()
            if self._failing is not None:
                # A record cut short may end the file: this one starts a line of
                # its own (as the auth log does).
                line = b"\n" + line
            # One write straight to the descriptor: nothing left in a buffer when
            # it fails, and one O_APPEND write per record as the processes need.
            fd = self.stream.fileno()
            written = os.write(fd, line)
            if written != len(line):
                # A regular file takes part of a write only when it is out of room.
                _drop_partial(fd, written)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError as e:
            self._cannot_write(record, e.strerror or str(e))
            return
        if self._failing is not None:
            self._failing = None
            _notice(logging.WARNING, f"the log file {self.baseFilename} takes records again")

    def _cannot_write(self, record: logging.LogRecord, why: str) -> None:
        if self._failing != why:
            self._failing = why
            _notice(logging.ERROR, f"cannot write the log file {self.baseFilename}: "
                    f"{why}; its records go to stderr until it can be written again")
        _to_stderr(_stderr_formatter().format(record))

    def _open(self) -> io.TextIOWrapper:
        # Created 0640 like the auth log: the lines name accounts and client
        # addresses (an existing file keeps its mode, as after logrotate's create).
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                     0o640)
        return open(fd, "a", encoding=self.encoding, errors=self.errors)

    def reopen(self) -> None:
        """Raises OSError when the path cannot be opened (the old file is kept)."""
        stream = self._open()
        self.acquire()
        try:
            old, self.stream = self.stream, stream
        finally:
            self.release()
        if old is not None:
            old.close()


def _drop_partial(fd: int, written: int) -> None:
    """Cut off the ``written`` bytes of a record the disk took only in part, if they
    still end the file (no other process appended since)."""
    try:
        end = os.lseek(fd, 0, os.SEEK_CUR)
        if written > 0 and os.fstat(fd).st_size == end:
            os.ftruncate(fd, end - written)
    except OSError:
        pass


def _notice(level: int, message: str) -> None:
    """A line about the log file itself, on stderr in the server log's format."""
    record = logging.LogRecord("smtpgate", level, __file__, 0, message, None, None)
    _to_stderr(_stderr_formatter().format(record))


def _to_stderr(line: str) -> None:
    """One line on stderr, never raising (stderr itself may be gone)."""
    try:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


#: sd-daemon(3)'s priorities, as journald reads them from a ``<N>`` line prefix.
_JOURNAL_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4,
                     logging.ERROR: 3, logging.CRITICAL: 2}


class JournalFormatter(IsoFormatter):
    """The same line with journald's ``<N>`` priority prefix on each of its lines.

    Why: journald takes everything a service writes to stderr at priority 6 (info)
    unless a line starts with ``<N>`` (``SyslogLevelPrefix=``, on by default), so
    without it ``journalctl -u smtpgate -p warning`` shows nothing and an alert on
    the journal's priority never fires. Each line of a traceback gets the prefix, as
    journald stores each line as an entry of its own."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{_JOURNAL_PRIORITY.get(record.levelno, 6)}>"
        return "\n".join(prefix + line for line in super().format(record).split("\n"))


def stderr_is_the_journal() -> bool:
    """True when stderr is systemd's journal stream: systemd.exec(5) sets
    ``JOURNAL_STREAM=DEVICE:INODE`` of it, which a shell redirect beneath the unit
    (``smtpgate serve 2>file``) would no longer match."""
    dev, _, ino = os.environ.get("JOURNAL_STREAM", "").partition(":")
    if not (dev.isdigit() and ino.isdigit()):
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):  # closed, or no file behind it
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


def _stderr_formatter() -> logging.Formatter:
    return JournalFormatter(_FORMAT) if stderr_is_the_journal() else IsoFormatter(_FORMAT)


def _root() -> logging.Logger:
    return logging.getLogger("smtpgate")


def setup_logging(level: int = logging.INFO) -> None:
    """Log ``smtpgate.*`` to stderr at ``level``.

    Records skip what no line here shows: the caller's file and line (found by
    walking the stack, a tenth of the event loop's time per message in workload A),
    the thread and the multiprocessing names (the logging HOWTO's "Optimization").
    """
    logging._srcfile = None  # the HOWTO's documented switch
    logging.logThreads = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_stderr_formatter())
    root = _root()
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


#: While the server starts, errors also go to stderr beside ``server.log_file``:
#: a start that fails must say why where it was started (a terminal, the journal
#: of a systemd unit), not only in a file nobody is looking at yet.
_startup_echo: logging.Handler | None = None


def log_to_file(path: Path) -> None:
    """Send the log to ``path`` instead of stderr; errors keep going to stderr too
    until ``end_startup_echo``.

    Raises:
        OSError: the file cannot be opened for appending.
    """
    global _startup_echo
    handler = ReopenableFileHandler(path, mode="a", encoding="utf-8")
    handler.setFormatter(IsoFormatter(_FORMAT))
    echo = logging.StreamHandler(sys.stderr)
    echo.setLevel(logging.ERROR)
    echo.setFormatter(_stderr_formatter())
    root = _root()
    old = root.handlers[:]
    root.handlers[:] = [handler, echo]
    _startup_echo = echo
    for h in old:
        h.close()


def end_startup_echo() -> None:
    """The server serves (or this is a worker process, whose start-up errors its
    parent reports): errors go to the log file only from now on."""
    global _startup_echo
    echo, _startup_echo = _startup_echo, None
    if echo is not None:
        _root().removeHandler(echo)


def reopen_log_file() -> None:
    """Reopen the log file, if logging goes to one. Raises OSError."""
    for h in _root().handlers:
        if isinstance(h, ReopenableFileHandler):
            h.reopen()
