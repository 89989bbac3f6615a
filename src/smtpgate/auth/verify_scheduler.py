"""Which password verification runs next: the owner's before a guesser's.

Why: a wrong password that gets past the guard costs one full Argon2id run
(64 MiB, t = 3: about 150 ms of CPU here). Ten connections flooding wrong
passwords from a new address kept every hash thread of both workers busy, and
the owner's logins, cache hits that need no Argon2 at all, waited for the CPU
behind them: p99 12.7x the unloaded one (bench/README.md, issue 13, workload E).

The rules (docs/protection.md, "Who verifies first"):

- At most ``slots`` (``[accounts] hash_threads``) verifications run at once in
  a process; the others wait here, not in the thread pool's queue, so that the
  order is ours.
- Two lanes. ``TRUSTED``: an attempt from an address the account has logged in
  from and that has no recent failures (the guard's snapshot), from an
  allowlisted network, or with no guard to ask; also the secrets derived after
  a good password. Untrusted (``Lane.untrusted(address)``): every other attempt,
  under the client's address as the guard counts it (IPv4 /32, IPv6 /64).
- A trusted verification starts before every waiting untrusted one.
- Untrusted verifications hold at most ``slots - 1`` slots (at least one): one
  is kept for the trusted lane, so the owner never waits for a guesser's run to
  end (with ``hash_threads = 1`` they share the one slot).
- One untrusted verification per address at a time; the next from there waits
  (its penalty delay, if any, has already been served). Across addresses the
  oldest waiter goes first.
- Untrusted verifications run on threads with a lower CPU priority
  (``UNTRUSTED_NICE``, ``lower_thread_priority``), so that even while one runs
  the event loops' work (TLS, the owner's cache-hit logins) gets the cores.

Nothing here decides an outcome: a queued attempt is verified like any other,
the guard counts exactly what it counted before, and every reply is the same.
Only the order and the CPU share change. ``VerificationScheduler`` touches no
thread and no clock: the auth service acquires a slot, runs the verification on
a pool, and releases the slot when the thread is done (``AuthService._hash``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import threading
from collections import deque
from dataclasses import dataclass

log = logging.getLogger("smtpgate.auth.service")

#: The nice value of the threads that run untrusted verifications (Linux only:
#: there nice is per thread; the thread computes all of a hash's lanes itself,
#: argon2_one_thread.py, and threads it would start inherit it). A choice,
#: measured (bench/README.md, issue 13, "verification lanes (workload E)"): beside
#: two such runs a busy thread's p99 was 1.4-2x an idle machine's at 10 (2.8-8.5x
#: at 0, about 1x at 19), while a run still gets a tenth of a busy core, so a
#: login from a new address is slowed, not starved, when the machine is saturated.
UNTRUSTED_NICE = 10


@dataclass(frozen=True, slots=True)
class Lane:
    """Where a verification queues: trusted, or untrusted under an address key."""

    trusted: bool
    #: The client's address as the guard counts it; "" for the trusted lane.
    address: str = ""

    @staticmethod
    def untrusted(address: str) -> Lane:
        return Lane(False, address)


TRUSTED = Lane(True)


class VerificationScheduler:
    """Slots for password verifications, handed out by the rules above.

    Use from one event loop. ``acquire`` waits for a slot; every acquired slot is
    given back with exactly one ``release`` (of the same lane).
    """

    def __init__(self, slots: int) -> None:
        self._slots = max(1, slots)
        #: Untrusted runs at once: one slot kept for the trusted lane.
        self._untrusted_cap = max(1, self._slots - 1)
        self._busy = 0
        self._busy_untrusted = 0
        #: Addresses with an untrusted run in flight.
        self._addresses: set[str] = set()
        self._trusted_waiting: deque[asyncio.Future[None]] = deque()
        self._untrusted_waiting: deque[tuple[str, asyncio.Future[None]]] = deque()

    @property
    def running(self) -> int:
        return self._busy

    @property
    def waiting(self) -> int:
        return len(self._trusted_waiting) + len(self._untrusted_waiting)

    def _take(self, lane: Lane) -> None:
        self._busy += 1
        if not lane.trusted:
            self._busy_untrusted += 1
            self._addresses.add(lane.address)

    def _give_back(self, lane: Lane) -> None:
        self._busy -= 1
        if not lane.trusted:
            self._busy_untrusted -= 1
            self._addresses.discard(lane.address)

    async def acquire(self, lane: Lane) -> None:
        """Wait until ``lane`` may start a verification, and take its slot."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if lane.trusted:
            self._trusted_waiting.append(fut)
        else:
            self._untrusted_waiting.append((lane.address, fut))
        self._dispatch()  # at once if nobody who goes first is waiting
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release(lane)  # granted, but our caller went away: hand it on
            else:
                self._forget(lane, fut)
            raise

    def _forget(self, lane: Lane, fut: asyncio.Future[None]) -> None:
        with contextlib.suppress(ValueError):
            if lane.trusted:
                self._trusted_waiting.remove(fut)
            else:
                self._untrusted_waiting.remove((lane.address, fut))

    def release(self, lane: Lane) -> None:
        """Give back a slot ``acquire(lane)`` took, and start who is next."""
        self._give_back(lane)
        self._dispatch()

    def _dispatch(self) -> None:
        while self._busy < self._slots:
            if self._trusted_waiting:
                self._grant(TRUSTED, self._trusted_waiting.popleft())
                continue
            picked = self._next_untrusted()
            if picked is None:
                return
            address, fut = picked
            self._untrusted_waiting.remove(picked)
            self._grant(Lane.untrusted(address), fut)

    def _next_untrusted(self) -> tuple[str, asyncio.Future[None]] | None:
        """The oldest untrusted waiter whose address has nothing in flight."""
        if self._busy_untrusted >= self._untrusted_cap:
            return None
        for waiter in self._untrusted_waiting:
            if waiter[0] not in self._addresses:
                return waiter
        return None

    def _grant(self, lane: Lane, fut: asyncio.Future[None]) -> None:
        if not fut.done():  # else cancelled meanwhile: its waiter forgets it
            self._take(lane)
            fut.set_result(None)


def lower_thread_priority(nice: int = UNTRUSTED_NICE) -> None:
    """Raise the calling thread's nice value (a pool initializer).

    Linux only: there nice is a property of the thread, inherited by the threads
    it starts. Elsewhere PRIO_PROCESS would renice the whole
    process, so nothing is done. A refusal (a sandbox) leaves the priority as it
    is: the lane rules still apply, only the CPU share does not change.
    """
    if sys.platform != "linux" or nice <= 0:
        return
    tid = threading.get_native_id()
    try:
        current = os.getpriority(os.PRIO_PROCESS, tid)
        if current < nice:
            os.setpriority(os.PRIO_PROCESS, tid, nice)
    except OSError as e:
        log.debug("could not lower the priority of hash thread %d: %s", tid, e)
