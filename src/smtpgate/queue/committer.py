"""Group commit: one thread does the disk work for everything queued so far.

Why: an fsync of a directory costs the same for one new name as for fifty, and
a thread hop per operation costs more CPU than the write itself for small mail.
Callers on the event loop `submit` an operation and await its result; the
thread takes every operation queued so far as one batch, hands it to the
``commit`` function (which does the writes, the renames and one directory
fsync), and resolves the whole batch with one ``call_soon_threadsafe`` per event
loop. The loop itself never blocks on the disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

log = logging.getLogger("smtpgate.queue")

P = TypeVar("P")
R = TypeVar("R")

#: Upper bound on one batch, so the first operation of a flood is not held back
#: behind thousands of others.
MAX_BATCH = 256


class CommitterClosed(RuntimeError):
    """`submit` after `close`."""


class Op(Generic[P, R]):
    """One operation: ``commit`` sets exactly one of ``result`` and ``error``."""

    __slots__ = ("error", "future", "loop", "payload", "result")

    def __init__(
        self,
        payload: P,
        loop: asyncio.AbstractEventLoop | None = None,
        future: asyncio.Future[R] | None = None,
    ) -> None:
        self.payload = payload
        self.loop = loop
        self.future = future
        self.result: R | None = None
        self.error: BaseException | None = None


@dataclass(slots=True)
class CommitStats:
    ops: int = 0
    batches: int = 0
    largest_batch: int = 0


class GroupCommitter(Generic[P, R]):
    """See the module docstring. ``commit`` runs in the committer's thread (or in
    the caller's, for `run_now`) and must set ``result`` or ``error`` on every op;
    an exception escaping it fails the whole batch."""

    def __init__(
        self,
        commit: Callable[[Sequence[Op[P, R]]], None],
        *,
        name: str,
    ) -> None:
        self._commit = commit
        self._name = name
        self._ops: queue.SimpleQueue[Op[P, R] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False
        self.stats = CommitStats()

    async def submit(self, payload: P) -> R:
        """Queue ``payload`` and wait for its batch. If the caller is cancelled the
        operation still happens.

        Raises:
            whatever ``commit`` set as the op's error; CommitterClosed.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        op: Op[P, R] = Op(payload, loop, future)
        with self._lock:
            if self._closed:
                raise CommitterClosed(f"{self._name} is closed")
            if self._thread is None:
                self._thread = threading.Thread(target=self._main, name=self._name, daemon=True)
                self._thread.start()
            self._ops.put(op)
        return await future

    def run_now(self, payload: P) -> R:
        """Commit ``payload`` alone, in the calling thread (for tests and tools)."""
        op: Op[P, R] = Op(payload)
        self._run([op])
        if op.error is not None:
            raise op.error
        return op.result  # type: ignore[return-value]

    async def close(self) -> None:
        """Commit what is queued, then stop the thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
            if thread is not None:
                self._ops.put(None)
        if thread is not None:
            await asyncio.to_thread(thread.join)

    def _main(self) -> None:
        ops = self._ops
        while True:
            first = ops.get()
            if first is None:
                return
            batch = [first]
            stop = False
            while len(batch) < MAX_BATCH:  # whatever else is queued, without waiting
                try:
                    op = ops.get_nowait()
                except queue.Empty:
                    break
                if op is None:
                    stop = True
                    break
                batch.append(op)
            self._run(batch)
            _settle(batch)
            if stop:
                return

    def _run(self, batch: list[Op[P, R]]) -> None:
        try:
            self._commit(batch)
        except Exception as e:  # a bug in commit: fail the batch, keep the thread
            log.exception("%s: commit failed", self._name)
            for op in batch:
                if op.error is None:
                    op.error = e
        stats = self.stats
        stats.batches += 1
        stats.ops += len(batch)
        stats.largest_batch = max(stats.largest_batch, len(batch))


def _settle(batch: Sequence[Op[P, R]]) -> None:
    by_loop: dict[asyncio.AbstractEventLoop, list[Op[P, R]]] = {}
    for op in batch:
        if op.loop is not None:
            by_loop.setdefault(op.loop, []).append(op)
    for loop, ops in by_loop.items():
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
            loop.call_soon_threadsafe(_resolve, ops)


def _resolve(ops: list[Op[P, R]]) -> None:
    for op in ops:
        fut = op.future
        if fut is None or fut.done():  # the awaiting task was cancelled
            continue
        if op.error is not None:
            fut.set_exception(op.error)
        else:
            fut.set_result(op.result)  # type: ignore[arg-type]
