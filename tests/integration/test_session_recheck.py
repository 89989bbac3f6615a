"""An open session reads its account again ([auth] session_recheck): an admin's lock,
removal or password change ends a session that logged in before it (421 4.7.0 and
the connection closed), so a stolen password's open session stops sending; alias
changes reach it; with nothing changed, it goes on."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import PASSWORD, USER, Server, make_server
from .test_attacks import Raw, plain, tls_session

REVOKED = "421 4.7.0 Authentication no longer valid, closing connection"


@pytest.fixture
def rechecking(tmp_path: Path) -> Iterator[Server]:
    """A default install whose sessions read their account at every MAIL."""
    srv = make_server(tmp_path / "srv")
    text = srv.config.read_text()
    srv.config.write_text(text.replace("failure_floor = 0.1", "failure_floor = 0.1\nsession_recheck = 0"))
    srv.add_user(USER, PASSWORD)
    srv.start()
    yield srv
    if srv.proc is not None:
        srv.stop()


def logged_in(server: Server, password: str = PASSWORD) -> Raw:
    r = tls_session(server)
    assert r.cmd(f"AUTH PLAIN {plain(USER, password)}").startswith("235 ")
    return r


def send_one(r: Raw, sender: str = USER) -> str:
    """One message; the MAIL reply if it was refused, else the final reply."""
    reply = r.cmd(f"MAIL FROM:<{sender}>")
    if not reply.startswith("250"):
        return reply
    assert r.cmd("RCPT TO:<bob@example.net>").startswith("250")
    assert r.cmd("DATA").startswith("354")
    return r.cmd(f"From: <{sender}>\r\nSubject: recheck\r\n\r\nhello\r\n.")


def assert_ended(r: Raw, server: Server, reason: str) -> None:
    assert r.cmd(f"MAIL FROM:<{USER}>") == REVOKED
    with pytest.raises((EOFError, ConnectionResetError)):
        r.cmd("NOOP")
    r.close()
    assert f"user={USER} session ended: {reason}" in server.log_text()


def test_lock_ends_an_open_session(rechecking: Server) -> None:
    r = logged_in(rechecking)
    assert send_one(r).startswith("250 ")
    rechecking.cli("user", "lock", USER, "--reason", "compromised")
    assert_ended(r, rechecking, "account locked")


def test_removal_ends_an_open_session(rechecking: Server) -> None:
    r = logged_in(rechecking)
    rechecking.cli("user", "remove", USER)
    assert_ended(r, rechecking, "account removed")


def test_password_change_ends_sessions_of_the_old_password_only(rechecking: Server) -> None:
    old = logged_in(rechecking)
    assert send_one(old).startswith("250 ")
    rechecking.cli("user", "passwd", USER, "--password-stdin", stdin="a new horse battery\n")
    new = logged_in(rechecking, "a new horse battery")
    assert_ended(old, rechecking, "password changed")
    assert send_one(new).startswith("250 ")
    new.close()


def test_an_unchanged_account_keeps_sending_and_alias_changes_apply(rechecking: Server) -> None:
    r = logged_in(rechecking)
    for _ in range(3):
        assert send_one(r).startswith("250 ")
    alias = "sales@example.org"
    assert send_one(r, alias).startswith("553 ")
    r.cmd("RSET")
    rechecking.cli("user", "alias", "add", USER, alias)
    assert send_one(r, alias).startswith("250 ")
    r.cmd("QUIT")
    r.close()
    rechecking.wait_for_mail(4)

