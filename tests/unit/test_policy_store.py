"""Account store additions: migration, aliases, domains, app passwords, expiry, admin log.

Changes go through the admin service (``smtpgate/admin.py``); reads, matching and
bookkeeping go to the store."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from smtpgate.admin import AccountAdmin, MessageRate, RequireOAuth, RestrictNetworks
from smtpgate.auth.credentials import APP_PASSWORD_RE, generate_app_password
from smtpgate.auth.names import InvalidAccountName
from smtpgate.auth.store import (
    MIGRATIONS,
    SCHEMA_VERSION,
    AccountExists,
    AliasTaken,
    AuditActor,
    NoSuchAccount,
    SqliteAccountStore,
)
from smtpgate.config import AccountsConfig

CFG = AccountsConfig(argon2_memory_kib=8192, argon2_time_cost=1, argon2_parallelism=1,
                     scram_iterations=4096)
ALICE = "alice@example.org"
ACTOR = AuditActor("ops", "smtpgate test")


@pytest.fixture
def store(tmp_path: Path) -> SqliteAccountStore:
    return SqliteAccountStore(tmp_path / "a.sqlite", CFG)


@pytest.fixture
def admin(store: SqliteAccountStore) -> AccountAdmin:
    a = AccountAdmin(store, CFG, actor=ACTOR)
    a.add_account(ALICE, "pencil")
    a.add_account("bob@example.org", "crayon")
    return a


def test_version_1_database_is_migrated_keeping_accounts(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY NOT NULL, applied TEXT NOT NULL)")
    for stmt in MIGRATIONS[0]:
        conn.execute(stmt)
    conn.execute("INSERT INTO schema_version VALUES (1, 'x')")
    conn.execute("INSERT INTO accounts (name, created, updated) VALUES "
                 "('old@example.org', '2020-01-01T00:00:00.000000Z', '2020-01-01T00:00:00.000000Z')")
    conn.commit()
    conn.close()
    s = SqliteAccountStore(path, CFG)
    try:
        a = s.get_account("old@example.org")
        assert a is not None and a.allowed_networks is None and a.require_oauth is False
        assert s.aliases("old@example.org") == [] and s.app_passwords() == []
        version = s._conn().execute("SELECT MAX(version) FROM schema_version").fetchone()[0]
        assert version == SCHEMA_VERSION
    finally:
        s.close()


def test_aliases_are_unique_and_never_an_account(store: SqliteAccountStore, admin: AccountAdmin) -> None:
    admin.add_alias(ALICE, "Info@EXAMPLE.org")
    admin.add_alias(ALICE, "Info@example.org")  # idempotent
    assert store.aliases(ALICE) == ["info@example.org"]
    with pytest.raises(AliasTaken, match="already an alias of alice"):
        admin.add_alias("bob@example.org", "Info@example.org")
    with pytest.raises(AliasTaken, match="account of its own"):
        admin.add_alias(ALICE, "bob@example.org")
    with pytest.raises(InvalidAccountName):
        admin.add_alias(ALICE, "no-at-sign")
    with pytest.raises(NoSuchAccount):
        admin.add_alias("nobody@example.org", "x@example.org")
    assert admin.remove_alias(ALICE, "Info@example.org") is True
    assert admin.remove_alias(ALICE, "Info@example.org") is False


def test_granted_domains(store: SqliteAccountStore, admin: AccountAdmin) -> None:
    admin.grant_domain(ALICE, "@Example.NET")
    admin.grant_domain(ALICE, "example.net")
    assert store.granted_domains(ALICE) == ["example.net"]
    assert admin.revoke_domain(ALICE, "EXAMPLE.net") is True
    assert store.granted_domains(ALICE) == []


def test_a_grant_refuses_bad_input_naming_what_was_given(admin: AccountAdmin) -> None:
    """The check runs on a made-up address ("x@" + NAME); its messages named that
    ('x@' for an empty NAME, 'x@bob' for an address) until audit h21."""
    for given, said in (("", "'' is no domain name"), ("  ", "'  ' is no domain name"),
                        ("@", "'@' is no domain name"),
                        ("bob@evil.example", ("'bob@evil.example' is an address, not a domain: "
                                             "grant its domain (evil.example)"))):
        with pytest.raises(InvalidAccountName) as e:
            admin.grant_domain(ALICE, given)
        assert str(e.value).startswith(said) and "x@" not in str(e.value)


def test_a_domain_is_revoked_by_either_form_of_its_name(
        store: SqliteAccountStore, admin: AccountAdmin) -> None:
    """A grant stored as the U-label is the A-label too (docs/policy.md); revoking by
    the A-label, as a client without SMTPUTF8 sends it, said "not granted" and left
    the grant in force until audit h21."""
    assert admin.grant_domain(ALICE, "Bücher.example") == "bücher.example"
    assert admin.revoke_domain(ALICE, "xn--bcher-kva.example") is True
    assert store.granted_domains(ALICE) == []
    admin.grant_domain(ALICE, "xn--bcher-kva.example")
    assert admin.revoke_domain(ALICE, "BÜCHER.example") is True
    assert admin.revoke_domain(ALICE, "bücher.example") is False
    assert admin.revoke_domain(ALICE, "") is False  # no grant of that: not found, no error


def test_app_passwords_are_random_hashed_and_matched(store: SqliteAccountStore, admin: AccountAdmin) -> None:
    rec, secret = admin.add_app_password(ALICE, "laptop", networks=["10.1.2.3/8"], mechanisms=["plain"])
    assert APP_PASSWORD_RE.fullmatch(secret) and APP_PASSWORD_RE.fullmatch(generate_app_password())
    assert rec.networks == ("10.0.0.0/8",) and rec.mechanisms == frozenset({"PLAIN"})
    raw = store._conn().execute("SELECT * FROM app_passwords").fetchone()
    assert secret not in [str(v) for v in raw]
    assert store.match_app_password(ALICE, secret) == rec
    assert store.match_app_password("bob@example.org", secret) is None
    assert store.match_app_password(ALICE, generate_app_password()) is None
    with pytest.raises(AccountExists):
        admin.add_app_password(ALICE, "laptop")
    with pytest.raises(ValueError, match="PLAIN and LOGIN only"):
        admin.add_app_password(ALICE, "x", mechanisms=["SCRAM-SHA-256"])
    store.record_app_password_use(rec.id, datetime.now(UTC), "10.9.9.9")
    assert store.app_passwords(ALICE)[0].last_address == "10.9.9.9"
    assert admin.revoke_app_password(ALICE, "laptop") is True
    assert store.match_app_password(ALICE, secret) is None
    admin.remove_account("bob@example.org")


def test_expire_app_password_only_sooner_and_rename(store: SqliteAccountStore, admin: AccountAdmin) -> None:
    soon = datetime.now(UTC) + timedelta(days=1)
    admin.add_app_password(ALICE, "phone", expires=soon)
    admin.expire_app_password(ALICE, "phone", soon + timedelta(days=5), rename_to="phone (old)")
    (p,) = store.app_passwords(ALICE)
    assert p.name == "phone (old)" and p.expires is not None
    assert abs((p.expires - soon).total_seconds()) < 1


def test_password_expiry_from_max_age_and_rotation(store: SqliteAccountStore, admin: AccountAdmin) -> None:
    a = store.get_account(ALICE)
    assert a is not None and a.password_changed is not None
    assert a.password_expiry(0) is None
    assert a.password_expiry(30) == a.password_changed + timedelta(days=30)
    admin.set_password_max_age(ALICE, 0)  # never, whatever the default
    a = store.get_account(ALICE)
    assert a is not None and a.password_expiry(30) is None
    when = datetime.now(UTC) + timedelta(hours=1)
    admin.schedule_password_expiry(ALICE, when)
    a = store.get_account(ALICE)
    assert a is not None and a.password_expiry(0) is not None
    admin.set_password(ALICE, "a new password")  # a new password ends the schedule
    a = store.get_account(ALICE)
    assert a is not None and a.password_expires is None


def test_every_admin_change_is_logged_without_secrets(store: SqliteAccountStore, admin: AccountAdmin) -> None:
    admin.set_password(ALICE, "s3cret-new-password")
    admin.lock(ALICE, "phished")
    admin.unlock(ALICE)
    admin.add_alias(ALICE, "info@example.org")
    admin.grant_domain(ALICE, "example.net")
    admin.change_access(ALICE, [RestrictNetworks(("192.0.2.0/24",)), RequireOAuth(True)])
    admin.change_limits(ALICE, [MessageRate(5)])
    _, secret = admin.add_app_password(ALICE, "laptop")
    admin.revoke_app_password(ALICE, "laptop")
    with store.transaction(ACTOR) as w:
        w.record("guard lockout lifted", ALICE, {"blocks": 1})
    entries = store.admin_log(target=ALICE)
    assert [e.action for e in entries] == [
        "account created", "password changed", "account locked", "account unlocked",
        "alias added", "domain granted", "access changed", "access changed",
        "rate limits changed", "app password added", "app password revoked",
        "guard lockout lifted",
    ]
    assert {(e.os_user, e.command) for e in entries} == {("ops", "smtpgate test")}
    dump = "\n".join(str(e) for e in store.admin_log())
    assert "s3cret-new-password" not in dump and secret not in dump and "pencil" not in dump
    assert entries[1].details == {"password": "changed"}
    # One row per change; both changes of the one operation share its transaction.
    assert entries[6].details == {"networks": ["192.0.2.0/24"]}
    assert entries[7].details == {"require_oauth": True}
    assert entries[6].time == entries[7].time
    assert len(store.admin_log(limit=2)) == 2
    assert store.admin_log(since=datetime.now(UTC) + timedelta(hours=1)) == []


def test_bookkeeping_writes_are_not_audited(store: SqliteAccountStore) -> None:
    before = len(store.admin_log())
    store.record_login(ALICE, "PLAIN", datetime.now(UTC))
    assert len(store.admin_log()) == before


def test_no_account_gets_another_s_address_but_for_letter_case(
    store: SqliteAccountStore, admin: AccountAdmin
) -> None:
    """A mail reader shows ALICE@ as alice's: bob must not get it as an alias, nor
    anyone as an account (found in the attack audit: ``alias add demo ALICE@...``
    passed). Login names and aliases have no letter case (auth/names.py), so each
    capitalisation is the one lower-case name."""
    with pytest.raises(AliasTaken, match="alice@example.org is an account of its own"):
        admin.add_alias("bob@example.org", "ALICE@example.org")
    with pytest.raises(AccountExists, match="already exists"):
        admin.add_account("Alice@example.org", "pencil")
    admin.add_alias(ALICE, "Sales@example.org")
    assert store.aliases(ALICE) == ["sales@example.org"]
    with pytest.raises(AliasTaken, match="already an alias of alice"):
        admin.add_alias("bob@example.org", "SALES@example.org")
    with pytest.raises(AccountExists, match="alias of alice"):
        admin.add_account("SALES@example.org", "pencil")
    assert admin.add_alias(ALICE, "SALES@example.org") is False  # already hers


def test_an_account_is_not_made_of_another_account_s_alias(
    store: SqliteAccountStore, admin: AccountAdmin
) -> None:
    admin.add_alias(ALICE, "info@example.org")
    with pytest.raises(AccountExists, match="is an alias of alice@example.org"):
        admin.add_account("info@example.org", "pencil")
    assert admin.remove_alias(ALICE, "info@example.org") is True
    admin.add_account("info@example.org", "pencil")
