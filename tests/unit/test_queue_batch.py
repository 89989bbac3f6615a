"""The delivery worker's batches (a `BlockingBatch` deliverer, the Maildir): every
message due at once goes through one thread call, and the guarantees of a single
attempt hold for each message of it."""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from smtpgate.config import QueueConfig
from smtpgate.queue import msglock
from smtpgate.queue.delivery import DeliveryResult, QueuedMessage
from smtpgate.queue.envelope import Envelope, RcptDsn
from smtpgate.queue.maildir import MaildirDeliverer
from smtpgate.queue.spool import Spool, SpoolError
from smtpgate.queue.state import MessageState
from smtpgate.queue.worker import DeliveryWorker

T0 = 1_700_000_000.0
CFG = QueueConfig(retry_initial=60.0, retry_max=3600.0, max_age=86400.0)
DATA = b"Subject: hi\r\n\r\nhello\r\n"


def envelope(dsn_rcpts: tuple[RcptDsn, ...] = ()) -> Envelope:
    return Envelope("alice@example.org", ("bob@example.net",), "alice", "192.0.2.7",
                    "laptop.example.org", "submission", received_at=T0, dsn_rcpts=dsn_rcpts)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


class CountingMaildir(MaildirDeliverer):
    """Records each batch; ``gate`` (if set) holds a batch until it is set."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.batches: list[list[str]] = []
        self.entered = threading.Event()
        self.gate: threading.Event | None = None
        self.fail = False

    def deliver_blocking(self, messages: Sequence[QueuedMessage]) -> list[DeliveryResult]:
        self.batches.append([m.queue_id for m in messages])
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(10)
        if self.fail:
            raise RuntimeError("a bug in the deliverer")
        return super().deliver_blocking(messages)


@pytest.fixture
async def spool(tmp_path: Path) -> AsyncIterator[Spool]:
    s = Spool(tmp_path / "spool")
    yield s
    await s.close()


@pytest.fixture
async def maildir(tmp_path: Path) -> AsyncIterator[CountingMaildir]:
    d = CountingMaildir(tmp_path / "Maildir")
    yield d
    await d.close()


def mail(md: CountingMaildir) -> list[bytes]:
    new = md.path / "new"
    return [(new / n).read_bytes() for n in sorted(os.listdir(new))]


async def test_messages_due_together_are_one_batch_and_leave_the_spool(
    spool: Spool, maildir: CountingMaildir
) -> None:
    ids = [spool.store_sync(envelope(), DATA + b"%d\r\n" % i) for i in range(5)]
    worker = DeliveryWorker(spool, maildir, CFG, Clock())
    assert await worker.run_once() == 5
    assert maildir.batches == [ids]
    assert spool.list_ids() == []
    assert sorted(m.split(b"\r\n", 1)[1] for m in mail(maildir)) == [
        DATA + b"%d\r\n" % i for i in range(5)]
    assert os.listdir(spool.directory / "queue") == []  # no state file either


async def test_a_copy_made_before_a_crash_is_recognised_not_repeated(
    spool: Spool, maildir: CountingMaildir, tmp_path: Path
) -> None:
    qid = spool.store_sync(envelope(), DATA)
    env, data = spool.load(qid)
    # The crashed process delivered it, and died before removing the spool copy.
    crashed = MaildirDeliverer(tmp_path / "Maildir")
    crashed.deliver_blocking([QueuedMessage(qid, env, data)])
    await crashed.close()
    worker = DeliveryWorker(spool, maildir, CFG, Clock())
    assert await worker.run_once() == 1
    assert len(mail(maildir)) == 1 and spool.list_ids() == []


async def test_a_success_report_is_spooled_before_the_message_goes(
    spool: Spool, maildir: CountingMaildir
) -> None:
    asked = envelope(dsn_rcpts=(RcptDsn("bob@example.net", ("SUCCESS",)),))
    qid = spool.store_sync(asked, DATA)
    worker = DeliveryWorker(spool, maildir, CFG, Clock(), reporting_mta="mx.example.org")
    assert await worker.run_once() == 2  # the message, then the report
    assert spool.list_ids() == []
    assert maildir.batches[0] == [qid] and len(maildir.batches) == 2
    report = [m for m in mail(maildir) if b"Return-Path: <>" in m]
    assert len(report) == 1 and b"Action: delivered" in report[0]


async def test_held_and_locked_messages_are_left_alone(
    spool: Spool, maildir: CountingMaildir
) -> None:
    held = spool.store_sync(envelope(), DATA)
    spool.save_state_sync(held, replace(MessageState.initial(("bob@example.net",)), held=True))
    busy = spool.store_sync(envelope(), DATA)
    clock = Clock()
    worker = DeliveryWorker(spool, maildir, CFG, clock)
    lock = msglock.try_lock(spool.message_path(busy))  # a queue command has it
    assert lock is not None
    with lock:
        assert await worker.run_once() == 0
    assert spool.list_ids() == sorted([held, busy]) and mail(maildir) == []
    clock.now += 1  # the busy one is looked at again soon, the held one never
    await worker.run_once()
    assert spool.list_ids() == [held] and len(mail(maildir)) == 1


async def retried_a_minute_later(
    spool: Spool, maildir: CountingMaildir, *, trouble: Callable[[], object],
    cure: Callable[[], object], meanwhile: Callable[[str], None],
) -> None:
    """One message attempted while ``trouble`` holds (``meanwhile`` checks what that
    left), then again a minute later once ``cure`` undid it: delivered exactly once,
    and gone from the spool."""
    qid = spool.store_sync(envelope(), DATA)
    clock = Clock()
    worker = DeliveryWorker(spool, maildir, CFG, clock)
    trouble()
    await worker.run_once()
    meanwhile(qid)
    cure()
    clock.now += 60.0
    await worker.run_once()
    assert spool.list_ids() == [] and len(mail(maildir)) == 1


async def test_a_failed_write_is_deferred_and_retried_once(
    spool: Spool, maildir: CountingMaildir
) -> None:
    def deferred(qid: str) -> None:
        state = spool.load_state(qid)
        assert state is not None and state.next_attempt == T0 + 60.0
        assert mail(maildir) == []

    def trouble() -> None:
        # A file in tmp/'s place: a missing tmp/ is made again (maildir.py).
        shutil.rmtree(maildir.path / "tmp")
        (maildir.path / "tmp").write_bytes(b"")

    def cure() -> None:
        (maildir.path / "tmp").unlink()
        (maildir.path / "tmp").mkdir()

    await retried_a_minute_later(spool, maildir, trouble=trouble, cure=cure,
                                 meanwhile=deferred)


async def test_a_failed_spool_removal_never_delivers_twice(
    spool: Spool, maildir: CountingMaildir, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(qids: Sequence[tuple[str, bool]], **kw: object) -> list[SpoolError | None]:
        return [SpoolError("disk trouble")] * len(qids)

    def delivered_and_kept(qid: str) -> None:
        assert spool.list_ids() == [qid] and len(mail(maildir)) == 1

    await retried_a_minute_later(
        spool, maildir, trouble=lambda: monkeypatch.setattr(spool, "remove_now", broken),
        cure=monkeypatch.undo, meanwhile=delivered_and_kept)


async def test_a_corrupt_message_in_a_batch_is_quarantined_and_the_rest_delivered(
    spool: Spool, maildir: CountingMaildir
) -> None:
    bad = spool.store_sync(envelope(), DATA)
    good = spool.store_sync(envelope(), DATA)
    path = Path(spool.message_path(bad))
    path.write_bytes(path.read_bytes()[:-3] + b"XX\n")  # a torn write: the checksum fails
    worker = DeliveryWorker(spool, maildir, CFG, Clock())
    assert await worker.run_once() == 1
    assert maildir.batches == [[good]] and spool.list_ids() == []
    assert os.listdir(spool.directory / "corrupt") == [f"{bad}.msg"]


async def test_a_deliverer_exception_keeps_the_messages_and_suspects_them(
    spool: Spool, maildir: CountingMaildir
) -> None:
    def kept(qid: str) -> None:
        assert spool.list_ids() == [qid] and mail(maildir) == []

    await retried_a_minute_later(
        spool, maildir, trouble=lambda: setattr(maildir, "fail", True),
        cure=lambda: setattr(maildir, "fail", False), meanwhile=kept)


async def test_a_batch_under_way_at_the_stop_deadline_finishes_and_records(
    spool: Spool, maildir: CountingMaildir
) -> None:
    qid = spool.store_sync(envelope(), DATA)
    maildir.gate = threading.Event()
    worker = DeliveryWorker(spool, maildir, CFG, poll_interval=0.05)
    runner = asyncio.create_task(worker.run())
    await asyncio.to_thread(maildir.entered.wait, 10)
    worker.stop(grace=0)
    await asyncio.sleep(0.1)  # past the deadline: an attempt on a relay would be cut
    maildir.gate.set()
    await asyncio.wait_for(runner, 10)
    assert spool.list_ids() == [] and len(mail(maildir)) == 1
    assert qid in maildir.batches[0]


async def test_an_error_finishing_one_message_does_not_strand_the_rest(
    spool: Spool, maildir: CountingMaildir, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked = envelope(dsn_rcpts=(RcptDsn("bob@example.net", ("SUCCESS",)),))
    first = spool.store_sync(asked, DATA)  # finished on the event loop: its report
    second = spool.store_sync(asked, DATA)
    clock = Clock()
    worker = DeliveryWorker(spool, maildir, CFG, clock)
    calls: list[str] = []

    async def broken_once(qid: str, *args: object) -> object:
        calls.append(qid)
        if len(calls) == 1:
            raise RuntimeError("a bug in the report")
        return await real(qid, *args)  # type: ignore[arg-type]

    real = worker._send_reports
    monkeypatch.setattr(worker, "_send_reports", broken_once)
    await worker.run_once()
    assert calls[:2] == [first, second]
    assert spool.list_ids()[0] == first  # kept, retried later; the second went on
    assert second not in spool.list_ids()
    clock.now += 60.0
    await worker.run_once()
    assert first not in spool.list_ids()
    assert len([m for m in mail(maildir) if b"Return-Path: <alice" in m]) == 2


async def test_an_intact_message_whose_state_is_corrupt_is_delivered_not_quarantined(
    spool: Spool, maildir: CountingMaildir
) -> None:
    # The message got its 250 and is intact; only its delivery record is damaged.
    # Losing the record must not lose the message: it goes out (once: the Maildir
    # recognises an earlier copy) and the bad state is kept in corrupt/.
    qid = spool.store_sync(envelope(), DATA)
    Path(spool.message_path(qid)).with_suffix(".state").write_bytes(b"{garbage")
    worker = DeliveryWorker(spool, maildir, CFG, Clock())
    assert await worker.run_once() == 1
    assert maildir.batches == [[qid]] and spool.list_ids() == [] and len(mail(maildir)) == 1
    assert os.listdir(spool.directory / "corrupt") == [f"{qid}.state"]


async def test_a_message_that_cannot_be_read_stays_queued_and_is_retried(
    spool: Spool, maildir: CountingMaildir
) -> None:
    # A read that fails (here EISDIR; in life EIO, EMFILE, EACCES) says nothing
    # about the message: it is tried again later, never moved to corrupt/.
    qid = spool.store_sync(envelope(), DATA)
    state = Path(spool.message_path(qid)).with_suffix(".state")
    state.mkdir()
    clock = Clock()
    worker = DeliveryWorker(spool, maildir, CFG, clock)
    await worker.run_once()
    assert spool.list_ids() == [qid] and os.listdir(spool.directory / "corrupt") == []
    assert mail(maildir) == []
    state.rmdir()
    clock.now += 60
    await worker.run_once()
    assert spool.list_ids() == [] and len(mail(maildir)) == 1


BCC_DATA = (b"From: alice@example.org\r\nTo: bob@example.net\r\nBcc: boss@example.org,\r\n"
            b" auditor@example.org\r\nRETURN-PATH: <ceo@bank.example>\r\nSubject: hi\r\n\r\n"
            b"Bcc: this line is the body's\r\n")


@pytest.mark.parametrize("drop", [None, []])
async def test_bcc_and_the_other_drop_fields_leave_on_delivery_not_in_the_spool(
    spool: Spool, maildir: CountingMaildir, drop: list[str] | None
) -> None:
    """A Bcc the client left in would show the blind copies to every recipient
    (Postfix's message_drop_headers removes it); ``delivery.drop_fields = []`` keeps
    every field but the client's Return-Path, which final delivery replaces."""
    qid = spool.store_sync(envelope(), BCC_DATA)
    worker = (DeliveryWorker(spool, maildir, CFG, Clock()) if drop is None
              else DeliveryWorker(spool, maildir, CFG, Clock(), drop_fields=drop))
    as_received = spool.load(qid)[1]
    assert await worker.run_once() == 1
    [delivered] = mail(maildir)
    assert delivered.startswith(b"Return-Path: <alice@example.org>\r\n")
    assert b"ceo@bank.example" not in delivered
    assert delivered.endswith(b"Subject: hi\r\n\r\nBcc: this line is the body's\r\n")
    if drop is None:
        assert b"boss@" not in delivered and b"auditor@" not in delivered
    else:
        assert b"Bcc: boss@example.org,\r\n auditor@example.org\r\n" in delivered
    assert as_received == BCC_DATA  # the spool held it as received
