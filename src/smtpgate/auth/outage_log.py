"""One backend's outages in the log: the first failure at once, then a summary at
most every ``every`` seconds, then one line when it answers again.

A directory that is down under login load fails every login: a WARNING per
failed operation (the LDAP backend logged one each) buries everything else in
the log and costs the disk and syslog the most exactly when an administrator
needs to read it. The guard's and the rate counters' stores log their episodes
once each way (``bounded_calls``); the network backends (the LDAP directory, the
PostgreSQL account database, an OAuth issuer's key set) do it through this class,
which also says how many operations failed meanwhile:

    WARNING LDAP directory ldap://ldap.example.org unavailable: LDAPSocketOpenError: ... (logins get 454 4.7.0 until it answers)
    WARNING LDAP directory ldap://ldap.example.org still unavailable: 812 failed operations in the last 60 s, the last: LDAPSocketOpenError: ...
    WARNING LDAP directory ldap://ldap.example.org answering again after 143 s; 1904 operations failed meanwhile

Times are monotonic: a clock step (NTP at boot) neither hides the summaries nor
makes one per failure. Thread-safe: the backends run on thread pools.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

#: Seconds between two "still unavailable" lines of one outage.
SUMMARY_EVERY = 60.0


class OutageLog:
    """The outage state of one backend, named ``name`` in each line."""

    def __init__(
        self,
        name: str,
        log: logging.Logger,
        *,
        every: float = SUMMARY_EVERY,
        clock: Callable[[], float] = time.monotonic,
        effect: str = "",
    ) -> None:
        self.name = name
        #: What the outage means for the service, said once, on its first line (the
        #: one an administrator reads first), e.g. "logins get 454 4.7.0 until it answers".
        self._effect = f" ({effect})" if effect else ""
        self._log = log
        self._every = every
        self._clock = clock
        self._lock = threading.Lock()
        #: When the outage started (monotonic); None while the backend answers.
        self._since: float | None = None
        self._last_line = 0.0
        self._failed_total = 0
        self._failed_since_line = 0

    @property
    def down(self) -> bool:
        """An outage is under way (the last operation failed)."""
        return self._since is not None

    def failed(self, cause: str) -> None:
        """An operation failed for ``cause``: logged now if it starts an outage, else
        counted for the next summary (written now if ``every`` has passed)."""
        with self._lock:
            now = self._clock()
            if self._since is None:
                self._since = self._last_line = now
                self._failed_total, self._failed_since_line = 1, 0
                self._log.warning("%s unavailable: %s%s", self.name, cause, self._effect)
                return
            self._failed_total += 1
            self._failed_since_line += 1
            if now - self._last_line < self._every:
                return
            count, window = self._failed_since_line, now - self._last_line
            self._last_line, self._failed_since_line = now, 0
        self._log.warning("%s still unavailable: %d failed operation(s) in the last %.0f s, "
                          "the last: %s", self.name, count, window, cause)

    def answered(self) -> None:
        """An operation succeeded: ends an outage under way, in one line."""
        if self._since is None:  # the common case, without the lock
            return
        with self._lock:
            since, total = self._since, self._failed_total
            if since is None:
                return
            self._since = None
            self._failed_total = self._failed_since_line = 0
            lasted = self._clock() - since
        self._log.warning("%s answering again after %.0f s; %d operation(s) failed meanwhile",
                          self.name, lasted, total)
