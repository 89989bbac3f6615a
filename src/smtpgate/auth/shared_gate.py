"""The attempt gate (``attempt_gate.py``) for every node that shares one Redis.

Why: the gate makes the guard's limits exact by letting one attempt per client
address (and, from addresses an account does not know, one per account) be
between its check and its committed failure at a time; but it is one process's.
Behind a balancer each node runs several workers, each with its own gate, so N
guesses sent at once reached N processes, all read the same count in Redis and
all were verified: with two nodes of two workers, 8 passwords were tried
against a ``lockout_threshold`` of 5. This module holds the same keys in Redis
too, so the limits hold for the cluster as for one process.

How: after the process's own gate, an attempt takes a lease ``PREFIX gate:KEY``
with ``SET NX PX`` (one round trip when nobody holds it, the common case) and
gives it back when the process's gate is released, deleting it only if it is
still its own (a lease that ran out may be another attempt's now). A lease that
is taken is polled (after 10 ms, backing off to 100 ms); it lasts
``attempt_gate.MAX_WAIT`` at most, so a node that died holding one holds up that key for that long, as a
stalled SCRAM exchange holds the process's gate. The process gate in front of
it means one attempt per key and process polls.

Faults: Redis not answering is the guard's to handle (its degraded mode, which
counts in memory); the gate then steps aside for ``PAUSE`` seconds instead of
making every attempt wait for a timeout first. Giving a lease back happens on a
thread of this module's and never delays a reply.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from smtpgate.auth.attempt_gate import MAX_WAIT

if TYPE_CHECKING:
    import redis

#: Seconds before the second try for a lease another process holds; it doubles
#: up to ``POLL_MAX``.
POLL = 0.01
POLL_MAX = 0.1
#: Seconds the gate steps aside after Redis failed to answer it.
PAUSE = 1.0

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class SharedGate:
    """Leases on gate keys in Redis (module docstring); use from one event loop."""

    def __init__(self, client: redis.Redis, prefix: str, *, lease: float = MAX_WAIT,
                 poll: float = POLL, pause: float = PAUSE) -> None:
        import redis as redis_py

        self._client = client
        self._prefix = prefix + "gate:"
        self._lease_ms = int(lease * 1000)
        self._lease = lease
        self._poll = poll
        self._pause = pause
        self._errors: tuple[type[BaseException], ...] = (redis_py.RedisError, OSError)
        self._release: Any = client.register_script(_RELEASE)
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="shared-gate")
        self._aside_until = 0.0

    def _take(self, key: str, token: str) -> bool:
        return bool(self._client.set(self._prefix + key, token, nx=True, px=self._lease_ms))

    def _give_back(self, key: str, token: str) -> None:
        try:
            self._release(keys=[self._prefix + key], args=[token])
        except self._errors:
            pass  # it runs out by itself

    async def acquire(self, key: str) -> tuple[str | None, bool]:
        """(token, waited): the lease's token (None: held without Redis, which did
        not answer, or the wait reached the lease's length), and whether another
        process held the key first (the guard's record may have changed)."""
        if time.monotonic() < self._aside_until:
            return None, False
        loop = asyncio.get_running_loop()
        token = secrets.token_hex(8)
        deadline = time.monotonic() + self._lease
        waited = False
        tries = 0
        while True:
            try:
                if await loop.run_in_executor(self._pool, self._take, key, token):
                    return token, waited
            except self._errors:
                self._aside_until = time.monotonic() + self._pause
                return None, waited
            if time.monotonic() >= deadline:
                return None, True
            # 10 ms, then doubling to 100 ms: a quick attempt ahead costs little
            # wait, a stalled one (a SCRAM exchange waiting on its client) few calls.
            await asyncio.sleep(min(POLL_MAX, self._poll * 2 ** min(tries, 4)))
            tries += 1
            waited = True

    def release(self, key: str, token: str | None) -> None:
        """Give the lease back (never waits; a closed gate leaves it to run out)."""
        if token is None:
            return
        try:
            self._pool.submit(self._give_back, key, token)
        except RuntimeError:
            pass  # shut down: the lease runs out by itself

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._client.close()
