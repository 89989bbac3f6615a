"""Connection limits for the whole server: concurrent connections in total and per
client address, and new connections per minute per address (``connection_rate.py``).

With one process, ``ConnectionLimiter`` counts exactly in memory. With several
worker processes, ``SharedConnectionLimiter`` keeps the counts in one block of
shared memory made by the parent before it forks, so ``max_connections`` and
``max_connections_per_ip`` hold for the server as a whole, as an administrator
reads them, not once per worker.

The shared block has one row per worker slot, and a worker writes only its own
row; a check sums the rows. So when a worker dies (even by ``kill -9``) the
parent zeroes its row and nothing it held stays counted. One ``lockf`` record
lock on the block's file makes check-and-take atomic across processes; the
kernel drops it when its holder dies, so a crash cannot leave it held.

An address is counted under the guard's key for it (``auth/networks.py``), as
the connection rate counts it: an IPv4 address (an IPv4-mapped IPv6 one too) by
itself, an IPv6 one by its /64. Counted by the exact IPv6 address, one host with
a /64 (what an IPv6 customer gets) opened a session from each of its addresses
and held every slot of ``max_connections``.

Per-address counts live in hashed slots (a count-min sketch with two tables):
an address's count is the smaller of its two slots, so it is never counted
low, and is counted high only if both of its slots are shared with other busy
addresses. The hash is keyed with a secret made at start-up, so a client
cannot pick addresses that collide with someone else's slots.
"""

from __future__ import annotations

import fcntl
import hashlib
import mmap
import os
import secrets
import tempfile
from collections import Counter

from smtpgate.auth.networks import client_keys
from smtpgate.server.connection_rate import SIZE as _RATE_SIZE
from smtpgate.server.connection_rate import ConnectionRate

#: Slots per hash table. Two tables of 16384 counters: 128 KiB per worker, and an
#: address is over-counted only when both of its slots hold other addresses'
#: connections, which at 1000 connections (the default max) is rare.
SLOTS = 1 << 14
_TABLES = 2
#: Counters per worker row: the total, then the tables.
_ROW = 1 + _TABLES * SLOTS
_ITEM = 4  # uint32


class ConnectionLimiter:
    """Counts open connections of this process (exact)."""

    def __init__(self, max_total: int, max_per_ip: int, rate: ConnectionRate | None = None):
        self.max_total = max_total
        self.max_per_ip = max_per_ip
        self.rate = rate if rate is not None else ConnectionRate(0)
        self.total = 0
        self._per_ip: Counter[str] = Counter()
        self._rate_counts = memoryview(bytearray(_RATE_SIZE * _ITEM)).cast("I")

    def set_limits(self, max_total: int, max_per_ip: int, rate_per_minute: int | None = None,
                   rate_exceptions: list[str] | None = None) -> None:
        """New maxima (a reload); connections already open stay, and so do the rate's
        counts."""
        self.max_total, self.max_per_ip = max_total, max_per_ip
        if rate_per_minute is not None:
            self.rate.set_limit(rate_per_minute, rate_exceptions or [])

    def acquire(self, ip: str, proxy: bool = False) -> str | None:
        """Take a slot; return None, or 'rate' / 'total' / 'per_ip' naming the limit
        hit. Every call counts toward the address's rate, refused or not, and toward
        its concurrent connections, unless ``proxy``: a trusted XCLIENT proxy's
        connection (nginx's, each for a client it authenticated), of which only the
        total counts. Its clients are many: with the per-address cap, nginx could
        hold ``max_connections_per_ip`` sessions for all of them together, and the
        next client whose login had succeeded got nginx's 451. ``release`` with
        the same ``proxy``."""
        if not proxy and not self.rate.take(self._rate_counts, 0, ip):
            return "rate"
        if self.total >= self.max_total:
            return "total"
        key = client_keys(ip).address
        if not proxy and self._per_ip[key] >= self.max_per_ip:
            return "per_ip"
        self.total += 1
        if not proxy:
            self._per_ip[key] += 1
        return None

    def release(self, ip: str, proxy: bool = False) -> None:
        self.total -= 1
        if proxy:
            return
        key = client_keys(ip).address
        left = self._per_ip[key] - 1
        if left > 0:
            self._per_ip[key] = left
        else:
            del self._per_ip[key]


class SharedConnectionLimiter(ConnectionLimiter):
    """Counts for all worker processes; see the module docstring.

    Make it in the parent before forking, call ``attach(slot)`` in each worker
    before it accepts connections, and ``clear(slot)`` in the parent when the
    worker in that slot has exited.
    """

    def __init__(self, max_total: int, max_per_ip: int, workers: int,
                 rate: ConnectionRate | None = None):
        super().__init__(max_total, max_per_ip, rate)
        self.workers = workers
        # The worker rows, then the rate's counters (one set for the server: the
        # rate is about connections made, so a worker's death takes none back).
        size = (workers * _ROW + _RATE_SIZE) * _ITEM
        self._fd = _shared_file(size)
        self._map = mmap.mmap(self._fd, size, mmap.MAP_SHARED)
        self._counts = memoryview(self._map).cast("I")
        self._key = secrets.token_bytes(16)
        self._row = -1

    def attach(self, slot: int) -> None:
        """This process is the worker in ``slot``: it starts with nothing open."""
        self.clear(slot)
        self._row = slot * _ROW

    def clear(self, slot: int) -> None:
        """Forget every connection counted by the worker in ``slot``."""
        base = slot * _ROW
        with self._locked():
            self._counts[base : base + _ROW] = memoryview(bytes(_ROW * _ITEM)).cast("I")

    def _slots(self, ip: str) -> tuple[int, int]:
        key = client_keys(ip).address.encode()
        h = int.from_bytes(hashlib.blake2b(key, key=self._key, digest_size=8).digest())
        return 1 + (h & 0xFFFFFFFF) % SLOTS, 1 + SLOTS + (h >> 32) % SLOTS

    def acquire(self, ip: str, proxy: bool = False) -> str | None:
        if self._row < 0:
            raise RuntimeError("SharedConnectionLimiter.attach() was not called in this worker")
        a, b = self._slots(ip)
        c = self._counts
        rows = range(0, self.workers * _ROW, _ROW)
        with self._locked():
            if not proxy and not self.rate.take(c, self.workers * _ROW, ip):
                return "rate"
            if sum(c[r] for r in rows) >= self.max_total:
                return "total"
            if not proxy and min(sum(c[r + a] for r in rows),
                                 sum(c[r + b] for r in rows)) >= self.max_per_ip:
                return "per_ip"
            mine = self._row
            for i in (mine,) if proxy else (mine, mine + a, mine + b):
                c[i] += 1
        self.total += 1
        return None

    def release(self, ip: str, proxy: bool = False) -> None:
        a, b = self._slots(ip)
        c, mine = self._counts, self._row
        with self._locked():
            for i in (mine,) if proxy else (mine, mine + a, mine + b):
                if c[i] > 0:
                    c[i] -= 1
        self.total -= 1

    def server_total(self) -> int:
        """Connections open in the whole server (for logs and tests)."""
        with self._locked():
            return sum(self._counts[r] for r in range(0, self.workers * _ROW, _ROW))

    def _locked(self) -> _RecordLock:
        return _RecordLock(self._fd)

    def close(self) -> None:
        self._counts.release()
        self._map.close()
        os.close(self._fd)


class _RecordLock:
    """An exclusive POSIX record lock on the whole file (per process, dropped by
    the kernel when the holder dies)."""

    __slots__ = ("_fd",)

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def __enter__(self) -> None:
        fcntl.lockf(self._fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        fcntl.lockf(self._fd, fcntl.LOCK_UN)


def _shared_file(size: int) -> int:
    """An anonymous file of ``size`` zero bytes (memory-backed where the system can)."""
    try:
        fd = os.memfd_create("smtpgate-limits", os.MFD_CLOEXEC)
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        fd, name = tempfile.mkstemp(prefix="smtpgate-limits-")
        os.unlink(name)
    os.ftruncate(fd, size)
    return fd
