"""Delivery waits for a burst to end (queue/worker.py, `_BURST`): while scans find
the workers storing 16 or more new messages, no delivery starts, for a second at
most; then what is due drains before the next wait. A backlog found at start-up and
`run_once` are not held (docs/delivery.md, "Processes")."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from smtpgate.config import QueueConfig
from smtpgate.queue import worker as worker_mod
from smtpgate.queue.envelope import Envelope
from smtpgate.queue.maildir import MaildirDeliverer
from smtpgate.queue.spool import Spool
from smtpgate.queue.worker import DeliveryWorker

CFG = QueueConfig(retry_initial=60.0, retry_max=3600.0, max_age=86400.0)
ENV = Envelope("alice@example.org", ("bob@example.net",), "alice", "192.0.2.7",
               "laptop.example.org", "submission")


@pytest.fixture
async def spool(tmp_path: Path) -> AsyncIterator[Spool]:
    s = Spool(tmp_path / "spool")
    yield s
    await s.close()


@pytest.fixture
async def maildir(tmp_path: Path) -> AsyncIterator[MaildirDeliverer]:
    d = MaildirDeliverer(tmp_path / "Maildir")
    yield d
    await d.close()


def store(spool: Spool, n: int) -> None:
    for i in range(n):
        spool.store_sync(ENV, b"Subject: %d\r\n\r\nhi\r\n" % i)


async def settle(worker: DeliveryWorker) -> None:
    """Wait for what `_start_due` started."""
    while worker._inflight:
        await asyncio.wait(set(worker._inflight.values()))
    worker._start_due()  # nothing due: the drain is over


def delivered(maildir: MaildirDeliverer) -> int:
    return len(list((maildir.path / "new").iterdir()))


async def test_a_burst_waits_until_a_scan_finds_it_over(
    spool: Spool, maildir: MaildirDeliverer
) -> None:
    worker = DeliveryWorker(spool, maildir, CFG)
    await worker._scan()  # start-up: nothing stored yet
    store(spool, 20)
    await worker._scan()  # 20 new since the last look: a burst
    worker._start_due()
    assert not worker._inflight and worker._holding()
    store(spool, 3)
    await worker._scan()  # only 3 new: the burst is over
    worker._start_due()
    assert worker._inflight
    await settle(worker)
    assert delivered(maildir) == 23 and spool.list_ids() == []


async def test_a_hold_ends_after_max_hold_and_what_is_due_drains_first(
    spool: Spool, maildir: MaildirDeliverer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker_mod, "_MAX_HOLD", 0.05)
    worker = DeliveryWorker(spool, maildir, CFG)
    await worker._scan()
    store(spool, 20)
    await worker._scan()
    assert worker._holding()
    await asyncio.sleep(0.06)
    assert not worker._holding()  # waited long enough: deliver although it goes on
    worker._start_due()
    assert worker._inflight
    store(spool, 20)
    await worker._scan()  # still a burst, but the drain is not over: no new hold
    assert not worker._holding()
    await settle(worker)
    worker._start_due()
    await settle(worker)
    assert delivered(maildir) == 40
    store(spool, 20)
    await worker._scan()  # drained: the next burst is waited for again
    assert worker._holding()


async def test_a_backlog_found_at_start_up_and_run_once_are_not_held(
    spool: Spool, maildir: MaildirDeliverer
) -> None:
    store(spool, 20)
    worker = DeliveryWorker(spool, maildir, CFG)
    await worker._scan()  # the first scan: a backlog, not a burst
    worker._start_due()
    assert worker._inflight
    await settle(worker)
    assert delivered(maildir) == 20
    store(spool, 20)
    assert await worker.run_once() == 20  # asked for now
    assert delivered(maildir) == 40


async def test_stopping_is_never_held(spool: Spool, maildir: MaildirDeliverer) -> None:
    worker = DeliveryWorker(spool, maildir, CFG)
    await worker._scan()
    store(spool, 20)
    await worker._scan()
    assert worker._holding()
    worker.stop()
    assert not worker._holding()
