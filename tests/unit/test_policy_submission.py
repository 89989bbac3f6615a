"""A session's sending policy from its principal: ownership, budgets, the app password's
own counter, and the directory fault."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from smtpgate.auth.directory import StoreUnavailable
from smtpgate.auth.principal import AppPasswordUse, Principal
from smtpgate.auth.sender_profile import SenderProfile
from smtpgate.config import LimitsConfig, PolicyConfig
from smtpgate.policy.rates import Held, RateLimiter
from smtpgate.policy.sqlite_counters import SqliteRateCounters
from smtpgate.policy.submission import Sending, needs_lookup
from smtpgate.smtp import replies as R
from tests.unit.patient_state import PATIENT_STATE

ALICE = "alice@example.org"
PHONE = AppPasswordUse(9, "phone", max_messages_per_hour=1, max_recipients_per_hour=2)


@dataclass
class Profiles:
    fail: bool = False
    asked: list[str] = field(default_factory=list)

    async def sender_profile(self, identity: str) -> SenderProfile:
        self.asked.append(identity)
        if self.fail:
            raise StoreUnavailable("database is locked")
        return SenderProfile(identity, aliases=frozenset({"info@example.org"}))


@pytest.fixture
async def rates(tmp_path: Path) -> AsyncIterator[RateLimiter]:
    limiter = RateLimiter(SqliteRateCounters(tmp_path / "g.sqlite"),
                          LimitsConfig(messages_per_hour=100, recipients_per_hour=100),
                          store_timeout=PATIENT_STATE.timeout)
    yield limiter
    await limiter.close()


def sending(profiles: Profiles, app: AppPasswordUse | None = None) -> Sending:
    return Sending(Principal(ALICE, "PLAIN", app_password=app), profiles,
                   session_id="s1", client_ip="192.0.2.7")


async def test_ownership_is_checked_with_the_principals_profile_read_once() -> None:
    profiles = Profiles()
    s = sending(profiles)
    policy = PolicyConfig()
    assert await s.mail("info@example.org", policy, None) is None
    assert await s.mail("mallory@example.org", policy, None) == R.SENDER_NOT_OWNED
    assert await s.mail("", policy, None) is None  # the null sender, allowed by default
    assert profiles.asked == [ALICE]
    assert s.message(b"From: mallory@example.org\r\n\r\nx", policy) == R.FROM_NOT_OWNED
    assert s.message(b"From: <alice@example.org>\r\n\r\nx", policy) is None
    logged_only = PolicyConfig(sender_ownership="log")
    assert await s.mail("mallory@example.org", logged_only, None) is None


async def test_a_directory_fault_refuses_mail_for_now(caplog: pytest.LogCaptureFixture) -> None:
    """An unreachable account database is said to be one (451 4.4.3, RFC 3463
    X.4.3), not a software fault (4.3.0 Internal error)."""
    reply = await sending(Profiles(fail=True)).mail(ALICE, PolicyConfig(), None)
    assert reply == R.ACCOUNTS_UNAVAILABLE
    assert reply.format() == b"451 4.4.3 Account database unavailable, try again later\r\n"
    assert "sending policy unavailable: database is locked" in caplog.text


async def test_the_app_password_of_the_principal_has_its_own_budget(rates: RateLimiter) -> None:
    s = sending(Profiles(), PHONE)
    policy = PolicyConfig()
    assert await s.mail(ALICE, policy, rates) is None
    assert s.budget is not None and f"app:{PHONE.id}" in s.budget.keys
    assert s.rcpt() is None and s.rcpt() is None
    assert s.rcpt() == R.APP_RECIPIENT_RATE_EXCEEDED  # the app password's 2 recipients
    counting = s.count(rates, 2)
    assert counting is not None
    await counting
    assert await s.mail(ALICE, policy, rates) == R.APP_MESSAGE_RATE_EXCEEDED  # its 1 message
    # The same account logged in with its password is not held by the app's counter.
    assert await sending(Profiles()).mail(ALICE, policy, rates) is None


def test_mail_needs_no_look_up_when_every_check_is_off() -> None:
    off = PolicyConfig(sender_ownership="off", from_header="off")
    assert not needs_lookup(off, None)
    assert needs_lookup(PolicyConfig(), None)


async def test_mail_is_answered_without_io_only_when_nothing_needs_a_read(
    tmp_path: Path,
) -> None:
    policy = PolicyConfig()
    unlimited = RateLimiter(SqliteRateCounters(tmp_path / "u.sqlite"),
                            LimitsConfig(messages_per_hour=0, recipients_per_hour=0),
                            store_timeout=PATIENT_STATE.timeout)
    limited = RateLimiter(SqliteRateCounters(tmp_path / "l.sqlite"),
                          LimitsConfig(messages_per_hour=1, recipients_per_hour=0),
                          store_timeout=PATIENT_STATE.timeout)
    try:
        s = sending(Profiles())
        assert not s.answers_now(unlimited)  # the profile is not read yet
        assert await s.mail(ALICE, policy, unlimited) is None
        assert s.answers_now(unlimited) and s.answers_now(None)
        # The same verdicts as `mail`: ownership refused, owned accepted with a budget
        # that counts but limits nothing.
        assert s.mail_now("mallory@example.org", policy, unlimited) == R.SENDER_NOT_OWNED
        assert s.budget is None
        assert s.mail_now("info@example.org", policy, unlimited) is None
        assert s.budget is not None and s.budget.messages_left is None
        assert s.budget.keys == (f"acct:{ALICE}",)
        # A limit means a read of the counters at every MAIL: never answered at once.
        assert not s.answers_now(limited)
        # An app password with its own limit also needs the read.
        app = sending(Profiles(), PHONE)
        await app.mail(ALICE, policy, unlimited)
        assert not app.answers_now(unlimited)
    finally:
        await unlimited.close()
        await limited.close()


async def test_a_profile_the_login_read_is_used_without_asking_again() -> None:
    profiles = Profiles()
    read_at_login = SenderProfile(ALICE, aliases=frozenset({"sales@example.org"}))
    s = Sending(Principal(ALICE, "PLAIN"), profiles, session_id="s1", client_ip="192.0.2.7",
                profile=read_at_login)
    policy = PolicyConfig()
    assert s.answers_now(None)
    assert await s.mail("sales@example.org", policy, None) is None
    assert await s.mail("info@example.org", policy, None) == R.SENDER_NOT_OWNED
    assert s.mail_now("mallory@example.org", policy, None) == R.SENDER_NOT_OWNED
    assert profiles.asked == []


async def test_recheck_is_due_after_the_interval_and_replaces_the_profile() -> None:
    profiles = Profiles()
    s = sending(profiles)
    assert s.recheck_due(0.0)  # 0: at every MAIL
    assert not s.recheck_due(3600.0)
    policy = PolicyConfig()
    assert await s.mail("info@example.org", policy, None) is None
    s.rechecked(SenderProfile(ALICE, aliases=frozenset({"sales@example.org"})))
    assert not s.recheck_due(3600.0)
    # The profile read again is the one MAIL now checks, without another read.
    assert await s.mail("sales@example.org", policy, None) is None
    assert await s.mail("info@example.org", policy, None) == R.SENDER_NOT_OWNED
    s.rechecked(None)  # a directory fault: the held profile stays
    assert await s.mail("sales@example.org", policy, None) is None
    assert profiles.asked == [ALICE]


async def test_messages_ending_at_once_are_reserved_within_the_limit(tmp_path: Path) -> None:
    """MAIL and RCPT only read the budget, so eight sessions all pass them against a
    limit of 3; the reservation at the end of DATA takes exactly three messages, and
    one given back (its spool write failed) makes room for another."""
    limiter = RateLimiter(SqliteRateCounters(tmp_path / "g.sqlite"),
                          LimitsConfig(messages_per_hour=3, recipients_per_hour=100),
                          store_timeout=PATIENT_STATE.timeout)
    try:
        sessions = [sending(Profiles()) for _ in range(8)]
        for s in sessions:
            assert await s.mail(ALICE, PolicyConfig(), limiter) is None
            assert s.rcpt() is None
        got = await asyncio.gather(*(s.reserve(limiter, 1) for s in sessions))
        held = [g for g in got if isinstance(g, Held)]
        assert len(held) == 3
        assert got.count(R.MESSAGE_RATE_EXCEEDED) == 5
        # A reserved message is counted already: nothing more when it is stored.
        assert sessions[got.index(held[0])].count(limiter, 1, held[0]) is None
        await Sending.give_back(limiter, held[0])
        late = sending(Profiles())
        assert await late.mail(ALICE, PolicyConfig(), limiter) is None
        assert isinstance(await late.reserve(limiter, 1), Held)
        assert await sending(Profiles()).mail(ALICE, PolicyConfig(), limiter) == (
            R.MESSAGE_RATE_EXCEEDED)
    finally:
        await limiter.close()


async def test_a_refusal_names_whose_limit_it_is_the_app_passwords_or_the_accounts(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """An app password's own limit is "reached for this app password" and the log
    names it ('phone', not its row id app:9); the account's limit reached while
    logged in with an app password is still the account's (until 2026-12 both said
    "this account")."""
    limiter = RateLimiter(SqliteRateCounters(tmp_path / "g.sqlite"),
                          LimitsConfig(messages_per_hour=100, recipients_per_hour=3),
                          store_timeout=PATIENT_STATE.timeout)
    try:
        phone = sending(Profiles(), PHONE)
        assert await phone.mail(ALICE, PolicyConfig(), limiter) is None
        assert isinstance(await phone.reserve(limiter, 1), Held)
        assert await phone.mail(ALICE, PolicyConfig(), limiter) == R.APP_MESSAGE_RATE_EXCEEDED
        assert b"for this app password" in R.APP_MESSAGE_RATE_EXCEEDED.format()
        assert "message rate limit: app password 'phone' sent 1 of 1" in caplog.text
        assert "app:9" not in caplog.text
        # The account's own 3 recipients an hour, reached with an app password with
        # no message limit: the account's.
        tablet = sending(Profiles(), AppPasswordUse(10, "tablet", max_recipients_per_hour=50))
        assert await tablet.mail(ALICE, PolicyConfig(), limiter) is None
        assert tablet.rcpt() is None and tablet.rcpt() is None
        assert tablet.rcpt() == R.RECIPIENT_RATE_EXCEEDED
        assert "recipient rate limit of the account reached" in caplog.text
        assert await tablet.reserve(limiter, 3) == R.RECIPIENT_RATE_EXCEEDED
    finally:
        await limiter.close()


async def test_recipients_past_the_limit_at_the_end_of_data_are_refused(
        tmp_path: Path) -> None:
    limiter = RateLimiter(SqliteRateCounters(tmp_path / "g.sqlite"),
                          LimitsConfig(messages_per_hour=100, recipients_per_hour=4),
                          store_timeout=PATIENT_STATE.timeout)
    try:
        first, second = sending(Profiles()), sending(Profiles())
        for s in (first, second):
            assert await s.mail(ALICE, PolicyConfig(), limiter) is None
            for _ in range(3):
                assert s.rcpt() is None  # each within the 4 its MAIL read
        assert isinstance(await first.reserve(limiter, 3), Held)
        assert await second.reserve(limiter, 3) == R.RECIPIENT_RATE_EXCEEDED
    finally:
        await limiter.close()


async def test_no_limit_means_no_reservation(tmp_path: Path) -> None:
    unlimited = RateLimiter(SqliteRateCounters(tmp_path / "g.sqlite"),
                            LimitsConfig(messages_per_hour=0, recipients_per_hour=0),
                            store_timeout=PATIENT_STATE.timeout)
    try:
        s = sending(Profiles())
        assert await s.mail(ALICE, PolicyConfig(), unlimited) is None
        assert await s.reserve(unlimited, 1) is None
        assert await s.reserve(None, 1) is None
    finally:
        await unlimited.close()


@dataclass
class GrantProfiles:
    """alice is granted example.org; bob@example.org is another account's."""

    fail: bool = False
    looked_up: list[list[str]] = field(default_factory=list)

    async def sender_profile(self, identity: str) -> SenderProfile:
        return SenderProfile(identity, domains=frozenset({"example.org"}))

    async def others_addresses(self, identity: str, addresses: list[str]) -> list[str]:
        self.looked_up.append(addresses)
        if self.fail:
            raise StoreUnavailable("database is locked")
        return [a for a in addresses if a == "bob@example.org"]


async def test_a_domain_grant_covers_no_other_accounts_address_looked_up_once() -> None:
    profiles = GrantProfiles()
    s = Sending(Principal(ALICE, "PLAIN"), profiles, session_id="s1", client_ip="192.0.2.7")
    policy = PolicyConfig()
    assert await s.mail("Bob@Example.org", policy, None) == R.SENDER_NOT_OWNED
    assert await s.mail("noreply@example.org", policy, None) is None
    assert await s.mail(ALICE, policy, None) is None  # its own: nothing to look up
    assert s.answers_now(None, "bob@example.org") and s.answers_now(None, "noreply@example.org")
    assert not s.answers_now(None, "support@example.org")  # not looked up yet
    assert s.mail_now("BOB@example.org", policy, None) == R.SENDER_NOT_OWNED
    header = b"From: Bob <bob@example.org>, help@example.org\r\n\r\n"
    assert await s.look_up_header(header) is None
    assert s.message(header, policy) == R.FROM_NOT_OWNED
    assert s.message(b"From: help@example.org\r\n\r\n", policy) is None
    assert profiles.looked_up == [["bob@example.org"], ["noreply@example.org"],
                                  ["help@example.org"]]
    s.rechecked(SenderProfile(ALICE, domains=frozenset({"example.org"})))
    assert await s.mail("bob@example.org", policy, None) == R.SENDER_NOT_OWNED  # looked up again


async def test_a_directory_fault_in_the_grant_look_up_is_a_temporary_refusal() -> None:
    s = Sending(Principal(ALICE, "PLAIN"), GrantProfiles(fail=True), session_id="s1",
                client_ip="192.0.2.7")
    assert await s.mail("bob@example.org", PolicyConfig(), None) == R.ACCOUNTS_UNAVAILABLE
    assert await s.look_up_header(b"From: bob@example.org\r\n\r\n") == R.ACCOUNTS_UNAVAILABLE


def test_a_profiles_grant_covers_only_what_is_nobody_elses() -> None:
    p = SenderProfile(ALICE, aliases=frozenset({"info@example.org"}),
                      domains=frozenset({"example.org", "b\u00fccher.example"}))
    assert p.by_grant_only([ALICE, "info@example.org", "x@other.example"]) == []
    assert p.by_grant_only(['"Bob"@EXAMPLE.org', "bob@example.org",
                            "dave@xn--bcher-kva.example"]) == [
        "bob@example.org", "dave@b\u00fccher.example"]
    taken = p.taken(["bob@example.org", "dave@b\u00fccher.example"])
    assert not taken.owns("BOB@example.org") and not taken.owns("dave@xn--bcher-kva.example")
    assert taken.owns("noreply@example.org") and taken.owns("info@example.org")
    assert p.owns("bob@example.org")  # before the look-up, as the grant says
    assert taken.taken(["bob@example.org"]) is taken
    assert SenderProfile(ALICE).by_grant_only(["bob@example.org"]) == []
