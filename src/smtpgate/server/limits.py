"""Concurrent-connection limits, in total and per client address (per worker process)."""

from __future__ import annotations

from collections import Counter


class ConnectionLimiter:
    """Counts open connections. With several worker processes each keeps its own
    count, so the effective limits are multiplied by the number of workers."""

    def __init__(self, max_total: int, max_per_ip: int):
        self.max_total = max_total
        self.max_per_ip = max_per_ip
        self.total = 0
        self._per_ip: Counter[str] = Counter()

    def acquire(self, ip: str) -> str | None:
        """Take a slot; return None, or 'total' / 'per_ip' naming the limit hit."""
        if self.total >= self.max_total:
            return "total"
        if self._per_ip[ip] >= self.max_per_ip:
            return "per_ip"
        self.total += 1
        self._per_ip[ip] += 1
        return None

    def release(self, ip: str) -> None:
        self.total -= 1
        left = self._per_ip[ip] - 1
        if left > 0:
            self._per_ip[ip] = left
        else:
            del self._per_ip[ip]
