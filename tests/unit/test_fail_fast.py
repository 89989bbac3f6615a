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
    ff = FailFast(_probe(answers, ran), most=10, stuck_after=4, clock=clock)
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
    ff = FailFast(_probe([True], ran), most=10, stuck_after=4, clock=clock)
    with ff.operation():
        clock.now += 3
        assert ff.refusal() is None
        clock.now += 1
        assert ff.refusal() == "no answer within 4 s"
        clock.now += 1
        assert ff.refusal() is not None  # starts the probe
        _wait_probe(ff, ran)
        assert ff.refusal() is None  # not counted again while it hangs on
