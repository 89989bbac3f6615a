"""The group-commit thread shared by the spool and the Maildir deliverer."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import pytest

from smtpgate.queue.committer import CommitterClosed, GroupCommitter, Op


class Recorder:
    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.threads: set[threading.Thread] = set()
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.fail_next = False

    def commit(self, batch: Sequence[Op[int, int]]) -> None:
        self.entered.set()
        self.gate.wait()
        self.threads.add(threading.current_thread())
        self.batches.append([op.payload for op in batch])
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("bug in commit")
        for op in batch:
            if op.payload < 0:
                op.error = ValueError(f"negative {op.payload}")
            else:
                op.result = op.payload * 2


async def test_operations_queued_together_are_one_batch() -> None:
    rec = Recorder()
    c: GroupCommitter[int, int] = GroupCommitter(rec.commit, name="test")
    rec.gate.clear()  # hold the thread inside its first batch
    first = asyncio.create_task(c.submit(0))
    await asyncio.to_thread(rec.entered.wait)
    rest = [asyncio.create_task(c.submit(i)) for i in range(1, 30)]
    await asyncio.sleep(0)  # all 29 are queued behind the busy thread
    rec.gate.set()
    assert await first == 0
    assert await asyncio.gather(*rest) == [i * 2 for i in range(1, 30)]
    assert rec.batches == [[0], list(range(1, 30))]
    assert threading.current_thread() not in rec.threads
    assert c.stats.ops == 30 and c.stats.batches == 2 and c.stats.largest_batch == 29
    await c.close()


async def test_errors_are_per_operation() -> None:
    rec = Recorder()
    c: GroupCommitter[int, int] = GroupCommitter(rec.commit, name="test")
    ok, bad = await asyncio.gather(c.submit(1), c.submit(-1), return_exceptions=True)
    assert ok == 2 and isinstance(bad, ValueError)
    await c.close()


async def test_a_failing_commit_fails_its_batch_and_the_thread_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rec = Recorder()
    c: GroupCommitter[int, int] = GroupCommitter(rec.commit, name="test")
    rec.fail_next = True
    with pytest.raises(RuntimeError, match="bug in commit"):
        await c.submit(1)
    assert await c.submit(2) == 4
    assert "commit failed" in caplog.text
    await c.close()


async def test_closed_committer_refuses_and_run_now_works_without_thread() -> None:
    rec = Recorder()
    c: GroupCommitter[int, int] = GroupCommitter(rec.commit, name="test")
    assert c.run_now(5) == 10
    assert rec.threads == {threading.current_thread()}
    with pytest.raises(ValueError):
        c.run_now(-5)
    await c.close()
    await c.close()  # idempotent
    with pytest.raises(CommitterClosed):
        await c.submit(1)


async def test_a_cancelled_caller_does_not_disturb_the_others() -> None:
    rec = Recorder()
    c: GroupCommitter[int, int] = GroupCommitter(rec.commit, name="test")
    rec.gate.clear()
    doomed = asyncio.create_task(c.submit(1))
    other = asyncio.create_task(c.submit(2))
    await asyncio.sleep(0)
    doomed.cancel()
    rec.gate.set()
    assert await other == 4
    with pytest.raises(asyncio.CancelledError):
        await doomed
    assert [1] in rec.batches or [1, 2] in rec.batches  # the work itself was done
    await c.close()
