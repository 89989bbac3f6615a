"""The delivery worker: retries on a fake clock, give-up, concurrency, stop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import pytest

from smtpgate.config import QueueConfig
from smtpgate.queue.delivery import (
    Delivered,
    DeliveryResult,
    PermFailure,
    QueuedMessage,
    TempFailure,
)
from smtpgate.queue.envelope import Envelope
from smtpgate.queue.spool import Spool
from smtpgate.queue.state import RcptStatus
from smtpgate.queue.worker import DeliveryWorker

T0 = 1_700_000_000.0
CFG = QueueConfig(retry_initial=60.0, retry_max=3600.0, max_age=86400.0)


def envelope(*rcpts: str) -> Envelope:
    return Envelope("alice@example.org", rcpts or ("bob@example.net",), "alice", "192.0.2.7",
                    "laptop.example.org", "submission", received_at=T0)


class FakeClock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeDeliverer:
    """Answers from a per-recipient script; records every call."""

    def __init__(self, default: DeliveryResult | None = None) -> None:
        self.default = default or Delivered()
        self.by_rcpt: dict[str, DeliveryResult] = {}
        self.calls: list[tuple[QueuedMessage, tuple[str, ...]]] = []
        self.gate: asyncio.Event | None = None  # if set, deliveries wait for it
        self.active = 0
        self.max_active = 0
        self.called = asyncio.Event()
        self.closed = False

    async def deliver(
        self, message: QueuedMessage, recipients: tuple[str, ...]
    ) -> Mapping[str, DeliveryResult]:
        self.calls.append((message, recipients))
        self.called.set()
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            if self.gate is not None:
                await self.gate.wait()
            return {r: self.by_rcpt.get(r, self.default) for r in recipients}
        finally:
            self.active -= 1

    async def close(self) -> None:
        self.closed = True


@pytest.fixture
async def spool(tmp_path: Path) -> AsyncIterator[Spool]:
    s = Spool(tmp_path / "spool")
    yield s
    await s.close()


async def test_delivered_message_leaves_the_spool(spool: Spool) -> None:
    qid = await spool.store(envelope("a@x", "b@x"), b"m")
    d = FakeDeliverer()
    worker = DeliveryWorker(spool, d, CFG, FakeClock())
    assert await worker.run_once() == 1
    assert spool.list_ids() == []
    assert d.calls[0][0].queue_id == qid
    assert d.calls[0][1] == ("a@x", "b@x")


async def test_backoff_schedule_on_a_fake_clock(spool: Spool) -> None:
    qid = await spool.store(envelope(), b"m")
    clock = FakeClock()
    d = FakeDeliverer(TempFailure("451 4.3.0 try later"))
    worker = DeliveryWorker(spool, d, CFG, clock)
    delays = []
    for _ in range(9):
        assert await worker.run_once() == 1
        state = spool.load_state(qid)
        assert state is not None
        delays.append(state.next_attempt - clock.now)
        # Not due a second before the next attempt...
        clock.now = state.next_attempt - 1
        assert await worker.run_once() == 0
        clock.now = state.next_attempt
    assert delays == [60, 120, 240, 480, 960, 1920, 3600, 3600, 3600]
    assert spool.load_state(qid).recipients[0].attempts == 9  # type: ignore[union-attr]


async def test_gives_up_after_max_age_and_logs_a_bounce(
    spool: Spool, caplog: pytest.LogCaptureFixture
) -> None:
    qid = await spool.store(envelope(), b"m")
    clock = FakeClock()
    d = FakeDeliverer(TempFailure("451 4.3.0 try later"))
    worker = DeliveryWorker(spool, d, CFG, clock)
    attempts = 0
    with caplog.at_level(logging.INFO, logger="smtpgate.queue"):
        while qid in spool.list_ids():
            attempts += await worker.run_once()
            state = spool.load_state(qid)
            if state is not None:
                assert state.next_attempt <= T0 + CFG.max_age  # never past the deadline
                clock.now = state.next_attempt
            assert attempts < 100
    assert clock.now == T0 + CFG.max_age  # the last try was at the deadline
    bounces = [r for r in caplog.records if "bounce" in r.getMessage()]
    assert len(bounces) == 1 and bounces[0].levelno == logging.WARNING
    assert "expired" in bounces[0].getMessage() and "bob@example.net" in bounces[0].getMessage()
    # RFC 3464 reports to the sender, from the null sender: one delay warning (after
    # queue.delay_warning) and one bounce, each queued once.
    reports = [spool.load(q) for q in spool.list_ids()]
    assert sorted(b"Action: delayed" in data for _, data in reports) == [False, True]
    assert [b"Action: failed" in data for _, data in reports].count(True) == 1
    assert all(env.mail_from == "" and env.rcpt_to == ("alice@example.org",)
               for env, _ in reports)


async def test_permanent_failure_bounces_at_once(
    spool: Spool, caplog: pytest.LogCaptureFixture
) -> None:
    await spool.store(envelope(), b"m")
    worker = DeliveryWorker(spool, FakeDeliverer(PermFailure("550 5.1.1 unknown")), CFG,
                            FakeClock())
    with caplog.at_level(logging.WARNING, logger="smtpgate.queue"):
        await worker.run_once()
    assert spool.list_ids() == []
    assert "550 5.1.1 unknown" in caplog.text


async def test_the_bounce_of_a_message_near_the_size_limit_returns_its_header_only(
    spool: Spool,
) -> None:
    """The worker gives `dsn.build_report` ``limits.max_message_size``: the bounce of
    a message near it would be over it with the message whole, and be refused
    by a next hop with that limit, then dropped (a report from the null sender)."""
    data = b"Subject: big\r\n\r\n" + b"x" * 5000
    await spool.store(envelope(), data)
    d = FakeDeliverer()
    d.by_rcpt = {"bob@example.net": PermFailure("550 5.1.1 unknown")}
    worker = DeliveryWorker(spool, d, CFG, FakeClock(), report_size_limit=len(data) + 200)
    await worker.run_once()
    assert spool.list_ids() == []
    report = [m for m, rcpts in d.calls if rcpts == ("alice@example.org",)]
    assert len(report) == 1 and report[0].envelope.mail_from == ""
    assert b"text/rfc822-headers" in report[0].data and b"xxxx" not in report[0].data


async def test_only_pending_recipients_are_retried(spool: Spool) -> None:
    qid = await spool.store(envelope("ok@x", "later@x", "never@x"), b"m")
    clock = FakeClock()
    d = FakeDeliverer()
    d.by_rcpt = {"later@x": TempFailure("452 4.2.2 full"), "never@x": PermFailure("550 no")}
    worker = DeliveryWorker(spool, d, CFG, clock)
    await worker.run_once()
    state = spool.load_state(qid)
    assert state is not None
    assert {r.address: r.status for r in state.recipients} == {
        "ok@x": RcptStatus.DELIVERED,
        "later@x": RcptStatus.PENDING,
        "never@x": RcptStatus.FAILED,
    }
    d.by_rcpt = {}
    clock.now = state.next_attempt
    await worker.run_once()
    assert d.calls[-1][1] == ("later@x",)
    assert spool.list_ids() == []


async def test_messages_found_at_start_are_flagged_maybe_delivered(spool: Spool) -> None:
    old = await spool.store(envelope(), b"before the worker started")
    d = FakeDeliverer(TempFailure("451"))
    clock = FakeClock()
    worker = DeliveryWorker(spool, d, CFG, clock)
    await worker.run_once()
    new = await spool.store(envelope(), b"after")
    worker.wake(new)
    clock.now += 3600
    await worker.run_once()
    flags = [(m.queue_id, m.maybe_delivered) for m, _ in d.calls]
    # Only the first attempt at a message from before the start is suspect.
    assert flags[0] == (old, True)
    assert sorted(flags[1:]) == sorted([(old, False), (new, False)])


async def test_a_deliverer_exception_is_a_temporary_failure_and_suspect(
    spool: Spool, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken(FakeDeliverer):
        async def deliver(
            self, message: QueuedMessage, recipients: tuple[str, ...]
        ) -> Mapping[str, DeliveryResult]:
            await super().deliver(message, recipients)
            raise RuntimeError("bug")

    qid = await spool.store(envelope(), b"m")
    clock = FakeClock()
    d = Broken()
    worker = DeliveryWorker(spool, d, CFG, clock)
    await worker.run_once()  # suspect anyway: found at start
    clock.now += 60
    await worker.run_once()
    assert [m.maybe_delivered for m, _ in d.calls] == [True, True]
    assert spool.load_state(qid).recipients[0].attempts == 2  # type: ignore[union-attr]
    assert "deliverer raised" in caplog.text


async def test_corrupt_message_is_quarantined(spool: Spool) -> None:
    qid = await spool.store(envelope(), b"m")
    (spool.directory / "queue" / f"{qid}.msg").write_bytes(b"garbage")
    d = FakeDeliverer()
    await DeliveryWorker(spool, d, CFG, FakeClock()).run_once()
    assert d.calls == [] and spool.list_ids() == []
    assert (spool.directory / "corrupt" / f"{qid}.msg").exists()


async def test_corrupt_message_is_quarantined_after_corrupt_dir_was_removed(
    spool: Spool,
) -> None:
    """An administrator who looked at corrupt/ and removed it: the rename into it
    failed with ENOENT, taken for the message gone, so the worker logged "moving it
    to corrupt/" at every scan and left it in the queue. corrupt/ is made again."""
    (spool.directory / "corrupt").rmdir()
    qid = await spool.store(envelope(), b"m")
    (spool.directory / "queue" / f"{qid}.msg").write_bytes(b"garbage")
    d = FakeDeliverer()
    await DeliveryWorker(spool, d, CFG, FakeClock()).run_once()
    assert d.calls == [] and spool.list_ids() == []
    assert (spool.directory / "corrupt" / f"{qid}.msg").read_bytes() == b"garbage"


async def test_concurrency_is_bounded(spool: Spool) -> None:
    for _ in range(10):
        await spool.store(envelope(), b"m")
    d = FakeDeliverer()
    d.gate = asyncio.Event()
    worker = DeliveryWorker(spool, d, CFG, FakeClock(), concurrency=3)
    task = asyncio.create_task(worker.run_once())
    while d.active < 3:
        await asyncio.sleep(0)
    for _ in range(20):
        await asyncio.sleep(0)
    assert d.active == 3
    d.gate.set()
    assert await task == 10
    assert d.max_active == 3
    assert spool.list_ids() == []


async def test_only_one_worker_delivers_from_a_spool(spool: Spool) -> None:
    lock = spool.try_lock_delivery()
    assert lock is not None
    with lock, pytest.raises(RuntimeError, match="another process"):
        await DeliveryWorker(spool, FakeDeliverer(), CFG).run_once()


async def _until(predicate: object, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():  # type: ignore[operator]
            await asyncio.sleep(0.005)


async def test_run_delivers_on_wake_and_stops_cleanly(spool: Spool) -> None:
    d = FakeDeliverer()
    # A long poll interval: only wake() can explain a quick delivery.
    worker = DeliveryWorker(spool, d, CFG, poll_interval=60.0)
    runner = asyncio.create_task(worker.run())
    await asyncio.sleep(0)
    await spool.store(envelope(), b"m")
    worker.wake()
    await _until(lambda: not spool.list_ids())
    worker.stop()
    await asyncio.wait_for(runner, 10)
    assert len(d.calls) == 1
    assert d.closed  # run() owns the deliverer once it returns


async def test_run_polls_for_messages_stored_by_other_processes(spool: Spool) -> None:
    d = FakeDeliverer()
    worker = DeliveryWorker(spool, d, CFG, poll_interval=0.05)
    runner = asyncio.create_task(worker.run())
    spool.store_sync(envelope(), b"stored elsewhere, nobody calls wake()")
    await _until(lambda: not spool.list_ids())
    worker.stop()
    await asyncio.wait_for(runner, 10)


async def test_stop_lets_in_flight_deliveries_finish(spool: Spool) -> None:
    await spool.store(envelope(), b"m")
    d = FakeDeliverer()
    d.gate = asyncio.Event()
    worker = DeliveryWorker(spool, d, CFG, poll_interval=60.0)
    runner = asyncio.create_task(worker.run())
    await asyncio.wait_for(d.called.wait(), 10)
    worker.stop()
    await asyncio.sleep(0)
    assert not runner.done()  # waiting for the delivery, not abandoning it
    d.gate.set()
    await asyncio.wait_for(runner, 10)
    assert spool.list_ids() == []  # its outcome was recorded


async def test_stop_grace_cancels_stuck_deliveries_and_keeps_the_message(spool: Spool) -> None:
    qid = await spool.store(envelope(), b"m")
    d = FakeDeliverer()
    d.gate = asyncio.Event()  # never set: a relay that hangs
    worker = DeliveryWorker(spool, d, CFG, poll_interval=60.0, stop_grace=0.05)
    runner = asyncio.create_task(worker.run())
    await asyncio.wait_for(d.called.wait(), 10)
    worker.stop()
    await asyncio.wait_for(runner, 10)
    assert spool.list_ids() == [qid]  # untouched: retried by the next run
    assert spool.load_state(qid) is None


async def test_a_waiting_worker_takes_over_when_the_lock_is_released(spool: Spool) -> None:
    lock = spool.try_lock_delivery()
    assert lock is not None
    await spool.store(envelope(), b"m")
    d = FakeDeliverer()
    worker = DeliveryWorker(spool, d, CFG, poll_interval=0.02)
    runner = asyncio.create_task(worker.run())
    for _ in range(5):
        await asyncio.sleep(0.02)
    assert d.calls == []
    lock.release()  # e.g. the old process died
    await _until(lambda: not spool.list_ids())
    worker.stop()
    await asyncio.wait_for(runner, 10)


# --- stopping within the server's shutdown grace ----------------------------------------


async def test_stop_with_grace_cancels_at_that_deadline_and_keeps_the_message(
    spool: Spool, caplog: pytest.LogCaptureFixture
) -> None:
    """SIGTERM passes ``shutdown_grace``: a hung next hop cannot hold the shutdown
    for the worker's own (longer) default grace."""
    qid = await spool.store(envelope(), b"m")
    d = FakeDeliverer()
    d.gate = asyncio.Event()  # never set: a relay that hangs
    worker = DeliveryWorker(spool, d, CFG, poll_interval=60.0, stop_grace=3600.0)
    runner = asyncio.create_task(worker.run())
    await asyncio.wait_for(d.called.wait(), 10)
    with caplog.at_level(logging.WARNING, logger="smtpgate.queue"):
        worker.stop(grace=0.05)
        await asyncio.wait_for(runner, 10)
    assert spool.list_ids() == [qid]  # still queued, state untouched
    assert spool.load_state(qid) is None
    assert f"cancelled 1 delivery in progress; {qid} stays queued as before" in caplog.text
    assert d.closed


async def test_a_later_stop_never_extends_the_deadline(spool: Spool) -> None:
    await spool.store(envelope(), b"m")
    d = FakeDeliverer()
    d.gate = asyncio.Event()
    worker = DeliveryWorker(spool, d, CFG, poll_interval=60.0, stop_grace=3600.0)
    runner = asyncio.create_task(worker.run())
    await asyncio.wait_for(d.called.wait(), 10)
    worker.stop(grace=0.05)
    worker.stop()  # the default (an hour) must not replace the earlier deadline
    await asyncio.wait_for(runner, 10)


async def test_an_outcome_being_recorded_is_not_cancelled_at_the_deadline(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cutting the record of a finished delivery would send the message again."""
    await spool.store(envelope(), b"m")
    release = asyncio.Event()
    recording = asyncio.Event()
    real_remove = spool.remove

    async def slow_remove(qid: str, **kw: object) -> None:
        recording.set()
        await release.wait()
        await real_remove(qid, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(spool, "remove", slow_remove)
    d = FakeDeliverer()
    worker = DeliveryWorker(spool, d, CFG, poll_interval=60.0)
    runner = asyncio.create_task(worker.run())
    await asyncio.wait_for(recording.wait(), 10)
    worker.stop(grace=0)
    for _ in range(20):
        await asyncio.sleep(0)
    assert not runner.done()  # waiting for the record, not cancelling it
    release.set()
    await asyncio.wait_for(runner, 10)
    assert spool.list_ids() == []
    assert len(d.calls) == 1


async def test_a_corrupt_state_is_set_aside_and_the_message_delivered_maybe_delivered(
    spool: Spool,
) -> None:
    qid = await spool.store(envelope(), b"m")
    d = FakeDeliverer(TempFailure("4.4.1 down"))
    clock = FakeClock()
    worker = DeliveryWorker(spool, d, CFG, clock)
    await worker.run_once()  # deferred: a state file now records the attempt
    state = spool.directory / "queue" / f"{qid}.state"
    assert state.exists()
    state.write_bytes(b"")  # damaged
    d.default = Delivered()
    clock.now += 60
    await worker.run_once()
    # Delivered, flagged as possibly delivered before (the record of it is gone).
    assert [m.maybe_delivered for m, _ in d.calls] == [True, True]
    assert spool.list_ids() == []
    assert (spool.directory / "corrupt" / f"{qid}.state").exists()
    assert not (spool.directory / "corrupt" / f"{qid}.msg").exists()


async def test_an_unreadable_message_is_retried_not_quarantined(spool: Spool) -> None:
    qid = await spool.store(envelope(), b"m")
    state = spool.directory / "queue" / f"{qid}.state"
    state.mkdir()  # reading it fails with EISDIR: a read error, not a corrupt file
    d = FakeDeliverer()
    clock = FakeClock()
    worker = DeliveryWorker(spool, d, CFG, clock)
    await worker.run_once()
    assert d.calls == [] and spool.list_ids() == [qid]
    assert list((spool.directory / "corrupt").iterdir()) == []
    state.rmdir()
    clock.now += 60
    await worker.run_once()
    assert len(d.calls) == 1 and spool.list_ids() == []


async def test_a_spool_that_cannot_be_listed_is_said_once_and_again_when_it_can(
    spool: Spool, caplog: pytest.LogCaptureFixture
) -> None:
    """``queue/`` moved away while serving: an ERROR every scan (every second of a
    real server) buried the log. It is said once, and when the spool lists again;
    the messages stored meanwhile are delivered then."""
    d = FakeDeliverer()
    worker = DeliveryWorker(spool, d, CFG, poll_interval=0.02)
    queue = spool.directory / "queue"
    aside = spool.directory / "queue.aside"
    caplog.set_level(logging.WARNING, logger="smtpgate.queue")
    runner = asyncio.create_task(worker.run())
    try:
        queue.rename(aside)
        await _until(lambda: "cannot list the spool" in caplog.text)
        scans = worker._last_scan
        await _until(lambda: worker._last_scan > scans + 0.2)  # ten scans or more
        assert caplog.text.count("cannot list the spool") == 1
        aside.rename(queue)
        spool.store_sync(envelope(), b"stored while it could not be listed")
        await _until(lambda: not spool.list_ids())
        assert "the spool lists again after" in caplog.text
        assert caplog.text.count("cannot list the spool") == 1
    finally:
        worker.stop()
        await asyncio.wait_for(runner, 10)
