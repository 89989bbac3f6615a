"""An internationalised domain's two spellings (RFC 5890 §2.3.2.1) name one account:
``user add`` of the other spelling is refused, and every command, login and
sending check finds the account by either; databases that stored the A-label
spelling are renamed when upgraded (auth/names.py, auth/store.py v5)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from smtpgate.admin import AccountAdmin
from smtpgate.auth.authlog import AuthLog
from smtpgate.auth.names import canonical_name
from smtpgate.auth.service import AuthContext, AuthService
from smtpgate.auth.store import MIGRATIONS, AuditActor, SqliteAccountStore
from smtpgate.config import AuthConfig
from smtpgate.sasl.base import Verdict, VerifyPassword

from .cli_support import FAST, run, write_config

U = "user@bücher.example"
A = "user@xn--bcher-kva.example"
CTX = AuthContext("submission", "192.0.2.7", 50123, "TLSv1.3", "sess-1")


@pytest.mark.parametrize(
    "given",
    [A, "user@XN--BCHER-KVA.example", "user@BÜCHER.example", "user@bu\u0308cher.example"],
)
def test_every_spelling_of_an_idn_domain_has_one_canonical_form(given: str) -> None:
    assert canonical_name(given) == U


def test_a_label_that_decodes_to_a_refused_label_stays_an_a_label() -> None:
    # xn--ls8h is an emoji: not a letter or digit, so not a U-label we accept.
    assert canonical_name("a@xn--ls8h.example") == "a@xn--ls8h.example"


def test_user_add_refuses_the_other_spelling(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    assert run(config, "add", U, "--password-stdin", input="pencil\n").exit_code == 0
    r = run(config, "add", A, "--password-stdin", input="crayon\n")
    assert r.exit_code == 1
    assert "already exists" in r.output
    r = run(config, "list")
    assert r.output.count("bücher") == 1 and "xn--" not in r.output


def test_commands_find_the_account_by_either_spelling(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    assert run(config, "add", A, "--password-stdin", input="pencil\n").exit_code == 0
    assert "user@bücher.example" in run(config, "list").output
    assert run(config, "lock", U, "--reason", "test").exit_code == 0
    assert "locked" in run(config, "list").output
    assert run(config, "unlock", A).exit_code == 0
    r = run(config, "alias", "add", A, "info@xn--bcher-kva.example")
    assert r.exit_code == 0, r.output
    r = run(config, "alias", "add", U, "info@bücher.example")
    assert "info@bücher.example" in r.output and "already" in r.output, r.output
    assert run(config, "alias", "del", U, "info@xn--bcher-kva.example").exit_code == 0
    store = SqliteAccountStore(tmp_path / "accounts.sqlite", FAST)
    try:
        assert store.aliases(A) == []
    finally:
        store.close()
    assert run(config, "remove", U).exit_code == 0
    assert "bücher" not in run(config, "list").output


async def test_login_by_either_spelling(tmp_path: Path) -> None:
    store = SqliteAccountStore(tmp_path / "accounts.sqlite", FAST)
    AccountAdmin(store, FAST, actor=AuditActor("ops", "pytest")).add_account(A, "pencil")
    svc = AuthService(store, FAST, AuthConfig(), AuthLog(tmp_path / "auth.log"), None)
    try:
        for user in (U, A):
            v = await svc.resolve(VerifyPassword(user, "pencil", mechanism="PLAIN"), CTX)
            assert v == Verdict(ok=True, identity=U)
    finally:
        await svc.close()
        store.close()


def test_upgrade_renames_an_a_label_account_and_what_names_it(tmp_path: Path) -> None:
    """A v4 file that stored the A-label spelling: the account, its alias, its
    granted domain and its app password are found by either spelling after."""
    db = tmp_path / "accounts.sqlite"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied TEXT)")
    for version in range(4):
        for stmt in MIGRATIONS[version]:
            conn.execute(stmt)
        conn.execute("INSERT INTO schema_version VALUES (?, 'x')", (version + 1,))
    t = "2020-01-01T00:00:00.000000Z"
    for name in (A, "twin@xn--bcher-kva.example", "twin@bücher.example", "plain@example.org"):
        conn.execute("INSERT INTO accounts (name, created, updated) VALUES (?, ?, ?)", (name, t, t))
    conn.execute("INSERT INTO aliases VALUES ('info@xn--bcher-kva.example', ?, ?)", (A, t))
    conn.execute("INSERT INTO granted_domains VALUES (?, 'xn--mnchen-3ya.example', ?)", (A, t))
    conn.execute(
        "INSERT INTO app_passwords (account, name, salt, digest, created) "
        "VALUES (?, 'phone', 's', 'd', ?)", (A, t))
    conn.commit()
    conn.close()
    store = SqliteAccountStore(db, FAST)
    try:
        names = [a.name for a in store.list_accounts()]
        # Both spellings stored as two accounts: both kept, nothing lost.
        assert sorted(names) == sorted(
            [U, "twin@xn--bcher-kva.example", "twin@bücher.example", "plain@example.org"])
        assert store.aliases(A) == ["info@bücher.example"]
        assert store.granted_domains(U) == ["münchen.example"]
        assert [p.name for p in store.app_passwords(A)] == ["phone"]
    finally:
        store.close()
