"""A bound on the log lines that strangers can cause.

Some warnings are one line per connection from anyone on the network (a node's
PROXY-protocol port reached directly, past the balancer): a scanner could write
a line per SYN into the server log. ``LogBudget`` lets the first ``limit`` of a
``window`` through one by one, counts the rest, and reports the count once when
the window ends, as the Dovecot door does with refused requests
(``server/dovecot_door.py``): the administrator still learns that it happens,
how often, and from the lines kept, who started it.

In ``web``, the lower of the two layers that accept connections, so that the
HTTP endpoints (``web/http_port.py``) and the SMTP listeners and front doors
(``server``) share it.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable


class LogBudget:
    """``take()`` before logging one line: True, log it; False, it was counted, and
    ``report(count)`` is called once for the window (at its end, from the running
    event loop; or by ``flush``)."""

    def __init__(self, limit: int, window: float, report: Callable[[int], None], *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._limit = limit
        self._window = window
        self._report = report
        self._clock = clock
        self._start = -math.inf
        self._logged = 0
        self._unlogged = 0
        self._timer: asyncio.TimerHandle | None = None

    def take(self) -> bool:
        now = self._clock()
        if now - self._start >= self._window:
            self.flush()
            self._start, self._logged = now, 0
        if self._logged < self._limit:
            self._logged += 1
            return True
        self._unlogged += 1
        if self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return False  # no loop (a test): ``flush`` or the next window reports
            self._timer = loop.call_later(self._start + self._window - now, self._ended)
        return False

    def _ended(self) -> None:
        self._timer = None
        self.flush()

    def flush(self) -> None:
        """Report what was counted and not yet reported (nothing if none)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._unlogged:
            count, self._unlogged = self._unlogged, 0
            self._report(count)
