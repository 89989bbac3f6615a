"""Counts in CLI output agree with their number: ``smtpgate status`` said "1
messages", ``queue list`` "1 attempts" (smtpgate.plural)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from click.testing import CliRunner

from smtpgate.cli.main import cli
from smtpgate.config import load_config
from smtpgate.plural import count
from smtpgate.queue.spool import Spool
from smtpgate.queue.state import MessageState, RcptStatus, RecipientState
from tests.unit.cli_support import write_config
from tests.unit.test_queue_worker import envelope

MESSAGE = b"From: alice@example.org\r\nSubject: hi\r\n\r\nbody\r\n"


def test_count_agrees_with_its_number() -> None:
    assert [count(n, "message") for n in (0, 1, 2)] == ["0 messages", "1 message", "2 messages"]
    assert count(1, "block or lockout", "blocks and lockouts") == "1 block or lockout"
    assert count(-1, "day") == "-1 days"


def test_status_and_queue_list_of_one_message_with_one_attempt(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    cfg = load_config(config)
    spool = Spool(cfg.path(cfg.queue.spool), prefill=False)
    try:
        qid = spool.store_sync(envelope(), MESSAGE)
        spool.save_state_sync(qid, MessageState((RecipientState(
            "bob@example.net", RcptStatus.PENDING, 1, time.time() + 600, "4.4.1 no answer"),)))
    finally:
        asyncio.run(spool.close())
    status = CliRunner().invoke(cli, ["status", "--config", str(config)])
    assert "queue:        1 message (0 held, " in status.stdout, status.output
    assert "1 messages" not in status.stdout and " 0 blocks and lockouts in force" in status.stdout
    listed = CliRunner().invoke(cli, ["queue", "list", "--config", str(config)])
    assert "pending, 1 attempt, next in" in listed.stdout, listed.output
    assert listed.stdout.rstrip().endswith("in 1 message")
