"""The auth service's account policy: conditional access, expiry, app passwords,
refusal classes for the guard, sender profiles; and the rate limiter."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from smtpgate.admin import (
    AccountAdmin,
    AnyListener,
    AnyNetwork,
    MessageRate,
    RequireOAuth,
    RestrictListeners,
    RestrictNetworks,
)
from smtpgate.auth.authlog import AuthLog
from smtpgate.auth.sender_profile import SenderProfile
from smtpgate.auth.service import (
    REFUSED_EXPIRED,
    REFUSED_LOCKED,
    REFUSED_POLICY,
    AuthContext,
    AuthService,
    Resolution,
)
from smtpgate.auth.store import AccountExists, AuditActor, SqliteAccountStore
from smtpgate.config import AccountsConfig, AuthConfig, LimitsConfig, PasswordsConfig
from smtpgate.policy.rates import RateLimiter
from smtpgate.policy.sqlite_counters import SqliteRateCounters
from smtpgate.sasl.base import (
    ConfirmIdentity,
    LookupScram,
    NotFound,
    ScramCredentials,
    Verdict,
    VerifyPassword,
)
from tests.unit.patient_state import PATIENT_STATE

CFG = AccountsConfig(argon2_memory_kib=8192, argon2_time_cost=1, argon2_parallelism=1,
                     scram_iterations=4096)
ALICE = "alice@example.org"


def ctx(ip: str = "192.0.2.7", listener: str = "submission") -> AuthContext:
    return AuthContext(listener, ip, 5000, "TLSv1.3", "s")


@pytest.fixture
def store(tmp_path: Path) -> SqliteAccountStore:
    s = SqliteAccountStore(tmp_path / "a.sqlite", CFG)
    AccountAdmin(s, CFG, actor=AuditActor("ops", "pytest")).add_account(ALICE, "pencil")
    return s


@pytest.fixture
def admin(store: SqliteAccountStore) -> AccountAdmin:
    return AccountAdmin(store, CFG, actor=AuditActor("ops", "pytest"))


@pytest.fixture
async def svc(store: SqliteAccountStore, tmp_path: Path) -> AsyncIterator[AuthService]:
    s = AuthService(store, CFG, AuthConfig(), AuthLog(tmp_path / "auth.log"),
                    passwords_cfg=PasswordsConfig(max_age_days=30))
    yield s
    await s.close()


async def plain(svc: AuthService, pw: str = "pencil", c: AuthContext | None = None,
                mech: str = "PLAIN") -> Resolution:
    return await svc.resolve_detailed(VerifyPassword(ALICE, pw, mechanism=mech), c or ctx())


async def test_networks_listeners_and_require_oauth(svc: AuthService, store: SqliteAccountStore, admin: AccountAdmin) -> None:
    admin.change_access(ALICE, [RestrictNetworks(("192.0.2.0/24", "2001:db8::/32"))])
    assert (await plain(svc)).answer == Verdict(ok=True, identity=ALICE)
    assert (await plain(svc, c=ctx("2001:db8::5"))).answer.ok  # type: ignore[union-attr]
    r = await plain(svc, c=ctx("198.51.100.1"))
    assert r.refusal == REFUSED_POLICY
    assert r.answer == Verdict(ok=False, reason="access policy: address 198.51.100.1 not in the account's networks")
    # The password is not even checked: a wrong one gets the same answer.
    assert (await plain(svc, "wrong", c=ctx("198.51.100.1"))).answer == r.answer
    admin.change_access(ALICE, [AnyNetwork(), RestrictListeners(("submission",))])
    assert (await plain(svc, c=ctx(listener="submissions"))).refusal == REFUSED_POLICY
    admin.change_access(ALICE, [AnyListener(), RequireOAuth(True)])
    r = await plain(svc)
    assert r.refusal == REFUSED_POLICY and "requires OAuth" in r.answer.reason  # type: ignore[union-attr]
    r = await svc.resolve_detailed(LookupScram(ALICE, "sha256", "SCRAM-SHA-256"), ctx())
    assert isinstance(r.answer, NotFound) and r.refusal == REFUSED_POLICY


async def test_expired_password_refused_for_plain_and_scram(svc: AuthService, store: SqliteAccountStore, admin: AccountAdmin) -> None:
    admin.schedule_password_expiry(ALICE, datetime.now(UTC) - timedelta(seconds=1))
    r = await plain(svc)
    assert r.refusal == REFUSED_EXPIRED and r.answer.reason.startswith("password expired at ")  # type: ignore[union-attr]
    r = await svc.resolve_detailed(LookupScram(ALICE, "sha256", "SCRAM-SHA-256"), ctx())
    assert r.refusal == REFUSED_EXPIRED and isinstance(r.answer, NotFound)
    admin.set_password(ALICE, "pencil2")
    assert (await plain(svc, "pencil2")).answer.ok  # type: ignore[union-attr]
    r2 = await svc.resolve_detailed(LookupScram(ALICE, "sha256", "SCRAM-SHA-256"), ctx())
    assert isinstance(r2.answer, ScramCredentials)


async def test_global_max_age(svc: AuthService, store: SqliteAccountStore, admin: AccountAdmin) -> None:
    store._conn().execute("UPDATE accounts SET password_changed = '2000-01-01T00:00:00.000000Z'")
    assert (await plain(svc)).refusal == REFUSED_EXPIRED
    admin.set_password_max_age(ALICE, 0)  # this account: never
    assert (await plain(svc)).answer.ok  # type: ignore[union-attr]


async def test_admin_lock_is_its_own_class(svc: AuthService, store: SqliteAccountStore, admin: AccountAdmin) -> None:
    admin.lock(ALICE, "phished")
    assert (await plain(svc)).refusal == REFUSED_LOCKED
    r = await svc.resolve_detailed(ConfirmIdentity(ALICE, "SCRAM-SHA-256"), ctx())
    assert r.refusal == REFUSED_LOCKED


async def test_wrong_password_has_no_refusal_class(svc: AuthService) -> None:
    r = await plain(svc, "wrong")
    assert r.refusal is None and r.answer == Verdict(ok=False, reason="bad password")


async def test_app_password_login_scope_and_expiry(svc: AuthService, store: SqliteAccountStore, admin: AccountAdmin) -> None:
    rec, secret = admin.add_app_password(ALICE, "laptop", networks=["192.0.2.0/24"], mechanisms=["LOGIN"])
    r = await plain(svc, secret, mech="LOGIN")
    assert r.answer == Verdict(ok=True, identity=ALICE) and r.app_password == rec
    r = await plain(svc, secret, mech="PLAIN")
    assert r.refusal == REFUSED_POLICY and "not allowed with PLAIN" in r.answer.reason  # type: ignore[union-attr]
    r = await plain(svc, secret, c=ctx("198.51.100.1"), mech="LOGIN")
    assert r.refusal == REFUSED_POLICY
    # An app password keeps working when the account password has expired.
    admin.schedule_password_expiry(ALICE, datetime.now(UTC) - timedelta(seconds=1))
    assert (await plain(svc, secret, mech="LOGIN")).answer.ok  # type: ignore[union-attr]
    admin.expire_app_password(ALICE, "laptop", datetime.now(UTC) - timedelta(seconds=1))
    r = await plain(svc, secret, mech="LOGIN")
    assert r.refusal == REFUSED_EXPIRED and r.answer.reason == "app password 'laptop' expired"  # type: ignore[union-attr]
    await svc.flush()
    assert store.app_passwords(ALICE)[0].last_address == "192.0.2.7"


async def test_access_refusal_applies_password_age_as_auth_would(
        svc: AuthService, admin: AccountAdmin) -> None:
    """The Postfix policy service's check (access_refusal) left out the password's
    age. An expired password refuses a password mechanism; a token or certificate
    is no password; after PLAIN or LOGIN an app password the login may have used
    lets it through (the MTA does not say which password it took)."""
    assert await svc.access_refusal(ALICE, "PLAIN", ctx()) is None
    admin.schedule_password_expiry(ALICE, datetime.now(UTC) - timedelta(seconds=1))
    for mech in ("PLAIN", "LOGIN", "SCRAM-SHA-256", "CRAM-MD5"):
        refusal = await svc.access_refusal(ALICE, mech, ctx())
        assert refusal is not None and refusal.startswith("password expired at "), mech
    assert await svc.access_refusal(ALICE, "OAUTHBEARER", ctx()) is None
    assert await svc.access_refusal(ALICE, "EXTERNAL", ctx()) is None
    admin.add_app_password(ALICE, "phone", networks=["192.0.2.0/24"], mechanisms=["LOGIN"])
    assert await svc.access_refusal(ALICE, "LOGIN", ctx()) is None
    for mech, ip in (("PLAIN", "192.0.2.7"), ("LOGIN", "198.51.100.1"), ("SCRAM-SHA-256", "192.0.2.7")):
        assert await svc.access_refusal(ALICE, mech, ctx(ip)) is not None, (mech, ip)
    admin.expire_app_password(ALICE, "phone", datetime.now(UTC) - timedelta(seconds=1))
    assert await svc.access_refusal(ALICE, "LOGIN", ctx()) is not None


async def test_sender_profile(svc: AuthService, store: SqliteAccountStore, admin: AccountAdmin) -> None:
    admin.add_alias(ALICE, "info@example.org")
    admin.grant_domain(ALICE, "example.net")
    admin.change_limits(ALICE, [MessageRate(7)])
    p = await svc.sender_profile(ALICE)
    assert p == SenderProfile(ALICE, frozenset({"info@example.org"}), frozenset({"example.net"}), 7, None)


class Clock:
    now = 3_600_000.0

    def __call__(self) -> float:
        return self.now


async def test_rate_limiter_budget_sliding_hour_and_app_limits(tmp_path: Path) -> None:
    clock = Clock()
    rates = RateLimiter(SqliteRateCounters(tmp_path / "g.sqlite"),
                        LimitsConfig(messages_per_hour=3, recipients_per_hour=10), clock=clock,
                        store_timeout=PATIENT_STATE.timeout)
    try:
        profile = SenderProfile(ALICE)
        b = await rates.budget(profile, None)
        assert (b.messages_left, b.recipients_left, b.keys) == (3, 10, (f"acct:{ALICE}",))
        await rates.count(b.keys, 1, 4)
        clock.now += 1800
        await rates.count(b.keys, 1, 4)
        b = await rates.budget(profile, None)
        assert (b.messages_left, b.recipients_left) == (1, 2)
        clock.now += 1800 + 60  # the first message left the window
        b = await rates.budget(profile, None)
        assert (b.messages_left, b.recipients_left) == (2, 6)
        # An account override of 0 is unlimited; an app password's own limit applies.
        from smtpgate.auth.store import AppPassword

        app = AppPassword(9, ALICE, "x", datetime.now(UTC), None, None, None, 1, None, None, None)
        b = await rates.budget(SenderProfile(ALICE, max_messages_per_hour=0, max_recipients_per_hour=0), app)
        assert (b.messages_left, b.recipients_left) == (1, None)
        b = await rates.budget(SenderProfile(ALICE, max_messages_per_hour=0, max_recipients_per_hour=0), None)
        assert (b.messages_left, b.recipients_left) == (None, None)
    finally:
        await rates.close()


async def test_an_alias_that_became_another_account_is_not_owned(
    svc: AuthService, admin: AccountAdmin, store: SqliteAccountStore
) -> None:
    """Found by audit B: ``user alias add alice sales@...`` then ``user add
    sales@...`` let alice send as the new account (MAIL FROM and From:). ``user
    add`` now refuses that order (test_policy_store.py); a database written before,
    or a directory entry made behind smtpgate's back, can still hold both."""
    admin.add_alias(ALICE, "sales@example.org")
    admin.add_alias(ALICE, "info@example.org")
    with pytest.raises(AccountExists, match="is an alias of"):
        admin.add_account("sales@example.org", "crayon")
    store._conn().execute("UPDATE aliases SET address = 'tmp@example.org' "
                          "WHERE address = 'sales@example.org'")
    admin.add_account("sales@example.org", "crayon")
    store._conn().execute("UPDATE aliases SET address = 'sales@example.org' "
                          "WHERE address = 'tmp@example.org'")
    p = await svc.sender_profile(ALICE)
    assert not p.owns("sales@example.org")
    assert p.owns("info@example.org") and p.owns(ALICE)
    assert (await svc.sender_profile("sales@example.org")).owns("sales@example.org")
