"""The sending counters the rate limiter reads and bumps, as an interface.

Theory of operation
-------------------
A counter is (messages, recipients) per key (``acct:NAME``, ``app:ID``) per
bucket, a bucket being ``BUCKET_SECONDS`` of the limiter's clock
(``int(t // BUCKET_SECONDS)``). The limiter (``rates.py``) adds what a message
used to every key of its sender and reads the sums over its window; what the
limits are, and what a sum means, is its business, not the counters'.

Shaped for an atomic increment with expiry (Redis ``INCRBY`` + ``EXPIREAT``,
shared by several nodes) as much as for SQL: ``add_usage`` is one round trip for
all keys, ``usage`` one read. A bucket is kept for ``KEEP_BUCKETS`` buckets and
then forgotten, so nothing grows without bound: once a bucket that much newer
has been added, or, for an implementation that expires by TTL, at
``(bucket + KEEP_BUCKETS + 1) * BUCKET_SECONDS`` of the clock.

The calls are synchronous; the limiter runs them on threads of its own (reads
and writes apart), each bounded in time, and decides what an unanswered call
means (``rates.py``).
``SqliteRateCounters`` (``sqlite_counters.py``) keeps them in the guard's file for
one node; ``tests/contract/test_rate_counters_contract.py`` is the contract
every implementation passes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

#: Seconds per bucket: the limiter's window slides to the minute.
BUCKET_SECONDS = 60
#: Buckets kept (a day): longer than any window the limiter reads.
KEEP_BUCKETS = 1440


class RateCountersError(Exception):
    """The counters failed (I/O, corrupt, busy too long, unreachable, closed)."""


class RateCounters(Protocol):
    """Every method may raise ``RateCountersError``."""

    def add_usage(self, keys: Sequence[str], bucket: int, messages: int, recipients: int) -> None:
        """Add (``messages``, ``recipients``) to each key's count in ``bucket``, all
        keys at once. Concurrent adds from any process or node all count."""
        ...

    def usage(self, keys: Sequence[str], since_bucket: int) -> dict[str, tuple[int, int]]:
        """(messages, recipients) per key, summed over buckets >= ``since_bucket``;
        (0, 0) for a key never counted. Buckets forgotten (``KEEP_BUCKETS``) count 0."""
        ...

    def add_within(
        self, limits: Mapping[str, tuple[int, int]], bucket: int, since_bucket: int,
        messages: int, recipients: int,
    ) -> dict[str, tuple[int, int]] | None:
        """``add_usage`` of (``messages``, ``recipients``) to every key of ``limits``
        only if none would then be past its limit ((messages, recipients) per key,
        0 unlimited) summed over buckets >= ``since_bucket``: one atomic step
        against every other add, in any process or node. None: added; else the
        usage (as ``usage``) that refused it, and nothing was added.

        What a check at one moment and a count at another cannot give: callers
        running in parallel cannot together go past a limit (the Postfix policy
        door's reservations, ``server/policy_door.py``). A count may be negative
        (a reservation given back, through ``add_usage``)."""
        ...

    def close(self) -> None: ...


def over_limit(limits: Mapping[str, tuple[int, int]], used: Mapping[str, tuple[int, int]],
               messages: int, recipients: int) -> bool:
    """Whether adding (``messages``, ``recipients``) to ``used`` would take a key past
    its limit (0: unlimited): ``add_within``'s test, for every implementation."""
    for key, (max_m, max_r) in limits.items():
        m, r = used.get(key, (0, 0))
        if max_m and messages > 0 and m + messages > max_m:
            return True
        if max_r and recipients > 0 and r + recipients > max_r:
            return True
    return False
