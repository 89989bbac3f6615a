"""AuthService.resolve against a real SQLite file: verdicts, cache, faults, upgrades."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import argon2
import pytest

from smtpgate.admin import AccountAdmin
from smtpgate.auth import service as service_module
from smtpgate.auth.authlog import AuthLog
from smtpgate.auth.credentials import ARGON2ID, CRAM_MD5, SCRAM_SHA_1, SCRAM_SHA_256
from smtpgate.auth.oauth import TokenResult as VerifiedToken
from smtpgate.auth.passwords import PasswordHasher, PasswordMatch
from smtpgate.auth.service import AuthContext, AuthService, build_auth_service
from smtpgate.auth.store import Account, AuditActor, SqliteAccountStore, StoreUnavailable
from smtpgate.config import AccountsConfig, AuthConfig, Config
from smtpgate.sasl.base import (
    Challenge,
    ConfirmIdentity,
    CramMd5Secret,
    Failure,
    LookupCramMd5,
    LookupScram,
    NeedCredentials,
    NotFound,
    ScramCredentials,
    Success,
    Verdict,
    VerifyPassword,
    VerifyToken,
)
from smtpgate.sasl.cram_md5 import CramMd5Client, CramMd5Server
from smtpgate.sasl.plain import PlainClient, PlainServer
from smtpgate.sasl.scram import ScramClient, ScramSha256Server, scram_credentials_from_password
from tests.contract.directories import Forwarding

CFG = AccountsConfig(
    argon2_memory_kib=8192, argon2_time_cost=1, argon2_parallelism=1, scram_iterations=4096
)
CTX = AuthContext("submission", "192.0.2.7", 50123, "TLSv1.3", "sess-1")
ALICE = "alice@example.org"
ACTOR = AuditActor("ops", "pytest")


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "accounts.sqlite"


@pytest.fixture
def store(db: Path) -> SqliteAccountStore:
    s = SqliteAccountStore(db, CFG)
    AccountAdmin(s, CFG, actor=ACTOR).add_account(ALICE, "pencil")
    return s


@pytest.fixture
def admin(db: Path, store: SqliteAccountStore) -> Iterator[AccountAdmin]:
    """The admin service on a second store on the same file: what `smtpgate user ...`
    does from another process."""
    with AccountAdmin(SqliteAccountStore(db, CFG), CFG, actor=ACTOR) as s:
        yield s


def make_service(
    store: Any, tmp_path: Path, verifier: object | None = None, cfg: AccountsConfig = CFG
) -> AuthService:
    return AuthService(store, cfg, AuthConfig(), AuthLog(tmp_path / "auth.log"), verifier)


@pytest.fixture
async def svc(store: SqliteAccountStore, tmp_path: Path) -> AsyncIterator[AuthService]:
    s = make_service(store, tmp_path)
    yield s
    await s.close()


async def login(svc: AuthService, user: str = ALICE, pw: str = "pencil", **kw: str) -> Verdict:
    v = await svc.resolve(
        VerifyPassword(user, pw, mechanism=kw.pop("mechanism", "PLAIN"), **kw), CTX
    )
    assert isinstance(v, Verdict)
    return v


# --- PLAIN / LOGIN passwords ------------------------------------------------------


async def test_good_password(svc: AuthService) -> None:
    assert await login(svc) == Verdict(ok=True, identity=ALICE)


async def test_domain_case_insensitive(svc: AuthService) -> None:
    assert await login(svc, "alice@EXAMPLE.org") == Verdict(ok=True, identity=ALICE)
    # Login names have no letter case (auth/names.py): a capitalised name is alice.
    assert await login(svc, "Alice@example.org") == Verdict(ok=True, identity=ALICE)
    assert await login(svc, "ALICE@example.org", mechanism="LOGIN") == Verdict(
        ok=True, identity=ALICE)
    assert not (await login(svc, "Alice@example.org", "wrong")).ok


async def test_bad_password(svc: AuthService) -> None:
    assert await login(svc, pw="Pencil") == Verdict(ok=False, reason="bad password")


async def test_unknown_user_same_reply_and_same_work(svc: AuthService) -> None:
    before = svc.stats.hash_verifications
    wrong = await login(svc, pw="wrong")
    unknown = await login(svc, "nobody@example.org", "wrong")
    invalid = await login(svc, "not an address", "wrong")
    for v in (wrong, unknown, invalid):
        assert (v.ok, v.identity, v.temporary) == (False, "", False)
    assert unknown.reason == invalid.reason == "unknown user"
    # Each did exactly one Argon2id verification: the decoy stands in for the hash.
    assert svc.stats.hash_verifications - before == 3


async def test_cache_hit_skips_argon2(svc: AuthService, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = svc._hasher.match

    def counting(encoded: str, password: str) -> PasswordMatch:
        calls.append(password)
        return real(encoded, password)

    monkeypatch.setattr(svc._hasher, "match", counting)
    for _ in range(5):
        assert (await login(svc)).ok
    assert len(calls) == 1
    assert (svc.stats.cache_misses, svc.stats.cache_hits) == (1, 4)
    # A wrong password is never served from the cache.
    assert not (await login(svc, pw="pencil2")).ok
    assert len(calls) == 2


async def test_locked_refused_even_after_cached_success(
    svc: AuthService, admin: AccountAdmin
) -> None:
    assert (await login(svc)).ok
    assert (await login(svc)).ok  # now served from the cache
    admin.lock(ALICE, "compromised")  # from another process
    assert await login(svc) == Verdict(ok=False, reason="account locked: compromised")
    assert await login(svc, pw="wrong") == Verdict(ok=False, reason="account locked: compromised")
    admin.unlock(ALICE)
    assert (await login(svc)).ok


async def test_password_change_elsewhere_invalidates_cache(
    svc: AuthService, admin: AccountAdmin
) -> None:
    assert (await login(svc)).ok
    admin.set_password(ALICE, "crayon")
    assert await login(svc) == Verdict(ok=False, reason="bad password")
    assert (await login(svc, pw="crayon")).ok


async def test_cache_disabled_with_ttl_zero(store: SqliteAccountStore, tmp_path: Path) -> None:
    svc = make_service(store, tmp_path, cfg=CFG.model_copy(update={"cache_ttl": 0}))
    try:
        for _ in range(3):
            assert (await login(svc)).ok
        assert svc.stats.cache_hits == 0 and svc.stats.cache_misses == 3
    finally:
        await svc.close()


async def test_authzid_must_be_the_account(svc: AuthService) -> None:
    assert (await login(svc, authzid="alice@EXAMPLE.ORG")).ok
    v = await login(svc, authzid="bob@example.org")
    assert not v.ok and not v.temporary and "authorization identity" in v.reason


async def test_account_without_password(svc: AuthService, admin: AccountAdmin) -> None:
    admin.add_account("nopw@example.org", None)
    v = await login(svc, "nopw@example.org", "x")
    assert not v.ok and not v.temporary and "no password" in v.reason


async def test_success_records_last_login(svc: AuthService, admin: AccountAdmin) -> None:
    assert (await login(svc, mechanism="login")).ok
    await svc.flush()
    a = admin.get_account(ALICE)
    assert a is not None and a.last_login is not None and a.last_mechanism == "LOGIN"


async def test_concurrent_logins(svc: AuthService) -> None:
    results = await asyncio.gather(*(login(svc) for _ in range(20)))
    assert all(v.ok for v in results)


class _CountedReads(Forwarding):
    """The store, counting the sender-profile reads (aliases, granted domains)."""

    profile_reads = 0

    def aliases(self, name: str) -> Any:
        self.profile_reads += 1
        return self.inner.aliases(name)


async def test_a_cache_hit_login_reads_the_sender_profile_in_its_account_hop(
    store: SqliteAccountStore, admin: AccountAdmin, tmp_path: Path
) -> None:
    admin.add_alias(ALICE, "sales@example.org")
    counted = _CountedReads(store)
    svc = make_service(counted, tmp_path)
    try:
        query = VerifyPassword(ALICE, "pencil", mechanism="PLAIN")
        first = await svc.resolve_detailed(query, CTX)  # verified by Argon2: not cached yet
        assert first.answer == Verdict(ok=True, identity=ALICE) and first.profile is None
        assert counted.profile_reads == 0
        # Guesses never read the profile, before or after the cache holds the password.
        for pw in ("crayon", "pencil2", ""):
            bad = await svc.resolve_detailed(VerifyPassword(ALICE, pw, mechanism="PLAIN"), CTX)
            assert not isinstance(bad.answer, Verdict) or not bad.answer.ok
            assert bad.profile is None
        assert counted.profile_reads == 0
        hit = await svc.resolve_detailed(query, CTX)
        assert hit.answer == Verdict(ok=True, identity=ALICE)
        assert hit.profile is not None and hit.profile.owns("sales@example.org")
        assert counted.profile_reads == 1
        # The password changed since it was cached: the read came along, the login fails.
        admin.set_password(ALICE, "new-Pencil-123")
        stale = await svc.resolve_detailed(query, CTX)
        assert stale.answer == Verdict(ok=False, reason="bad password")
        assert stale.profile is None
    finally:
        await svc.close()


class _HeldLastLogin(Forwarding):
    """The store, with last-login writes recorded and held until ``go`` is set."""

    def __init__(self, store: SqliteAccountStore) -> None:
        super().__init__(store)
        self.writes: list[tuple[str, str]] = []
        self.go = threading.Event()

    def record_login(self, name: str, mechanism: str, when: Any) -> None:
        assert self.go.wait(10)
        self.writes.append((name, mechanism))
        self.inner.record_login(name, mechanism, when)


async def test_last_logins_are_gathered_for_a_second_and_written_newest_per_account(
    store: SqliteAccountStore, admin: AccountAdmin, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A window wide enough for bob's first (Argon2) login on a loaded machine.
    monkeypatch.setattr(service_module, "LOGINS_LATER", 1.5)
    admin.add_account("bob@example.org", "crayon")
    slow = _HeldLastLogin(store)
    slow.go.set()
    svc = make_service(slow, tmp_path)
    try:
        # Both passwords verified (Argon2) and cached first, so that the logins below
        # take microseconds each and all fall in the window, however loaded the machine.
        for name, pw in ((ALICE, "pencil"), ("bob@example.org", "crayon")):
            assert (await login(svc, name, pw, mechanism="login")).ok
        await svc.flush()
        slow.writes.clear()
        # Eleven logins of two accounts within the window: one write each, the newest.
        assert (await login(svc, mechanism="login")).ok
        logins = [login(svc, mechanism="plain") for _ in range(6)]
        logins += [login(svc, "bob@example.org", "crayon", mechanism="login") for _ in range(4)]
        assert all(v.ok for v in await asyncio.gather(*logins))
        assert slow.writes == []  # gathered, not written yet
        for _ in range(400):
            if slow.writes:
                break
            await asyncio.sleep(0.02)
        assert sorted(slow.writes) == [(ALICE, "PLAIN"), ("bob@example.org", "LOGIN")]
        # Logins that arrive while a write is held go out together in the next one.
        slow.go.clear()
        assert (await login(svc, mechanism="login")).ok
        for _ in range(400):  # the write of that login has started, and is held
            if svc.stats.cache_hits and not svc._logins:
                break
            await asyncio.sleep(0.02)
        assert all(v.ok for v in await asyncio.gather(
            login(svc, mechanism="plain"), login(svc, "bob@example.org", "crayon")))
    finally:
        slow.go.set()
        await svc.close()  # writes what is queued before the writer goes
    assert slow.writes[2] == (ALICE, "LOGIN")
    assert sorted(slow.writes[3:]) == [(ALICE, "PLAIN"), ("bob@example.org", "PLAIN")]
    a, b = admin.get_account(ALICE), admin.get_account("bob@example.org")
    assert a is not None and a.last_mechanism == "PLAIN"
    assert b is not None and b.last_mechanism == "PLAIN"


async def test_flush_writes_the_gathered_last_logins_at_once(
    store: SqliteAccountStore, admin: AccountAdmin, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(service_module, "LOGINS_LATER", 30.0)
    svc = make_service(store, tmp_path)
    try:
        assert (await login(svc)).ok
        a = admin.get_account(ALICE)
        assert a is not None and a.last_login is None  # gathered for 30 s
        await asyncio.wait_for(svc.flush(), 5)
        a = admin.get_account(ALICE)
        assert a is not None and a.last_mechanism == "PLAIN"
    finally:
        await svc.close()


async def test_a_failed_last_login_write_costs_only_its_account(
    store: SqliteAccountStore, admin: AccountAdmin, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    admin.add_account("bob@example.org", "crayon")

    class Failing(_HeldLastLogin):
        def record_login(self, name: str, mechanism: str, when: Any) -> None:
            if name == ALICE:
                raise StoreUnavailable("disk I/O error")
            super().record_login(name, mechanism, when)

    failing = Failing(store)
    failing.go.set()
    svc = make_service(failing, tmp_path)
    try:
        assert (await login(svc, "bob@example.org", "crayon")).ok
        assert all(v.ok for v in await asyncio.gather(
            login(svc), login(svc, "bob@example.org", "crayon", mechanism="login")))
        await svc.flush()
    finally:
        await svc.close()
    b = admin.get_account("bob@example.org")
    assert b is not None and b.last_mechanism == "LOGIN"
    assert "last login of alice@example.org: disk I/O error" in caplog.text


async def test_a_database_that_refuses_writes_is_logged_once_not_per_login(
    store: SqliteAccountStore, admin: AccountAdmin, tmp_path: Path,
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A database that reads but refuses writes (a PostgreSQL standby a failover left
    the DSN on, default_transaction_read_only, a full disk): logins go on, and every
    last-login write failed with a warning of its own, one per account and batch, a
    log filled at the login rate. One warning when the first fails, one line with the
    count when a write succeeds again."""
    monkeypatch.setattr(service_module, "LOGINS_LATER", 0.0)
    names = [f"user{i}@example.org" for i in range(5)]
    for name in names:
        admin.add_account(name, "crayon")

    class ReadOnly(_HeldLastLogin):
        refuse = True

        def record_login(self, name: str, mechanism: str, when: Any) -> None:
            if self.refuse:
                raise StoreUnavailable("cannot execute UPDATE in a read-only transaction")
            super().record_login(name, mechanism, when)

    read_only = ReadOnly(store)
    read_only.go.set()
    svc = make_service(read_only, tmp_path)
    try:
        for _ in range(3):
            for name in names:
                assert (await login(svc, name, "crayon")).ok
            await svc.flush()
        failed = [r for r in caplog.records if "background account update" in r.getMessage()]
        assert len(failed) == 1, [r.getMessage() for r in failed]
        assert "read-only transaction" in failed[0].getMessage()
        failures = svc.stats.failed_writes
        assert failures >= 5  # every account's, however the writes were gathered
        read_only.refuse = False
        assert (await login(svc, names[0], "crayon")).ok
        await svc.flush()
    finally:
        await svc.close()
    again = [r.getMessage() for r in caplog.records if "succeed again" in r.getMessage()]
    assert again == [(f"background account updates succeed again; {failures} failed meanwhile "
                      "(last logins, app password uses or upgraded hashes not written)")]


# --- backend faults are temporary ---------------------------------------------------


async def test_closed_store_gives_temporary(store: SqliteAccountStore, tmp_path: Path) -> None:
    svc = make_service(store, tmp_path)
    try:
        store.close()
        v = await login(svc)
        assert (v.ok, v.temporary) == (False, True) and "closed" in v.reason
        n = await svc.resolve(LookupScram(ALICE, "sha256", "SCRAM-SHA-256"), CTX)
        assert isinstance(n, NotFound) and n.temporary
        assert svc.stats.tempfails == 2
    finally:
        await svc.close()


async def test_corrupt_database_file_gives_temporary(
    store: SqliteAccountStore, db: Path, tmp_path: Path
) -> None:
    svc = make_service(store, tmp_path)
    try:
        # Worker threads open their own connections, after the file went bad.
        for p in db.parent.glob(db.name + "*"):
            p.unlink()
        db.write_bytes(b"garbage!" * 1024)
        v = await login(svc)
        assert (v.ok, v.temporary) == (False, True)
        assert "not a database" in v.reason
    finally:
        await svc.close()


async def test_corrupt_stored_hash_gives_temporary(svc: AuthService, db: Path) -> None:
    conn = sqlite3.connect(db)
    conn.execute("UPDATE credentials SET data = 'garbage' WHERE scheme = ?", (ARGON2ID,))
    conn.commit()
    conn.close()
    v = await login(svc)
    assert (v.ok, v.temporary) == (False, True)


class FaultyStore:
    """Raises ``exc`` on every read, as a flaky remote store might."""

    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    def get_account(self, name: str) -> Account | None:
        raise self.exc

    def close(self) -> None:
        pass


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (StoreUnavailable("database is locked"), "database is locked"),
        (RuntimeError("boom"), "internal error (RuntimeError)"),
    ],
)
async def test_resolve_never_raises(
    tmp_path: Path, exc: Exception, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    svc = make_service(FaultyStore(exc), tmp_path)
    try:
        for q in (
            VerifyPassword(ALICE, "pencil", mechanism="PLAIN"),
            ConfirmIdentity(ALICE, "SCRAM-SHA-256"),
        ):
            assert await svc.resolve(q, CTX) == Verdict(ok=False, reason=reason, temporary=True)
        for lq in (LookupScram(ALICE, "sha1", "SCRAM-SHA-1"), LookupCramMd5(ALICE)):
            assert await svc.resolve(lq, CTX) == NotFound(reason=reason, temporary=True)
    finally:
        await svc.close()


async def test_after_close_answers_temporary(store: SqliteAccountStore, tmp_path: Path) -> None:
    svc = make_service(store, tmp_path)
    await svc.close()
    await svc.close()  # idempotent
    assert (await login(svc)).temporary


# --- SCRAM and CRAM-MD5 ----------------------------------------------------------


async def test_scram_lookup(svc: AuthService) -> None:
    for hash_name in ("sha1", "sha256"):
        c = await svc.resolve(LookupScram(ALICE, hash_name, "SCRAM"), CTX)
        assert isinstance(c, ScramCredentials)
        assert c == scram_credentials_from_password("pencil", hash_name, c.iterations, c.salt)
    assert await svc.resolve(LookupScram("x@Example.ORG", "sha256", ""), CTX) == NotFound(
        name="x@example.org"  # the decoy is keyed on the spelling looked up
    )
    bad = await svc.resolve(LookupScram(ALICE, "md5", ""), CTX)
    assert isinstance(bad, NotFound) and bad.temporary


async def test_legacy_account_gets_scram_keys_at_plain_login(
    svc: AuthService, admin: AccountAdmin, store: SqliteAccountStore
) -> None:
    # An account imported with only an Argon2id hash (e.g. from another server).
    legacy = admin.add_account("old@example.org", None)
    store.put_credentials(
        legacy.name, {ARGON2ID: PasswordHasher(CFG).hash("pencil")}, generation=legacy.generation
    )
    before = await svc.resolve(LookupScram(legacy.name, "sha256", "SCRAM-SHA-256"), CTX)
    assert isinstance(before, NotFound) and not before.temporary and "keys" in before.reason

    assert (await login(svc, legacy.name, mechanism="LOGIN")).ok
    await svc.flush()
    a = admin.get_account(legacy.name)
    assert a is not None and {SCRAM_SHA_1, SCRAM_SHA_256} <= a.schemes
    assert CRAM_MD5 not in a.schemes
    after = await svc.resolve(LookupScram(legacy.name, "sha256", "SCRAM-SHA-256"), CTX)
    assert isinstance(after, ScramCredentials)
    assert after == scram_credentials_from_password(
        "pencil", "sha256", after.iterations, after.salt
    )
    assert svc.stats.upgrades == 1
    # Nothing more to do at the next miss.
    svc._cache.clear()
    assert (await login(svc, legacy.name)).ok
    await svc.flush()
    assert svc.stats.upgrades == 1


async def test_scram_keys_made_with_fewer_iterations_are_made_again_at_plain_login(
    store: SqliteAccountStore, tmp_path: Path
) -> None:
    """Before: after accounts.scram_iterations was raised, an account's keys kept the
    old count until its password changed, while unknown names announced the new one:
    a prober told accounts from unknown names by the count. A good PLAIN login now
    makes the keys again with the new count and the same salt."""
    before = await make_service(store, tmp_path).resolve(
        LookupScram(ALICE, "sha256", "SCRAM-SHA-256"), CTX)
    assert isinstance(before, ScramCredentials) and before.iterations == 4096
    raised = AccountsConfig(argon2_memory_kib=8192, argon2_time_cost=1, argon2_parallelism=1,
                            scram_iterations=8192)
    svc = make_service(store, tmp_path, cfg=raised)
    assert (await login(svc, ALICE)).ok
    await svc.flush()
    for hash_name, mechanism in (("sha256", "SCRAM-SHA-256"), ("sha1", "SCRAM-SHA-1")):
        after = await svc.resolve(LookupScram(ALICE, hash_name, mechanism), CTX)
        assert isinstance(after, ScramCredentials) and after.iterations == 8192
        assert after == scram_credentials_from_password("pencil", hash_name, 8192, after.salt)
    after = await svc.resolve(LookupScram(ALICE, "sha256", "SCRAM-SHA-256"), CTX)
    assert isinstance(after, ScramCredentials) and after.salt == before.salt
    assert svc.stats.upgrades == 1
    svc._cache.clear()  # keys at the count asked: nothing more at the next miss
    assert (await login(svc, ALICE)).ok
    await svc.flush()
    assert svc.stats.upgrades == 1
    await svc.close()


async def test_weak_argon2_hash_rehashed_at_login(
    store: SqliteAccountStore, tmp_path: Path, admin: AccountAdmin
) -> None:
    stronger = CFG.model_copy(update={"argon2_time_cost": 2})
    svc = make_service(store, tmp_path, cfg=stronger)
    try:
        assert "t=1" in (store.get_credential(ALICE, ARGON2ID) or "")
        assert (await login(svc)).ok
        await svc.flush()
        assert "t=2" in (store.get_credential(ALICE, ARGON2ID) or "")
        svc._cache.clear()
        assert (await login(svc)).ok
    finally:
        await svc.close()


async def test_cram_md5_lookup(svc: AuthService, admin: AccountAdmin) -> None:
    assert await svc.resolve(LookupCramMd5(ALICE), CTX) == NotFound(
        reason="cram-md5 not enabled for account"
    )
    admin.add_account("legacy@example.org", "pencil", cram_md5_enabled=True)
    s = await svc.resolve(LookupCramMd5("legacy@example.org"), CTX)
    assert isinstance(s, CramMd5Secret) and len(s.inner) == 16
    assert await svc.resolve(LookupCramMd5("x@example.org"), CTX) == NotFound()


async def test_a_cram_md5_guess_at_no_account_is_counted_as_one_at_an_account_not_opted_in(
    svc: AuthService, admin: AccountAdmin
) -> None:
    """The guard counts an attempt toward the account's lockout when its
    resolution notes no refusal. An account not opted in to CRAM-MD5 (the
    default) is a policy refusal, counted toward the address only; a name of no
    account was counted toward its lockout, so with CRAM-MD5 offered the
    eleventh CRAM-MD5 try at a made-up name got 454 and at any real account 535
    (seen against smtpgate serve): which names exist could be read off the
    replies. Both are now counted alike; an opted-in account's wrong digest
    still counts toward its lockout."""
    ghost = await svc.resolve_detailed(LookupCramMd5("ghost@example.org"), CTX)
    real = await svc.resolve_detailed(LookupCramMd5(ALICE), CTX)
    assert isinstance(ghost.answer, NotFound) and isinstance(real.answer, NotFound)
    assert ghost.answer.reason == "unknown user"  # the auth log still tells them apart
    assert ghost.refusal is not None and real.refusal is not None  # address only, both
    admin.add_account("legacy@example.org", "pencil", cram_md5_enabled=True)
    opted = await svc.resolve_detailed(LookupCramMd5("legacy@example.org"), CTX)
    assert isinstance(opted.answer, CramMd5Secret) and opted.refusal is None


async def test_cram_md5_secret_made_at_login_after_opt_in(
    svc: AuthService, admin: AccountAdmin
) -> None:
    admin.enable_cram_md5(ALICE)
    missing = await svc.resolve(LookupCramMd5(ALICE), CTX)
    assert isinstance(missing, NotFound) and "secret" in missing.reason
    assert (await login(svc)).ok
    await svc.flush()
    assert isinstance(await svc.resolve(LookupCramMd5(ALICE), CTX), CramMd5Secret)


# --- ConfirmIdentity and per-account policy --------------------------------------


async def test_confirm_identity(svc: AuthService, admin: AccountAdmin) -> None:
    ok = await svc.resolve(ConfirmIdentity("alice@Example.org", "SCRAM-SHA-256"), CTX)
    assert ok == Verdict(ok=True, identity=ALICE)
    await svc.flush()
    a = admin.get_account(ALICE)
    assert a is not None and a.last_mechanism == "SCRAM-SHA-256"
    admin.lock(ALICE, "x")
    assert await svc.resolve(ConfirmIdentity(ALICE, "SCRAM-SHA-256"), CTX) == Verdict(
        ok=False, reason="account locked: x"
    )
    assert await svc.resolve(ConfirmIdentity("x@example.org", "CRAM-MD5"), CTX) == Verdict(
        ok=False, reason="unknown user"
    )


async def test_locked_account_lookups_refused(svc: AuthService, admin: AccountAdmin) -> None:
    admin.lock(ALICE, "x")
    assert await svc.resolve(LookupScram(ALICE, "sha256", "SCRAM-SHA-256"), CTX) == NotFound(
        reason="account locked: x", name=ALICE
    )


async def test_allowed_mechanisms_apply_to_every_query(
    svc: AuthService, admin: AccountAdmin
) -> None:
    admin.set_allowed_mechanisms(ALICE, ["SCRAM-SHA-256"])
    before = svc.stats.hash_verifications
    v = await login(svc)
    assert not v.ok and not v.temporary and "PLAIN not allowed" in v.reason
    assert svc.stats.hash_verifications == before + 1  # same work as a wrong password
    s1 = await svc.resolve(LookupScram(ALICE, "sha1", "SCRAM-SHA-1"), CTX)
    assert isinstance(s1, NotFound) and "SCRAM-SHA-1 not allowed" in s1.reason
    s256 = await svc.resolve(LookupScram(ALICE, "sha256", "SCRAM-SHA-256"), CTX)
    assert isinstance(s256, ScramCredentials)
    c = await svc.resolve(ConfirmIdentity(ALICE, "SCRAM-SHA-1"), CTX)
    assert isinstance(c, Verdict) and not c.ok
    c = await svc.resolve(ConfirmIdentity(ALICE, "SCRAM-SHA-256"), CTX)
    assert isinstance(c, Verdict) and c.ok
    cram = await svc.resolve(LookupCramMd5(ALICE), CTX)
    assert isinstance(cram, NotFound) and "CRAM-MD5 not allowed" in cram.reason


# --- OAuth tokens ----------------------------------------------------------------


@dataclass
class TokenResult:
    ok: bool
    identity: str = ""
    reason: str = ""


class SyncVerifier:
    def __init__(self, fn: Callable[[str], TokenResult]) -> None:
        self.fn = fn
        self.seen: list[str] = []

    def verify(self, token: str) -> TokenResult:
        self.seen.append(token)
        return self.fn(token)


class AsyncVerifier:
    async def verify(self, token: str) -> TokenResult:
        await asyncio.sleep(0)
        return TokenResult(token == "good", ALICE, "" if token == "good" else "expired")


def token(user: str = ALICE, tok: str = "good") -> VerifyToken:
    return VerifyToken(user, tok, "OAUTHBEARER")


async def test_token_without_verifier(svc: AuthService) -> None:
    assert await svc.resolve(token(), CTX) == Verdict(ok=False, reason="oauth not configured")


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_token_verified(store: SqliteAccountStore, tmp_path: Path, kind: str) -> None:
    verifier: object = (
        AsyncVerifier()
        if kind == "async"
        else SyncVerifier(lambda t: TokenResult(t == "good", "alice@EXAMPLE.org", "expired"))
    )
    svc = make_service(store, tmp_path, verifier)
    try:
        assert await svc.resolve(token(), CTX) == Verdict(ok=True, identity=ALICE)
        assert await svc.resolve(token(""), CTX) == Verdict(ok=True, identity=ALICE)
        assert await svc.resolve(token(tok="bad"), CTX) == Verdict(
            ok=False, reason="token rejected: expired"
        )
        v = await svc.resolve(token("bob@example.org"), CTX)
        assert isinstance(v, Verdict) and not v.ok and "differs" in v.reason
        AccountAdmin(store, CFG, actor=ACTOR).lock(ALICE, "x")
        assert await svc.resolve(token(), CTX) == Verdict(ok=False, reason="account locked: x")
    finally:
        await svc.close()


async def test_token_for_unknown_account(store: SqliteAccountStore, tmp_path: Path) -> None:
    svc = make_service(store, tmp_path, SyncVerifier(lambda t: TokenResult(True, "x@example.org")))
    try:
        assert await svc.resolve(token(""), CTX) == Verdict(ok=False, reason="unknown user")
    finally:
        await svc.close()


async def test_a_refused_good_token_says_whom_it_named(store: SqliteAccountStore,
                                                       tmp_path: Path) -> None:
    """For the auth log's user name when the client gave none (auth/login.py)."""
    named = {"ghost": "Ghost@example.org", "good": "alice@EXAMPLE.org"}
    svc = make_service(store, tmp_path, SyncVerifier(lambda t: TokenResult(True, named[t])))
    try:
        unknown = await svc.resolve_detailed(token("", "ghost"), CTX)
        assert unknown.answer == Verdict(ok=False, reason="unknown user")
        assert unknown.named_identity == "Ghost@example.org"
        differs = await svc.resolve_detailed(token("bob@example.org"), CTX)
        assert differs.named_identity == "alice@EXAMPLE.org"
        AccountAdmin(store, CFG, actor=ACTOR).lock(ALICE, "x")
        locked = await svc.resolve_detailed(token(""), CTX)
        assert locked.answer == Verdict(ok=False, reason="account locked: x")
        assert locked.named_identity == "alice@EXAMPLE.org"
    finally:
        await svc.close()


async def test_token_login_carries_its_issuer(store: SqliteAccountStore, tmp_path: Path) -> None:
    """The login attempt puts it into the Principal (auth/login.py)."""
    result = VerifiedToken(ok=True, identity=ALICE, issuer="https://id.example.org")
    svc = make_service(store, tmp_path, SyncVerifier(lambda t: result))  # type: ignore[arg-type, return-value]
    try:
        res = await svc.resolve_detailed(token(), CTX)
        assert res.answer == Verdict(ok=True, identity=ALICE)
        assert res.oauth_issuer == "https://id.example.org"
        pw = await svc.resolve_detailed(VerifyPassword(ALICE, "wrong", mechanism="PLAIN"), CTX)
        assert pw.oauth_issuer is None
    finally:
        await svc.close()


async def test_token_verifier_fault_is_temporary(store: SqliteAccountStore, tmp_path: Path) -> None:
    def boom(t: str) -> TokenResult:
        raise ConnectionError("jwks fetch failed")

    svc = make_service(store, tmp_path, SyncVerifier(boom))
    try:
        v = await svc.resolve(token(), CTX)
        assert isinstance(v, Verdict) and v.temporary and "jwks fetch failed" in v.reason
    finally:
        await svc.close()


# --- the auth log ------------------------------------------------------------------


async def test_record_writes_auth_log(
    svc: AuthService, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="smtpgate.auth"):
        svc.record(CTX, "PLAIN", "eve\r\nforged", "failure", "bad password")
    rec = json.loads((tmp_path / "auth.log").read_text("utf-8"))
    assert rec["listener"] == "submission"
    assert (rec["client_ip"], rec["client_port"], rec["tls"]) == ("192.0.2.7", 50123, "TLSv1.3")
    assert (rec["mechanism"], rec["result"], rec["reason"]) == ("PLAIN", "failure", "bad password")
    assert rec["username"] == "eve\r\nforged" and rec["session"] == "sess-1"
    assert any("auth failure" in r.getMessage() for r in caplog.records)
    with pytest.raises(ValueError):
        svc.record(CTX, "PLAIN", "x", "maybe", "")


# --- wiring from the config -------------------------------------------------------


@pytest.mark.parametrize(("log_file", "expect_file"), [("auth.log", True), ("", False)])
async def test_build_auth_service_from_config(
    tmp_path: Path, log_file: str, expect_file: bool
) -> None:
    cfg = Config.model_validate(
        {
            "listeners": [{"name": "s", "address": "127.0.0.1:0", "tls": "starttls"}],
            "accounts": CFG.model_dump(),
            "auth": {"log_file": log_file},
            "base_dir": tmp_path,
        }
    )
    svc = build_auth_service(cfg)
    try:
        assert not (await login(svc)).ok  # an empty database: unknown user
        svc.record(CTX, "PLAIN", ALICE, "failure", "unknown user")
    finally:
        await svc.close()
    assert (tmp_path / "accounts.sqlite").is_file()
    assert (tmp_path / "auth.log").is_file() == expect_file


def test_verifier_without_verify_method_refused(store: SqliteAccountStore, tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        make_service(store, tmp_path, verifier=object())
    store.close()


async def test_close_during_login_answers_temporary(
    store: SqliteAccountStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    svc = make_service(store, tmp_path, cfg=CFG.model_copy(update={"cache_ttl": 0}))
    # Distinct passwords, so that 30 Argon2 runs queue (identical attempts share one).
    logins = [asyncio.ensure_future(login(svc, pw=f"guess {i}")) for i in range(30)]
    await asyncio.sleep(0.01)
    with caplog.at_level(logging.WARNING):
        await svc.close()
        results = await asyncio.gather(*logins)
    assert all(not v.ok for v in results)
    assert any(v.temporary for v in results)  # queued hashes were dropped, not raised
    assert not [r for r in caplog.records if r.exc_info]  # and no "internal error"


async def test_cancelled_caller_is_cancelled(svc: AuthService) -> None:
    task = asyncio.ensure_future(login(svc))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_concurrent_identical_logins_share_one_argon2_run(svc: AuthService) -> None:
    """A client opening several connections at once with a cold cache costs one
    Argon2 verification, not one per connection; a different password does not
    share it."""
    verdicts = await asyncio.gather(*[login(svc) for _ in range(6)], login(svc, pw="wrong"))
    assert [v.ok for v in verdicts] == [True] * 6 + [False]
    assert svc.stats.hash_verifications == 2  # one per distinct (account, password)


# --- an open session's account read again ([auth] session_recheck) ------------------


def _login_time() -> datetime:
    return datetime.now(UTC)


async def test_session_refusal_ends_what_a_login_now_would_not_get(
    svc: AuthService, admin: AccountAdmin
) -> None:
    from smtpgate.admin import RestrictNetworks
    from smtpgate.auth.principal import Principal

    who = Principal(ALICE, "PLAIN")
    since = _login_time()
    reason, profile = await svc.session_refusal(who, CTX, since)
    assert reason is None and profile is not None and profile.name == ALICE
    admin.change_access(ALICE, [RestrictNetworks(("198.51.100.0/24",))])
    reason, profile = await svc.session_refusal(who, CTX, since)
    assert reason is not None and "192.0.2.7 not in the account's networks" in reason
    assert profile is None
    admin.change_access(ALICE, [RestrictNetworks(("192.0.2.0/24",))])
    assert (await svc.session_refusal(who, CTX, since))[0] is None
    admin.lock(ALICE, "compromised")
    assert (await svc.session_refusal(who, CTX, since)) == ("account locked: compromised", None)
    admin.remove_account(ALICE)
    assert (await svc.session_refusal(who, CTX, since)) == ("account removed", None)


async def test_session_refusal_password_change_ends_only_logins_with_that_password(
    svc: AuthService, admin: AccountAdmin
) -> None:
    from smtpgate.auth.principal import AppPasswordUse, Principal

    phone, _ = admin.add_app_password(ALICE, "phone")
    since = _login_time()
    await asyncio.sleep(0.01)  # the change comes after the login
    admin.set_password(ALICE, "new-Pencil-123")
    for mechanism in ("PLAIN", "LOGIN", "SCRAM-SHA-256", "CRAM-MD5"):
        reason, _ = await svc.session_refusal(Principal(ALICE, mechanism), CTX, since)
        assert reason == "password changed"
    # Logged in after the change: the new password.
    assert (await svc.session_refusal(Principal(ALICE, "PLAIN"), CTX, _login_time()))[0] is None
    # An app password, a token or a certificate was not the password that changed.
    for who in (
        Principal(ALICE, "PLAIN", app_password=AppPasswordUse(phone.id, "phone")),
        Principal(ALICE, "XOAUTH2", oauth_issuer="https://idp.example"),
        Principal(ALICE, "EXTERNAL"),
    ):
        assert (await svc.session_refusal(who, CTX, since))[0] is None


async def test_session_refusal_an_expired_password_ends_the_session(
    svc: AuthService, admin: AccountAdmin
) -> None:
    from smtpgate.auth.principal import Principal

    admin.schedule_password_expiry(ALICE, datetime.now(UTC))
    reason, _ = await svc.session_refusal(Principal(ALICE, "PLAIN"), CTX, _login_time())
    assert reason is not None and reason.startswith("password expired at")


async def test_session_refusal_an_app_password_revoked_or_fenced_off_ends_its_sessions(
    svc: AuthService, admin: AccountAdmin
) -> None:
    from smtpgate.auth.principal import AppPasswordUse, Principal

    phone, _ = admin.add_app_password(ALICE, "phone")
    laptop, _ = admin.add_app_password(ALICE, "laptop", networks=["198.51.100.0/24"])
    since = _login_time()
    on_phone = Principal(ALICE, "PLAIN", app_password=AppPasswordUse(phone.id, "phone"))
    on_laptop = Principal(ALICE, "PLAIN", app_password=AppPasswordUse(laptop.id, "laptop"))
    assert (await svc.session_refusal(on_phone, CTX, since))[0] is None
    assert (await svc.session_refusal(on_laptop, CTX, since)) == (
        "app password 'laptop' not allowed from 192.0.2.7", None)
    assert admin.revoke_app_password(ALICE, "phone")
    assert (await svc.session_refusal(on_phone, CTX, since)) == (
        "app password 'phone' revoked", None)
    # The account's own password sessions are not the app password's.
    assert (await svc.session_refusal(Principal(ALICE, "PLAIN"), CTX, since))[0] is None


async def test_a_password_with_a_non_breaking_space_logs_in_as_scram_derives_it(
    svc: AuthService, admin: AccountAdmin
) -> None:
    """RFC 4616 §2 / RFC 5802 §2.2: PLAIN and LOGIN prepare the password with
    SASLprep, as SCRAM's keys are made, so U+00A0 and a space are one password."""
    admin.set_password(ALICE, "pass\u00a0word")
    assert (await login(svc, pw="pass word")).ok
    assert (await login(svc, pw="pass\u00a0word", mechanism="LOGIN")).ok
    c = await svc.resolve(LookupScram(ALICE, "sha256", "SCRAM-SHA-256"), CTX)
    assert isinstance(c, ScramCredentials)
    assert c == scram_credentials_from_password("pass word", "sha256", c.iterations, c.salt)


async def test_a_hash_made_over_the_password_as_typed_logs_in_and_is_made_again_prepared(
    svc: AuthService, admin: AccountAdmin, store: SqliteAccountStore
) -> None:
    """A hash stored before passwords were prepared (over "café" in NFD, as typed)
    still logs in with that form, and the login re-hashes it over the prepared form,
    after which the NFC spelling logs in too."""
    nfd, nfc = "cafe\u0301", "caf\u00e9"
    old = admin.add_account("old@example.org", None)
    raw = argon2.PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1).hash(nfd)
    store.put_credentials(old.name, {ARGON2ID: raw}, generation=old.generation)
    assert not (await login(svc, old.name, nfc)).ok
    assert (await login(svc, old.name, nfd)).ok
    await svc.flush()
    assert store.get_credential(old.name, ARGON2ID) != raw
    svc._cache.clear()
    assert (await login(svc, old.name, nfc)).ok


async def test_a_user_name_in_another_unicode_form_finds_the_account(
    svc: AuthService, admin: AccountAdmin, store: SqliteAccountStore
) -> None:
    """RFC 4616 §2: PLAIN's authcid is SASLprep'd, as SCRAM's user name is: "josé"
    sent in NFD logs in to the account made in NFC, under the account's spelling."""
    nfc, nfd = "jos\u00e9@example.org", "jose\u0301@example.org"
    admin.add_account(nfc, "pencil")
    assert await login(svc, nfd) == Verdict(ok=True, identity=nfc)
    assert await login(svc, nfd, mechanism="LOGIN") == Verdict(ok=True, identity=nfc)
    assert not (await login(svc, nfd, "wrong")).ok
    assert (await login(svc, nfd, authzid=nfd)).ok  # the same name as authzid
    assert not (await login(svc, nfd, authzid=ALICE)).ok
    c = await svc.resolve(LookupScram(nfc, "sha256", "SCRAM-SHA-256"), CTX)
    assert isinstance(c, ScramCredentials)
    # Every spelling that logs in to the account shares its guard count.
    fullwidth = "\uff4a\uff4f\uff53\u00e9@example.org"  # ｊｏｓé: NFKC gives josé
    assert (await login(svc, fullwidth)).ok
    for spelling in (nfc, nfd, fullwidth):
        assert await svc.login_identity(spelling) == nfc
    # A name SASLprep would change still logs in by its own spelling. `user add`
    # refuses to make one (SCRAM clients would send "file@..."), but a database
    # written before, or by another tool, may hold one.
    odd = "\ufb01le@example.org"  # the "fi" ligature: SASLprep makes it "file@..."
    with store.transaction(ACTOR) as w:
        w.create_account(odd, {})
    admin.set_password(odd, "pencil")
    assert await login(svc, odd) == Verdict(ok=True, identity=odd)


# --- authzid through the real mechanisms -------------------------------------------


async def _drive(svc: AuthService, mech: Any, client: Any) -> object:
    """Run a server mechanism against our client, its queries answered by ``svc``."""
    step = mech.start(client.start())
    while True:
        if isinstance(step, NeedCredentials):
            step = mech.answer(await svc.resolve(step.query, CTX))
        elif isinstance(step, Challenge):
            step = mech.step(client.step(step.data))
        else:
            return step


@pytest.mark.parametrize("authzid", [
    "Alice@example.org", "alice@EXAMPLE.ORG", "ALICE@Example.Org", ALICE,
])
async def test_authzid_in_another_spelling_of_the_name_logs_in(
    svc: AuthService, authzid: str
) -> None:
    """The login name has no letter case (auth/names.py), so an authzid that spells
    the account's name otherwise is the account itself, through PLAIN and SCRAM
    (the mechanisms compared the strings and refused it)."""
    plain = await _drive(svc, PlainServer(), PlainClient(ALICE, "pencil", authzid))
    assert plain == Success(identity=ALICE, authzid=authzid)
    scram = await _drive(
        svc, ScramSha256Server(), ScramClient("sha256", ALICE, "pencil", authzid=authzid))
    assert isinstance(scram, Success) and scram.identity == ALICE
    other = await _drive(
        svc, ScramSha256Server(), ScramClient("sha256", ALICE, "pencil", authzid="bob@example.org"))
    assert isinstance(other, Failure) and other.reason == "authorization identity differs from account"
    other = await _drive(svc, PlainServer(), PlainClient(ALICE, "pencil", "bob@example.org"))
    assert isinstance(other, Failure) and other.reason == "authorization identity differs from account"


async def test_authzid_in_nfd_logs_in_through_plain_and_scram(
    svc: AuthService, admin: AccountAdmin
) -> None:
    """An authzid in NFD names the account made in NFC, as the user name does."""
    nfc, nfd = "jos\u00e9@example.org", "jose\u0301@Example.org"
    admin.add_account(nfc, "pencil")
    plain = await _drive(svc, PlainServer(), PlainClient(nfc, "pencil", nfd))
    assert isinstance(plain, Success) and plain.identity == nfc
    scram = await _drive(
        svc, ScramSha256Server(), ScramClient("sha256", nfc, "pencil", authzid=nfd))
    assert isinstance(scram, Success) and scram.identity == nfc


@pytest.mark.parametrize("spelling", [
    "\uff41\uff4c\uff49\uff43\uff45@example.org", "ali\u00adce@example.org", "ALICE@example.org",
])
async def test_cram_md5_finds_the_account_by_every_spelling_plain_does(
    svc: AuthService, admin: AccountAdmin, spelling: str
) -> None:
    """CRAM-MD5 sends the name as typed, as PLAIN does: ``ａｌｉｃｅ`` in full-width
    letters found alice's secret, then "unknown user" at the confirmation (535),
    where PLAIN and SCRAM logged in."""
    admin.enable_cram_md5(ALICE, "pencil")
    plain = await _drive(svc, PlainServer(), PlainClient(spelling, "pencil"))
    assert isinstance(plain, Success) and plain.identity == ALICE
    cram = await _drive(svc, CramMd5Server(), CramMd5Client(spelling, "pencil"))
    assert isinstance(cram, Success) and cram.identity == ALICE, cram
    wrong = await _drive(svc, CramMd5Server(), CramMd5Client(spelling, "crayon"))
    assert isinstance(wrong, Failure)


class _BindOnly(Forwarding):
    """A bind-only directory (LDAP's shape): no hash, it checks the password itself,
    octet for octet, as a directory's simple bind compares what it stores."""

    verifies_passwords = True

    def __init__(self, inner: Any, password: str) -> None:
        super().__init__(inner)
        self.password = password
        self.binds: list[str] = []

    def verify_password(self, name: str, password: str) -> bool:
        self.binds.append(password)
        return password == self.password


async def test_a_bind_only_directory_gets_the_password_as_sent_once(
    store: SqliteAccountStore, admin: AccountAdmin, tmp_path: Path
) -> None:
    """docs/directories.md: the directory prepares what it stores its own way, so
    it is asked once, with the password as sent; a second bind with the prepared
    form would count one wrong password twice in its lockout policy."""
    admin.add_account("dir@example.org", None)
    directory = _BindOnly(store, "pass\u00a0word")
    svc = make_service(directory, tmp_path)
    try:
        assert not (await login(svc, "dir@example.org", "pass word")).ok
        assert directory.binds == ["pass word"]
        assert (await login(svc, "dir@example.org", "pass\u00a0word")).ok
        assert directory.binds == ["pass word", "pass\u00a0word"]
    finally:
        await svc.close()


async def test_a_grant_does_not_cover_a_subaddress_of_another_accounts_address(
    store: SqliteAccountStore, admin: AccountAdmin, tmp_path: Path
) -> None:
    # bob+news@ is shown as bob; Postfix with recipient_delimiter = + finds bob's
    # entry before the domain's (docs/policy.md, "Sender ownership").
    admin.add_account("bob@example.org", "crayon")
    admin.add_alias("bob@example.org", "sales@example.org")
    svc = make_service(store, tmp_path)
    try:
        asked = ["bob+news@example.org", "sales+x@example.org", "alice+x@example.org",
                 "noreply+x@example.org", "bob@example.org"]
        taken = await svc.others_addresses(ALICE, asked)
        assert taken == ["bob+news@example.org", "sales+x@example.org", "bob@example.org"]
    finally:
        await svc.close()
