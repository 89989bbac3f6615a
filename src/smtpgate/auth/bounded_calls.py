"""Calls to a blocking store, each answered within a bound or declared unavailable.

Theory of operation
-------------------
The guard state and the rate counters are synchronous stores (SQLite today, a
network store later) run on one thread of their own, which keeps one process's
reads and writes in order. A store that stops answering (another process holds
the SQLite file's locks, Redis is unreachable) must neither stall the session
that asked nor make the next sessions queue behind that call. So every call:

- gets at most ``timeout`` seconds; past that, or on the store's own error, it
  raises ``StoreUnavailable`` and an *episode* starts (logged once, with why);
- during an episode, a call that would only wait behind a call still stuck on
  the thread is not queued at all: it raises ``StoreUnavailable`` at once;
- a call that was queued but not started when its bound passed is withdrawn,
  so the thread never works through a backlog of stale calls;
- once the thread is free again, the next call tries the store (bounded as
  always); the first call that succeeds, the stuck one included, ends the
  episode (logged once, with its length and how many calls were answered
  without the store).

A read of a local SQLite file is made on the event loop instead when the store
is idle and answering (``loop_reads``: a hop costs more than such a read); if it
cannot be made there at once, it takes the path above.

``StoreCalls`` keeps reads and writes on a thread each: a lock that stalls
writes only (an SQLite write transaction in another process; readers of a WAL
file are not blocked) leaves the reads answering, so the guard still sees
blocks and known addresses while it cannot record.

What an unavailable store *means* (let a login through, refuse it, skip a
limit) is decided by the caller, above the store interface, so the same rules
hold for any backend (docs/operations.md, "When the guard database stops
answering").
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from smtpgate import metrics
from smtpgate.auth.loop_reads import MISSED, LoopReads

T = TypeVar("T")


class StoreUnavailable(Exception):
    """The store did not answer within the bound, failed, or is still stuck."""


class BoundedCalls:
    """Runs a store's calls on one thread, each within ``timeout`` seconds.

    ``name`` names the store in the log ("guard database"); ``degraded`` says
    what the caller does meanwhile (logged once per episode); ``errors`` are the
    store's own exception types (a fault is an episode like a timeout).
    """

    def __init__(
        self,
        name: str,
        timeout: float,
        errors: tuple[type[Exception], ...],
        *,
        degraded: str,
        log: logging.Logger,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.timeout = timeout
        self.degraded = degraded
        self._errors = errors
        self._log = log
        self._clock = clock
        self._pool = ThreadPoolExecutor(1, "smtpgate-" + name.replace(" ", "-"))
        self._lock = threading.Lock()
        #: Calls submitted to the thread and not finished (or withdrawn).
        self._busy = 0
        #: When the current episode started (monotonic), None when the store answers.
        self._down_since: float | None = None
        #: Calls answered without the store in the current episode.
        self._skipped = 0
        self._closed = False
        #: (store, operation) in the metrics (``smtpgate_backend_*``); None: not counted.
        self.metric: tuple[str, str] | None = None
        #: Reads made on the loop when the store is idle and answering (None: never).
        self.loop_reads: LoopReads | None = None

    @property
    def unavailable(self) -> bool:
        """An episode is under way."""
        return self._down_since is not None

    @property
    def idle(self) -> bool:
        """No call is on the thread or queued: the next call reaches the store."""
        return self._busy == 0

    async def call(self, fn: Callable[..., T], *args: object) -> T:
        """``fn(*args)`` on the store's thread.

        Raises:
            StoreUnavailable: no answer within the bound, a store error, or the
                thread is still busy with a call of the current episode.
        """
        inline = self.loop_reads
        if (inline is not None and self._busy == 0 and self._down_since is None
                and not self._closed):
            started = time.monotonic()
            answer = inline.read(fn, *args)
            if answer is not MISSED:
                if self.metric is not None:
                    metrics.backend_call(*self.metric, time.monotonic() - started, failed=False)
                return answer  # type: ignore[return-value]
        with self._lock:
            if self._closed:
                raise StoreUnavailable(f"{self.name}: closed")
            if self._down_since is not None and self._busy > 0:
                self._skipped += 1
                raise StoreUnavailable(f"{self.name}: still not answering")
            self._busy += 1
        cf: Future[T] = self._pool.submit(fn, *args)
        cf.add_done_callback(self._finished)
        started = time.monotonic()
        failed = True
        try:
            # wait_for cancels the wrapper on timeout, which withdraws a call that
            # has not started; one that has runs on and ends the episode if it succeeds.
            answer = await asyncio.wait_for(asyncio.wrap_future(cf), self.timeout)
            failed = False
            return answer
        except TimeoutError:
            self._down(f"no answer within {self.timeout:g} s")
            raise StoreUnavailable(f"{self.name}: no answer within {self.timeout:g} s") from None
        except self._errors as e:
            self._down(str(e))
            raise StoreUnavailable(str(e)) from e
        finally:
            if self.metric is not None:
                metrics.backend_call(*self.metric, time.monotonic() - started, failed=failed)

    async def warm(self, fn: Callable[..., object], *args: object, wait: float) -> bool:
        """``fn(*args)`` on the store's thread before the first real call (its
        connection opened, its lock taken once), waited for up to ``wait`` rather
        than the call bound: nothing is answered meanwhile, and a slow start is
        not an episode. True if it ended in time without an error; a call still
        running goes on, and the calls after it queue behind it under their bound."""
        with self._lock:
            if self._closed:
                return False
            self._busy += 1
        cf: Future[object] = self._pool.submit(fn, *args)
        cf.add_done_callback(self._finished)
        try:
            await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(cf)), wait)
        except TimeoutError:
            return False
        except self._errors:
            return False
        return True

    def _finished(self, cf: Future[T]) -> None:
        """Done callback (the store's thread, or the loop when withdrawn)."""
        ok = not cf.cancelled() and cf.exception() is None
        with self._lock:
            self._busy -= 1
            if not ok or self._down_since is None:
                return
            lasted, skipped = self._clock() - self._down_since, self._skipped
            self._down_since, self._skipped = None, 0
        self._log.warning(
            "%s answering again after %.1f s; %d call(s) were answered without it meanwhile",
            self.name, lasted, skipped,
        )

    def _down(self, why: str) -> None:
        with self._lock:
            self._skipped += 1
            if self._down_since is not None:
                return
            self._down_since = self._clock()
        self._log.error("%s not answering (%s): %s until it does", self.name, why, self.degraded)

    def close(self) -> None:
        """Stop the thread (waits for a call still running; drops queued ones)."""
        with self._lock:
            self._closed = True
        self._pool.shutdown(wait=True, cancel_futures=True)


class StoreCalls:
    """A store's reads and its writes, each on a ``BoundedCalls`` of its own."""

    def __init__(
        self, name: str, timeout: float, errors: tuple[type[Exception], ...], *,
        degraded: str, log: logging.Logger, loop_reads: LoopReads | None = None,
    ) -> None:
        self.reads = BoundedCalls(f"{name} reads", timeout, errors, degraded=degraded, log=log)
        self.reads.loop_reads = loop_reads
        self.writes = BoundedCalls(f"{name} writes", timeout, errors, degraded=degraded, log=log)
        store = name.replace("guard database", "guard_state").replace(" ", "_")
        self.reads.metric, self.writes.metric = (store, "read"), (store, "write")

    def configure(self, timeout: float, degraded: str) -> None:
        """A reload: the new bound applies to the next calls."""
        for side in (self.reads, self.writes):
            side.timeout, side.degraded = timeout, degraded

    @property
    def unavailable(self) -> bool:
        """Either side is in an episode."""
        return self.reads.unavailable or self.writes.unavailable

    def close(self) -> None:
        self.reads.close()
        self.writes.close()
