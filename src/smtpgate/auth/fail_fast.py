"""Fail fast while a backend does not answer: after a failure, operations are
refused at once for a back-off window, until a probe shows it answers again.

Why: a database host that accepts TCP but never replies (a frozen server, a
blackholed address, a firewall that drops packets) costs each operation its
whole connect or command timeout. Logins run their look-ups one after another
on a worker's few read threads, so under login load each worker's logins queue
behind each other's timeouts: the 20th login of a minute waits minutes for the
same 454 the first one got after five seconds. An operation that cannot succeed
should fail at once.

Theory of operation
-------------------
- ``failed(cause)`` (an operation got no answer) opens a window: until it ends,
  ``refusal()`` returns the cause and the caller answers its usual temporary
  error without touching the backend.
- The window's end starts one probe, on a thread of its own: a login never waits
  for it. While it runs, operations are still refused. A timer starts it, so a
  backend back during a quiet spell (no login to notice the window's end) is
  known to answer before the next login comes; until 2026-12 only that login
  started the probe, and got 454 itself from a backend up for minutes. The first
  ``refusal()`` after the window starts it too, if the timer has not yet.
  A probe that gets an answer closes the window (the next operation goes to the
  backend); one that does not opens the next window, twice as long as the last,
  up to ``most`` seconds. So a backend that stays silent costs one probe per
  window and process, and none of its logins any wait.
- ``answered()`` (any operation, or another sign of life such as a pool's
  connection) closes it at once.
- An operation still running after ``stuck_after`` seconds (a connection that
  stopped answering mid-query, which no error will ever end) counts as one
  failure, once: the caller has given up on it by then.

``most`` = 0 turns it off: every operation goes to the backend (``refusal``
is always None). Times are monotonic; thread-safe (backends run on thread pools;
``refusal`` is also called on the event loop, and never blocks).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

#: Seconds of the first window: short, since the probe that ends it costs no
#: login, and a backend that failed once (a restart) is often back at once.
FIRST_WINDOW = 1.0


class FailFast:
    """The fail-fast state of one backend.

    ``probe`` says whether the backend answers (it may take its own timeout; it
    runs on its own thread and must not raise).
    """

    def __init__(
        self,
        probe: Callable[[], bool],
        *,
        most: float,
        stuck_after: float,
        first: float = FIRST_WINDOW,
        clock: Callable[[], float] = time.monotonic,
        timer: Callable[[float, Callable[[], None]], None] | None = None,
    ) -> None:
        """``timer(delay, call)`` calls ``call`` in ``delay`` seconds on a thread of
        its own (default: a daemon ``threading.Timer``); tests with their own
        ``clock`` pass their own."""
        self._probe = probe
        self._most = most
        self._first = min(first, most)
        self._stuck_after = stuck_after
        self._clock = clock
        self._lock = threading.Lock()
        #: The last failure's cause while the window is open; None: closed.
        self._cause: str | None = None
        self._until = 0.0
        self._window = 0.0
        self._probing = False
        self._timer = timer or _daemon_timer
        #: A timer is set for the window's end (`_due`).
        self._timer_set = False
        #: `close`d: no more timers (a store replaced by a reload must not probe on).
        self._closed = False
        #: Operations in flight: id -> (start, already counted as stuck).
        self._running: dict[int, tuple[float, bool]] = {}
        self._ids = itertools.count()

    @property
    def enabled(self) -> bool:
        return self._most > 0

    def refusal(self) -> str | None:
        """Why an operation must not go to the backend now (the cause of the
        failure that opened the window), or None: go ahead."""
        if not self.enabled:
            return None
        self._count_stuck()
        with self._lock:
            if self._cause is None:
                return None
            self._probe_if_due()
            return self._cause

    def _probe_if_due(self) -> None:
        """Under the lock: start the probe if the window has ended and none runs."""
        if self._clock() >= self._until and not self._probing:
            self._probing = True
            threading.Thread(target=self._run_probe, name="smtpgate-probe",
                             daemon=True).start()

    def _due(self) -> None:
        """The timer set for the window's end: probe now, or set it again if the
        window was made longer meanwhile."""
        with self._lock:
            self._timer_set = False
            if self._cause is None or self._probing or self._closed:
                return
            if self._clock() < self._until:
                self._set_timer()
                return
            self._probe_if_due()

    def _set_timer(self) -> None:
        """Under the lock: a timer for the window's end, unless one is set."""
        if not self._timer_set and not self._closed:
            self._timer_set = True
            self._timer(max(0.0, self._until - self._clock()), self._due)

    def failed(self, cause: str) -> None:
        """An operation got no answer: refuse the next ones for a window (longer
        than the last one if the window was already open)."""
        if not self.enabled:
            return
        with self._lock:
            self._open(cause)

    def answered(self) -> None:
        """The backend answered: close the window."""
        if self._cause is None:  # the common case, without the lock
            return
        with self._lock:
            self._cause = None
            self._window = 0.0

    def close(self) -> None:
        """The backend is closed (a reload replaced it): its timers probe no more
        (a probe under way finishes alone)."""
        with self._lock:
            self._closed = True

    @contextmanager
    def operation(self) -> Iterator[None]:
        """Around one operation, so that one that never ends is noticed."""
        op = next(self._ids)
        with self._lock:
            self._running[op] = (self._clock(), False)
        try:
            yield
        finally:
            with self._lock:
                self._running.pop(op, None)

    def _open(self, cause: str) -> None:
        self._window = self._first if self._cause is None else min(
            self._most, max(self._first, 2 * self._window))
        self._cause = cause
        self._until = self._clock() + self._window
        self._set_timer()

    def _count_stuck(self) -> None:
        with self._lock:
            if not self._running:
                return
            late = self._clock() - self._stuck_after
            stuck = [op for op, (start, counted) in self._running.items()
                     if start <= late and not counted]
            for op in stuck:
                self._running[op] = (self._running[op][0], True)
            if stuck:
                self._open(f"no answer within {self._stuck_after:g} s")

    def _run_probe(self) -> None:
        try:
            answers = self._probe()
        except Exception:  # noqa: BLE001 - a probe must not raise; if it does: no answer
            answers = False
        with self._lock:
            self._probing = False
            if self._cause is None:
                return  # an operation answered meanwhile
            if answers:
                self._cause = None
                self._window = 0.0
            else:
                self._open(self._cause)


def _daemon_timer(delay: float, call: Callable[[], None]) -> None:
    """``call`` in ``delay`` seconds on a daemon thread (one that never keeps a
    stopping process alive)."""
    t = threading.Timer(delay, call)
    t.daemon = True
    t.name = "smtpgate-probe-timer"
    t.start()
