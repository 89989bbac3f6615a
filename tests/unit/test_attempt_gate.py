"""auth/attempt_gate.py: one attempt at a time per address, in arrival order, and
a holder that never lets go cannot lock an address out."""

from __future__ import annotations

import asyncio
import gc

import pytest

from smtpgate.auth.attempt_gate import AttemptGate


async def test_attempts_from_one_address_follow_one_another_in_arrival_order() -> None:
    gate = AttemptGate()
    order: list[str] = []
    first = await gate.acquire("192.0.2.7")

    async def later(name: str) -> None:
        hold = await gate.acquire("192.0.2.7")
        order.append(name)
        await asyncio.sleep(0)
        gate.release("192.0.2.7", hold)

    waiting = [asyncio.create_task(later(n)) for n in ("b", "c", "d")]
    await asyncio.wait_for(gate.acquire("192.0.2.8"), 1)  # another address: at once
    await asyncio.sleep(0.01)
    assert order == []  # all wait for the first
    gate.release("192.0.2.7", first)
    await asyncio.gather(*waiting)
    assert order == ["b", "c", "d"]
    assert not gate.busy("192.0.2.7") and gate.busy("192.0.2.8")


async def test_a_holder_that_never_releases_delays_the_next_by_max_wait_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    gate = AttemptGate(max_wait=0.05)
    stuck = await gate.acquire("192.0.2.7")
    nxt = await asyncio.wait_for(gate.acquire("192.0.2.7"), 1)  # the stuck hold ended
    assert "the next one goes on" in caplog.text
    gate.release("192.0.2.7", stuck)  # late: its hold ended, so it releases nothing
    assert gate.busy("192.0.2.7")
    gate.release("192.0.2.7", nxt)
    assert not gate.busy("192.0.2.7")


async def test_a_waiter_cancelled_after_the_hand_over_passes_it_on() -> None:
    gate = AttemptGate()
    held = await gate.acquire("k")
    first = asyncio.create_task(gate.acquire("k"))
    second = asyncio.create_task(gate.acquire("k"))
    await asyncio.sleep(0)
    gate.release("k", held)  # handed to `first` ...
    first.cancel()  # ... which is cancelled before it runs
    try:
        mine = await first  # the hand-over won the race: `first` holds it
    except asyncio.CancelledError:
        mine = None  # cancelled: it passed the gate on
    if mine is not None:
        assert not second.done()
        gate.release("k", mine)
    last = await asyncio.wait_for(second, 1)  # never lost either way
    gate.release("k", last)
    assert not gate.busy("k")


async def test_a_cancelled_waiter_is_skipped() -> None:
    gate = AttemptGate()
    held = await gate.acquire("k")
    gone = asyncio.create_task(gate.acquire("k"))
    await asyncio.sleep(0)
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    gate.release("k", held)
    assert not gate.busy("k")


async def test_an_attempt_dropped_without_a_conclusion_releases_its_address() -> None:
    """The login path holds the gate through a finaliser on the attempt object."""
    import weakref

    class Attempt:
        pass

    gate = AttemptGate()
    hold = await gate.acquire("k")
    attempt = Attempt()
    weakref.finalize(attempt, gate.release, "k", hold)
    del attempt
    gc.collect()
    assert not gate.busy("k")


async def test_waiters_behind_a_stuck_holder_do_not_go_on_together() -> None:
    """A SCRAM exchange left without its proof holds the account's gate for up to
    `limits.auth_deadline`. Every attempt waiting behind it gave up after
    `max_wait` at the same moment and went on without the gate, so all of them
    read the same record: 40 guesses from 40 new addresses behind two such
    stallers (one per worker) were all verified against lockout_threshold = 5.
    Now a hold lasts `max_wait` at most and the gate goes to the next waiter
    alone: the others still wait, one after another."""
    gate = AttemptGate(max_wait=0.2)
    await gate.acquire("account alice@example.org")  # the staller: never released
    waiters = [asyncio.create_task(gate.acquire("account alice@example.org")) for _ in range(5)]
    await asyncio.sleep(0.3)  # the stuck hold has ended; the first waiter's has not
    assert sum(w.done() for w in waiters) == 1
    for w in waiters:
        w.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)
