"""Row reads of a local SQLite file, answered on the event loop while they stay fast.

Why: a hop to a thread and back costs a worker 0.08-0.1 ms of CPU (the wake-ups
of the thread and of the loop, and the GIL passed twice; bench/README.md), more
than the read it carries: the guard's snapshot, the -PLUS fallback or an
account's row, read from SQLite's cache, take 0.02-0.05 ms. A new session made
three such hops before its first message. Measured on workload C against the
commit before, ten interleaved pairs: CPU per session -6 %, sessions per second
+13 % (bench/README.md, issue 13).

The rules that keep the loop from waiting:

- Only reads, only of an SQLite file on this machine (``ThreadLocalSqlite``), and
  only the calls a caller names as row reads: never a bind to a directory, never
  a hash, never a write. In WAL mode a reader does not wait for writers.
- The loop's reads go through a connection of their own with a busy timeout of
  0 (``ThreadLocalSqlite.without_waiting``): where a reader would wait for a
  lock (the WAL being reset, a schema upgrade by another process) the read fails
  at once, and is made on the thread as before, bounded as before.
- A read that fails sends the store's reads back to the thread for ``PAUSE``,
  logged once; so do ``STRIKES`` reads longer than ``SLOW`` within ``PAUSE`` (a
  cold cache on a slow disk: a disk that is slow is slow again, while one read
  that the kernel preempted on a busy machine is not). Then the loop tries again.
  The answer of a slow read is used: it is correct, only late.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Final, TypeVar

from smtpgate.auth.sqlite_file import ThreadLocalSqlite

T = TypeVar("T")

_log = logging.getLogger("smtpgate.auth.loop_reads")

#: Seconds after which a read on the loop counts as slow.
SLOW = 0.02
#: Slow reads within ``PAUSE`` seconds that send the store's reads to the thread.
STRIKES = 3
#: Seconds they then stay there.
PAUSE = 60.0


class Missed:
    """The read was not made on the loop: make it on the thread."""

    __slots__ = ()


MISSED: Final = Missed()


class LoopReads:
    """Whether ``name``'s reads run on the loop now, and running them there."""

    __slots__ = ("_clock", "_log", "_no_wait", "_paused_until", "_slow_at", "name", "pause",
                 "slow", "strikes")

    def __init__(
        self,
        name: str,
        no_wait: Callable[[], AbstractContextManager[object]],
        *,
        log: logging.Logger,
        clock: Callable[[], float] = time.monotonic,
        slow: float = SLOW,
        strikes: int = STRIKES,
        pause: float = PAUSE,
    ) -> None:
        self.name = name
        self._no_wait = no_wait
        self._log = log
        self._clock = clock
        self.slow = slow
        self.strikes = strikes
        self.pause = pause
        self._paused_until = 0.0
        #: When the recent slow reads started (monotonic), oldest first.
        self._slow_at: list[float] = []

    @property
    def paused(self) -> bool:
        return self._paused_until > self._clock()

    def read(self, fn: Callable[..., T], *args: object) -> T | Missed:
        """``fn(*args)`` here and now, or ``MISSED`` (paused, or it failed: the
        caller then makes the read on its thread, where a real fault is handled)."""
        clock = self._clock
        started = clock()
        if self._paused_until > started:
            return MISSED
        try:
            with self._no_wait():
                answer = fn(*args)
        except Exception as e:  # noqa: BLE001 - any failure: the thread's path decides
            self._pause(started, f"a read failed on the loop ({e})", logging.INFO)
            return MISSED
        took = clock() - started
        if took > self.slow:
            recent = [t for t in self._slow_at if t > started - self.pause]
            recent.append(started)
            self._slow_at = recent
            if len(recent) >= self.strikes:
                self._slow_at = []
                self._pause(started, f"{len(recent)} reads took over {self.slow * 1000:g} ms on "
                            f"the loop within {self.pause:g} s, the last {took * 1000:.1f} ms",
                            logging.WARNING)
        return answer

    def _pause(self, now: float, why: str, level: int) -> None:
        # A failure is logged by the thread's path if it is one there too (a lock
        # that a reader on the loop refuses to wait for is not).
        self._paused_until = now + self.pause
        self._log.log(level, "%s: %s; its reads run on a thread for the next %g s",
                      self.name, why, self.pause)


def loop_reads_for(
    store: object, name: str, log: logging.Logger | None = None
) -> LoopReads | None:
    """Loop reads for ``store`` if it is a local SQLite file, else None."""
    if isinstance(store, ThreadLocalSqlite):
        return LoopReads(name, store.without_waiting, log=log or _log)
    return None
