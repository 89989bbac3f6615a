"""A spool's start-up tidy deletes files; the log says what went, in one line, so
that an administrator missing a file can see that the server removed it."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import pytest

from smtpgate.queue.spool import Spool

from .test_queue_worker import envelope


def _open(directory: Path) -> None:
    asyncio.run(Spool(directory, prefill=False).close())


def test_start_up_names_foreign_tmp_files_and_orphan_states(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    spool_dir = tmp_path / "spool"
    spool = Spool(spool_dir, prefill=False)
    try:
        qid = spool.store_sync(envelope(), b"Subject: x\r\n\r\nbody\r\n")
    finally:
        asyncio.run(spool.close())
    (spool_dir / "queue" / f"{qid}.msg").unlink()
    (spool_dir / "queue" / f"{qid}.state").write_text("{}")  # its message gone
    for name in ("notes.txt", "core", "a.swp", "b\x1bc"):
        (spool_dir / "tmp" / name).write_text("x")
    (spool_dir / "tmp" / "99999999.sg0123abcd.1").write_text("")  # a dead writer's
    os.mkdir(spool_dir / "tmp" / "adir")  # not removed, so not named
    with caplog.at_level(logging.INFO, logger="smtpgate"):
        _open(spool_dir)
    lines = [r for r in caplog.records if "start-up removed" in r.getMessage()]
    assert len(lines) == 1, caplog.text
    [record] = lines
    assert record.levelno == logging.WARNING  # not smtpgate's files went
    assert record.getMessage() == (
        "spool: start-up removed 1 temp file left by dead writers (99999999.sg0123abcd.1), "
        "4 files in tmp/ not written by smtpgate (a.swp, b\\x1bc, core, ...), "
        f"1 state file whose message is gone ({qid}.state); tmp/ is the spool's own: "
        "keep nothing there")
    assert sorted(os.listdir(spool_dir / "tmp")) == ["adir"]
    assert not (spool_dir / "queue" / f"{qid}.state").exists()


def test_an_orphan_state_alone_is_info_and_a_clean_spool_says_nothing(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    spool_dir = tmp_path / "spool"
    _open(spool_dir)
    with caplog.at_level(logging.INFO, logger="smtpgate"):
        _open(spool_dir)
    assert "start-up removed" not in caplog.text
    (spool_dir / "queue" / "661a77db3eeac-177c-0-087e21fc.state").write_text("{}")
    with caplog.at_level(logging.INFO, logger="smtpgate"):
        _open(spool_dir)
    [record] = [r for r in caplog.records if "start-up removed" in r.getMessage()]
    assert record.levelno == logging.INFO
    assert record.getMessage() == ("spool: start-up removed 1 state file whose message is "
                                   "gone (661a77db3eeac-177c-0-087e21fc.state)")
