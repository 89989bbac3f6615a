"""Verification lanes (auth/verify_scheduler.py): the owner's password verification
from a known address goes before a guesser's, a guesser's address has one in flight
at a time, and the guesser's run on lower-priority threads. Orders and counts only:
no timing is asserted."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from smtpgate.admin import AccountAdmin
from smtpgate.auth.authlog import AuthLog
from smtpgate.auth.guard import Guard
from smtpgate.auth.guard_store import SqliteGuardStore
from smtpgate.auth.login import LoginAttempts
from smtpgate.auth.passwords import PasswordMatch
from smtpgate.auth.service import AuthContext, AuthService, Resolution
from smtpgate.auth.store import AuditActor, SqliteAccountStore
from smtpgate.auth.verify_scheduler import (
    TRUSTED,
    UNTRUSTED_NICE,
    Lane,
    VerificationScheduler,
    lower_thread_priority,
)
from smtpgate.config import AccountsConfig, AuthConfig, GuardConfig
from smtpgate.sasl import base as sasl
from smtpgate.sasl.exchange import AuthResult

ALICE = "alice@example.org"
A, B, C, D = (Lane.untrusted(f"192.0.2.{n}") for n in (1, 2, 3, 4))
#: Long enough for any condition below to come true; reaching it fails the test.
DEADLINE = 10.0


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


@dataclass
class Runs:
    """Verifications that hold their slot until their gate opens."""

    slots: VerificationScheduler
    started: list[str] = field(default_factory=list)
    gates: dict[str, asyncio.Event] = field(default_factory=dict)
    tasks: dict[str, asyncio.Task[None]] = field(default_factory=dict)

    def start(self, name: str, lane: Lane) -> None:
        self.gates[name] = asyncio.Event()

        async def run() -> None:
            await self.slots.acquire(lane)
            self.started.append(name)
            try:
                await self.gates[name].wait()
            finally:
                self.slots.release(lane)

        self.tasks[name] = asyncio.create_task(run())

    async def finish(self, name: str) -> None:
        self.gates[name].set()
        await self.tasks[name]
        await settle()


async def test_trusted_verification_starts_before_the_queued_untrusted_ones() -> None:
    runs = Runs(VerificationScheduler(1))
    runs.start("a", A)
    await settle()
    for name, lane in (("b", B), ("c", C), ("d", D)):
        runs.start(name, lane)
    await settle()
    runs.start("owner", TRUSTED)  # arrives last, with three untrusted waiting
    await settle()
    assert runs.started == ["a"]
    await runs.finish("a")
    assert runs.started == ["a", "owner"]
    await runs.finish("owner")
    assert runs.started == ["a", "owner", "b"]  # then the untrusted, oldest first
    for name in ("b", "c", "d"):
        await runs.finish(name)
    assert runs.started == ["a", "owner", "b", "c", "d"]
    assert runs.slots.running == 0 and runs.slots.waiting == 0


async def test_one_slot_is_kept_for_the_trusted_lane() -> None:
    runs = Runs(VerificationScheduler(2))
    runs.start("a", A)
    runs.start("b", B)  # a free slot, but it is the trusted lane's
    await settle()
    assert runs.started == ["a"] and runs.slots.waiting == 1
    runs.start("owner", TRUSTED)
    await settle()
    assert runs.started == ["a", "owner"]  # at once, while "a" still runs
    await runs.finish("a")
    assert runs.started == ["a", "owner", "b"]
    await runs.finish("owner")
    await runs.finish("b")


async def test_an_address_never_has_two_verifications_in_flight() -> None:
    slots = VerificationScheduler(4)  # three untrusted slots
    runs = Runs(slots)
    in_flight: dict[str, int] = {}
    most = 0
    # Each run notes its address while it holds the slot.
    original_acquire, original_release = slots.acquire, slots.release

    async def acquire(lane: Lane) -> None:
        nonlocal most
        await original_acquire(lane)
        in_flight[lane.address] = in_flight.get(lane.address, 0) + 1
        most = max(most, in_flight[lane.address])

    def release(lane: Lane) -> None:
        in_flight[lane.address] -= 1
        original_release(lane)

    slots.acquire, slots.release = acquire, release  # type: ignore[method-assign]
    for i in range(4):
        runs.start(f"a{i}", A)
    runs.start("b0", B)
    await settle()
    assert runs.started == ["a0", "b0"]  # a free slot is left, but not for A
    await runs.finish("a0")
    assert runs.started == ["a0", "b0", "a1"]
    for name in ("a1", "a2", "a3", "b0"):
        await runs.finish(name)
    assert runs.started == ["a0", "b0", "a1", "a2", "a3"]
    assert most == 1


async def test_a_cancelled_waiter_takes_no_slot() -> None:
    slots = VerificationScheduler(1)
    await slots.acquire(A)
    runs = Runs(slots)
    runs.start("b", B)
    await settle()
    runs.tasks["b"].cancel()
    await settle()
    runs.start("c", C)
    await settle()
    slots.release(A)
    await settle()
    assert runs.started == ["c"] and slots.running == 1 and slots.waiting == 0
    await runs.finish("c")
    assert slots.running == 0


async def test_a_slot_granted_to_a_cancelled_waiter_is_handed_on() -> None:
    slots = VerificationScheduler(1)
    await slots.acquire(A)
    runs = Runs(slots)
    runs.start("b", B)
    runs.start("c", C)
    await settle()
    slots.release(A)  # grants "b" ...
    runs.tasks["b"].cancel()  # ... which goes away before it could run
    await settle()
    assert runs.started == ["c"] and slots.running == 1
    await runs.finish("c")
    assert slots.running == 0 and slots.waiting == 0


@pytest.mark.skipif(sys.platform != "linux", reason="nice is per thread on Linux only")
def test_untrusted_threads_run_at_a_lower_priority() -> None:
    seen: list[int] = []

    def worker() -> None:
        lower_thread_priority()
        seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert seen == [max(UNTRUSTED_NICE, os.getpriority(os.PRIO_PROCESS, 0))]
    assert os.getpriority(os.PRIO_PROCESS, 0) < UNTRUSTED_NICE  # the process is untouched


# --- through the auth service ---------------------------------------------------------

CFG = AccountsConfig(argon2_memory_kib=8192, argon2_time_cost=1, argon2_parallelism=1,
                     hash_threads=2)


@dataclass
class GatedHasher:
    """Stands in for ``PasswordHasher.match`` on the hash threads: each run notes
    its password and its thread's nice value, then waits for its gate."""

    real: Callable[[str, str], PasswordMatch]
    began: dict[str, threading.Event] = field(default_factory=dict)
    gates: dict[str, threading.Event] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)
    nice: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: Guesses (every password but the owner's) running now, and at most.
    guessing: int = 0
    most_guessing: int = 0

    def expect(self, *passwords: str) -> None:
        for p in passwords:
            self.began[p], self.gates[p] = threading.Event(), threading.Event()

    def match(self, encoded: str, password: str) -> PasswordMatch:
        guess = password != "pencil"
        with self.lock:
            self.order.append(password)
            self.nice[password] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
            self.guessing += guess
            self.most_guessing = max(self.most_guessing, self.guessing)
        self.began[password].set()
        try:
            assert self.gates[password].wait(DEADLINE)
            return self.real(encoded, password)
        finally:
            with self.lock:
                self.guessing -= guess


@pytest.fixture
async def svc(tmp_path: Path) -> AsyncIterator[AuthService]:
    store = SqliteAccountStore(tmp_path / "accounts.sqlite", CFG)
    AccountAdmin(store, CFG, actor=AuditActor("ops", "pytest")).add_account(ALICE, "pencil")
    s = AuthService(store, CFG, AuthConfig(), AuthLog(tmp_path / "auth.log"))
    yield s
    await s.close()


async def until(cond: Callable[[], bool]) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + DEADLINE
    while not cond():
        assert loop.time() < end, "condition never came true"
        await asyncio.sleep(0.005)


def ctx(lane: Lane) -> AuthContext:
    return AuthContext("submission", lane.address or "192.0.2.200", 40000, "TLSv1.3", "s",
                       lane=lane)


async def test_service_verifies_the_owner_first_and_guesses_one_at_a_time(
    svc: AuthService, monkeypatch: pytest.MonkeyPatch
) -> None:
    hasher = svc._hasher
    gated = GatedHasher(hasher.match)
    monkeypatch.setattr(hasher, "match", gated.match)
    gated.expect("g1", "g2", "g3", "h1", "pencil")
    lanes = svc._lanes

    async def attempt(password: str, lane: Lane) -> sasl.CredentialAnswer:
        query = sasl.VerifyPassword(ALICE, password, mechanism="PLAIN")
        return (await svc.resolve_detailed(query, ctx(lane))).answer

    guesses = [asyncio.create_task(attempt(p, A)) for p in ("g1", "g2", "g3")]
    guesses.append(asyncio.create_task(attempt("h1", B)))
    await until(lambda: len(gated.order) == 1 and lanes.waiting == 3)
    # One guess runs; the others wait: for their address (A), or for the kept slot.
    assert lanes.running == 1
    owner = asyncio.create_task(attempt("pencil", TRUSTED))
    assert await asyncio.to_thread(gated.began["pencil"].wait, DEADLINE)
    assert gated.order[1] == "pencil" and lanes.waiting == 3  # ahead of all three
    gated.gates["pencil"].set()
    assert await owner == sasl.Verdict(ok=True, identity=ALICE)
    for p in ("g1", "g2", "g3", "h1"):
        gated.gates[p].set()  # all at once: the lanes still let one guess run at a time
    answers = await asyncio.gather(*guesses)
    assert [a.ok for a in answers if isinstance(a, sasl.Verdict)] == [False] * 4
    assert sorted(gated.order) == ["g1", "g2", "g3", "h1", "pencil"]
    assert gated.most_guessing == 1
    assert lanes.running == 0 and lanes.waiting == 0
    if sys.platform == "linux":
        base = os.getpriority(os.PRIO_PROCESS, 0)
        assert gated.nice["pencil"] == base
        assert {gated.nice[p] for p in ("g1", "g2", "g3", "h1")} == {max(base, UNTRUSTED_NICE)}


async def test_unknown_user_takes_the_lane_of_a_wrong_password(
    svc: AuthService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The decoy verification of a name that is no account queues like a wrong
    password from the same address: the lane tells nothing about which names exist."""
    lanes = svc._lanes
    seen: list[Lane] = []
    acquire = lanes.acquire

    async def noting(lane: Lane) -> None:
        seen.append(lane)
        await acquire(lane)

    monkeypatch.setattr(lanes, "acquire", noting)
    for name in (ALICE, "nobody@example.org"):
        query = sasl.VerifyPassword(name, "wrong", mechanism="PLAIN")
        answer = (await svc.resolve_detailed(query, ctx(A))).answer
        assert answer == sasl.Verdict(ok=False, reason=answer.reason)  # type: ignore[union-attr]
    assert seen == [A, A]


# --- through the login path, with the real guard ------------------------------------


@dataclass
class LaneAuth:
    """The auth service's surface the login path uses; notes each attempt's lane."""

    lanes: list[Lane] = field(default_factory=list)
    ok: bool = True

    async def resolve_detailed(self, query: sasl.CredentialQuery, ctx: AuthContext) -> Resolution:
        self.lanes.append(ctx.lane)
        if self.ok:
            return Resolution(sasl.Verdict(ok=True, identity=ALICE))
        return Resolution(sasl.Verdict(ok=False, reason="bad password"))

    async def login_identity(self, username: str) -> str:
        return username

    def record(self, *args: object) -> None:
        pass


@dataclass(frozen=True)
class Outcome:
    mechanism: str
    result: AuthResult
    username: str = ALICE
    identity: str = ""
    reason: str = ""
    malformed: bool = False


async def test_login_path_trusts_known_addresses_without_failures(tmp_path: Path) -> None:
    cfg = GuardConfig(penalty_base=0.0, penalty_max=0.0, allowlist=["198.51.100.0/24"])
    guard = Guard(SqliteGuardStore(tmp_path / "guard.sqlite"), cfg)
    auth = LaneAuth()

    async def no_sleep(seconds: float) -> None:
        return None

    login = LoginAttempts(auth, guard, failure_floor=0.0, sleep=no_sleep)  # type: ignore[arg-type]

    async def attempt(ip: str, *, ok: bool) -> Lane:
        auth.ok = ok
        src = AuthContext("submission", ip, 40000, "TLSv1.3", "s")
        a = login.begin(src)
        await a.resolve(sasl.VerifyPassword(ALICE, "pw", mechanism="PLAIN"))
        result = AuthResult.SUCCESS if ok else AuthResult.FAILURE
        await a.finish(Outcome("PLAIN", result, identity=ALICE))
        return auth.lanes[-1]

    try:
        home, elsewhere = "192.0.2.10", "203.0.113.5"
        assert await attempt(home, ok=True) == Lane.untrusted(home)  # not known yet
        assert await attempt(home, ok=True) == TRUSTED  # known since its success
        assert await attempt(elsewhere, ok=False) == Lane.untrusted(elsewhere)
        assert await attempt(home, ok=False) == TRUSTED  # the failure is counted after
        assert await attempt(home, ok=True) == Lane.untrusted(home)  # penalised: no priority
        assert await attempt(home, ok=True) == TRUSTED  # the success forgot the penalty
        assert await attempt("198.51.100.7", ok=False) == TRUSTED  # allowlisted
        assert await attempt("2001:db8:1:2::5", ok=False) == Lane.untrusted("2001:db8:1:2::/64")
    finally:
        await guard.close()
    no_guard = LaneAuth()
    plain = LoginAttempts(no_guard, None, failure_floor=0.0, sleep=no_sleep)  # type: ignore[arg-type]
    a = plain.begin(AuthContext("submission", "203.0.113.9", 40000, "TLSv1.3", "s"))
    await a.resolve(sasl.VerifyPassword(ALICE, "pw", mechanism="PLAIN"))
    assert no_guard.lanes == [TRUSTED]
