"""A lockout across a step of the wall clock: the state keeps wall-clock times, so a
step back of a day made a 15-minute lockout last a day and 15 minutes (and the
failures recorded before the step kept counting for a day). A block that began
"after now" is started again from now, for its own length."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from smtpgate.auth.guard import Guard, decide
from smtpgate.auth.guard_state import ACCOUNT_NEW, Snapshot
from smtpgate.auth.guard_store import SqliteGuardStore
from tests.unit.patient_state import PATIENT_STATE

from .test_guard import ALICE, CFG, Clock

DAY = 86400.0
GUESSER = "203.0.113.9"


@pytest.fixture
async def guard(tmp_path: Path) -> AsyncIterator[tuple[Guard, Clock]]:
    clock = Clock()
    g = Guard(SqliteGuardStore(tmp_path / "guard.sqlite"), CFG, PATIENT_STATE, clock=clock)
    yield g, clock
    await g.close()


async def lock_alice(g: Guard, clock: Clock) -> None:
    for _ in range(CFG.lockout_threshold):
        await g.failure(await g.check(GUESSER, ALICE), counts_account=True)
        clock.now += 1
    refused = (await g.check(GUESSER, ALICE)).refusal
    assert refused is not None and refused.kind == ACCOUNT_NEW


async def test_a_step_back_of_a_day_does_not_make_a_lockout_last_a_day(
    guard: tuple[Guard, Clock], caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="smtpgate.guard")
    g, clock = guard
    await lock_alice(g, clock)
    clock.now -= DAY
    # Still locked: a step is no way out of a lockout...
    refused = (await g.check(GUESSER, ALICE)).refusal
    assert refused is not None and refused.kind == ACCOUNT_NEW
    assert "the clock went back" in caplog.text
    # With several nodes, a clock ahead on another node reads the same way: the
    # line said only "the clock went back", and an administrator looked at this one.
    assert "the node that started it has its clock that far ahead of this one's" in (
        caplog.text)
    clock.now += CFG.lockout_duration - 1
    assert (await g.check(GUESSER, ALICE)).refusal is not None
    # ...and it ends one lockout_duration after the step was seen, not a day later.
    clock.now += 2
    assert (await g.check(GUESSER, ALICE)).refusal is None
    # The failures from before the step no longer count: one more is not a lockout.
    await g.failure(await g.check(GUESSER, ALICE), counts_account=True)
    assert (await g.check(GUESSER, ALICE)).refusal is None


async def test_a_step_forward_ends_a_lockout_as_time_passing_would(
    guard: tuple[Guard, Clock],
) -> None:
    """Documented, not fixed: the times alone cannot tell a step from a server that
    was down for that long."""
    g, clock = guard
    await lock_alice(g, clock)
    clock.now += CFG.lockout_duration + 1
    assert (await g.check(GUESSER, ALICE)).refusal is None


def test_a_throttle_ignores_a_failure_from_beyond_a_step_back() -> None:
    from smtpgate.auth.guard_state import THROTTLE, Block

    now = 1_000_000.0
    block = Block(THROTTLE, ALICE, now - 10, now + 600, "many addresses")
    for last, throttled in ((now - 1, True), (now + 30, True), (now + DAY, False)):
        snap = Snapshot((block,), None, 0, last)
        _, refusal = decide(snap, now=now, known_seconds=86400, throttle_interval=60)
        assert (refusal is not None) is throttled, last


def test_a_key_set_fetched_before_a_step_back_is_fetched_again() -> None:
    """The cached set's age came out negative after a step back: kept for as long as
    the step (a day) instead of jwks_refresh_seconds."""
    from .test_oauth_verifier import Clock as OAuthClock
    from .test_oauth_verifier import FakeFetch, claims, issuer, mint, verifier

    fetch, clock = FakeFetch(), OAuthClock()
    v = verifier(issuer(jwks_refresh_seconds=100), fetch=fetch, clock=clock)
    assert v.verify(mint()).ok
    clock.now -= DAY
    assert v.verify(mint(claims(iat=int(clock.now) - 10, nbf=int(clock.now) - 10,
                                exp=int(clock.now) + 300))).ok
    assert len(fetch.calls) == 2


# --- the in-memory fallback (guard_memory.py) -------------------------------------------


@pytest.mark.parametrize("step", [DAY, -DAY], ids=["forward", "back"])
async def test_the_in_memory_lockout_ignores_steps_of_the_wall_clock(
    tmp_path: Path, step: float,
) -> None:
    """While the guard database does not answer, failures are counted in memory.
    Those windows used the wall clock: a step forward of a day lifted the lockout at
    once, a step back made it last a day longer. They follow the monotonic clock
    now; the known addresses stay in wall-clock time (they come from the state)."""
    from .test_guard_unavailable import HOME, StuckGuardStore, _known_from_home, cfg, state

    wall, mono = Clock(), Clock()
    store = StuckGuardStore(tmp_path / "guard.sqlite")
    c = cfg()
    g = Guard(store, c, state(), reads_on_loop=False, clock=wall, monotonic=mono)
    try:
        await _known_from_home(g)
        store.gate.clear()
        for _ in range(c.known_lockout_threshold):
            await g.failure(await g.check(HOME, ALICE), counts_account=True)
            mono.now += 1
            wall.now += 1
        assert "too many failed logins" in (await g.check(HOME, ALICE)).unavailable
        wall.now += step
        assert "too many failed logins" in (await g.check(HOME, ALICE)).unavailable
        mono.now += c.lockout_window
        assert not (await g.check(HOME, ALICE)).unavailable  # over on time
    finally:
        store.gate.set()
        await g.close()
