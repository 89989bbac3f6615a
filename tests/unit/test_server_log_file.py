"""The server log file (`server.logs.ReopenableFileHandler`) when its file system
will not take a record: ``/dev/full`` answers every write with ``ENOSPC``, as a full
``/var/log`` does."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from smtpgate.server.logs import ReopenableFileHandler


def _record(message: str) -> logging.LogRecord:
    return logging.LogRecord("smtpgate.queue", logging.INFO, __file__, 1, message, None, None)


def test_a_full_file_system_sends_the_records_to_stderr_and_says_why_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Until 2026-12 each record was lost and stderr got the logging module's
    "--- Logging error ---" and a traceback of the whole call stack instead."""
    handler = ReopenableFileHandler(Path("/dev/full"), mode="a", encoding="utf-8")
    try:
        for n in range(3):
            handler.handle(_record(f"queued message {n}"))
        err = capsys.readouterr().err
        assert "Logging error" not in err and "Traceback" not in err
        assert err.count("cannot write the log file /dev/full: No space left on device") == 1
        assert all(f"queued message {n}" in err for n in range(3))
        # Space again (here: the file moved by a rotation, then SIGHUP).
        handler.baseFilename = str(tmp_path / "server.log")
        handler.reopen()
        handler.handle(_record("delivered"))
        err = capsys.readouterr().err
        assert "takes records again" in err and "delivered" not in err
        assert (tmp_path / "server.log").read_text().endswith("delivered\n")
    finally:
        handler.close()


def test_each_record_is_one_line_in_the_file(tmp_path: Path) -> None:
    handler = ReopenableFileHandler(tmp_path / "server.log", mode="a", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    try:
        handler.handle(_record("first"))
        handler.handle(_record("second \udcff"))  # a lone surrogate does not lose the record
    finally:
        handler.close()
    assert (tmp_path / "server.log").read_text(errors="replace").splitlines() == [
        "INFO first", "INFO second \\udcff"]


def test_a_record_the_disk_took_in_part_is_cut_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file system that fills in the middle of a record takes part of it: that part
    is cut off again, so the file keeps whole lines."""
    path = tmp_path / "server.log"
    handler = ReopenableFileHandler(path, mode="a", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(message)s"))
    real = os.write
    short = [True]

    def write(fd: int, data: bytes) -> int:
        if short[0]:
            short[0] = False
            return real(fd, data[:5])
        return real(fd, data)

    try:
        handler.handle(_record("first"))
        monkeypatch.setattr(os, "write", write)
        handler.handle(_record("cut short"))
        handler.handle(_record("third"))
    finally:
        handler.close()
    assert "cut short" in capsys.readouterr().err
    assert [ln for ln in path.read_text().splitlines() if ln] == ["first", "third"]
