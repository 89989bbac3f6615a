"""One login attempt at a time per client address, from the guard's check to
the commit of its failure.

Why: the guard decides each attempt from what is recorded, and an attempt's
failure is recorded only after its password was checked. Attempts sent at the
same moment all read the same record, so without this gate 30 simultaneous
guesses from one address (30 connections, or 30 requests from nginx's
auth_http with one ``Client-IP``) were all checked against a limit of 6. With
it, each attempt from an address waits until the one before it has committed
its failure, and reads a record that includes it: the limit holds exactly.

The same race one level up (one guess from each of many new addresses against
one account's lockout) is closed the same way: the login path also takes the
gate of the account for an attempt from an address the account does not know.
And across a subnet (many addresses of one /24 spraying many accounts at once
read one count of the subnet's accounts): such an attempt also takes the
subnet's gate. The account's and the subnet's gates are taken after the
address's penalty (and the guard asked again), so they are held only for the
server's own work: a penalised guesser holds up none of the account's other
new-address logins and none of its subnet's.

Scope: one process (each worker has its own gate; with W workers an address
can have W attempts in flight, so at most W - 1 guesses beyond a limit). Keyed
by the guard's address key (an IPv4 address, an IPv6 /64). Every watched
attempt takes it, also one from an address the account knows: an attacker who
shares the owner's address (a NAT) must not get around the limit by sending in
parallel. The owner's own logins from one address then queue behind one
another, which costs a few milliseconds each; the penalty of an address with
failures is waited inside the address's gate (only), so attempts from a
penalised address follow one another at the penalty's pace. The failure floor is waited after the gate
is released.

A hold covers the server's own work, not a wait on the client: the login path
lets go of its gates when SCRAM's salt goes out and takes them again (with a
second guard check) when the proof comes, and counts a failure announced in a
challenge (``e=``) before the client answers it (``auth/login.py``), so a client
that stalls holds up nobody. A holder that never releases (a front door that
lost an attempt without concluding it, a bug) must not lock an address out of
this process: a hold lasts `MAX_WAIT` seconds at most,
then the gate goes to the next waiter, and an attempt that is garbage-collected
releases what it held. The waiters behind it still go one at a time: until
2026-12 each gave up after `MAX_WAIT` of its own wait and went on without the
gate, so every attempt queued behind a stalled SCRAM exchange went on at the same
moment, read the same record, and was verified (40 guesses from 40 new addresses
against a lockout_threshold of 5). A holder whose hold ended and that still has
something to have judged (a SCRAM proof) takes the gate again and has the guard
check it again first (``LoginAttempt._before_proof``), so no guess is judged on a
record read before others were counted.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from dataclasses import dataclass, field

from smtpgate.auth.authlog import neutralize

log = logging.getLogger("smtpgate.guard")

#: Seconds one attempt holds a key at most: a safety net, as no hold lasts
#: while the exchange waits on its client.
MAX_WAIT = 30.0


class Hold:
    """One attempt's hold on a key (or its place in the queue for it): what
    `AttemptGate.release` is given, so that a hold that ended by time cannot
    release the next holder's."""

    __slots__ = ()


@dataclass(slots=True)
class _Key:
    holder: Hold
    timer: asyncio.TimerHandle
    waiters: collections.deque[tuple[Hold, asyncio.Future[None]]] = field(
        default_factory=collections.deque)


class AttemptGate:
    """See the module docstring. Used from one event loop."""

    def __init__(self, max_wait: float = MAX_WAIT) -> None:
        self._max_wait = max_wait
        self._held: dict[str, _Key] = {}

    def busy(self, key: str) -> bool:
        return key in self._held

    def holds(self, key: str, hold: Hold) -> bool:
        """Whether ``hold`` still holds ``key`` (False once its time ended)."""
        state = self._held.get(key)
        return state is not None and state.holder is hold

    async def acquire(self, key: str) -> Hold:
        """Wait for ``key`` and hold it: until `release`, or ``max_wait`` seconds."""
        hold = Hold()
        loop = asyncio.get_running_loop()
        state = self._held.get(key)
        if state is None:
            self._held[key] = _Key(hold, self._expiry(loop, key, hold))
            return hold
        handed: asyncio.Future[None] = loop.create_future()
        state.waiters.append((hold, handed))
        try:
            await handed
        except asyncio.CancelledError:
            if handed.done() and not handed.cancelled():
                self.release(key, hold)  # it was ours: pass it on
            else:
                handed.cancel()
            raise
        return hold

    def release(self, key: str, hold: Hold) -> None:
        """End ``hold`` on ``key``, handing the key to the next waiter still
        waiting; nothing if ``hold`` no longer holds it (its time ended)."""
        state = self._held.get(key)
        if state is None or state.holder is not hold:
            return
        state.timer.cancel()
        self._pass_on(key, state)

    def _expiry(self, loop: asyncio.AbstractEventLoop, key: str, hold: Hold) -> asyncio.TimerHandle:
        return loop.call_later(self._max_wait, self._expired, key, hold)

    def _expired(self, key: str, hold: Hold) -> None:
        state = self._held.get(key)
        if state is None or state.holder is not hold:
            return
        if any(not f.done() for _, f in state.waiters):
            log.warning("guard: a login held %s for %.0f s; the next one goes on",
                        neutralize(key), self._max_wait)
        self._pass_on(key, state)

    def _pass_on(self, key: str, state: _Key) -> None:
        while state.waiters:
            hold, handed = state.waiters.popleft()
            if not handed.done():
                handed.set_result(None)
                state.holder = hold
                state.timer = self._expiry(handed.get_loop(), key, hold)
                return
        del self._held[key]
