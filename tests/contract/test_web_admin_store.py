"""Web admin accounts (``web_admins``) on every account backend that keeps them:
SQLite, PostgreSQL, and the LDAP backend's local overlay. Added, listed, refused
twice, removed, each change in the admin log, a refused change leaving nothing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from smtpgate.auth.admin_store import AccountExists, AccountStore, AuditActor
from tests.contract.directories import HARNESSES

ACTOR = AuditActor("web:root", "web admin test")


@pytest.fixture(params=["sqlite", "postgresql", "ldap"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AccountStore]:
    h: Any = HARNESSES[request.param](tmp_path)
    s: AccountStore = h.open()
    yield s
    h.close()


def test_web_admins_are_added_listed_removed_and_logged(store: AccountStore) -> None:
    assert store.web_admins() == []
    with store.transaction(ACTOR) as w:
        w.add_web_admin("root", "$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaA", "JBSWY3DPEHPK3PXP")
    admins = store.web_admins()
    assert [(a.name, a.totp_secret) for a in admins] == [("root", "JBSWY3DPEHPK3PXP")]
    with pytest.raises(AccountExists), store.transaction(ACTOR) as w:
        w.record("before", "root", {})
        w.add_web_admin("root", "x", "y")
    assert len(store.web_admins()) == 1
    with store.transaction(ACTOR) as w:
        assert w.remove_web_admin("root")
        assert not w.remove_web_admin("root")
    assert store.web_admins() == []
    log = [(e.os_user, e.action) for e in store.admin_log(target="root")]
    assert log == [("web:root", "web admin created"), ("web:root", "web admin removed")]


def test_a_totp_time_step_is_spent_once_and_kept(store: AccountStore) -> None:
    """``use_totp_step``: a step (or an earlier one) used once is refused after; it
    is kept in the backend's table (tests/unit/test_web_admin.py reopens the file,
    tests/integration/test_web_admin.py restarts the server)."""
    with store.transaction(ACTOR) as w:
        w.add_web_admin("root", "$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaA", "JBSWY3DPEHPK3PXP")
    with store.transaction(ACTOR) as w:
        assert w.use_totp_step("root", 56_666_667)
    with store.transaction(ACTOR) as w:
        assert not w.use_totp_step("root", 56_666_667)
        assert not w.use_totp_step("root", 56_666_666)
        assert not w.use_totp_step("nobody", 56_666_668)
        assert w.use_totp_step("root", 56_666_668)


def test_an_admins_password_and_totp_key_are_replaced_one_at_a_time(store: AccountStore) -> None:
    """``update_web_admin`` (``smtpgate admin passwd`` / ``reset-totp``): the other
    credential stays, an unknown admin is False, each change is logged without the
    secret."""
    old_hash = "$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaA"
    with store.transaction(ACTOR) as w:
        w.add_web_admin("root", old_hash, "JBSWY3DPEHPK3PXP")
    with store.transaction(ACTOR) as w:
        assert w.update_web_admin("root", password_hash="$argon2id$new")
        assert not w.update_web_admin("nobody", password_hash="$argon2id$new")
    [a] = store.web_admins()
    assert (a.password_hash, a.totp_secret) == ("$argon2id$new", "JBSWY3DPEHPK3PXP")
    with store.transaction(ACTOR) as w:
        assert w.update_web_admin("root", totp_secret="KRSXG5CTMVRXEZLU")
    [a] = store.web_admins()
    assert (a.password_hash, a.totp_secret) == ("$argon2id$new", "KRSXG5CTMVRXEZLU")
    log = [(e.action, e.details) for e in store.admin_log(target="root")]
    assert log[1:] == [("web admin credentials replaced", {"password": "new"}),
                       ("web admin credentials replaced", {"totp": "new"})]
    assert "KRSXG5CTMVRXEZLU" not in repr(log)
