"""heap.py: start-up objects are frozen out of the collector; later cycles are not."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from smtpgate.server.heap import freeze_startup_heap


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


@pytest.fixture
def unfrozen() -> Iterator[None]:
    yield
    gc.unfreeze()  # give the test process its collector back


@pytest.mark.usefixtures("unfrozen")
def test_start_up_objects_are_frozen_and_later_cycles_still_collected() -> None:
    kept = _Node()
    frozen = freeze_startup_heap()
    assert frozen > 0 and gc.get_freeze_count() == frozen
    # A full collection no longer walks what start-up left (gc.freeze's permanent
    # generation): the live object from before is not among the tracked ones.
    assert not any(o is kept for o in gc.get_objects())
    # A session's reference cycle made afterwards is still reclaimed.
    a, b = _Node(), _Node()
    a.other, b.other = b, a
    gone = weakref.ref(a)
    del a, b
    gc.collect()
    assert gone() is None
