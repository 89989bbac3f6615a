"""New connections per minute from one client address (``limits.connection_rate_per_ip``).

Why: every connection to 465, and every STARTTLS on 587, costs the server a
full TLS handshake (about 0.5-1 ms of CPU with the certificates `init` makes,
bench/README.md) before anything is known about the client. The concurrent
limit (``max_connections_per_ip``) does not bound that: twenty connections
that each hang up after the handshake and reconnect keep a core busy. So the
number of new connections an address may open in a minute is bounded too, as
Postfix's ``smtpd_client_connection_rate_limit`` does, and a connection over
it is refused before its handshake.

The window slides: the count is this minute's plus the last minute's scaled
by how much of it still lies within the last 60 s, rounded up, so a burst at
a minute's turn is not let through twice. Counts live in a count-min sketch of two tables per minute,
keyed with a secret made at start-up (a client cannot aim at someone else's
slots), so memory is fixed whatever the number of addresses: an address is
never counted low, and counted high only if both its slots are shared with
busy addresses. The caller provides the counters' memory and the lock
(``server/limits.py``), so that with several workers the counts are the
server's, not one worker's. IPv6 clients are counted by their /64, as the
guard counts them (``auth/networks.py``): one customer's prefix is one
client.

Attempts that are refused count too: a client that keeps hammering stays
refused until it slows down.
"""

from __future__ import annotations

import hashlib
import math
import secrets
import time
from collections.abc import Callable, Iterable

from smtpgate.auth.networks import IPNetwork, client_keys, in_networks, parse_ip, parse_networks

#: Counters per table; two tables per minute, two minutes kept.
SLOTS = 1 << 14
_TABLES = 2
#: Counters in all: the current minute's number, then two minutes of tables.
SIZE = 1 + 2 * _TABLES * SLOTS
_SATURATED = 0xFFFFFFFF


class ConnectionRate:
    """Decides whether a new connection from an address is within the rate."""

    def __init__(self, per_minute: int, exceptions: Iterable[str] = (), *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self.exceptions: tuple[IPNetwork, ...] = parse_networks(exceptions)
        self._clock = clock
        self._key = secrets.token_bytes(16)

    def set_limit(self, per_minute: int, exceptions: Iterable[str]) -> None:
        """A reload: counts so far stay."""
        self.per_minute = per_minute
        self.exceptions = parse_networks(exceptions)

    def exempt(self, ip: str) -> bool:
        return self.per_minute <= 0 or in_networks(parse_ip(ip), self.exceptions)

    def take(self, counts: memoryview, base: int, ip: str) -> bool:
        """Count one connection from ``ip`` in ``counts[base:base + SIZE]`` (uint32s,
        the caller holding whatever lock makes them its own) and say whether it is
        within the rate. ``CLOCK_MONOTONIC`` is one clock for every process of the
        machine, so workers agree on the minute."""
        if self.exempt(ip):
            return True
        now = self._clock()
        minute = int(now // 60) & _SATURATED
        if counts[base] != minute:
            self._turn(counts, base, minute)
        current = base + 1 + (minute % 2) * _TABLES * SLOTS
        previous = base + 1 + ((minute + 1) % 2) * _TABLES * SLOTS
        a, b = self._slots(client_keys(ip).address)
        this = min(counts[current + a], counts[current + b])
        last = min(counts[previous + a], counts[previous + b])
        seen = this + math.ceil(last * (1.0 - (now % 60) / 60))
        for i in (current + a, current + b):
            if counts[i] < _SATURATED:
                counts[i] += 1
        return seen < self.per_minute

    @staticmethod
    def _turn(counts: memoryview, base: int, minute: int) -> None:
        """A new minute: the one before it stays as the last minute only if it was
        the last one counted; anything older is forgotten."""
        span = _TABLES * SLOTS
        zero = memoryview(bytes(span * 4)).cast("I")
        if minute == (counts[base] + 1) & _SATURATED:
            start = base + 1 + (minute % 2) * span
            counts[start:start + span] = zero
        else:
            counts[base + 1:base + SIZE] = memoryview(bytes(2 * span * 4)).cast("I")
        counts[base] = minute

    def _slots(self, key: str) -> tuple[int, int]:
        h = int.from_bytes(hashlib.blake2b(key.encode(), key=self._key, digest_size=8).digest())
        return (h & 0xFFFFFFFF) % SLOTS, SLOTS + (h >> 32) % SLOTS
