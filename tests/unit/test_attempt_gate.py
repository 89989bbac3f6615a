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
    assert await gate.acquire("192.0.2.7")

    async def later(name: str) -> None:
        assert await gate.acquire("192.0.2.7")
        order.append(name)
        await asyncio.sleep(0)
        gate.release("192.0.2.7")

    waiting = [asyncio.create_task(later(n)) for n in ("b", "c", "d")]
    other = await asyncio.wait_for(gate.acquire("192.0.2.8"), 1)  # another address: at once
    assert other
    await asyncio.sleep(0.01)
    assert order == []  # all wait for the first
    gate.release("192.0.2.7")
    await asyncio.gather(*waiting)
    assert order == ["b", "c", "d"]
    assert not gate.busy("192.0.2.7") and gate.busy("192.0.2.8")


async def test_a_holder_that_never_releases_delays_the_next_by_max_wait_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    gate = AttemptGate(max_wait=0.05)
    assert await gate.acquire("192.0.2.7")
    assert await gate.acquire("192.0.2.7") is False  # gave up waiting: goes on without it
    assert "waited" in caplog.text
    gate.release("192.0.2.7")
    assert not gate.busy("192.0.2.7")  # the one that gave up was skipped


async def test_a_waiter_cancelled_after_the_hand_over_passes_it_on() -> None:
    gate = AttemptGate()
    assert await gate.acquire("k")
    first = asyncio.create_task(gate.acquire("k"))
    second = asyncio.create_task(gate.acquire("k"))
    await asyncio.sleep(0)
    gate.release("k")  # handed to `first` ...
    first.cancel()  # ... which is cancelled before it runs
    try:
        held = await first  # the hand-over won the race: `first` holds it
    except asyncio.CancelledError:
        held = False  # cancelled: it passed the gate on
    if held:
        assert not second.done()
        gate.release("k")
    assert await asyncio.wait_for(second, 1) is True  # never lost either way
    gate.release("k")
    assert not gate.busy("k")


async def test_a_cancelled_waiter_is_skipped() -> None:
    gate = AttemptGate()
    assert await gate.acquire("k")
    gone = asyncio.create_task(gate.acquire("k"))
    await asyncio.sleep(0)
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    gate.release("k")
    assert not gate.busy("k")


async def test_an_attempt_dropped_without_a_conclusion_releases_its_address() -> None:
    """The login path holds the gate through a finaliser on the attempt object."""
    import weakref

    class Attempt:
        pass

    gate = AttemptGate()
    assert await gate.acquire("k")
    attempt = Attempt()
    weakref.finalize(attempt, gate.release, "k")
    del attempt
    gc.collect()
    assert not gate.busy("k")
