"""The login path (auth/login.py), without any front door: guard, penalty, resolution,
auth log, the guard's commit and the failure floor, each in its place."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest

from smtpgate.auth.directory import AppPassword, StoreUnavailable
from smtpgate.auth.guard import Guard, Refusal
from smtpgate.auth.guard_store import SqliteGuardStore
from smtpgate.auth.login import LoginAttempts
from smtpgate.auth.names import lookup_key
from smtpgate.auth.networks import ClientKeys, client_keys
from smtpgate.auth.principal import AppPasswordUse, Principal
from smtpgate.auth.service import REFUSED_POLICY, AuthContext, Resolution
from smtpgate.config import GuardConfig
from smtpgate.sasl import base as sasl
from tests.unit.patient_state import PATIENT_STATE

USER = "alice@example.org"
CTX = AuthContext("submission", "192.0.2.7", 40000, "TLSv1.3", "s1")
PLAIN = sasl.VerifyPassword(USER, "pw", mechanism="PLAIN")
SCRAM = sasl.LookupScram(USER, "sha256", mechanism="SCRAM-SHA-256")
PHONE = AppPassword(
    id=7, account=USER, name="phone", created=datetime(2026, 1, 1, tzinfo=UTC), expires=None,
    networks=None, mechanisms=None, max_messages_per_hour=5, max_recipients_per_hour=50,
    last_used=None, last_address=None,
)


@dataclass(frozen=True)
class Check:
    account: str
    delay: float = 0.0
    refusal: Refusal | None = None
    unavailable: str = ""
    known: bool = True


@dataclass
class FakeGuard:
    delay: float = 0.0
    refusal: Refusal | None = None
    unavailable: str = ""
    needs_write: bool = True
    calls: list[tuple[str, object]] = field(default_factory=list)

    watched: bool = True
    #: One node's state: no lease in Redis (auth/shared_gate.py).
    shared_gate: None = None

    def watches(self, client_ip: str) -> bool:
        return self.watched

    def keys(self, client_ip: str) -> ClientKeys:
        return client_keys(client_ip)

    async def check(self, client_ip: str, username: str) -> Check:
        self.calls.append(("check", username))
        return Check(username, self.delay, self.refusal, self.unavailable)

    def bare_check(self, client_ip: str) -> Check:
        self.calls.append(("bare_check", client_ip))
        return Check("")

    async def failure(self, check: Check, *, counts_account: bool) -> list[object]:
        self.calls.append(("failure", (check.account, counts_account)))
        return []

    def success_needs_write(self, check: Check, identity: str) -> bool:
        return self.needs_write

    async def success(self, check: Check, identity: str) -> None:
        self.calls.append(("success", identity))


@dataclass
class FakeAuth:
    resolution: Resolution = field(default_factory=lambda: Resolution(sasl.Verdict(ok=True, identity=USER)))
    queries: list[sasl.CredentialQuery] = field(default_factory=list)
    records: list[tuple[str, str, str]] = field(default_factory=list)

    async def resolve_detailed(self, query: sasl.CredentialQuery, ctx: AuthContext) -> Resolution:
        self.queries.append(query)
        return self.resolution

    def record(self, ctx: AuthContext, mechanism: str, username: str, result: str, reason: str) -> None:
        self.records.append((username, result, reason))

    #: Login names of an account other than its own (AD's sAMAccountName).
    names: dict[str, str] = field(default_factory=dict)
    #: The directory is down: resolving a name fails.
    down: bool = False
    resolved: list[str] = field(default_factory=list)

    async def login_identity(self, username: str) -> str:
        self.resolved.append(username)
        if self.down:
            raise StoreUnavailable("directory unavailable")
        return self.names.get(username, lookup_key(username))


@dataclass(frozen=True)
class Outcome:
    mechanism: str
    result: str
    username: str = USER
    identity: str = ""
    reason: str = ""
    malformed: bool = False


@dataclass
class World:
    auth: FakeAuth = field(default_factory=FakeAuth)
    guard: FakeGuard = field(default_factory=FakeGuard)
    sleeps: list[float] = field(default_factory=list)
    alive: bool = True

    def login(self) -> LoginAttempts:
        async def sleep(seconds: float) -> None:
            self.sleeps.append(seconds)

        return LoginAttempts(self.auth, self.guard, failure_floor=0.25, sleep=sleep)  # type: ignore[arg-type]


@pytest.fixture
def w() -> World:
    return World()


async def test_success_makes_the_principal_and_commits_before_the_reply(w: World) -> None:
    w.auth.resolution = Resolution(sasl.Verdict(ok=True, identity=USER), app_password=PHONE)
    attempt = w.login().begin(CTX)
    assert await attempt.resolve(PLAIN) == sasl.Verdict(ok=True, identity=USER)
    done = attempt.conclude(Outcome("PLAIN", "success", identity=USER))
    assert done.result.principal == Principal(
        USER, "PLAIN", app_password=AppPasswordUse(7, "phone", 5, 50)
    )
    assert w.auth.records == [(USER, "success", "app password 'phone'")]
    assert done.pending is not None
    assert ("success", USER) not in w.guard.calls  # not yet: the caller awaits it
    await done.pending
    assert w.guard.calls == [("check", USER), ("success", USER)]
    assert w.sleeps == []  # no floor on success


async def test_a_token_login_names_its_issuer(w: World) -> None:
    w.auth.resolution = Resolution(
        sasl.Verdict(ok=True, identity=USER), oauth_issuer="https://id.example.org"
    )
    attempt = w.login().begin(CTX)
    await attempt.resolve(sasl.VerifyToken(USER, "tok", mechanism="OAUTHBEARER"))
    result = await attempt.finish(Outcome("OAUTHBEARER", "success", identity=USER))
    assert result.principal == Principal(USER, "OAUTHBEARER", oauth_issuer="https://id.example.org")
    assert w.auth.records == [(USER, "success", "")]  # the log line is as before


async def test_a_good_token_refused_for_its_account_is_logged_under_its_identity(w: World) -> None:
    """OAUTHBEARER without a= names no account; the token named one, which the
    log must show (until 2026-12: "", a record of nobody). Counted as before."""
    w.auth.resolution = Resolution(sasl.Verdict(ok=False, reason="unknown user"),
                                   named_identity="Ghost@example.org")
    attempt = w.login().begin(CTX)
    await attempt.resolve(sasl.VerifyToken("", "tok", mechanism="OAUTHBEARER"))
    await attempt.finish(Outcome("OAUTHBEARER", "failure", username="", reason="unknown user"))
    assert w.auth.records == [("Ghost@example.org", "failure", "unknown user")]
    assert w.guard.calls == [("check", ""), ("failure", ("", True))]
    # A name the client gave is the one logged, as for every mechanism.
    attempt = w.login().begin(CTX)
    await attempt.resolve(sasl.VerifyToken(USER, "tok", mechanism="XOAUTH2"))
    await attempt.finish(Outcome("XOAUTH2", "failure", reason="unknown user"))
    assert w.auth.records[-1] == (USER, "failure", "unknown user")


async def test_success_with_nothing_to_write_answers_at_once(w: World) -> None:
    w.guard.needs_write = False
    attempt = w.login().begin(CTX)
    await attempt.resolve(PLAIN)
    done = attempt.conclude(Outcome("PLAIN", "success", identity=USER))
    assert done.pending is None and done.result.principal is not None


async def test_wrong_secret_counts_toward_the_account_then_waits_the_floor(w: World) -> None:
    w.auth.resolution = Resolution(sasl.Verdict(ok=False, reason="bad password"))
    attempt = w.login().begin(CTX)
    await attempt.resolve(PLAIN)
    result = await attempt.finish(Outcome("PLAIN", "failure", reason="bad password"))
    assert result.result == "failure" and result.principal is None
    assert w.guard.calls == [("check", USER), ("failure", (USER, True))]
    assert len(w.sleeps) == 1 and 0.25 <= w.sleeps[0] <= 0.375
    assert w.auth.records == [(USER, "failure", "bad password")]


async def test_a_refusal_that_did_not_depend_on_the_secret_counts_toward_the_address_only(
    w: World,
) -> None:
    w.auth.resolution = Resolution(sasl.Verdict(ok=False, reason="access policy: x"), refusal=REFUSED_POLICY)
    attempt = w.login().begin(CTX)
    await attempt.resolve(PLAIN)
    await attempt.finish(Outcome("PLAIN", "failure", reason="access policy: x"))
    assert ("failure", (USER, False)) in w.guard.calls


async def test_a_failure_before_any_account_was_named_counts_against_the_address(w: World) -> None:
    attempt = w.login().begin(CTX)
    await attempt.finish(Outcome("PLAIN", "failure", username="", reason="invalid base64"))
    assert w.guard.calls == [("bare_check", CTX.client_ip), ("failure", ("", True))]
    assert w.auth.queries == []


@pytest.mark.parametrize(
    ("query", "answer"),
    [
        (PLAIN, sasl.Verdict(ok=False, reason="address blocked", temporary=True)),
        (SCRAM, sasl.NotFound(reason="address blocked", temporary=True)),
    ],
)
async def test_the_guard_refuses_before_any_credential_work_and_is_not_counted_again(
    w: World, query: sasl.CredentialQuery, answer: sasl.CredentialAnswer
) -> None:
    w.guard.refusal = Refusal("address", "address blocked")
    w.guard.delay = 4.0
    attempt = w.login().begin(CTX)
    assert await attempt.resolve(query) == answer
    assert w.auth.queries == []  # no hashing for a refused attempt
    assert w.sleeps == [4.0]  # answered after the penalty
    done = attempt.conclude(Outcome(query.mechanism, "tempfail", reason="address blocked"))
    assert done.result.refusal == w.guard.refusal and done.pending is None
    assert w.auth.records == [(USER, "tempfail", "blocked: address blocked")]
    assert [c for c, _ in w.guard.calls] == ["check"]


async def test_an_unavailable_guard_refusal_is_a_backend_fault_not_a_block(w: World) -> None:
    """The guard's degraded mode refuses: 454 after the penalty, logged as a plain
    temporary failure (fail2ban counts "blocked: " lines) and not counted."""
    w.guard.unavailable = "guard database unavailable: only known addresses"
    w.guard.delay = 0.5
    attempt = w.login().begin(CTX)
    assert await attempt.resolve(PLAIN) == sasl.Verdict(
        ok=False, reason=w.guard.unavailable, temporary=True
    )
    assert w.auth.queries == [] and w.sleeps == [0.5]
    done = attempt.conclude(Outcome("PLAIN", "tempfail", reason=w.guard.unavailable))
    assert done.result.refusal is None and done.pending is None
    assert w.auth.records == [(USER, "tempfail", w.guard.unavailable)]
    assert [c for c, _ in w.guard.calls] == ["check"]


async def test_the_penalty_is_waited_before_the_credentials_are_checked(w: World) -> None:
    w.guard.delay = 1.5
    attempt = w.login().begin(CTX)
    await attempt.resolve(PLAIN)
    assert w.sleeps == [1.5] and w.auth.queries == [PLAIN]


async def test_a_client_gone_during_the_penalty_costs_no_credential_check(w: World) -> None:
    w.guard.delay = 1.5
    login = w.login()

    async def sleep(seconds: float) -> None:
        w.alive = False  # the client hangs up while it waits

    login.sleep = sleep
    attempt = login.begin(CTX, alive=lambda: w.alive)
    assert await attempt.resolve(PLAIN) is None
    assert w.auth.queries == []


async def test_scram_second_query_is_the_same_attempt(w: World) -> None:
    attempt = w.login().begin(CTX)
    await attempt.resolve(SCRAM)
    await attempt.resolve(sasl.ConfirmIdentity(USER, mechanism="SCRAM-SHA-256"))
    assert [c for c, _ in w.guard.calls] == ["check"]


async def test_an_abandoned_decided_failure_is_counted_without_a_floor(w: World) -> None:
    attempt = w.login().begin(CTX)
    await attempt.resolve(SCRAM)
    done = attempt.conclude(
        Outcome("SCRAM-SHA-256", "failure", reason="invalid-proof (connection closed during AUTH)"),
        answered=False,
    )
    assert w.auth.records == [(USER, "failure", "invalid-proof (connection closed during AUTH)")]
    assert done.pending is not None
    await done.pending
    assert ("failure", (USER, True)) in w.guard.calls
    assert w.sleeps == []


@pytest.mark.parametrize("answered", [True, False])
async def test_a_failure_announced_in_a_challenge_is_counted_then_and_only_then(
    w: World, answered: bool
) -> None:
    """SCRAM's e= goes out in a 334 and the exchange waits for the client's answer:
    the failure is counted at once (the gates go after it is written, so a client
    that never answers holds up nobody), and the conclusion waits for that write
    instead of making a second one."""
    w.auth.resolution = SALT
    attempt = w.login().begin(CTX)
    await attempt.resolve(SCRAM)
    attempt.failure_announced(sasl.Failure("invalid proof", error_data=b"e=invalid-proof"))
    await asyncio.sleep(0)
    assert ("failure", (USER, True)) in w.guard.calls  # before the client answered
    done = attempt.conclude(Outcome("SCRAM-SHA-256", "failure", reason="invalid proof"),
                            answered=answered)
    assert done.pending is not None
    await done.pending
    assert [c for c, _ in w.guard.calls].count("failure") == 1
    assert len(w.sleeps) == (1 if answered else 0)  # the floor, for a client still there


async def test_cancelled_is_logged_and_neither_counted_nor_delayed(w: World) -> None:
    attempt = w.login().begin(CTX)
    done = attempt.conclude(Outcome("PLAIN", "cancelled", username="", reason="client cancelled"))
    assert done.pending is None and done.result.result == "cancelled"
    assert w.auth.records == [("", "cancelled", "client cancelled")]
    assert w.guard.calls == []


SALT = Resolution(sasl.ScramCredentials(b"s" * 16, 4096, b"k" * 32, b"k" * 32))


@pytest.mark.parametrize("answer", [SALT, Resolution(sasl.NotFound(name=USER))])
@pytest.mark.parametrize(
    ("result", "malformed", "answered"),
    [("cancelled", False, True), ("cancelled", False, False), ("failure", True, True),
     ("failure", True, False)],
)
async def test_a_scram_probe_after_the_salt_counts_against_the_address_only(
    w: World, answer: Resolution, result: str, malformed: bool, answered: bool
) -> None:
    """Issue 16: read the salt (a real one or a decoy), then cancel, hang up or send
    garbage: a failed attempt for the penalty and spraying, not for the lockout."""
    w.auth.resolution = answer
    attempt = w.login().begin(CTX)
    await attempt.resolve(SCRAM)
    done = attempt.conclude(
        Outcome("SCRAM-SHA-256", result, reason="client cancelled", malformed=malformed),
        answered=answered,
    )
    assert done.result.result == result
    assert w.auth.records == [
        (USER, result, "client cancelled (after the salt, without a proof: counted)")
    ]
    assert done.pending is not None
    await done.pending
    assert ("failure", (USER, False)) in w.guard.calls
    assert len(w.sleeps) == (1 if answered else 0)  # the failure floor, as for a guess


async def test_no_salt_shown_or_a_proof_accepted_is_no_probe(w: World) -> None:
    """A cancel before any look-up (mutt's empty -PLUS try), after a temporary
    answer, or after the server's signature (the proof was good) counts nothing."""
    attempt = w.login().begin(CTX)
    done = attempt.conclude(Outcome("SCRAM-SHA-256-PLUS", "cancelled", username=""))
    assert done.pending is None
    w.auth.resolution = Resolution(sasl.NotFound(reason="db down", temporary=True))
    await attempt.resolve(SCRAM)
    assert attempt.conclude(Outcome("SCRAM-SHA-256", "cancelled")).pending is None
    w.auth.resolution = SALT
    await attempt.resolve(SCRAM)
    await attempt.resolve(sasl.ConfirmIdentity(USER, mechanism="SCRAM-SHA-256"))
    assert attempt.conclude(Outcome("SCRAM-SHA-256", "cancelled")).pending is None
    assert [c for c, _ in w.guard.calls] == ["check", "check"]


async def test_garbage_after_the_salt_is_no_guess_but_a_wrong_proof_is(w: World) -> None:
    w.auth.resolution = SALT
    for malformed in (True, False):
        attempt = w.login().begin(CTX)
        await attempt.resolve(SCRAM)
        await attempt.finish(Outcome("SCRAM-SHA-256", "failure", malformed=malformed))
    failures = [v for c, v in w.guard.calls if c == "failure"]
    assert failures == [(USER, False), (USER, True)]


async def test_without_a_guard_a_failure_still_waits_the_floor() -> None:
    auth, sleeps = FakeAuth(Resolution(sasl.Verdict(ok=False, reason="bad password"))), []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    login = LoginAttempts(auth, None, failure_floor=0.5, sleep=sleep)  # type: ignore[arg-type]
    attempt = login.begin(CTX)
    await attempt.resolve(PLAIN)
    await attempt.finish(Outcome("PLAIN", "failure", reason="bad password"))
    assert len(sleeps) == 1 and sleeps[0] >= 0.5


# --- the name the guard counts under (docs/protection.md, "What is counted") -------------


async def test_every_name_of_one_account_is_checked_and_counted_under_the_account(
    w: World,
) -> None:
    """AD's sAMAccountName and the UPN (or an LDAP uid and mail) are one account: a
    wrong password under either counts toward one lockout."""
    w.auth.names = {"alice": USER}
    w.auth.resolution = Resolution(sasl.Verdict(ok=False, reason="bad password"))
    for name in ("alice", "alice@EXAMPLE.org", USER):
        attempt = w.login().begin(CTX)
        await attempt.resolve(sasl.VerifyPassword(name, "guess", mechanism="PLAIN"))
        await attempt.finish(Outcome("PLAIN", "failure", username=name, reason="bad password"))
    assert [c for c in w.guard.calls if c[0] == "check"] == [("check", USER)] * 3
    assert [c for c in w.guard.calls if c[0] == "failure"] == [("failure", (USER, True))] * 3
    # The auth log keeps the names as typed.
    assert [r[0] for r in w.auth.records] == ["alice", "alice@EXAMPLE.org", USER]


async def test_a_name_of_no_account_is_counted_under_itself(w: World) -> None:
    w.auth.resolution = Resolution(sasl.Verdict(ok=False, reason="unknown user"))
    attempt = w.login().begin(CTX)
    await attempt.resolve(sasl.VerifyPassword("Ghost@Example.ORG", "x", mechanism="PLAIN"))
    await attempt.finish(Outcome("PLAIN", "failure", username="Ghost@Example.ORG"))
    assert w.guard.calls == [("check", "ghost@example.org"),
                             ("failure", ("ghost@example.org", True))]


async def test_a_directory_fault_while_resolving_the_name_checks_no_credential(
    w: World,
) -> None:
    """The guard still decides (under the name as typed), then the attempt gets a
    temporary failure: no bind that the guard could not count under the account."""
    w.auth.down = True
    attempt = w.login().begin(CTX)
    answer = await attempt.resolve(sasl.VerifyPassword("alice", "guess", mechanism="PLAIN"))
    assert isinstance(answer, sasl.Verdict) and answer.temporary and not answer.ok
    assert w.auth.queries == []
    done = attempt.conclude(Outcome("PLAIN", "tempfail", username="alice"))
    assert done.result.result == "tempfail" and done.pending is None
    assert w.guard.calls == [("check", "alice")]  # not counted


async def test_a_client_the_guard_does_not_watch_costs_no_resolution(w: World) -> None:
    w.guard.watched = False
    attempt = w.login().begin(CTX)
    await attempt.resolve(PLAIN)
    assert w.auth.resolved == [] and w.guard.calls[0] == ("check", USER)


async def test_two_names_of_one_account_reach_the_lockout_together(tmp_path: Path) -> None:
    """With the real guard: ``lockout_threshold`` wrong passwords, alternating the two
    names, lock the account for both names; not twice as many."""
    cfg = GuardConfig(lockout_threshold=4, penalty_base=0.0, penalty_max=0.0)
    guard = Guard(SqliteGuardStore(tmp_path / "guard.sqlite"), cfg, PATIENT_STATE)
    auth = FakeAuth(Resolution(sasl.Verdict(ok=False, reason="bad password")),
                    names={"alice": USER})

    async def no_sleep(seconds: float) -> None:
        return None

    login = LoginAttempts(auth, guard, failure_floor=0.0, sleep=no_sleep)  # type: ignore[arg-type]
    results = []
    try:
        for i in range(8):
            name = "alice" if i % 2 else USER
            attempt = login.begin(CTX)
            answer = await attempt.resolve(
                sasl.VerifyPassword(name, f"guess {i}", mechanism="PLAIN")
            )
            assert isinstance(answer, sasl.Verdict) and not answer.ok
            outcome = "tempfail" if answer.temporary else "failure"
            done = await attempt.finish(Outcome("PLAIN", outcome, username=name))
            results.append(str(done.result))
    finally:
        await guard.close()
    assert results == ["failure"] * 4 + ["tempfail"] * 4
    assert len(auth.queries) == 4  # no credential checked after the lockout
