"""The RateCounters contract (src/smtpgate/policy/rate_counters.py), run against
every implementation in ``implementations.RATE_COUNTERS``.

Sums per key over a window of buckets, several keys at once, buckets forgotten
after ``KEEP_BUCKETS``, several instances on one target (several nodes), and
concurrent adds from threads and processes counted exactly. Buckets are
anchored to the real clock, as in service.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from smtpgate.policy.rate_counters import (
    BUCKET_SECONDS,
    KEEP_BUCKETS,
    RateCounters,
    RateCountersError,
)
from tests.contract.implementations import RATE_COUNTERS, open_rate_counters, target_for

ROOT = Path(__file__).resolve().parents[2]
B = int(time.time() // BUCKET_SECONDS)  # this minute's bucket, set again per test (``_now``)
A, P = "acct:alice@example.org", "app:7"


@dataclass
class Impl:
    name: str
    target: str
    opened: list[RateCounters] = field(default_factory=list)

    def open(self) -> RateCounters:
        c = open_rate_counters(self.name, self.target)
        self.opened.append(c)
        return c


@pytest.fixture(autouse=True)
def _now() -> None:
    """The bucket of the minute the test runs in, not of the module's import (under
    xdist many minutes earlier): a TTL-expiring implementation is right to have
    dropped buckets the import-time clock still called recent."""
    global B
    B = int(time.time() // BUCKET_SECONDS)


@pytest.fixture(params=RATE_COUNTERS)
def impl(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Impl]:
    i = Impl(request.param, target_for(request.param, tmp_path))
    yield i
    for c in i.opened:
        c.close()


@pytest.fixture
def counters(impl: Impl) -> RateCounters:
    return impl.open()


def test_an_add_counts_for_every_key_given(counters: RateCounters) -> None:
    counters.add_usage([A, P], B, 1, 3)
    counters.add_usage([A], B, 1, 2)
    assert counters.usage([A, P, "acct:other"], B) == {A: (2, 5), P: (1, 3), "acct:other": (0, 0)}
    assert counters.usage([], B) == {}


def test_usage_sums_the_buckets_of_the_window(counters: RateCounters) -> None:
    for age, recipients in ((90, 1), (59, 2), (30, 4), (0, 8)):
        counters.add_usage([A], B - age, 1, recipients)
    assert counters.usage([A], B - 59) == {A: (3, 14)}
    assert counters.usage([A], B - 90) == {A: (4, 15)}
    assert counters.usage([A], B + 1) == {A: (0, 0)}


def test_buckets_older_than_keep_buckets_are_forgotten(counters: RateCounters) -> None:
    old = B - KEEP_BUCKETS - 5
    counters.add_usage([A], old, 1, 1)
    counters.add_usage([A], B - KEEP_BUCKETS + 5, 1, 1)  # still kept
    counters.add_usage([A], B, 1, 1)
    assert counters.usage([A], old) == {A: (2, 2)}


def test_a_second_instance_sees_the_first_ones_adds(impl: Impl) -> None:
    a, b = impl.open(), impl.open()
    a.add_usage([A], B, 1, 2)
    b.add_usage([A, P], B, 1, 1)
    assert a.usage([A, P], B - 59) == b.usage([A, P], B - 59) == {A: (2, 3), P: (1, 1)}


def test_concurrent_adds_from_threads_all_count(counters: RateCounters) -> None:
    threads, each = 4, 25
    start = threading.Barrier(threads)

    def worker() -> None:
        start.wait()
        for i in range(each):
            counters.add_usage([A, P], B - i % 2, 1, 2)

    ts = [threading.Thread(target=worker) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    n = threads * each
    assert counters.usage([A, P], B - 59) == {A: (n, 2 * n), P: (n, 2 * n)}


_ADD = """
import sys
from tests.contract.implementations import open_rate_counters
name, target, bucket, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
counters = open_rate_counters(name, target)
for i in range(n):
    counters.add_usage(["acct:alice@example.org", "app:7"], bucket, 1, 3)
counters.close()
"""


def test_concurrent_adds_from_processes_all_count(impl: Impl) -> None:
    counters = impl.open()
    procs, each = 3, 20
    children = [
        subprocess.Popen([sys.executable, "-c", _ADD, impl.name, impl.target, str(B), str(each)],
                         cwd=ROOT)
        for _ in range(procs)
    ]
    for p in children:
        assert p.wait(timeout=120) == 0
    n = procs * each
    assert counters.usage([A, P], B) == {A: (n, 3 * n), P: (n, 3 * n)}


def test_closed_counters_raise_their_own_error(impl: Impl) -> None:
    c = open_rate_counters(impl.name, impl.target)
    c.close()
    with pytest.raises(RateCountersError):
        c.usage([A], B)
    with pytest.raises(RateCountersError):
        c.add_usage([A], B, 1, 1)


# --- add_within: a check and an add in one step (the policy door's reservations) -----


def test_add_within_adds_only_below_every_limit(counters: RateCounters) -> None:
    limits = {A: (3, 10), P: (0, 0)}
    counters.add_usage([A], B - 59, 1, 1)
    counters.add_usage([A], B - 60, 5, 5)  # out of the window: does not count
    assert counters.add_within(limits, B, B - 59, 1, 1) is None
    assert counters.add_within(limits, B, B - 59, 1, 1) is None
    # 3 of 3 messages now: a message is refused, the usage that refused it said.
    assert counters.add_within(limits, B, B - 59, 1, 1) == {A: (3, 3), P: (2, 2)}
    # A recipient alone still fits; one past the recipient limit does not.
    assert counters.add_within(limits, B, B - 59, 0, 7) is None
    assert counters.add_within(limits, B, B - 59, 0, 1) == {A: (3, 10), P: (2, 9)}
    assert counters.usage([A, P], B - 59) == {A: (3, 10), P: (2, 9)}
    # A reservation given back (a negative add) makes room again.
    counters.add_usage([A, P], B, -1, -1)
    assert counters.add_within(limits, B, B - 59, 1, 1) is None


def test_add_within_from_threads_never_passes_the_limit(impl: Impl) -> None:
    threads, each, limit = 4, 10, 17
    start = threading.Barrier(threads)
    added: list[int] = []

    def worker() -> None:
        counters = impl.open()  # a connection each, as processes have
        start.wait()
        for _ in range(each):
            if counters.add_within({A: (limit, 0)}, B, B - 59, 1, 1) is None:
                added.append(1)

    ts = [threading.Thread(target=worker) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert len(added) == limit
    assert impl.open().usage([A], B - 59) == {A: (limit, limit)}


_ADD_WITHIN = """
import sys
from tests.contract.implementations import open_rate_counters
name, target, bucket, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
counters = open_rate_counters(name, target)
for i in range(n):
    counters.add_within({"acct:alice@example.org": (25, 0)}, bucket, bucket - 59, 1, 0)
counters.close()
"""


def test_add_within_from_processes_never_passes_the_limit(impl: Impl) -> None:
    children = [
        subprocess.Popen([sys.executable, "-c", _ADD_WITHIN, impl.name, impl.target, str(B), "20"],
                         cwd=ROOT)
        for _ in range(3)
    ]
    for p in children:
        assert p.wait(timeout=120) == 0
    assert impl.open().usage([A], B - 59) == {A: (25, 0)}
