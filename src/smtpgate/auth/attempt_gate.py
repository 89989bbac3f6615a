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

Scope: one process (each worker has its own gate; with W workers an address
can have W attempts in flight, so at most W - 1 guesses beyond a limit). Keyed
by the guard's address key (an IPv4 address, an IPv6 /64). Every watched
attempt takes it, also one from an address the account knows: an attacker who
shares the owner's address (a NAT) must not get around the limit by sending in
parallel. The owner's own logins from one address then queue behind one
another, which costs a few milliseconds each; the penalty of an address with
failures is waited inside the gate, so attempts from a penalised address follow
one another at the penalty's pace. The failure floor is waited after the gate
is released.

A holder that never releases (a front door that lost an attempt without
concluding it) must not lock an address out of this process: waiters give up
waiting after `MAX_WAIT` seconds and go on without the gate, and an attempt
that is garbage-collected releases what it held.
"""

from __future__ import annotations

import asyncio
import collections
import logging

log = logging.getLogger("smtpgate.guard")

#: Seconds an attempt waits for the one before it at most (SASL exchanges that
#: wait on their client, SCRAM's, end within ``limits.auth_deadline`` anyway).
MAX_WAIT = 30.0


class AttemptGate:
    """See the module docstring. Used from one event loop."""

    def __init__(self, max_wait: float = MAX_WAIT) -> None:
        self._max_wait = max_wait
        #: Held keys, each with the attempts waiting for it in arrival order.
        self._held: dict[str, collections.deque[asyncio.Future[None]]] = {}

    def busy(self, key: str) -> bool:
        return key in self._held

    async def acquire(self, key: str) -> bool:
        """Wait for ``key``; True once it is held by the caller, False when the wait
        gave up after ``max_wait`` (the caller goes on without it)."""
        waiters = self._held.get(key)
        if waiters is None:
            self._held[key] = collections.deque()
            return True
        handed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters.append(handed)
        try:
            await asyncio.wait_for(asyncio.shield(handed), self._max_wait)
        except TimeoutError:
            if handed.done():
                return True  # handed over just as the wait ended
            handed.cancel()
            log.warning("guard: a login from %s waited %.0f s for the one before it; "
                        "going on without waiting", key, self._max_wait)
            return False
        except asyncio.CancelledError:
            if handed.done() and not handed.cancelled():
                self.release(key)  # it was ours: pass it on
            else:
                handed.cancel()
            raise
        return True

    def release(self, key: str) -> None:
        """Hand ``key`` to the next waiter still waiting, or free it."""
        waiters = self._held.get(key)
        if waiters is None:
            return
        while waiters:
            nxt = waiters.popleft()
            if not nxt.done():
                nxt.set_result(None)
                return
        del self._held[key]
