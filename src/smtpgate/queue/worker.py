"""The delivery worker: takes messages from the spool to a deliverer, with retries.

Theory of operation
-------------------
Only the holder of the spool's delivery lock delivers, so two processes never
hand over the same message; a worker that cannot get the lock waits for it.

The worker keeps a schedule (queue id -> next attempt) in memory, filled by
scanning the spool directory: when woken by `wake` after a local store, and at
least every ``poll_interval`` so that messages stored by other processes are
found; while scans keep finding new messages (other processes are busy
storing) it polls every 250 ms instead, so their mail is not held back by a
second, and what they store meanwhile is delivered in one batch. The schedule is only a cache; the truth is the spool. Before each
attempt the message's state file is read again, and after it the new state is
written (or the message removed) before anything else happens to the message.

Exactly once: every message in the spool when the worker starts may have been
handed to a deliverer by a process that then died before recording the outcome.
Those are delivered with ``maybe_delivered=True`` so the deliverer can recognise
its earlier copy (the Maildir deliverer can; an SMTP relay cannot, RFC 1047).

All times come from the injected ``clock``; only the waiting itself uses the
event loop, so the retry schedule is tested by moving a fake clock.

Clock steps: the state files keep wall-clock times (they outlive the process), but
the schedule in memory follows the monotonic clock: when the wall clock steps
(NTP at boot, ``date -s``), every entry moves by the step, so a message deferred
for a minute is tried a minute later whichever way the clock jumped, not a day
later after a step back of a day nor at once after a step forward. A time read
from a state file written before a step back can still lie in the future by the
step: one more than ``queue.retry_max`` ahead (no attempt schedules one so far)
is taken as due now, so a step back delays a retry by ``retry_max`` at most.
docs/delivery.md, "Clock steps", says what a step does to ``max_age``.

Stopping is bounded: `stop` sets a deadline (``grace`` seconds, the server's
``shutdown_grace``). In-flight attempts may finish until then; at the deadline
those still waiting on the deliverer are cancelled, which leaves their spool
files as they were (retried at the next start, flagged ``maybe_delivered``),
while those already recording an outcome finish recording it. So a next hop that
hangs cannot hold a shutdown, and a message is never lost; it may reach a relay
twice only if the cut fell after the final dot, as RFC 1047 allows.

Batches: with a deliverer whose work is all local disk I/O (`BlockingBatch`, the
Maildir), everything due at once is one batch in one thread call: lock and read
each message, deliver them all (one fsync of the Maildir's ``new/``), then remove
from the spool those delivered and needing no report (one fsync of ``queue/``).
The rest come back to the event loop still locked and finish as a single attempt
does. A thread hop costs more CPU than the work of a small message, so this
halves the delivery process's CPU per message. Batches are not cancelled at the
stop deadline: they only touch the local disk, and they record what they did.

Reports: a recipient given up (refused permanently, or still failing at
``queue.max_age``) gets an RFC 3464 bounce to the envelope sender, and one still
deferred after ``queue.delay_warning`` a one-time delay warning (see `dsn`). The
report is spooled before the attempt is recorded and delivered like any other
message. Queue commands (``smtpgate queue``) take the per-message lock the
worker holds for an attempt (see `msglock`) and point the worker at the messages
they flushed or released (see `control`).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import heapq
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

from smtpgate import metrics
from smtpgate.config import QueueConfig
from smtpgate.plural import count
from smtpgate.queue import control, dsn, msglock
from smtpgate.queue.delivery import (
    BlockingBatch,
    Deliverer,
    DeliveryResult,
    QueuedMessage,
    Recycling,
    TempFailure,
)
from smtpgate.queue.envelope import Envelope
from smtpgate.queue.header_drop import DEFAULT_DROP_FIELDS, field_pattern, without_fields
from smtpgate.queue.spool import (
    DeliveryLock,
    MessageNotFound,
    Spool,
    SpoolCorrupt,
    SpoolError,
    StateCorrupt,
)
from smtpgate.queue.state import MessageState, Outcome, RcptStatus, apply_results

log = logging.getLogger("smtpgate.queue")

#: A wake-up rescans the spool directory at most this often: a burst of stores
#: costs one listing, not one per message.
_MIN_SCAN_GAP = 0.01
#: Poll gap while other processes keep storing (see the module docstring). Each
#: scan and batch has a fixed cost (a listing, two thread hops, a directory fsync
#: and its journal commit, which the workers' own fsyncs then wait behind):
#: against 50 ms, 250 ms took the delivery process's CPU a message from 0.42 to
#: 0.37 ms and one session's messages per second up 11 % (bench/README.md).
_BUSY_POLL = 0.25
#: A scan that finds at least this many new messages finds the workers storing a
#: burst (at the busy poll, 64 messages a second or more). Delivery then waits for
#: the burst to end, up to `_MAX_HOLD` seconds, before it starts: the delivery
#: process's reads, writes and fsyncs otherwise compete with the workers' own for
#: the same cores and the file system's journal, and every client of the burst
#: waits longer for its 250 (a burst of 1,000 messages in 10 sessions was 1.3-1.4x
#: faster with the delivery process idle during it; bench/README.md, 2026-12-05).
_BURST = 16
#: The longest delivery waits for a burst to end. Once it starts it drains what is
#: due before it waits again, so a burst that never ends is delivered as before.
_MAX_HOLD = 1.0
#: After an unexpected error with a message, try it again after this long.
_ERROR_RETRY = 60.0
#: A queue command holds a message only while it rewrites its state: look again soon.
_BUSY_RETRY = 0.2
#: Seconds the wall clock may disagree with the monotonic one between two turns
#: of the loop before it counts as stepped (NTP at boot, an administrator's
#: ``date -s``); a slewed clock (adjtime) never drifts this far that fast.
_CLOCK_STEP = 2.0
#: Seconds a stored next attempt may lie beyond ``queue.retry_max`` from now:
#: no attempt ever schedules one later, so one that does was written before the
#: clock went back (see `_load`).
_FUTURE_SLACK = 120.0


def _boottime() -> float:
    """Monotonic time that counts a suspend too (Linux's CLOCK_BOOTTIME): a host
    that slept an hour has not had its clock stepped."""
    return time.clock_gettime(getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC))
#: How long cancelled attempts get to unwind before `run` returns without them.
#: Cancellation is immediate for every deliverer here; this only bounds a bug.
_CANCEL_SETTLE = 5.0
#: Messages in one batch of a `BlockingBatch` deliverer, and batches in flight:
#: while one batch is on the disk the next one collects what falls due meanwhile.
_MAX_BATCH = 64
_BATCHES = 2


class DeliveryWorker:
    """See the module docstring.

    ``concurrency`` bounds simultaneous deliveries; ``stop_grace`` is how long
    `run` waits for in-flight deliveries after `stop` (without ``grace``) before
    cancelling them.
    """

    def __init__(
        self,
        spool: Spool,
        deliverer: Deliverer,
        queue_cfg: QueueConfig,
        clock: Callable[[], float] = time.time,
        *,
        monotonic: Callable[[], float] | None = None,
        concurrency: int = 8,
        poll_interval: float = 1.0,
        stop_grace: float = 30.0,
        reporting_mta: str = "localhost",
        drop_fields: Sequence[str] = DEFAULT_DROP_FIELDS,
        report_size_limit: int | None = None,
    ) -> None:
        self._spool = spool
        #: The header fields a message loses on delivery (``delivery.drop_fields``).
        self._drop = field_pattern(drop_fields)
        self._deliverer = deliverer
        # A deliverer that writes files can reuse the inodes of delivered messages.
        self._recycle = deliverer.recycle_pool if isinstance(deliverer, Recycling) else None
        # A local deliverer takes whole batches in the worker's own thread.
        self._batcher = deliverer if isinstance(deliverer, BlockingBatch) else None
        self._batches = 0  # batch tasks in flight
        self._cfg = queue_cfg
        self._clock = clock
        # What tells a step of ``clock`` from time passing; a fake ``clock`` in a
        # test moves alone, as time passing, unless a fake monotonic clock is given.
        self._monotonic = monotonic or (_boottime if clock is time.time else clock)
        self._marks = (clock(), self._monotonic())
        self._concurrency = concurrency
        self._poll_interval = poll_interval
        self._poll_gap = poll_interval  # shrinks while scans find new messages
        self._stop_grace = stop_grace
        self._reporting_mta = reporting_mta  # our name in delivery status reports
        # A failure report over this size returns the original's header only
        # (``limits.max_message_size``; see `dsn.build_report`).
        self._report_size_limit = report_size_limit
        self._due: dict[str, float] = {}  # queue id -> next attempt (clock time)
        self._heap: list[tuple[float, str]] = []  # same, ordered; stale entries skipped
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self._recording: set[str] = set()  # in flight, past the deliverer: not cancelled
        # Attempts that ended while stopping: queue id -> the message left the queue
        # (every recipient has an outcome), for the stop's log (`_finish_inflight`).
        self._ended_in_stop: dict[str, bool] = {}
        self._suspect: set[str] = set()  # ids that may have been delivered unrecorded
        # Why the spool could not be listed and since when (monotonic), while it
        # cannot (`_list_failed`).
        self._list_error: tuple[str, float] | None = None
        # Ids whose state file did not parse and was moved aside (`_load`, maybe in
        # the batch thread): their next attempt is flagged maybe_delivered too.
        self._lost_state: set[str] = set()
        self._forced: set[str] = set()  # flushed: attempt whatever the state's next attempt
        # Outcomes the spool could not record (`_record`), for the next attempt: a
        # relay must not get again a recipient it took (not for a batch deliverer,
        # whose Maildir recognises its copies).
        self._unrecorded: dict[str, MessageState] = {}
        self._first_scan = True
        # time.monotonic() when delivery began to wait for a burst to end (`_holding`).
        self._hold_since: float | None = None
        self._draining = False  # a hold ran out: deliver what is due before another
        self._scan_wanted = True
        self._last_scan = -float("inf")
        self._wakeup = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self._deadline = float("inf")  # time.monotonic() when in-flight work is cancelled
        self.deliveries = 0  # calls to the deliverer, for tests and metrics
        # Recipients' outcomes by kind ("delivered", "deferred", "bounced",
        # "expired"): `queue flush` without a server says what its attempts did.
        self.outcomes: Counter[str] = Counter()

    # --- control ----------------------------------------------------------------

    def wake(self, queue_id: str | None = None) -> None:
        """Something was stored: look now instead of at the next poll. Safe to call
        from any thread. With ``queue_id`` no directory scan is needed."""
        self._in_loop(self._note, queue_id)

    def stop(self, grace: float | None = None) -> None:
        """Ask `run` to return: no new deliveries start; in-flight ones get ``grace``
        seconds from now (default ``stop_grace``), then are cancelled and their
        messages stay queued. A later call never extends the deadline. Safe to
        call from any thread."""
        limit = self._stop_grace if grace is None else max(0.0, grace)
        self._deadline = min(self._deadline, time.monotonic() + limit)
        self._stopping = True
        self._in_loop(self._note, None)

    def _in_loop(self, fn: Callable[[str | None], None], arg: str | None) -> None:
        loop = self._loop
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if loop is None or running is loop:
            fn(arg)
        else:
            with contextlib.suppress(RuntimeError):  # the loop is closed already
                loop.call_soon_threadsafe(fn, arg)

    async def run(self) -> None:
        """Deliver until `stop`. Waits for the delivery lock first. When it returns
        it closes the deliverer (whose threads and temp files go with it)."""
        self._loop = asyncio.get_running_loop()
        lock = await self._acquire_lock()
        if lock is None:
            await self._deliverer.close()
            return
        self._spool.make_blanks()
        try:
            while not self._stopping:
                self._wakeup.clear()
                now_mono = time.monotonic()
                if now_mono - self._last_scan >= self._poll_gap or (
                    self._scan_wanted and now_mono - self._last_scan >= _MIN_SCAN_GAP
                ):
                    await self._scan()
                self._follow_clock_step()
                self._start_due()
                await self._sleep(self._next_wait())
        finally:
            await self._finish_inflight()
            lock.release()
            await self._deliverer.close()

    async def run_once(self) -> int:
        """Scan, attempt every message due now, wait for those attempts; returns how
        many messages were handed to the deliverer. For tests and tools.

        Raises:
            RuntimeError: another process holds the delivery lock.
        """
        self._loop = asyncio.get_running_loop()
        lock = self._spool.try_lock_delivery()
        if lock is None:
            raise RuntimeError("another process is delivering from this spool")
        with lock:
            await self._scan()
            self._hold_since = None  # asked to deliver now: no burst to wait for
            before = self.deliveries
            self._start_due()
            while self._inflight:
                await asyncio.wait(
                    set(self._inflight.values()), return_when=asyncio.FIRST_COMPLETED
                )
                self._start_due()
            return self.deliveries - before

    # --- scheduling -------------------------------------------------------------

    def _note(self, queue_id: str | None) -> None:
        if queue_id is None:
            self._scan_wanted = True
        elif queue_id not in self._due and queue_id not in self._inflight:
            self._schedule(queue_id, 0.0)
        self._wakeup.set()

    def _schedule(self, qid: str, when: float) -> None:
        self._due[qid] = when
        heapq.heappush(self._heap, (when, qid))

    def _follow_clock_step(self) -> None:
        """Move the schedule by a step of the wall clock since the last turn (see the
        module docstring, "Clock steps"), so that it keeps monotonic time."""
        wall, mono = self._clock(), self._monotonic()
        step = (wall - self._marks[0]) - (mono - self._marks[1])
        self._marks = (wall, mono)
        if abs(step) < _CLOCK_STEP:
            return
        log.warning("queue: the system clock stepped %+.0f s; the retry schedule of %d "
                    "message(s) moves with it", step, len(self._due))
        self._due = {qid: when + step if when != float("inf") else when
                     for qid, when in self._due.items()}
        self._heap = [(when, qid) for qid, when in self._due.items()]
        heapq.heapify(self._heap)

    async def _scan(self) -> None:
        self._scan_wanted = False
        try:
            ids, (flush_all, flush_ids) = await asyncio.to_thread(self._list)
        except OSError as e:
            self._list_failed(str(e))
            return
        finally:
            self._last_scan = time.monotonic()
        self._list_works()
        present = set(ids)
        first = self._first_scan
        if first:
            self._first_scan = False
            self._suspect = present.copy()
        found = 0
        for qid in ids:
            if qid not in self._due and qid not in self._inflight:
                # The state file, read at the attempt, says when it is really due.
                self._schedule(qid, 0.0)
                found += 1
        self._note_burst(found >= _BURST and not first)
        gap = _BUSY_POLL if found else self._poll_gap * 2
        self._poll_gap = min(self._poll_interval, gap)
        for qid in [q for q in self._due if q not in present]:
            del self._due[qid]  # removed behind our back (e.g. `queue remove`)
        self._suspect &= present
        # `smtpgate queue flush/release` moved these forward in their state files
        # (control.py); what is in flight looks at its state again when it ends.
        for qid in [*self._due, *self._inflight] if flush_all else flush_ids:
            if qid in self._inflight:
                # Asked for after this attempt began: one more attempt once it ends
                # (the command could not reset the state the attempt is writing).
                self._forced.add(qid)
            elif qid in self._due:
                self._forced.add(qid)
                self._schedule(qid, 0.0)

    def _list_failed(self, why: str) -> None:
        """Log a spool that cannot be listed once, and again only if the reason
        changes: the scan runs every second or so, and an ERROR each time (a
        ``queue/`` removed or made unreadable) buried the log."""
        if self._list_error is None:
            self._list_error = (why, time.monotonic())
        elif self._list_error[0] == why:
            return
        else:
            self._list_error = (why, self._list_error[1])
        log.error("queue: cannot list the spool: %s; messages stored since are not "
                  "found until it can be (said again then)", why)

    def _list_works(self) -> None:
        """Say that the spool lists again after `_list_failed`."""
        if self._list_error is not None:
            log.warning("queue: the spool lists again after %.0f s",
                        time.monotonic() - self._list_error[1])
            self._list_error = None

    def _list(self) -> tuple[list[str], tuple[bool, list[str]]]:
        """Runs in a thread: the spool's ids and the pending flush requests."""
        return self._spool.list_ids(), control.take_flush_requests(self._spool.directory)

    def _note_burst(self, storing: bool) -> None:
        """Hold delivery while a scan finds the workers storing a burst (not at
        start-up: a backlog found then is no burst); a scan that finds it over
        lets delivery start."""
        if not storing:
            self._hold_since = None
        elif self._hold_since is None and not self._draining:
            self._hold_since = time.monotonic()

    def _holding(self) -> bool:
        """Whether delivery waits for a burst to end (see `_BURST`): never when
        stopping, and no longer than `_MAX_HOLD`, after which it drains."""
        since = self._hold_since
        if since is None or self._stopping:
            return False
        if time.monotonic() - since < _MAX_HOLD:
            return True
        self._hold_since, self._draining = None, True
        return False

    def _start_due(self) -> None:
        if self._holding():
            return
        now = self._clock()
        head = self._peek()
        if self._draining and not self._inflight and (head is None or head[0] > now):
            self._draining = False  # drained: the next burst may be waited for
        if self._batcher is not None:
            self._start_batches(now)
            return
        while len(self._inflight) < self._concurrency and not self._stopping:
            head = self._peek()
            if head is None or head[0] > now:
                break
            heapq.heappop(self._heap)
            qid = head[1]
            del self._due[qid]
            self._inflight[qid] = asyncio.create_task(self._attempt(qid), name=f"deliver {qid}")

    def _start_batches(self, now: float) -> None:
        """Everything due now, in batches of up to `_MAX_BATCH` (see `_attempt_batch`)."""
        while self._batches < self._batch_limit() and not self._stopping:
            qids: list[str] = []
            while len(qids) < _MAX_BATCH:
                head = self._peek()
                if head is None or head[0] > now:
                    break
                heapq.heappop(self._heap)
                del self._due[head[1]]
                qids.append(head[1])
            if not qids:
                return
            task = asyncio.create_task(self._attempt_batch(qids), name=f"deliver {qids[0]}")
            self._batches += 1
            for qid in qids:
                self._inflight[qid] = task

    def _batch_limit(self) -> int:
        return min(self._concurrency, _BATCHES)

    def _has_room(self) -> bool:
        if self._batcher is not None:
            return self._batches < self._batch_limit()
        return len(self._inflight) < self._concurrency

    def _peek(self) -> tuple[float, str] | None:
        """The earliest live schedule entry (entries replaced by a reschedule or
        dropped by a scan stay in the heap until they reach its head)."""
        heap = self._heap
        while heap and self._due.get(heap[0][1]) != heap[0][0]:
            heapq.heappop(heap)
        return heap[0] if heap else None

    def _next_wait(self) -> float:
        since_scan = time.monotonic() - self._last_scan
        wait = self._poll_gap - since_scan
        if self._scan_wanted:
            wait = min(wait, _MIN_SCAN_GAP - since_scan)
        head = self._peek()
        if self._hold_since is not None:
            wait = min(wait, self._hold_since + _MAX_HOLD - time.monotonic())
        elif head is not None and self._has_room():
            wait = min(wait, head[0] - self._clock())
        return max(0.0, wait)

    async def _sleep(self, seconds: float) -> None:
        if seconds <= 0 or self._wakeup.is_set():
            await asyncio.sleep(0)
            return
        try:
            async with asyncio.timeout(seconds):
                await self._wakeup.wait()
        except TimeoutError:
            pass

    async def _acquire_lock(self) -> DeliveryLock | None:
        announced = False
        while not self._stopping:
            lock = await asyncio.to_thread(self._spool.try_lock_delivery)
            if lock is not None:
                return lock
            if not announced:
                log.warning("queue: another process is delivering from %s; waiting",
                            self._spool.directory)
                announced = True
            await self._sleep(self._poll_interval)
        return None

    async def _finish_inflight(self) -> None:
        """Wait for in-flight attempts until the stop deadline, then cancel those
        not yet recording an outcome (see the module docstring)."""
        if not self._inflight:
            return
        tasks = set(self._inflight.values())
        _, pending = await asyncio.wait(
            tasks, timeout=max(0.0, self._deadline - time.monotonic())
        )
        if not pending:
            return
        cut = {qid: task for qid, task in self._inflight.items()
               if task in pending and qid not in self._recording}
        for task in cut.values():
            task.cancel()
        # Cancelled attempts leave the spool as it was before them: retried later.
        _, stuck = await asyncio.wait(pending, timeout=_CANCEL_SETTLE)
        if cut:
            self._log_cut(cut)
        if stuck:
            log.error("queue: stopping without %s that did not end: %s",
                      count(len(stuck), "delivery", "deliveries"),
                      ", ".join(t.get_name() for t in stuck))

    def _log_cut(self, cut: Mapping[str, asyncio.Task[None]]) -> None:
        """What the stop did to each delivery it cancelled. Most end cancelled, and
        their messages stay queued as they were; a relay that the next hop had
        already answered for some recipients keeps those outcomes (the deliverer
        ends the cancellation, see relay.py ``_cut_short``), and they are recorded:
        saying "they stay queued" of those would send an operator looking for a
        message that was delivered, or bounced."""
        kept = [qid for qid, t in cut.items() if t.done() and t.cancelled()]
        gone = [qid for qid in cut if self._ended_in_stop.get(qid) is True]
        partly = [qid for qid in cut if self._ended_in_stop.get(qid) is False]
        said = []
        if kept:
            said.append(f"{', '.join(kept)} stay{'s' if len(kept) == 1 else ''} queued "
                        "as before")
        if partly:
            said.append(f"{', '.join(partly)}: the outcomes the next hop gave are "
                        "recorded, the other recipients stay queued")
        if gone:
            said.append(f"{', '.join(gone)}: every recipient has an outcome (recorded), "
                        "nothing left queued")
        n = len(cut)
        log.warning("queue: stopping: cancelled %d deliver%s in progress; %s",
                    n, "y" if n == 1 else "ies", "; ".join(said) or "none has ended yet")

    # --- one attempt ------------------------------------------------------------

    async def _attempt(self, qid: str) -> None:
        try:
            retry_at = await self._deliver(qid)
        except asyncio.CancelledError:
            self._suspect.add(qid)  # the deliverer may have finished without us
            raise
        except Exception:
            log.exception("queue: unexpected error delivering %s", qid)
            self._suspect.add(qid)
            retry_at = self._clock() + _ERROR_RETRY
        finally:
            del self._inflight[qid]
            self._recording.discard(qid)
            self._wakeup.set()
        if self._stopping:
            self._ended_in_stop[qid] = retry_at is None
        self._reschedule(qid, retry_at)

    def _reschedule(self, qid: str, retry_at: float | None) -> None:
        if retry_at is None:
            self._forced.discard(qid)
        else:
            if qid in self._forced:  # flushed during the attempt
                retry_at = min(retry_at, self._clock())
            self._schedule(qid, retry_at)

    async def _deliver(self, qid: str) -> float | None:
        """One attempt under the message lock (see `msglock`); returns when to look
        at the message again (None: gone)."""
        try:
            lock = msglock.try_lock(self._spool.message_path(qid))
        except msglock.MessageBusy:
            return self._clock() + _BUSY_RETRY  # a queue command has it for a moment
        except MessageNotFound:
            lock = None
        except OSError as e:
            log.error("queue: cannot open %s: %s", qid, e)
            return self._clock() + _ERROR_RETRY
        if lock is None:
            self._suspect.discard(qid)
            self._unrecorded.pop(qid, None)
            return None
        with lock:
            return await self._deliver_locked(qid, lock)

    async def _deliver_locked(self, qid: str, lock: msglock.MessageLock) -> float | None:
        try:
            force = qid in self._forced
            self._forced.discard(qid)
            loaded = await asyncio.to_thread(self._load, qid, self._clock(), force, lock.fd)
        except MessageNotFound:
            self._suspect.discard(qid)
            self._unrecorded.pop(qid, None)
            return None
        except SpoolCorrupt as e:
            log.error("queue: %s is corrupt, moving it to corrupt/: %s", qid, e)
            try:
                await asyncio.to_thread(self._spool.quarantine, qid)
            except OSError as q:
                log.error("queue: cannot move %s to corrupt/: %s", qid, q)
                return self._clock() + _ERROR_RETRY
            return None
        except SpoolError as e:
            # Not the file's fault (EIO, EMFILE, EACCES...): the message stays queued.
            log.error("queue: %s: %s; trying again in %d s", qid, e, _ERROR_RETRY)
            return self._clock() + _ERROR_RETRY
        if isinstance(loaded, float):
            return loaded  # not due yet (a restart rescans everything)
        envelope, data, state, _ = loaded
        unrecorded = self._unrecorded.pop(qid, None)
        if unrecorded is not None:
            state = _with_unrecorded(state, unrecorded)
        if not state.finished:
            suspect = qid in self._suspect or qid in self._lost_state
            self._suspect.discard(qid)  # put back if this attempt ends abnormally
            self._lost_state.discard(qid)
            message = QueuedMessage(qid, envelope, without_fields(data, self._drop),
                                    maybe_delivered=suspect)
            self.deliveries += 1
            log.debug("queue: %s delivery attempt to %s%s", qid,
                      ", ".join(f"<{r}>" for r in state.pending),
                      " (may have been delivered before a crash)" if suspect else "")
            results = await self._call_deliverer(message, state.pending)
            before = state
            state, outcomes = self._apply(state, results, envelope)
            self._outcomes(qid, envelope, outcomes)
            state, unreported = await self._send_reports(qid, envelope, data, state, outcomes)
            if unreported:
                # The outcome of these recipients is not recorded, so that their
                # report is not lost: they are tried again in a minute. Everyone
                # else's is, so a relay never gets a recipient it took twice.
                self._suspect.add(qid)
                state = _not_recorded(state, before, unreported, self._clock() + _ERROR_RETRY)
        return await self._record(qid, state)

    def _outcomes(self, qid: str, envelope: Envelope, outcomes: tuple[Outcome, ...]) -> None:
        self.outcomes.update(o.kind for o in outcomes)
        _log_outcomes(qid, envelope, outcomes)

    def _apply(
        self, state: MessageState, results: dict[str, DeliveryResult], envelope: Envelope
    ) -> tuple[MessageState, tuple[Outcome, ...]]:
        return apply_results(
            state,
            results,
            now=self._clock(),
            received_at=envelope.received_at,
            retry_initial=self._cfg.retry_initial,
            retry_max=self._cfg.retry_max,
            max_age=self._cfg.max_age,
        )

    async def _record(self, qid: str, state: MessageState) -> float | None:
        """Write the attempt's outcome (or remove the finished message); returns when
        to look at it again."""
        self._recording.add(qid)  # from here on a stop waits for the record
        try:
            if state.finished:
                await self._spool.remove(qid, recycle=self._recycle)
                return None
            await self._spool.save_state(qid, state)
        except SpoolError as e:
            log.error("queue: %s: %s; trying again in %d s", qid, e, _ERROR_RETRY)
            if self._batcher is None:
                # The next attempt starts from this state, not from the one on the
                # disk: the recipients the next hop took are not sent again.
                self._unrecorded[qid] = state
            return self._clock() + _ERROR_RETRY
        return state.next_attempt

    # --- batches (a BlockingBatch deliverer) -------------------------------------

    async def _attempt_batch(self, qids: list[str]) -> None:
        """One attempt for each of ``qids`` with a `BlockingBatch` deliverer: the
        message locks, the reads, the delivery and the removal of what it delivered
        happen in ONE thread call (`_run_batch`), instead of a thread hop or two per
        message. What needs the event loop (a report to spool, a state to save) is
        finished here afterwards, under the message's lock, as `_deliver_locked`
        does. A batch is not cancelled at the stop deadline: it is on the local
        disk, and it records what it did."""
        self._recording.update(qids)
        forced = frozenset(q for q in qids if q in self._forced)
        self._forced.difference_update(forced)
        suspect = frozenset(q for q in qids if q in self._suspect)
        retry: dict[str, float | None] = {}
        done: list[_Done] = []
        try:
            future = asyncio.get_running_loop().run_in_executor(
                None, self._run_batch, qids, forced, suspect)
            try:
                done = await asyncio.shield(future)
            except asyncio.CancelledError:
                self._suspect.update(qids)
                future.add_done_callback(_release_unfinished)
                raise
            except Exception:
                log.exception("queue: unexpected error delivering %s", ", ".join(qids))
                self._suspect.update(qids)
                done = [_Done(q, retry_at=self._clock() + _ERROR_RETRY) for q in qids]
            for d in done:
                try:
                    retry[d.qid] = await self._settle(d)
                except Exception:
                    log.exception("queue: unexpected error delivering %s", d.qid)
                    self._suspect.add(d.qid)
                    retry[d.qid] = self._clock() + _ERROR_RETRY
        finally:
            for d in done:
                if d.finish is not None:  # not settled: cancelled meanwhile
                    self._suspect.add(d.qid)
                    d.finish[0].release()
            self._batches -= 1
            for qid in qids:
                del self._inflight[qid]
                self._recording.discard(qid)
            for qid, retry_at in retry.items():
                self._reschedule(qid, retry_at)
            self._wakeup.set()

    async def _settle(self, d: _Done) -> float | None:
        """The event loop's part of one message of a batch; returns when to look at
        it again (None: gone)."""
        qid = d.qid
        if d.attempted:
            self.deliveries += 1
        if d.forget:
            self._suspect.discard(qid)
        if d.suspect:
            self._suspect.add(qid)
        if d.envelope is not None:
            self._outcomes(qid, d.envelope, d.outcomes)
        if d.finish is None:
            return d.retry_at
        lock, envelope, data, state = d.finish
        d.finish = None
        with lock:
            reported, unreported = await self._send_reports(qid, envelope, data, state,
                                                            d.outcomes)
            if unreported:
                # As in `_deliver_locked`; the Maildir recognises its copy of a
                # recipient tried again (maybe_delivered).
                self._suspect.add(qid)
                if d.before is None:  # not expected: then the whole attempt again
                    return self._clock() + _ERROR_RETRY
                reported = _not_recorded(reported, d.before, unreported,
                                         self._clock() + _ERROR_RETRY)
            return await self._record(qid, reported)

    def _run_batch(
        self, qids: list[str], forced: frozenset[str], suspect: frozenset[str]
    ) -> list[_Done]:
        """Runs in a thread: lock and read each message, deliver those due in one
        call, then remove the spool copy of each message the deliverer made durable
        and that needs no report (one fsync of ``queue/``): only after the copy is
        safe, as `_deliver_locked` orders it. The others come back still locked,
        for `_settle`."""
        assert self._batcher is not None
        done = [_Done(qid) for qid in qids]
        held: list[msglock.MessageLock] = []  # released on return, unless handed back
        try:
            now = self._clock()
            todo: list[tuple[_Done, msglock.MessageLock, Envelope, bytes, MessageState, bool]] = []
            for d in done:
                lock = self._lock_one(d, now)
                if lock is None:
                    continue
                held.append(lock)
                loaded = self._load_one(d, now, d.qid in forced, lock.fd)
                if loaded is not None:
                    todo.append((d, lock, *loaded))
            due = [t for t in todo if not t[4].finished]
            messages = [QueuedMessage(d.qid, envelope, without_fields(data, self._drop),
                                      maybe_delivered=d.qid in suspect
                                      or d.qid in self._lost_state)
                        for d, _, envelope, data, _, _ in due]
            self._lost_state.difference_update(m.queue_id for m in messages)
            for m, (_, _, _, _, state, _) in zip(messages, due, strict=True):
                log.debug("queue: %s delivery attempt to %s%s", m.queue_id,
                          ", ".join(f"<{r}>" for r in state.pending),
                          " (may have been delivered before a crash)" if m.maybe_delivered
                          else "")
            try:
                results = self._batcher.deliver_blocking(messages) if messages else []
            except Exception:
                # An exception is a bug (see `_call_deliverer`): temporary, suspect.
                log.exception("queue: deliverer raised for %s",
                              ", ".join(m.queue_id for m in messages))
                results = [TempFailure("4.3.0 internal error in delivery")] * len(messages)
                for d, *_ in due:
                    d.suspect = True
            removals = [t for t in todo if t[4].finished]
            for (d, lock, envelope, data, state, has_state), result in zip(
                    due, results, strict=True):
                d.attempted = d.forget = True
                after, outcomes = self._apply(state, dict.fromkeys(state.pending, result),
                                              envelope)
                d.envelope, d.outcomes = envelope, outcomes
                if after.finished and _quiet(envelope, outcomes):
                    removals.append((d, lock, envelope, data, after, has_state))
                else:
                    d.finish = (lock, envelope, data, after)
                    d.before = state
                    held.remove(lock)
            errors = self._spool.remove_now(
                [(d.qid, has_state) for d, _, _, _, _, has_state in removals],
                recycle=self._recycle)
            for (d, *_), error in zip(removals, errors, strict=True):
                if error is not None:
                    log.error("queue: %s: %s", d.qid, error)
                    d.retry_at = self._clock() + _ERROR_RETRY
        except BaseException:
            for d in done:
                if d.finish is not None:
                    held.append(d.finish[0])
                    d.finish = None
            raise
        finally:
            for lock in held:
                lock.release()
        return done

    def _lock_one(self, d: _Done, now: float) -> msglock.MessageLock | None:
        """`_deliver`'s lock step, in the batch thread; None: no attempt (``d`` says
        what next)."""
        try:
            lock = msglock.try_lock(self._spool.message_path(d.qid))
        except msglock.MessageBusy:
            d.retry_at = now + _BUSY_RETRY  # a queue command has it for a moment
            return None
        except MessageNotFound:
            lock = None
        except OSError as e:
            log.error("queue: cannot open %s: %s", d.qid, e)
            d.retry_at = now + _ERROR_RETRY
            return None
        if lock is None:
            d.forget = True  # gone
        return lock

    def _load_one(
        self, d: _Done, now: float, force: bool, fd: int
    ) -> tuple[Envelope, bytes, MessageState, bool] | None:
        """`_deliver_locked`'s read step, in the batch thread; None: no attempt."""
        try:
            loaded = self._load(d.qid, now, force, fd)
        except MessageNotFound:
            d.forget = True
            return None
        except SpoolCorrupt as e:
            log.error("queue: %s is corrupt, moving it to corrupt/: %s", d.qid, e)
            try:
                self._spool.quarantine(d.qid)
            except OSError as q:
                log.error("queue: cannot move %s to corrupt/: %s", d.qid, q)
                d.retry_at = now + _ERROR_RETRY
            return None
        except SpoolError as e:
            # Not the file's fault (EIO, EMFILE, EACCES...): the message stays queued.
            log.error("queue: %s: %s; trying again in %d s", d.qid, e, _ERROR_RETRY)
            d.retry_at = now + _ERROR_RETRY
            return None
        if isinstance(loaded, float):
            d.retry_at = loaded  # not due yet, or held
            return None
        return loaded

    async def _send_reports(
        self, qid: str, envelope: Envelope, data: bytes, state: MessageState,
        outcomes: tuple[Outcome, ...],
    ) -> tuple[MessageState, frozenset[str]]:
        """Spool the delivery status notifications this attempt calls for (a bounce
        for recipients given up, a delay warning once per recipient, a success report
        where NOTIFY asked for one) before the
        attempt is recorded: a crash in between repeats a report, never loses one.
        Returns the state with the warnings marked, and the recipients of a failure
        or success report that could not be spooled (a full spool): their outcome
        must not be recorded, or the report would be lost. A delay warning that
        could not be spooled is only not marked: the next attempt sends it."""
        now = self._clock()
        failed = [o for o in outcomes if o.kind in ("bounced", "expired")]
        delayed: list[Outcome] = []
        warn_after = self._cfg.delay_warning
        if warn_after > 0 and now - envelope.received_at >= warn_after:
            warned = {r.address for r in state.recipients if r.warned}
            delayed = [o for o in outcomes if o.kind == "deferred" and o.address not in warned]
        succeeded = [(a, [o for o in outcomes if o.kind == "delivered" and o.dsn_action == a])
                     for a in ("delivered", "relayed")]
        unreported: set[str] = set()
        for action, chosen in (("failed", failed), ("delayed", delayed), *succeeded):
            reports = dsn.reports_for(envelope, chosen, action)
            built = dsn.build_report(envelope=envelope, queue_id=qid, data=data,
                                     reports=reports, reporting_mta=self._reporting_mta,
                                     now=now, size_limit=self._report_size_limit)
            if built is None:
                if chosen and action in ("failed", "delayed"):
                    log.info("queue: %s no %s report for %s (null sender or NOTIFY)",
                             qid, action, count(len(chosen), "recipient"))
                continue
            try:
                report_id = await self._spool.store(*built)
            except SpoolError as e:
                log.error("queue: %s: cannot spool the %s report: %s; trying again in %d s",
                          qid, action, e, _ERROR_RETRY)
                if action == "delayed":
                    delayed = []
                else:
                    unreported.update(r.address for r in reports)
                continue
            log.info("queue: %s %s report to=<%s> queued as %s", qid, action,
                     envelope.mail_from, report_id)
            self._note(report_id)
        if delayed:
            marked = {o.address for o in delayed}
            state = replace(state, recipients=tuple(
                replace(r, warned=True) if r.address in marked else r for r in state.recipients
            ))
        return state, frozenset(unreported)

    def _load(
        self, qid: str, now: float, force: bool = False, fd: int | None = None
    ) -> tuple[Envelope, bytes, MessageState, bool] | float:
        """Runs in a thread: the state first, the (maybe large) message only if due
        (through ``fd``, the locked message file, if given). The last item says
        whether a state file exists.

        A state file that does not parse is moved to ``corrupt/`` and the message,
        when it is intact, delivered to every recipient as if never tried (flagged
        maybe_delivered): the acknowledged message must not go with its state. A
        recipient already served may get it twice, never zero times (RFC 1047)."""
        try:
            state = self._spool.load_state(qid)
        except StateCorrupt as e:
            self._spool.load(qid, fd)  # a corrupt message too: quarantine them both
            log.warning("queue: %s; moving the state to corrupt/ and delivering the "
                        "message as if never tried", e)
            try:
                self._spool.quarantine_state(qid)
            except OSError as q:
                raise SpoolError(f"cannot move the state of {qid} to corrupt/: {q}") from q
            self._lost_state.add(qid)
            state = None
        if state is not None and state.held:
            return float("inf")  # until `queue release` asks for it (control.py)
        if state is not None and not state.finished and state.next_attempt > now and not force:
            if state.next_attempt <= now + self._cfg.retry_max + _FUTURE_SLACK:
                return state.next_attempt
            # No attempt schedules one this far ahead: written before the clock went
            # back (module docstring, "Clock steps"). Due now, not in a day.
            log.warning("queue: %s: its next attempt is %.0f s ahead, more than "
                        "queue.retry_max (the clock went back, or retry_max was lowered): "
                        "trying it now",
                        qid, state.next_attempt - now)
        envelope, data = self._spool.load(qid, fd)
        if state is None:
            return envelope, data, MessageState.initial(envelope.rcpt_to), False
        return envelope, data, state, True

    async def _call_deliverer(
        self, message: QueuedMessage, recipients: tuple[str, ...]
    ) -> dict[str, DeliveryResult]:
        try:
            return dict(await self._deliverer.deliver(message, recipients))
        except Exception:
            # Deliverers report failures as results; an exception is a bug. Treat it
            # as temporary and suspect the message (the copy may have gone out).
            log.exception("queue: deliverer raised for %s", message.queue_id)
            self._suspect.add(message.queue_id)
            return dict.fromkeys(recipients, TempFailure("4.3.0 internal error in delivery"))


@dataclass(slots=True)
class _Done:
    """What the batch thread did with one message (see `_attempt_batch`)."""

    qid: str
    #: When to look at the message again (None: it is gone), unless ``finish`` is set.
    retry_at: float | None = None
    attempted: bool = False  # handed to the deliverer
    forget: bool = False  # no longer suspect: attempted, or gone
    suspect: bool = False  # may have been delivered without a record
    envelope: Envelope | None = None  # with ``outcomes``: what to log
    outcomes: tuple[Outcome, ...] = ()
    #: Still to do on the event loop, under the lock: reports, then the record.
    finish: tuple[msglock.MessageLock, Envelope, bytes, MessageState] | None = None
    before: MessageState | None = None  # with ``finish``: the state before the attempt


def _release_unfinished(future: asyncio.Future[list[_Done]]) -> None:
    """A cancelled batch's thread still finished: drop the locks it handed back."""
    if future.cancelled() or future.exception() is not None:
        return
    for d in future.result():
        if d.finish is not None:
            d.finish[0].release()


def _quiet(envelope: Envelope, outcomes: Sequence[Outcome]) -> bool:
    """Whether an attempt with these outcomes calls for no report (`_send_reports`
    would spool none): everything delivered, and nobody asked for NOTIFY=SUCCESS."""
    if any(o.kind != "delivered" for o in outcomes):
        return False
    if not envelope.mail_from:
        return True
    return not any(dsn.reports_for(envelope, [o], o.dsn_action)
                   for o in outcomes if o.dsn_action in ("delivered", "relayed"))


def _with_unrecorded(on_disk: MessageState, unrecorded: MessageState) -> MessageState:
    """The state on the disk with the outcomes an attempt could not record (`_record`):
    a recipient pending on the disk but finished in ``unrecorded`` takes that outcome.
    What a queue command changed on the disk meanwhile (a hold, a flush) stays."""
    done = {r.address: r for r in unrecorded.recipients if r.status is not RcptStatus.PENDING}
    if not any(r.address in done and r.status is RcptStatus.PENDING
               for r in on_disk.recipients):
        return on_disk
    known = set(on_disk.history)
    return replace(on_disk, recipients=tuple(
        done[r.address] if r.status is RcptStatus.PENDING and r.address in done else r
        for r in on_disk.recipients)).with_history(
            h for h in unrecorded.history if h not in known)


def _not_recorded(after: MessageState, before: MessageState, addresses: frozenset[str],
                  retry_at: float) -> MessageState:
    """``after`` with the recipients in ``addresses`` back as they were ``before`` the
    attempt, due again at ``retry_at`` (see `_send_reports`)."""
    old = {r.address: r for r in before.recipients}
    return replace(after, recipients=tuple(
        replace(old[r.address], next_attempt=retry_at) if r.address in addresses else r
        for r in after.recipients))


def _log_outcomes(qid: str, envelope: Envelope, outcomes: tuple[Outcome, ...]) -> None:
    for o in outcomes:
        metrics.delivered(o.kind)
        if o.kind == "delivered":
            log.info("queue: %s delivered to=<%s> %s", qid, o.address, o.detail)
        elif o.kind == "deferred":
            until = dt.datetime.fromtimestamp(o.next_attempt, dt.UTC).isoformat(timespec="seconds")
            log.info("queue: %s deferred to=<%s> until %s: %s", qid, o.address, until, o.detail)
        else:
            # The bounce, for now: a log record, no DSN (RFC 3464) is sent yet.
            log.warning("queue: %s bounce (%s) from=<%s> to=<%s>: %s", qid, o.kind,
                        envelope.mail_from, o.address, o.detail)
