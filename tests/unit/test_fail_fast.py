"""``FailFast``: a window of refusals after a failure, ended by a probe that gets
an answer (on its own thread), doubled by one that does not; an operation that
never ends counts once as a failure."""

from __future__ import annotations

import threading
from collections.abc import Callable

from smtpgate.auth.fail_fast import FailFast


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class _Timers:
    """The timers a ``FailFast`` sets, called when a test says (``fire``)."""

    def __init__(self) -> None:
        self.pending: list[tuple[float, Callable[[], None]]] = []

    def __call__(self, delay: float, call: Callable[[], None]) -> None:
        self.pending.append((delay, call))

    def fire(self) -> None:
        due, self.pending = self.pending, []
        for _, call in due:
            call()


def _probe(answers: list[bool], ran: threading.Event) -> Callable[[], bool]:
    def probe() -> bool:
        ran.set()
        return answers.pop(0)
    return probe


def _wait_probe(ff: FailFast, ran: threading.Event) -> None:
    assert ran.wait(5)
    ran.clear()
    for _ in range(500):  # the probe's thread records its answer under the lock
        if not ff._probing:
            return
        threading.Event().wait(0.01)
    raise AssertionError("probe did not finish")


def test_a_failure_refuses_until_a_probe_gets_an_answer() -> None:
    clock, ran, answers = _Clock(), threading.Event(), [False, True]
    ff = FailFast(_probe(answers, ran), most=10, stuck_after=4, clock=clock, timer=_Timers())
    assert ff.refusal() is None
    ff.failed("timeout expired")
    assert ff.refusal() == "timeout expired"
    assert not ran.is_set()  # within the first window: no probe yet
    clock.now += 1
    assert ff.refusal() == "timeout expired"  # starts the probe; still refused
    _wait_probe(ff, ran)
    clock.now += 1.5  # the probe got no answer: the window is 2 s now
    assert ff.refusal() == "timeout expired" and not ran.is_set()
    clock.now += 0.5
    assert ff.refusal() == "timeout expired"
    _wait_probe(ff, ran)
    assert ff.refusal() is None  # it answered


def test_an_answer_closes_the_window_at_once_and_most_zero_turns_it_off() -> None:
    ran = threading.Event()
    ff = FailFast(_probe([], ran), most=10, stuck_after=4)
    ff.failed("x")
    ff.answered()
    assert ff.refusal() is None
    off = FailFast(_probe([], ran), most=0, stuck_after=4)
    off.failed("x")
    assert off.refusal() is None


def test_an_operation_that_never_ends_counts_once() -> None:
    clock, ran = _Clock(), threading.Event()
    ff = FailFast(_probe([True], ran), most=10, stuck_after=4, clock=clock,
                  timer=_Timers())
    with ff.operation():
        clock.now += 3
        assert ff.refusal() is None
        clock.now += 1
        assert ff.refusal() == "no answer within 4 s"
        clock.now += 1
        assert ff.refusal() is not None  # starts the probe
        _wait_probe(ff, ran)
        assert ff.refusal() is None  # not counted again while it hangs on


def test_the_window_s_end_starts_the_probe_without_a_login() -> None:
    """A backend back during a quiet spell: the probe runs when the window ends,
    by a timer, so the first login after it is served. Until 2026-12 only a login
    refused after the window started the probe, and got 454 itself (LDAP: a
    directory up again for minutes still cost the next login its 454)."""
    clock, ran, timers = _Clock(), threading.Event(), _Timers()
    ff = FailFast(_probe([False, True], ran), most=10, stuck_after=4, clock=clock, timer=timers)
    ff.failed("connection refused")
    assert [delay for delay, _ in timers.pending] == [1.0]
    timers.fire()  # early (the window is not over): set again, no probe
    assert not ran.is_set() and len(timers.pending) == 1
    clock.now += 1
    timers.fire()
    _wait_probe(ff, ran)  # no answer: the next window, 2 s, with its own timer
    assert [delay for delay, _ in timers.pending] == [2.0]
    clock.now += 2
    timers.fire()
    _wait_probe(ff, ran)
    assert ff.refusal() is None  # the first login after the quiet spell goes ahead
    assert timers.pending == []


def test_a_closed_backend_sets_no_more_timers() -> None:
    clock, ran, timers = _Clock(), threading.Event(), _Timers()
    ff = FailFast(_probe([False], ran), most=10, stuck_after=4, clock=clock, timer=timers)
    ff.failed("connection refused")
    ff.close()
    clock.now += 1
    timers.fire()
    assert not ran.is_set() and timers.pending == []
