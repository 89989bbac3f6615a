"""An account row edited by hand with sqlite3: the real ``smtpgate`` in subprocesses
and a real server started as the integration tests start it.

``UPDATE accounts SET created = datetime('now')`` writes ``2026-12-04 05:39:00``, not
the form smtpgate writes. Every command that read the row (user list, user show,
report ...) ended in a ValueError traceback, and the account's login was an "internal
error" with a traceback in the server log. Now the commands say which account holds
what and how to fix it (exit 1), the login is a 454 naming it in the auth log, the
other accounts log in as before, and ``user remove`` still removes the row.
"""

from __future__ import annotations

import json
import smtplib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import Server, make_server

PASSWORD = "Correct-Horse-Battery-9"


@pytest.fixture
def srv(tmp_path: Path) -> Iterator[Server]:
    srv = make_server(tmp_path / "srv")
    srv.add_user("alice@example.org", PASSWORD)
    srv.add_user("bob@example.org", PASSWORD)
    with sqlite3.connect(srv.root / "accounts.sqlite") as db:
        db.execute("UPDATE accounts SET created = datetime('now') WHERE name = 'bob@example.org'")
    db.close()
    srv.start()
    yield srv
    if srv.proc is not None:
        srv.stop()


def _login(srv: Server, user: str) -> int:
    with smtplib.SMTP("127.0.0.1", srv.submission, timeout=20) as s:
        s.starttls(context=srv.client_context())
        s.ehlo("client.test")
        try:
            s.login(user, PASSWORD)
        except smtplib.SMTPAuthenticationError as e:
            return e.smtp_code
        return 235


def test_a_hand_edited_row_is_named_not_a_traceback(srv: Server) -> None:
    for args in (("user", "list"), ("user", "list", "--json"), ("user", "show", "bob@example.org")):
        done = srv.cli(*args, check=False)
        assert done.returncode == 1, done.stdout
        assert "Traceback" not in done.stderr
        lines = done.stderr.splitlines()
        assert lines[0].startswith("error: account 'bob@example.org' in the account database "
                                   "holds a value this version cannot read: "), done.stderr
        assert lines[1].startswith("hint: correct the row with sqlite3"), done.stderr
    assert _login(srv, "alice@example.org") == 235
    assert _login(srv, "bob@example.org") == 454
    records = [json.loads(line) for line in (srv.root / "auth.log").read_text().splitlines()]
    bob = [r for r in records if r["username"] == "bob@example.org"]
    assert bob[-1]["result"] == "tempfail"
    assert bob[-1]["reason"].startswith("account 'bob@example.org' in the account database")
    assert "Traceback" not in srv.log_text()
    assert srv.cli("user", "remove", "bob@example.org").returncode == 0
    listed = srv.cli("user", "list", "--json")
    assert [json.loads(line)["name"] for line in listed.stdout.splitlines()] == ["alice@example.org"]
