"""Row reads of local SQLite files made on the event loop (auth/loop_reads.py,
``server.sqlite_reads_on_loop``): where they run, what sends them back to a
thread, and that the loop never waits for a lock."""

from __future__ import annotations

import asyncio
import logging
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from smtpgate.admin import AccountAdmin
from smtpgate.auth.authlog import AuthLog
from smtpgate.auth.bounded_calls import BoundedCalls, StoreUnavailable
from smtpgate.auth.guard import Guard
from smtpgate.auth.guard_store import GuardStoreError, Snapshot, SqliteGuardStore
from smtpgate.auth.loop_reads import MISSED, LoopReads, loop_reads_for
from smtpgate.auth.sender_profile import SenderProfile
from smtpgate.auth.service import AuthContext, AuthService, build_auth_service
from smtpgate.auth.store import Account, AuditActor, SqliteAccountStore
from smtpgate.config import (
    AccountsConfig,
    AuthConfig,
    Config,
    GuardConfig,
    LimitsConfig,
    StateConfig,
)
from smtpgate.policy.rates import RateLimiter
from smtpgate.policy.sqlite_counters import SqliteRateCounters
from smtpgate.sasl.base import VerifyPassword
from smtpgate.server.app import build_guard, build_rates
from tests.contract.directories import Forwarding

ALICE = "alice@example.org"
HOME = "192.0.2.1"
CFG = AccountsConfig(argon2_memory_kib=8192, argon2_time_cost=1, argon2_parallelism=1,
                     scram_iterations=4096)
CTX = AuthContext("submission", HOME, 50123, "TLSv1.3", "sess-1")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# --- the rules, on their own ------------------------------------------------------


def test_fast_reads_are_answered_here_and_repeated_slow_ones_send_the_next_to_the_thread(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = SqliteGuardStore(tmp_path / "guard.sqlite")
    clock = Clock()
    reads = LoopReads("guard database", store.without_waiting, log=logging.getLogger("t"),
                      clock=clock, slow=0.02, strikes=3, pause=60.0)

    def slow() -> str:
        clock.now += 0.03  # 30 ms: a cold cache on a slow disk
        return "late but right"

    assert reads.read(lambda: "fast") == "fast"
    assert reads.read(slow) == "late but right"  # its answer is still used
    clock.now += 61  # a minute later: the first one is forgotten
    assert reads.read(slow) == "late but right"
    assert reads.read(slow) == "late but right"
    assert not reads.paused  # one preempted read, or two, are not a slow disk
    with caplog.at_level(logging.WARNING):
        assert reads.read(slow) == "late but right"
    assert reads.paused
    assert "guard database: 3 reads took over 20 ms on the loop within 60 s, the last 30.0 " \
        "ms; its reads run on a thread for the next 60 s" in caplog.text
    assert reads.read(lambda: "fast") is MISSED  # paused: the thread's path
    clock.now += 60.1
    assert reads.read(lambda: "fast") == "fast"  # and back
    store.close()


def test_a_read_that_fails_here_is_missed_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = SqliteGuardStore(tmp_path / "guard.sqlite")
    reads = LoopReads("guard database", store.without_waiting, log=logging.getLogger("t"))

    def locked() -> None:
        raise GuardStoreError("database is locked")

    with caplog.at_level(logging.INFO):
        assert reads.read(locked) is MISSED
    assert "a read failed on the loop (database is locked)" in caplog.text
    assert reads.paused
    store.close()


def test_the_loops_connection_never_waits_for_a_lock_and_the_others_still_do(
    tmp_path: Path,
) -> None:
    store = SqliteGuardStore(tmp_path / "guard.sqlite")
    timeout = "PRAGMA busy_timeout"
    assert store._conn().execute(timeout).fetchone()[0] == 5000
    with store.without_waiting():
        assert store._conn().execute(timeout).fetchone()[0] == 0
    assert store._conn().execute(timeout).fetchone()[0] == 5000  # same thread, after
    store.close()


def test_a_write_among_the_loops_reads_is_refused(tmp_path: Path) -> None:
    store = SqliteGuardStore(tmp_path / "guard.sqlite")
    with store.without_waiting(), pytest.raises(GuardStoreError, match="a write among"):
        store.set_plus_fallback(HOME, 4e9)
    store.set_plus_fallback(HOME, 4e9)  # outside: written
    assert store.plus_fallback(HOME, 0) == 4e9
    store.close()


def test_the_loops_connection_leaves_an_admin_writes_durability_alone(tmp_path: Path) -> None:
    """A bookkeeping write (synchronous NORMAL), then the loop's connection opens on
    the same thread: the next admin write still runs with synchronous FULL."""
    store = SqliteAccountStore(tmp_path / "accounts.sqlite", CFG)
    AccountAdmin(store, CFG, actor=AuditActor("ops", "pytest")).add_account(ALICE, "pencil")
    store.record_login(ALICE, "PLAIN", datetime.now(UTC))
    with store.without_waiting():
        assert store.get_account(ALICE) is not None
    with store._tx() as c:
        assert c.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    store.close()


def test_only_a_local_sqlite_file_is_read_on_the_loop(tmp_path: Path) -> None:
    store = SqliteGuardStore(tmp_path / "guard.sqlite")
    assert loop_reads_for(store, "guard database") is not None
    # A wrapper (or any other backend: Redis, PostgreSQL, LDAP) keeps its thread.
    assert loop_reads_for(Forwarding(store), "guard database") is None
    store.close()


# --- where the server's reads run -------------------------------------------------


class ThreadNoting(SqliteGuardStore):
    """The guard's SQLite state, noting the thread of each snapshot and -PLUS read."""

    def __init__(self, path: Path, locked_on_loop: bool = False) -> None:
        super().__init__(path)
        self.threads: list[int] = []
        self.locked_on_loop = locked_on_loop

    def snapshot(self, *a: Any, **k: Any) -> Snapshot:
        self.threads.append(threading.get_ident())
        if self.locked_on_loop and threading.current_thread() is threading.main_thread():
            raise GuardStoreError("database is locked")  # what busy timeout 0 gives
        return super().snapshot(*a, **k)

    def plus_fallback(self, address: str, now: float) -> float | None:
        self.threads.append(threading.get_ident())
        return super().plus_fallback(address, now)


LOOP = threading.main_thread().ident


@pytest.mark.parametrize("on_loop", [True, False])
async def test_the_guards_reads_run_on_the_loop_unless_switched_off(
    tmp_path: Path, on_loop: bool
) -> None:
    store = ThreadNoting(tmp_path / "guard.sqlite")
    g = Guard(store, GuardConfig(), StateConfig(), reads_on_loop=on_loop)
    try:
        check = await g.check(HOME, ALICE)
        assert not check.unavailable and check.refusal is None
        await g.success(check, ALICE)
        assert (await g.check(HOME, ALICE)).known  # the write is seen by the next read
        assert await g.plus_held_back(HOME) is None
        await g.hold_back_plus(HOME)
        assert await g.plus_held_back(HOME) is not None
        assert len(store.threads) == 4
        assert all((t == LOOP) == on_loop for t in store.threads), store.threads
    finally:
        await g.close()


async def test_a_read_refused_on_the_loop_is_made_on_the_thread_with_the_same_answer(
    tmp_path: Path,
) -> None:
    store = ThreadNoting(tmp_path / "guard.sqlite", locked_on_loop=True)
    g = Guard(store, GuardConfig(), StateConfig())
    try:
        first = await g.check(HOME, ALICE)
        await g.success(first, ALICE)
        second = await g.check(HOME, ALICE)
        assert not second.unavailable and second.known  # the thread's read answered
        assert store.threads[0] == LOOP and store.threads[1] != LOOP
        assert store.threads[2] != LOOP  # paused: straight to the thread
    finally:
        await g.close()


async def test_the_loop_keeps_running_while_the_guards_file_refuses_it(tmp_path: Path) -> None:
    """The loop's read fails at once; the thread's read, bounded, decides."""
    store = ThreadNoting(tmp_path / "guard.sqlite", locked_on_loop=True)
    g = Guard(store, GuardConfig(), StateConfig(timeout=0.5))
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.001)
            ticks += 1

    t = asyncio.create_task(ticker())
    try:
        for _ in range(20):
            assert not (await g.check(HOME, ALICE)).unavailable
        assert ticks > 0
    finally:
        t.cancel()
        await g.close()


class AccountThreads(SqliteAccountStore):
    def __init__(self, path: Path) -> None:
        super().__init__(path, CFG)
        self.threads: list[int] = []

    def get_account(self, name: str) -> Account | None:
        self.threads.append(threading.get_ident())
        return super().get_account(name)


@pytest.mark.parametrize("on_loop", [True, False])
async def test_a_logins_account_read_runs_on_the_loop_and_its_hash_never_does(
    tmp_path: Path, on_loop: bool
) -> None:
    store = AccountThreads(tmp_path / "accounts.sqlite")
    AccountAdmin(store, CFG, actor=AuditActor("ops", "pytest")).add_account(ALICE, "pencil")
    store.threads.clear()
    svc = AuthService(store, CFG, AuthConfig(), AuthLog(tmp_path / "auth.log"),
                      reads_on_loop=on_loop)
    hashed_on: list[int] = []
    match = svc._hasher.match

    def noting_match(*a: Any, **k: Any) -> Any:
        hashed_on.append(threading.get_ident())
        return match(*a, **k)

    svc._hasher.match = noting_match  # type: ignore[method-assign]
    try:
        for password, ok in (("pencil", True), ("wrong", False), ("pencil", True)):
            v = (await svc.resolve_detailed(VerifyPassword(ALICE, password, mechanism="PLAIN"), CTX)).answer
            assert v.ok is ok  # type: ignore[union-attr]
        profile = await svc.sender_profile(ALICE)
        assert profile == SenderProfile(ALICE)
        assert len(store.threads) == 4
        assert all((t == LOOP) == on_loop for t in store.threads), store.threads
        assert hashed_on and LOOP not in hashed_on  # Argon2id: always a thread
    finally:
        await svc.close()


@pytest.mark.parametrize("on_loop", [True, False])
async def test_a_limited_accounts_budget_is_read_on_the_loop(tmp_path: Path, on_loop: bool) -> None:
    counters = SqliteRateCounters(tmp_path / "guard.sqlite")
    threads: list[int] = []
    usage = counters.usage

    def noting_usage(*a: Any) -> Any:
        threads.append(threading.get_ident())
        return usage(*a)

    counters.usage = noting_usage  # type: ignore[method-assign]
    limiter = RateLimiter(counters, LimitsConfig(messages_per_hour=5), reads_on_loop=on_loop)
    try:
        profile = SenderProfile(ALICE)
        before = await limiter.budget(profile, None)
        await limiter.count(before.keys, 2, 2)
        after = await limiter.budget(profile, None)
        assert (before.messages_left, after.messages_left) == (5, 3)
        assert len(threads) == 2 and all((t == LOOP) == on_loop for t in threads)
    finally:
        await limiter.close()


async def test_a_closed_stores_reads_are_not_made_on_the_loop(tmp_path: Path) -> None:
    store = SqliteGuardStore(tmp_path / "guard.sqlite")
    calls = BoundedCalls("guard database reads", 1.0, (GuardStoreError,), degraded="-",
                         log=logging.getLogger("t"))
    calls.loop_reads = loop_reads_for(store, "guard database")
    made: list[int] = []

    def read() -> int:
        made.append(threading.get_ident())
        return 1

    assert await calls.call(read) == 1 and made == [LOOP]
    calls.close()
    with pytest.raises(StoreUnavailable, match="closed"):
        await calls.call(read)
    assert made == [LOOP]
    store.close()


@pytest.mark.parametrize("on_loop", [True, False])
async def test_the_key_reaches_the_guard_the_counters_and_the_accounts(
    tmp_path: Path, on_loop: bool
) -> None:
    """``server.sqlite_reads_on_loop`` as ``smtpgate serve`` builds its services."""
    cfg = Config.model_validate({
        "listeners": [{"name": "s", "address": "127.0.0.1:0", "tls": "starttls"}],
        "accounts": CFG.model_dump(),
        "server": {"sqlite_reads_on_loop": on_loop},
        "base_dir": tmp_path,
    })
    guard, rates, svc = build_guard(cfg), build_rates(cfg), build_auth_service(cfg)
    try:
        # What each hands its reads to: the loop's reader, or nothing (the thread).
        assert (guard._calls.reads.loop_reads is not None) == on_loop
        assert (rates._calls.reads.loop_reads is not None) == on_loop
        assert (svc._loop_reads is not None) == on_loop
        AccountAdmin(svc._directory, CFG, actor=AuditActor("ops", "pytest")).add_account(  # type: ignore[arg-type]
            ALICE, "pencil")
        check = await guard.check(HOME, ALICE)
        assert not check.unavailable
        assert (await svc.resolve_detailed(VerifyPassword(ALICE, "pencil", mechanism="PLAIN"),
                                           CTX)).answer.ok  # type: ignore[union-attr]
    finally:
        await guard.close()
        await rates.close()
        await svc.close()
