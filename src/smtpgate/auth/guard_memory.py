"""What one process remembers for the guard while its state is unavailable.

The guard state (``guard_state``) is the truth, shared by every worker. When it
stops answering, the guard still needs two things to decide
(``guard.py``, "Faults"): which addresses each account logs in from (so that
known addresses keep working), and how many attempts failed meanwhile (so that
guessing still meets a growing penalty and a lockout). This is that memory:
filled from every snapshot and success while the state answers, counted into
only while it does not. It is per process and starts empty, so a worker started
during an episode knows no address yet. Each table is bounded
(``MEMORY_ENTRIES``, the least recently touched entry goes first) so that a
flood of names or addresses cannot grow it.

Clocks: the failures counted here live for one episode in one process, so their
windows (penalty, lockout) are measured on the monotonic clock: a step of the
wall clock (NTP, a VM resumed) neither lifts an in-memory lockout nor makes it
last longer. The known addresses are wall-clock times, as the state keeps them
(shared by every worker, kept across restarts), and are compared as such.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")

#: Entries each table keeps at most.
MEMORY_ENTRIES = 100_000


class _Bounded(Generic[K, V]):
    """A dict that forgets its least recently set entry beyond ``limit``."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._d: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        return self._d.get(key)

    def set(self, key: K, value: V) -> None:
        self._d[key] = value
        self._d.move_to_end(key)
        while len(self._d) > self._limit:
            self._d.popitem(last=False)

    def pop(self, key: K) -> None:
        self._d.pop(key, None)

    def __len__(self) -> int:
        return len(self._d)


class GuardMemory:
    """Known addresses, and failures counted while the state is unavailable.

    Known-address times are Unix seconds from the guard's clock; the failure
    windows use ``clock``, a monotonic one (module docstring). Not thread-safe:
    the guard uses it from its event loop only.
    """

    def __init__(
        self, limit: int = MEMORY_ENTRIES, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._clock = clock
        self._known: _Bounded[tuple[str, str], float] = _Bounded(limit)
        #: address -> (failures, last, monotonic), restarting after the penalty window.
        self._penalty: _Bounded[str, tuple[int, float]] = _Bounded(limit)
        #: account -> (failures, first, monotonic), restarting after the lockout window.
        self._accounts: _Bounded[str, tuple[int, float]] = _Bounded(limit)

    def saw_known(self, account: str, address: str, when: float) -> None:
        """The account logged in from the address at ``when`` (a later time wins)."""
        if not account:
            return
        old = self._known.get((account, address))
        self._known.set((account, address), when if old is None else max(old, when))

    def known_since(self, account: str, address: str) -> float | None:
        return self._known.get((account, address)) if account else None

    def penalty(self, address: str, window: float) -> int:
        """Recent failures (and refusals) from the address, for the penalty."""
        entry = self._penalty.get(address)
        return entry[0] if entry is not None and entry[1] > self._clock() - window else 0

    def account_failures(self, account: str, window: float) -> int:
        entry = self._accounts.get(account) if account else None
        return entry[0] if entry is not None and entry[1] > self._clock() - window else 0

    def penalise(self, address: str, window: float) -> int:
        """One more failed or refused attempt from the address; its new count."""
        n = self.penalty(address, window) + 1
        self._penalty.set(address, (n, self._clock()))
        return n

    def failed(self, account: str, window: float) -> None:
        """One more wrong secret for the account (lockout counting)."""
        if not account:
            return
        now = self._clock()
        entry = self._accounts.get(account)
        if entry is None or entry[1] <= now - window:
            entry = (0, now)
        self._accounts.set(account, (entry[0] + 1, entry[1]))

    def succeeded(self, address: str) -> None:
        """A login from the address: its penalty is forgotten."""
        self._penalty.pop(address)
