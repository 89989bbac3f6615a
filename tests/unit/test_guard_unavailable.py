"""A guard state or rate counters that stop answering: bounded calls, no queue
behind a stuck call, the degraded mode, one log line per episode, recovery.

The store here is stuck on a ``threading.Event`` (what another process holding
the SQLite file's locks does to the real one); no assertion is about time: a call
"answered at once" is one answered while the stuck call is still stuck.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from smtpgate.auth.bounded_calls import BoundedCalls, StoreUnavailable
from smtpgate.auth.guard import Guard
from smtpgate.auth.guard_store import ADDRESS, Block, GuardStoreError, Snapshot, SqliteGuardStore
from smtpgate.auth.sender_profile import SenderProfile
from smtpgate.config import GuardConfig, LimitsConfig, StateConfig
from smtpgate.policy.rate_counters import RateCountersError
from smtpgate.policy.rates import RateLimiter

ALICE = "alice@example.org"
HOME, AWAY = "192.0.2.1", "198.51.100.7"
#: Generous, so that a loaded machine never trips it by accident (the default is 0.25 s).
TIMEOUT = 0.5

log = logging.getLogger("test.bounded")


class Stuck:
    """A store method that blocks while ``stuck`` is set, counting its runs."""

    def __init__(self) -> None:
        self.released = threading.Event()
        self.released.set()
        self.runs = 0

    def hold(self) -> None:
        self.released.clear()

    def release(self) -> None:
        self.released.set()

    def __call__(self) -> str:
        self.runs += 1
        self.released.wait(10)
        return "answer"


# --- bounded calls ------------------------------------------------------------------


async def test_a_stuck_store_is_answered_within_the_bound_and_nothing_queues_behind_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls = BoundedCalls("test store", TIMEOUT, (RuntimeError,), degraded="doing without", log=log)
    store = Stuck()
    try:
        store.hold()
        with pytest.raises(StoreUnavailable, match="no answer within"):
            await calls.call(store)
        assert calls.unavailable
        # The thread is still stuck: these are answered without being queued.
        for _ in range(5):
            with pytest.raises(StoreUnavailable, match="still not answering"):
                await calls.call(store)
        assert not store.released.is_set() and store.runs == 1
        store.release()
        for _ in range(100):  # the stuck call finishes on its thread
            if not calls.unavailable:
                break
            await asyncio.sleep(0.01)
        assert await calls.call(store) == "answer"
        assert store.runs == 2
    finally:
        store.release()
        calls.close()
    down = [r for r in caplog.records if "not answering" in r.message]
    up = [r for r in caplog.records if "answering again" in r.message]
    assert len(down) == 1 and down[0].levelno == logging.ERROR
    assert "doing without" in down[0].message
    assert len(up) == 1 and "6 call(s) were answered without it" in up[0].message


async def test_calls_queued_behind_a_stuck_one_are_withdrawn_not_run_later() -> None:
    calls = BoundedCalls("test store", TIMEOUT, (RuntimeError,), degraded="-", log=log)
    store = Stuck()
    try:
        store.hold()
        results = await asyncio.gather(*(calls.call(store) for _ in range(4)), return_exceptions=True)
        assert all(isinstance(r, StoreUnavailable) for r in results)
        store.release()
        await asyncio.get_running_loop().run_in_executor(None, calls.close)
        assert store.runs == 1  # the three queued ones never ran
    finally:
        store.release()


async def test_a_store_error_is_an_episode_and_the_next_success_ends_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls = BoundedCalls("test store", TIMEOUT, (RuntimeError,), degraded="-", log=log)
    broken = True

    def fn() -> int:
        if broken:
            raise RuntimeError("disk on fire")
        return 7

    try:
        for _ in range(3):
            with pytest.raises(StoreUnavailable, match="disk on fire"):
                await calls.call(fn)
        broken = False
        assert await calls.call(fn) == 7 and not calls.unavailable
    finally:
        calls.close()
    assert caplog.text.count("not answering (disk on fire)") == 1
    assert caplog.text.count("answering again") == 1


# --- the guard's degraded mode ------------------------------------------------------


class StuckGuardStore(SqliteGuardStore):
    """The SQLite state, but every call first waits while ``gate`` is closed: storage
    that stalls, for which ``server.sqlite_reads_on_loop`` is set false (the guards
    over it get ``reads_on_loop=False``; a lock is what stops a local file's reads,
    and the loop never waits for one: test_loop_reads.py)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.gate = threading.Event()
        self.gate.set()
        #: Only writes wait (another process's write transaction on a WAL file).
        self.reads_free = False

    def snapshot(self, *a: object, **k: object) -> Snapshot:
        if not self.reads_free:
            self.gate.wait(10)
        return super().snapshot(*a, **k)  # type: ignore[arg-type]

    def record_failure(self, *a: object, **k: object):  # type: ignore[no-untyped-def]
        self.gate.wait(10)
        return super().record_failure(*a, **k)  # type: ignore[arg-type]

    def record_success(self, *a: object, **k: object) -> None:
        self.gate.wait(10)
        super().record_success(*a, **k)  # type: ignore[arg-type]


def cfg() -> GuardConfig:
    return GuardConfig(known_lockout_threshold=3, penalty_base=0.5, penalty_max=4.0)


def state(mode: str = "known") -> StateConfig:
    return StateConfig(timeout=TIMEOUT, on_unavailable=mode)  # type: ignore[arg-type]


@pytest.fixture
async def stuck(tmp_path: Path) -> AsyncIterator[tuple[Guard, StuckGuardStore]]:
    store = StuckGuardStore(tmp_path / "guard.sqlite")
    g = Guard(store, cfg(), state(), reads_on_loop=False)
    yield g, store
    store.gate.set()
    await g.close()


async def _known_from_home(g: Guard) -> None:
    """Alice logs in from HOME while the state answers."""
    c = await g.check(HOME, ALICE)
    assert not c.unavailable
    await g.success(c, ALICE)


async def test_known_addresses_proceed_and_others_get_a_temporary_refusal(
    stuck: tuple[Guard, StuckGuardStore], caplog: pytest.LogCaptureFixture
) -> None:
    g, store = stuck
    await _known_from_home(g)
    store.gate.clear()
    home = await g.check(HOME, ALICE)
    assert home.known and not home.unavailable and home.refusal is None and home.delay == 0
    away = await g.check(AWAY, ALICE)
    assert away.unavailable and "only addresses known" in away.unavailable
    assert away.refusal is None  # a backend fault, not a block
    assert away.delay == 0.5  # after a penalty ...
    assert (await g.check(AWAY, ALICE)).delay == 1.0  # ... that grows with each retry
    assert caplog.text.count("guard database reads not answering") == 1
    store.gate.set()


async def test_failures_meanwhile_meet_the_penalty_and_the_lockout_in_memory(
    stuck: tuple[Guard, StuckGuardStore],
) -> None:
    g, store = stuck
    await _known_from_home(g)
    store.gate.clear()
    for n in range(3):  # known_lockout_threshold
        c = await g.check(HOME, ALICE)
        assert not c.unavailable
        assert c.delay == [0.0, 0.5, 1.0][n]
        assert await g.failure(c, counts_account=True) == []
    refused = await g.check(HOME, ALICE)
    assert "too many failed logins" in refused.unavailable
    store.gate.set()


async def test_when_only_writes_are_stuck_the_snapshot_still_decides(tmp_path: Path) -> None:
    """Reads answer, writes do not: known comes from the state (a process that
    never saw the login knows it), blocks still apply, failures meet the penalty."""
    store = StuckGuardStore(tmp_path / "guard.sqlite")
    first = Guard(store, cfg(), state(), reads_on_loop=False)
    await _known_from_home(first)
    await first.close()
    store = StuckGuardStore(tmp_path / "guard.sqlite")
    g = Guard(store, cfg(), state(), reads_on_loop=False)  # a fresh process: nothing in memory
    try:
        store.reads_free = True
        store.start_blocks([Block(ADDRESS, "203.0.113.9", 0, 4e9, "test")])
        store.gate.clear()
        c = await g.check(HOME, ALICE)
        assert not c.unavailable and c.known
        assert await g.failure(c, counts_account=True) == []  # not recorded: bounded
        assert g.unavailable
        home = await g.check(HOME, ALICE)
        assert home.known and not home.unavailable and home.delay == 0.5  # penalty from memory
        assert (await g.check(AWAY, ALICE)).unavailable
        assert (await g.check("203.0.113.9", ALICE)).refusal is not None  # the block holds
        assert not store.gate.is_set()
    finally:
        store.gate.set()
        await g.close()


class LockedWrites(SqliteGuardStore):
    """Writes fail at once while ``locked`` (SQLite's busy timeout ran out)."""

    locked = False

    def _tx(self):  # type: ignore[no-untyped-def]
        if self.locked:
            raise GuardStoreError("database is locked")
        return super()._tx()


async def test_a_write_episode_ends_by_itself_though_refused_logins_write_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = LockedWrites(tmp_path / "guard.sqlite")
    g = Guard(store, cfg(), state())
    try:
        store.locked = True
        assert await g.failure(await g.check(AWAY, ALICE), counts_account=True) == []
        assert (await g.check(AWAY, ALICE)).unavailable
        store.locked = False
        for _ in range(100):  # the refused checks probe with a write of their own
            if not (await g.check(AWAY, ALICE)).unavailable:
                break
            await asyncio.sleep(0.01)
        assert not g.unavailable
        assert caplog.text.count("guard database writes not answering (") == 1
        assert caplog.text.count("guard database writes answering again") == 1
    finally:
        await g.close()


@pytest.mark.parametrize(("mode", "home_ok", "away_ok"), [("open", True, True), ("closed", False, False)])
async def test_open_and_closed_modes(tmp_path: Path, mode: str, home_ok: bool, away_ok: bool) -> None:
    store = StuckGuardStore(tmp_path / "guard.sqlite")
    g = Guard(store, cfg(), state(mode), reads_on_loop=False)
    try:
        await _known_from_home(g)
        store.gate.clear()
        assert (not (await g.check(HOME, ALICE)).unavailable) == home_ok
        assert (not (await g.check(AWAY, ALICE)).unavailable) == away_ok
    finally:
        store.gate.set()
        await g.close()


async def test_concurrent_checks_do_not_wait_for_each_other(
    stuck: tuple[Guard, StuckGuardStore],
) -> None:
    """Fifty logins at once while the state is stuck all get their answer while it
    is still stuck: none waited for the stuck call to end."""
    g, store = stuck
    store.gate.clear()
    checks = await asyncio.gather(*(g.check(f"203.0.113.{i}", ALICE) for i in range(50)))
    assert all(c.unavailable for c in checks)
    assert not store.gate.is_set()
    store.gate.set()


async def test_the_guard_recovers_by_itself(
    stuck: tuple[Guard, StuckGuardStore], caplog: pytest.LogCaptureFixture
) -> None:
    g, store = stuck
    store.gate.clear()
    assert (await g.check(AWAY, ALICE)).unavailable
    store.gate.set()
    for _ in range(100):
        c = await g.check(AWAY, ALICE)
        if not c.unavailable:
            break
        await asyncio.sleep(0.01)
    assert not c.unavailable and not g.unavailable
    assert caplog.text.count("guard database reads answering again") == 1


# --- the rate limits ----------------------------------------------------------------


class StuckCounters:
    def __init__(self) -> None:
        self.gate = threading.Event()
        self.added: list[tuple[str, ...]] = []

    def add_usage(self, keys: Sequence[str], bucket: int, messages: int, recipients: int) -> None:
        self.gate.wait(10)
        self.added.append(tuple(keys))

    def usage(self, keys: Sequence[str], since_bucket: int) -> dict[str, tuple[int, int]]:
        self.gate.wait(10)
        if not self.gate.is_set():
            raise RateCountersError("locked")
        return {k: (5, 5) for k in keys}

    def close(self) -> None:
        pass


async def test_stuck_rate_counters_fail_open_without_queueing(caplog: pytest.LogCaptureFixture) -> None:
    counters = StuckCounters()
    limiter = RateLimiter(counters, LimitsConfig(messages_per_hour=5), store_timeout=TIMEOUT)
    try:
        budgets = await asyncio.gather(
            *(limiter.budget(SenderProfile(f"u{i}@x.org"), None) for i in range(10))
        )
        assert all(b.messages_left is None for b in budgets)  # not limited meanwhile
        await limiter.count(budgets[0].keys, 1, 1)
        assert not counters.gate.is_set() and limiter.unavailable
        assert caplog.text.count("rate counters reads not answering") == 1
        assert caplog.text.count("rate counters writes not answering") == 1
        counters.gate.set()
        for _ in range(100):
            if not limiter.unavailable:
                break
            await asyncio.sleep(0.01)
        b = await limiter.budget(SenderProfile("a@x.org"), None)
        assert b.messages_left == 0  # limited again: 5 of 5 used
    finally:
        counters.gate.set()
        await limiter.close()
    assert "rate counters reads answering again" in caplog.text


def test_the_bound_and_the_mode_are_config_keys() -> None:
    c = StateConfig()
    assert c.timeout == 0.25 and c.on_unavailable == "known"
    with pytest.raises(ValueError):
        StateConfig(timeout=0)
