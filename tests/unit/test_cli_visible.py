"""CLI output of text that came from the network or another user shows control,
format and separator characters escaped (docs/cli.md, "Output"): a relay's refusal
with ESC or U+202E in ``queue list``/``show``, a lock reason stored before reasons
were checked in ``user list`` and ``admin-log``, a guard key in ``guard list``, an
auth log written by an older version in ``report``."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from smtpgate.auth.guard import count_failure, thresholds
from smtpgate.auth.guard_store import RecordedFailure, SqliteGuardStore
from smtpgate.cli.main import cli
from smtpgate.config import GuardConfig, load_config
from smtpgate.queue.spool import Spool
from smtpgate.queue.state import HistoryEntry, MessageState, RcptStatus, RecipientState
from smtpgate.visible import visible
from tests.unit.cli_support import write_config
from tests.unit.test_queue_worker import envelope

ALICE = "alice@example.org"
#: ESC [2J clears the screen; U+202E turns "gnp.exe" into "exe.png"; U+2028 a line.
EVIL = "550 no \x1b[2J \u202egnp.exe\u2028x"
SHOWN = "550 no \\x1b[2J \\u202egnp.exe\\u2028x"
MESSAGE = (b"From: alice@example.org\r\nSubject: \x1b[31mred\r\n\tfolded\r\n"
           b"\r\nbody\r\n")


def smtpgate(config: Path, *args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(cli, [*args, "--config", str(config)], input=input)


def raw(out: str) -> list[str]:
    """The characters a terminal would act on."""
    return [c for c in out if c in "\x1b\u202e\u2028\r"]


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = write_config(tmp_path)
    assert smtpgate(path, "user", "add", ALICE, "--password-stdin", input="pw\n").exit_code == 0
    return path


def test_visible_escapes_cc_cf_zl_zp_and_keeps_what_is_asked() -> None:
    assert visible(EVIL) == SHOWN
    assert visible("a\nb\tc", keep="\n") == "a\nb\\x09c"
    assert visible("naïve ü 東京") == "naïve ü 東京"


def test_queue_list_and_show_escape_a_relays_reply(config: Path) -> None:
    cfg = load_config(config)
    spool = Spool(cfg.path(cfg.queue.spool), prefill=False)
    try:
        qid = spool.store_sync(envelope(), MESSAGE)
        spool.save_state_sync(qid, MessageState(
            (RecipientState("bob@example.net", RcptStatus.PENDING, 1, time.time() + 600, EVIL),),
            history=(HistoryEntry(time.time(), "bob@example.net", "deferred", EVIL),)))
    finally:
        asyncio.run(spool.close())
    listed = smtpgate(config, "queue", "list")
    assert listed.exit_code == 0, listed.output
    assert SHOWN in listed.stdout and raw(listed.stdout) == []
    shown = smtpgate(config, "queue", "show", qid)
    assert shown.exit_code == 0, shown.output
    assert shown.stdout.count(SHOWN) == 2 and raw(shown.stdout) == []
    assert "Subject: \\x1b[31mred\n\tfolded\n" in shown.stdout  # a fold stays one
    # JSON is JSON: the characters are there, escaped as JSON escapes them.
    js = json.loads(smtpgate(config, "queue", "list", "--json").stdout)
    assert json.dumps(EVIL)[1:-1] in json.dumps(js)


def test_user_list_and_admin_log_escape_a_reason_stored_before_the_check(config: Path) -> None:
    with sqlite3.connect(config.parent / "accounts.sqlite") as db:
        db.execute("UPDATE accounts SET locked = 1, lock_reason = ?", (EVIL,))
        db.execute("UPDATE admin_log SET details = ?", (json.dumps({"reason": EVIL}),))
    for args in (("user", "list"), ("admin-log",)):
        out = smtpgate(config, *args)
        assert out.exit_code == 0, out.output
        assert raw(out.stdout) == [], args
        assert "\\u202egnp.exe" in out.stdout.replace("\n", "").replace(" ", "").replace(
            "│", "") or "\\u202e" in out.stdout, args


def test_guard_list_and_report_escape_keys_and_log_names(config: Path) -> None:
    store = SqliteGuardStore(config.parent / "guard.sqlite")
    name = "admin:\x1b]0;owned\x07\u202eroot"
    count_failure(store, RecordedFailure(time.time(), "192.0.2.1", "192.0.2.0/24", name, False, True),
                  thresholds(GuardConfig(lockout_threshold=1)))
    store.close()
    out = smtpgate(config, "guard", "list")
    assert out.exit_code == 0, out.output
    assert raw(out.stdout) == [] and "\x07" not in out.stdout and "\\x1b" in out.stdout
    # An auth log from before names were neutralized when written.
    record = {"time": "2026-12-01T10:00:00Z", "result": "failure",
              "username": "\x1b[2J\u202eeve@example.org", "mechanism": "PLAIN",
              "client_ip": "192.0.2.9", "listener": "submission"}
    (config.parent / "auth.log").write_text(json.dumps(record) + "\n")
    rep = smtpgate(config, "report", "--since", "36500d")
    assert rep.exit_code == 0, rep.output
    assert raw(rep.stdout) == [] and "\\u202eeve" in rep.stdout
