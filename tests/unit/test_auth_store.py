"""SqliteAccountStore on a real file: schema, secrets, locking, bookkeeping.

Changes go through the admin service (``smtpgate/admin.py``), which derives the
secrets the store keeps; reads and bookkeeping go to the store itself."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from smtpgate.admin import AccountAdmin
from smtpgate.auth.credentials import (
    ARGON2ID,
    CRAM_MD5,
    SCRAM_SHA_1,
    SCRAM_SHA_256,
    decode_cram_md5,
    decode_scram,
)
from smtpgate.auth.names import InvalidAccountName
from smtpgate.auth.passwords import PasswordHasher, PasswordPolicyError
from smtpgate.auth.store import (
    SCHEMA_VERSION,
    AccountExists,
    AccountStore,
    AuditActor,
    NoSuchAccount,
    SqliteAccountStore,
    StoreUnavailable,
)
from smtpgate.config import AccountsConfig
from smtpgate.sasl.scram import scram_credentials_from_password

CFG = AccountsConfig(
    argon2_memory_kib=8192, argon2_time_cost=1, argon2_parallelism=1, scram_iterations=4096
)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "accounts.sqlite"


@pytest.fixture
def store(db: Path) -> Iterator[SqliteAccountStore]:
    s = SqliteAccountStore(db, CFG)
    yield s
    s.close()


@pytest.fixture
def admin(store: SqliteAccountStore) -> AccountAdmin:
    return AccountAdmin(store, CFG, actor=AuditActor("ops", "pytest"))


def raw(db: Path, sql: str, *args: object) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def test_implements_protocol(store: SqliteAccountStore) -> None:
    s: AccountStore = store
    assert s is store


def test_file_setup_wal_private_and_versioned(db: Path, store: SqliteAccountStore) -> None:
    assert raw(db, "PRAGMA journal_mode") == [("wal",)]
    assert db.stat().st_mode & 0o077 == 0
    assert raw(db, "SELECT MAX(version) FROM schema_version") == [(SCHEMA_VERSION,)]
    tables = {r[0] for r in raw(db, "SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"accounts", "credentials", "schema_version"} <= tables


def test_reopen_is_idempotent(db: Path, store: SqliteAccountStore, admin: AccountAdmin) -> None:
    admin.add_account("a@x.org", "pencil")
    again = SqliteAccountStore(db, CFG)
    try:
        assert again.get_account("a@x.org") is not None
        assert raw(db, "SELECT COUNT(*) FROM schema_version") == [(SCHEMA_VERSION,)]
    finally:
        again.close()


def test_newer_schema_refused(db: Path, store: SqliteAccountStore) -> None:
    store.close()
    conn = sqlite3.connect(db)
    conn.execute("INSERT INTO schema_version VALUES (?, 'later')", (SCHEMA_VERSION + 1,))
    conn.commit()
    conn.close()
    with pytest.raises(StoreUnavailable, match="newer"):
        SqliteAccountStore(db, CFG)


def test_not_a_database_is_unavailable(tmp_path: Path) -> None:
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreUnavailable):
        SqliteAccountStore(bad, CFG)


def test_missing_directory_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(StoreUnavailable):
        SqliteAccountStore(tmp_path / "nope" / "a.sqlite", CFG)


def test_add_stores_argon2_and_scram_never_the_password(
    db: Path, store: SqliteAccountStore, admin: AccountAdmin
) -> None:
    a = admin.add_account("Alice@Example.ORG", "pencil-Secret")
    assert a.name == "alice@example.org"  # login names have no letter case
    assert a.schemes == {ARGON2ID, SCRAM_SHA_1, SCRAM_SHA_256}
    assert not a.locked and a.password_changed is not None and a.last_login is None
    assert a.allowed_mechanisms is None and not a.cram_md5_enabled
    dump = "\n".join(str(r) for r in raw(db, "SELECT * FROM credentials"))
    assert "pencil-Secret" not in dump
    assert PasswordHasher(CFG).verify(store.get_credential(a.name, ARGON2ID) or "", "pencil-Secret")
    for hash_name, scheme in (("sha1", SCRAM_SHA_1), ("sha256", SCRAM_SHA_256)):
        stored = decode_scram(store.get_credential(a.name, scheme) or "")
        assert stored.iterations == CFG.scram_iterations
        expect = scram_credentials_from_password(
            "pencil-Secret", hash_name, stored.iterations, stored.salt
        )
        assert stored == expect
    assert store.get_credential(a.name, CRAM_MD5) is None


def test_cram_md5_secret_only_when_enabled(store: SqliteAccountStore, admin: AccountAdmin) -> None:
    admin.add_account("plain@x.org", "pencil")
    legacy = admin.add_account("legacy@x.org", "pencil", cram_md5_enabled=True)
    assert store.get_credential("plain@x.org", CRAM_MD5) is None
    assert CRAM_MD5 in legacy.schemes
    secret = decode_cram_md5(store.get_credential("legacy@x.org", CRAM_MD5) or "")
    assert len(secret.inner) == len(secret.outer) == 16
    # Opting out deletes the secret at once; a password change does not bring it back.
    admin.disable_cram_md5("legacy@x.org")
    assert store.get_credential("legacy@x.org", CRAM_MD5) is None
    admin.set_password("legacy@x.org", "new")
    assert store.get_credential("legacy@x.org", CRAM_MD5) is None
    # Opting in stores it at the next password change.
    admin.enable_cram_md5("plain@x.org")
    admin.set_password("plain@x.org", "new")
    assert store.get_credential("plain@x.org", CRAM_MD5) is not None


def test_put_credentials_respects_cram_opt_in(store: SqliteAccountStore, admin: AccountAdmin) -> None:
    a = admin.add_account("a@x.org", None)
    assert store.put_credentials(a.name, {CRAM_MD5: "{}"}, generation=a.generation)
    assert store.get_credential(a.name, CRAM_MD5) is None


def test_duplicate_and_invalid_names(store: SqliteAccountStore, admin: AccountAdmin) -> None:
    admin.add_account("a@x.org", "p")
    with pytest.raises(AccountExists):
        admin.add_account("a@X.ORG", "p")
    with pytest.raises(InvalidAccountName):
        admin.add_account("no-domain", "p")
    # Login names have no letter case (auth/names.py): A@x.org is a@x.org.
    with pytest.raises(AccountExists, match="account a@x.org already exists"):
        admin.add_account("A@x.org", "p")
    assert [a.name for a in store.list_accounts()] == ["a@x.org"]


@pytest.mark.parametrize("bad", ["", "a\0b"])
def test_unusable_password_refused(store: SqliteAccountStore, bad: str, admin: AccountAdmin) -> None:
    with pytest.raises(PasswordPolicyError):
        admin.add_account("a@x.org", bad)
    assert store.get_account("a@x.org") is None


def test_password_sasprep_refuses_is_refused(store: SqliteAccountStore, admin: AccountAdmin) -> None:
    # U+0007 is prohibited by SASLprep (RFC 4013 §2.3), so SCRAM could never use it.
    with pytest.raises(PasswordPolicyError, match="SCRAM"):
        admin.add_account("a@x.org", "bell\u0007")


def test_set_password_replaces_every_secret(store: SqliteAccountStore, admin: AccountAdmin) -> None:
    a = admin.add_account("a@x.org", "old")
    old = {s: store.get_credential(a.name, s) for s in a.schemes}
    admin.set_password("a@X.org", "new")
    b = store.get_account("a@x.org")
    assert b is not None and b.generation > a.generation
    assert b.schemes == a.schemes
    for s in b.schemes:
        assert store.get_credential(a.name, s) != old[s]
    assert PasswordHasher(CFG).verify(store.get_credential(a.name, ARGON2ID) or "", "new")
    with pytest.raises(NoSuchAccount):
        admin.set_password("nobody@x.org", "p")


def test_lock_unlock(store: SqliteAccountStore, admin: AccountAdmin) -> None:
    a = admin.add_account("a@x.org", "p")
    admin.lock("a@x.org", "phished")
    b = store.get_account("a@x.org")
    assert b is not None and b.locked and b.lock_reason == "phished" and b.locked_at
    assert b.generation > a.generation
    admin.lock("a@x.org", "still phished")  # keeps the first lock time
    c = store.get_account("a@x.org")
    assert c is not None and c.locked_at == b.locked_at and c.lock_reason == "still phished"
    assert admin.unlock("a@x.org")
    assert not admin.unlock("a@x.org")
    d = store.get_account("a@x.org")
    assert d is not None and not d.locked and d.lock_reason is None and d.locked_at is None
    with pytest.raises(NoSuchAccount):
        admin.lock("nobody@x.org", "x")
    with pytest.raises(NoSuchAccount):
        admin.unlock("nobody@x.org")


def test_remove_cascades(db: Path, store: SqliteAccountStore, admin: AccountAdmin) -> None:
    admin.add_account("a@x.org", "p")
    admin.remove_account("a@x.org")
    assert store.get_account("a@x.org") is None
    assert raw(db, "SELECT COUNT(*) FROM credentials") == [(0,)]
    with pytest.raises(NoSuchAccount):
        admin.remove_account("a@x.org")


def test_record_login_never_goes_backwards(store: SqliteAccountStore, admin: AccountAdmin) -> None:
    admin.add_account("a@x.org", "p")
    t = datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    store.record_login("a@x.org", "plain", t)
    store.record_login("a@x.org", "LOGIN", t - timedelta(seconds=1))  # late, older write
    a = store.get_account("a@x.org")
    assert a is not None and a.last_login == t and a.last_mechanism == "PLAIN"
    store.record_login("a@x.org", "SCRAM-SHA-256", t + timedelta(microseconds=1))
    a = store.get_account("a@x.org")
    assert a is not None and a.last_mechanism == "SCRAM-SHA-256"
    store.record_login("gone@x.org", "PLAIN", t)  # no error for a removed account
    b = store.get_account("a@x.org")
    assert b is not None and b.generation == a.generation  # bookkeeping does not invalidate


def test_put_credentials_guarded_by_generation(store: SqliteAccountStore, admin: AccountAdmin) -> None:
    a = admin.add_account("a@x.org", None)
    assert a.schemes == frozenset() and a.password_changed is None
    admin.set_password("a@x.org", "p")  # generation moves on
    assert not store.put_credentials("a@x.org", {"test-scheme": "stale"}, generation=a.generation)
    assert store.get_credential("a@x.org", "test-scheme") is None
    b = store.get_account("a@x.org")
    assert b is not None
    assert store.put_credentials("a@x.org", {"test-scheme": "{}"}, generation=b.generation)
    assert store.get_credential("a@x.org", "test-scheme") == "{}"
    assert not store.put_credentials("nobody@x.org", {"x": "y"}, generation=0)


def test_allowed_mechanisms(store: SqliteAccountStore, admin: AccountAdmin) -> None:
    a = admin.add_account("a@x.org", "p", allowed_mechanisms=["scram-sha-256"])
    assert a.allowed_mechanisms == frozenset({"SCRAM-SHA-256"})
    assert a.allows("scram-sha-256") and not a.allows("PLAIN")
    admin.set_allowed_mechanisms("a@x.org", None)
    b = store.get_account("a@x.org")
    assert b is not None and b.allowed_mechanisms is None and b.allows("PLAIN")
    with pytest.raises(ValueError, match="unknown mechanism"):
        admin.set_allowed_mechanisms("a@x.org", ["NTLM"])
    with pytest.raises(NoSuchAccount):
        admin.set_allowed_mechanisms("nobody@x.org", None)


def test_one_connection_per_thread(store: SqliteAccountStore, admin: AccountAdmin) -> None:
    admin.add_account("a@x.org", "p")
    barrier = threading.Barrier(4)

    def work() -> int:
        barrier.wait()  # all four threads alive at once, so none is reused
        for _ in range(20):
            assert store.get_account("a@x.org") is not None
            store.record_login("a@x.org", "PLAIN", datetime.now(UTC))
        return id(store._local.conn)

    with ThreadPoolExecutor(4) as pool:
        conns = [f.result() for f in [pool.submit(work) for _ in range(4)]]
    assert len(set(conns)) == 4


def test_two_stores_share_the_file(db: Path, store: SqliteAccountStore, admin: AccountAdmin) -> None:
    other = SqliteAccountStore(db, CFG)  # as a second server process would
    try:
        admin.add_account("a@x.org", "p")
        AccountAdmin(other, CFG, actor=AuditActor("ops", "pytest")).lock("a@x.org", "from elsewhere")
        a = store.get_account("a@x.org")
        assert a is not None and a.locked
    finally:
        other.close()


def test_closed_store_is_unavailable(store: SqliteAccountStore) -> None:
    store.close()
    with pytest.raises(StoreUnavailable, match="closed"):
        store.get_account("a@x.org")
    store.close()  # idempotent


def test_times_are_utc_text_in_sql_order(db: Path, store: SqliteAccountStore, admin: AccountAdmin) -> None:
    admin.add_account("a@x.org", "p")
    ((created, allowed),) = raw(db, "SELECT created, allowed_mechanisms FROM accounts")
    assert isinstance(created, str) and created.endswith("Z") and len(created) == 27
    assert allowed is None
    admin.set_allowed_mechanisms("a@x.org", ["PLAIN", "login"])
    ((allowed,),) = raw(db, "SELECT allowed_mechanisms FROM accounts")
    assert json.loads(str(allowed)) == ["LOGIN", "PLAIN"]


def test_stored_times_read_back_exactly_by_the_fast_parser() -> None:
    """``_parse_time`` reads ``format_time``'s text with ``fromisoformat`` (a login
    reads up to five of them): the same instants, in UTC, as strptime gives."""
    import random
    from datetime import UTC, datetime, timedelta

    from smtpgate.auth.store import _TIME_FORMAT, _parse_time, format_time

    rng = random.Random(13)
    for _ in range(2000):
        t = datetime(1990, 1, 1, tzinfo=UTC) + timedelta(
            seconds=rng.random() * 2e9, microseconds=rng.randint(0, 999_999))
        text = format_time(t)
        parsed = _parse_time(text)
        assert parsed == t == datetime.strptime(text, _TIME_FORMAT).replace(tzinfo=UTC)
        assert parsed is not None and parsed.tzinfo is UTC
