"""A step of the wall clock (NTP at boot, `date -s`) does not move a deferred
message's next attempt by the step: the schedule in memory keeps monotonic time, and
a time read from a state file that lies beyond anything an attempt schedules (the
clock went back since it was written) is due now. Before, a step back of a day held
every deferred message for a day, and a step forward tried them all at once."""

from __future__ import annotations

import asyncio
import logging

import pytest

from smtpgate.queue.delivery import TempFailure
from smtpgate.queue.spool import Spool
from smtpgate.queue.worker import DeliveryWorker

from .test_queue_worker import CFG, T0, FakeClock, FakeDeliverer, envelope, spool  # noqa: F401

DAY = 86400.0


async def _deferred_then_stepped(spool: Spool, step: float) -> tuple[FakeClock, FakeClock,  # noqa: F811
                                                                     FakeDeliverer, DeliveryWorker,
                                                                     asyncio.Task[None]]:
    wall, mono = FakeClock(), FakeClock(1000.0)
    d = FakeDeliverer(TempFailure("451 4.3.0 try later"))
    worker = DeliveryWorker(spool, d, CFG, wall, monotonic=mono, poll_interval=0.02)
    await spool.store(envelope(), b"m")
    runner = asyncio.create_task(worker.run())
    await asyncio.wait_for(d.called.wait(), 10)  # tried once: next in 60 s
    await asyncio.sleep(0.1)
    wall.now += step  # the step: the wall clock only
    await asyncio.sleep(0.1)
    return wall, mono, d, worker, runner


async def _stop(worker: DeliveryWorker, runner: asyncio.Task[None]) -> None:
    worker.stop()
    await asyncio.wait_for(runner, 10)


async def test_a_step_back_of_a_day_delays_the_retry_by_nothing(
    spool: Spool, caplog: pytest.LogCaptureFixture,  # noqa: F811
) -> None:
    caplog.set_level(logging.WARNING, logger="smtpgate")
    wall, mono, d, worker, runner = await _deferred_then_stepped(spool, -DAY)
    try:
        for clock in (wall, mono):
            clock.now += 61  # a minute passes
        await asyncio.sleep(0.3)
        assert len(d.calls) == 2
    finally:
        await _stop(worker, runner)
    assert "the system clock stepped -86400 s" in caplog.text


async def test_a_step_forward_of_an_hour_does_not_retry_at_once(spool: Spool) -> None:  # noqa: F811
    # (A step forward ages the queued messages by the step, as their arrival time is
    # on the wall clock: a day, queue.max_age here, would bounce them.)
    wall, mono, d, worker, runner = await _deferred_then_stepped(spool, 3600)
    try:
        await asyncio.sleep(0.2)
        assert len(d.calls) == 1  # not due for another minute
        for clock in (wall, mono):
            clock.now += 61
        await asyncio.sleep(0.3)
        assert len(d.calls) == 2
    finally:
        await _stop(worker, runner)


async def test_a_stored_time_beyond_retry_max_is_due_now(
    spool: Spool, caplog: pytest.LogCaptureFixture,  # noqa: F811
) -> None:
    """The clock went back a day while the server was down: the state file's next
    attempt is a day ahead, which no attempt ever schedules."""
    clock = FakeClock()
    d = FakeDeliverer(TempFailure("451 4.3.0 try later"))
    qid = await spool.store(envelope(), b"m")
    assert await DeliveryWorker(spool, d, CFG, clock).run_once() == 1
    clock.now -= DAY
    restarted = DeliveryWorker(spool, d, CFG, clock)
    assert await restarted.run_once() == 1
    assert "its next attempt is 86460 s ahead" in caplog.text
    state = spool.load_state(qid)
    assert state is not None and state.next_attempt - clock.now == 120  # the new clock's
    # Within retry_max: a time an attempt may have scheduled, kept.
    clock.now = state.next_attempt - 100
    assert await restarted.run_once() == 0


def test_the_default_monotonic_clock_counts_a_suspend() -> None:
    """CLOCK_MONOTONIC stops while the host sleeps: a suspend of an hour would read
    as a step forward of an hour, and every retry due meanwhile would wait an hour."""
    import time

    from smtpgate.queue import worker

    assert abs(worker._boottime() - time.clock_gettime(time.CLOCK_BOOTTIME)) < 1.0
