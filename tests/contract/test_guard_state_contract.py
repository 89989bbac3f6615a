"""The GuardState contract (src/smtpgate/auth/guard_state.py), run against every
implementation in ``implementations.GUARD_STATES``.

Written against the interface only: counts in windows, the penalty, known
addresses, blocks that start once and lapse, clearing, the -PLUS fallback,
pruning, several instances on one target (several nodes), and concurrent
failures from threads and processes counted exactly. Times are anchored to the
real clock, so an implementation that expires entries by TTL sees them as it
would in service.
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

from smtpgate.auth.guard_state import (
    ACCOUNT,
    ACCOUNT_NEW,
    ADDRESS,
    SUBNET,
    THROTTLE,
    Block,
    FailureCounts,
    GuardState,
    GuardStoreError,
    RecordedFailure,
    Windows,
)
from tests.contract.implementations import GUARD_STATES, open_guard_state, target_for

ROOT = Path(__file__).resolve().parents[2]
NOW = float(int(time.time()))  # set again before each test (``_now``)
W = Windows(lockout=900.0, spray=600.0, penalty=300.0)
ALICE, BOB, CAROL, DAVE = "alice@example.org", "bob@example.org", "carol@example.org", "dave@x.org"


@dataclass
class Impl:
    """One implementation on a fresh target; ``open()`` is one more node."""

    name: str
    target: str
    opened: list[GuardState] = field(default_factory=list)

    def open(self) -> GuardState:
        s = open_guard_state(self.name, self.target)
        self.opened.append(s)
        return s


@pytest.fixture(autouse=True)
def _now() -> None:
    """Times are anchored to the real clock when the test runs, not when the module
    was imported (under xdist that can be many minutes earlier), so that an
    implementation expiring entries by TTL sees them as in service."""
    global NOW
    NOW = float(int(time.time()))


@pytest.fixture(params=GUARD_STATES)
def impl(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Impl]:
    i = Impl(request.param, target_for(request.param, tmp_path))
    yield i
    for s in i.opened:
        s.close()


@pytest.fixture
def state(impl: Impl) -> GuardState:
    return impl.open()


def subnet(address: str) -> str:
    return address.rsplit(".", 1)[0] + ".0/24"


def failure(t: float, address: str = "192.0.2.1", account: str = ALICE, *, known: bool = False,
            counts: bool = True) -> RecordedFailure:
    """A failure ``t`` seconds after NOW."""
    return RecordedFailure(NOW + t, address, subnet(address), account, known, counts)


def block(kind: str, key: str, since: float = 0.0, until: float = 600.0, why: str = "r") -> Block:
    return Block(kind, key, NOW + since, NOW + until, why)


def kinds(blocks: tuple[Block, ...] | list[Block]) -> set[tuple[str, str]]:
    return {(b.kind, b.key) for b in blocks}


# --- counts in windows ----------------------------------------------------------------


def test_counts_include_the_failure_itself(state: GuardState) -> None:
    assert state.record_failure(failure(0), W) == FailureCounts(1, 0, 1, 1, 1, 1)


def test_account_counts_split_new_known_and_distinct_new_addresses(state: GuardState) -> None:
    state.record_failure(failure(0, "192.0.2.1"), W)
    state.record_failure(failure(1, "192.0.2.1"), W)
    state.record_failure(failure(2, "198.51.100.7"), W)
    state.record_failure(failure(3, "203.0.113.5", known=True), W)
    state.record_failure(failure(4, "203.0.113.6", counts=False), W)  # not toward the account
    state.record_failure(failure(5, "203.0.113.9", account=BOB), W)  # another account
    c = state.record_failure(failure(6, "198.51.100.7"), W)
    assert (c.account_new, c.account_known, c.account_new_addresses) == (4, 1, 2)
    c = state.record_failure(failure(7, "203.0.113.5", known=True), W)
    assert (c.account_new, c.account_known, c.account_new_addresses) == (4, 2, 2)


def test_account_counts_are_zero_for_a_failure_that_does_not_count_toward_one(
    state: GuardState,
) -> None:
    state.record_failure(failure(0), W)
    for f in (failure(1, counts=False), failure(2, account="")):
        c = state.record_failure(f, W)
        assert (c.account_new, c.account_known, c.account_new_addresses) == (0, 0, 0)


def test_address_counts_every_failure_and_the_distinct_names(state: GuardState) -> None:
    state.record_failure(failure(0, account=ALICE), W)
    state.record_failure(failure(1, account=ALICE, counts=False), W)
    state.record_failure(failure(2, account=BOB), W)
    state.record_failure(failure(3, "192.0.2.2", account=CAROL), W)  # a neighbour
    c = state.record_failure(failure(4, account=""), W)  # named no account
    assert (c.address_failures, c.address_accounts) == (4, 2)


def test_subnet_counts_the_distinct_names_over_its_addresses(state: GuardState) -> None:
    state.record_failure(failure(0, "192.0.2.1", ALICE), W)
    state.record_failure(failure(1, "192.0.2.2", BOB), W)
    state.record_failure(failure(2, "192.0.2.3", BOB), W)
    state.record_failure(failure(3, "198.51.100.1", CAROL), W)  # another subnet
    c = state.record_failure(failure(4, "192.0.2.4", DAVE), W)
    assert (c.subnet_accounts, c.address_accounts, c.address_failures) == (3, 1, 1)


def test_a_failure_counts_while_younger_than_its_window(state: GuardState) -> None:
    for t in (-1000.0, -900.0, -700.0, -600.0):
        state.record_failure(failure(t), W)
    c = state.record_failure(failure(0), W)
    # lockout 900: -700, -600 and 0 (exactly 900 old is out); spray 600: only 0.
    assert (c.account_new, c.address_failures, c.address_accounts) == (3, 1, 1)


# --- penalty and known addresses ----------------------------------------------------------


def test_penalty_counts_consecutive_failures_and_restarts_after_its_window(
    state: GuardState,
) -> None:
    a = "192.0.2.9"
    state.record_failure(failure(-1000, a), W)
    state.record_failure(failure(-100, a), W)  # more than 300 s later: starts again at 1
    state.record_failure(failure(-50, a), W)
    assert state.snapshot(a, subnet(a), "", NOW, W.penalty).penalty_failures == 2
    assert state.snapshot(a, subnet(a), "", NOW + 249, W.penalty).penalty_failures == 2
    assert state.snapshot(a, subnet(a), "", NOW + 251, W.penalty).penalty_failures == 0
    assert state.snapshot("192.0.2.10", subnet(a), "", NOW, W.penalty).penalty_failures == 0


def test_success_makes_the_address_known_and_resets_the_penalty_on_request(
    state: GuardState,
) -> None:
    a = "192.0.2.9"
    state.record_failure(failure(0, a), W)
    state.record_success(a, ALICE, NOW + 2, reset_penalty=False)
    s = state.snapshot(a, subnet(a), ALICE, NOW + 3, W.penalty)
    assert (s.known_since, s.penalty_failures) == (NOW + 2, 1)
    state.record_success(a, ALICE, NOW + 1, reset_penalty=False)  # an older write loses
    assert state.snapshot(a, subnet(a), ALICE, NOW + 3, W.penalty).known_since == NOW + 2
    state.record_success(a, ALICE, NOW + 4, reset_penalty=True)
    s = state.snapshot(a, subnet(a), ALICE, NOW + 5, W.penalty)
    assert (s.known_since, s.penalty_failures) == (NOW + 4, 0)
    assert state.snapshot(a, subnet(a), BOB, NOW + 5, W.penalty).known_since is None
    assert state.snapshot("192.0.2.10", subnet(a), ALICE, NOW + 5, W.penalty).known_since is None
    assert state.snapshot(a, subnet(a), "", NOW + 5, W.penalty).known_since is None


def test_an_accounts_known_addresses_are_forgotten_and_only_its_own(state: GuardState) -> None:
    """``user remove`` and ``user passwd``: the account's known addresses go (an
    account added again under the name, or a password reset after a break-in, must
    not leave an old holder's addresses known), another account's stay; a name
    with the pattern characters of Redis's MATCH matches only itself."""
    odd = "a*b?[c]\\d@example.org"
    for i, name in enumerate((ALICE, BOB, odd, "a@example.org")):
        for a in (f"192.0.2.{i}", f"198.51.100.{i}"):
            state.record_success(a, name, NOW + 1, reset_penalty=False)
    assert state.forget_addresses(ALICE) == 2
    assert state.forget_addresses(ALICE) == 0
    assert state.snapshot("192.0.2.0", subnet("192.0.2.0"), ALICE, NOW + 2, W.penalty).known_since is None
    assert state.snapshot("192.0.2.1", subnet("192.0.2.1"), BOB, NOW + 2, W.penalty).known_since == NOW + 1
    assert state.forget_addresses("a*@example.org") == 0  # a pattern is no name
    assert state.forget_addresses(odd) == 2
    assert state.snapshot("192.0.2.3", subnet("192.0.2.3"), "a@example.org", NOW + 2,
                          W.penalty).known_since == NOW + 1


# --- blocks -------------------------------------------------------------------------------


def test_a_block_starts_once_while_in_force(state: GuardState) -> None:
    b1, b2 = block(ACCOUNT_NEW, ALICE), block(ADDRESS, "192.0.2.1")
    assert state.start_blocks([b1, b2]) == [b1, b2]
    assert state.start_blocks([block(ACCOUNT_NEW, ALICE, 10, 700, "again")]) == []
    b3 = block(ACCOUNT_NEW, BOB, 10)
    assert state.start_blocks([block(ADDRESS, "192.0.2.1", 10), b3]) == [b3]
    assert state.start_blocks([]) == []
    active = state.active_blocks(NOW + 20)
    assert sorted(active, key=lambda b: b.since) == active  # oldest first
    assert set(active) == {b1, b2, b3}  # the first reason and times stand


def test_a_lapsed_block_is_gone_and_can_start_again(state: GuardState) -> None:
    old = block(ADDRESS, "192.0.2.1", -100, -10, "old")
    assert state.start_blocks([old]) == [old]
    assert state.snapshot("192.0.2.1", "192.0.2.0/24", "", NOW, W.penalty).blocks == ()
    assert state.active_blocks(NOW) == []
    new = block(ADDRESS, "192.0.2.1", 0, 60, "new")
    assert state.start_blocks([new]) == [new]
    assert state.snapshot("192.0.2.1", "192.0.2.0/24", "", NOW + 1, W.penalty).blocks == (new,)
    assert state.snapshot("192.0.2.1", "192.0.2.0/24", "", NOW + 60, W.penalty).blocks == ()


def test_a_snapshot_sees_only_the_blocks_of_its_keys(state: GuardState) -> None:
    mine = [block(ADDRESS, "192.0.2.1"), block(SUBNET, "192.0.2.0/24"), block(ACCOUNT, ALICE),
            block(ACCOUNT_NEW, ALICE), block(THROTTLE, ALICE)]
    others = [block(ADDRESS, "192.0.2.2"), block(SUBNET, "198.51.100.0/24"), block(ACCOUNT, BOB),
              block(SUBNET, "192.0.2.1"), block(ADDRESS, "192.0.2.0/24")]  # keys of another kind
    state.start_blocks(mine + others)
    snap = state.snapshot("192.0.2.1", "192.0.2.0/24", ALICE, NOW + 1, W.penalty)
    assert kinds(snap.blocks) == kinds(mine)
    snap = state.snapshot("192.0.2.1", "192.0.2.0/24", "", NOW + 1, W.penalty)
    assert kinds(snap.blocks) == {(ADDRESS, "192.0.2.1"), (SUBNET, "192.0.2.0/24")}
    assert len(state.active_blocks(NOW + 1)) == len(mine + others)


def test_the_last_new_address_failure_is_read_under_a_throttle(state: GuardState) -> None:
    state.record_failure(failure(-20, "192.0.2.1"), W)
    state.record_failure(failure(-10, "198.51.100.1"), W)
    state.record_failure(failure(-5, "203.0.113.1", known=True), W)
    state.record_failure(failure(-1, "203.0.113.2", account=BOB), W)
    assert state.snapshot("203.0.113.3", "x", ALICE, NOW, W.penalty).last_new_failure is None
    state.start_blocks([block(THROTTLE, ALICE)])
    assert state.snapshot("203.0.113.3", "x", ALICE, NOW, W.penalty).last_new_failure == NOW - 10


# --- clearing -----------------------------------------------------------------------------


def test_unlock_account_lifts_its_blocks_and_forgets_its_failures(state: GuardState) -> None:
    for t in range(3):
        state.record_failure(failure(t), W)
    state.start_blocks([block(ACCOUNT_NEW, ALICE), block(THROTTLE, ALICE),
                        block(ADDRESS, "192.0.2.1"), block(ACCOUNT, BOB)])
    assert state.unlock_account(ALICE) == 2
    assert kinds(state.active_blocks(NOW + 5)) == {(ADDRESS, "192.0.2.1"), (ACCOUNT, BOB)}
    assert state.record_failure(failure(5), W).account_new == 1
    assert state.unlock_account(ALICE) == 0
    assert state.unlock_account("nobody@example.org") == 0


def test_unblock_lifts_address_or_subnet_blocks_and_forgets_the_key(state: GuardState) -> None:
    state.record_failure(failure(0, "192.0.2.1", ALICE), W)
    state.record_failure(failure(1, "192.0.2.1", BOB), W)
    state.start_blocks([block(ADDRESS, "192.0.2.1"), block(SUBNET, "192.0.2.0/24"),
                        block(ACCOUNT_NEW, ALICE)])
    assert state.unblock("192.0.2.1") == 1
    assert kinds(state.active_blocks(NOW + 5)) == {(SUBNET, "192.0.2.0/24"), (ACCOUNT_NEW, ALICE)}
    assert state.snapshot("192.0.2.1", "192.0.2.0/24", "", NOW + 5, W.penalty).penalty_failures == 0
    c = state.record_failure(failure(5, "192.0.2.1", CAROL), W)
    assert (c.address_failures, c.address_accounts) == (1, 1)
    assert state.unblock("192.0.2.0/24") == 1
    assert kinds(state.active_blocks(NOW + 6)) == {(ACCOUNT_NEW, ALICE)}
    assert state.record_failure(failure(6, "192.0.2.7", DAVE), W).subnet_accounts == 1
    assert state.unblock("192.0.2.0/24") == 0


# --- the -PLUS fallback -------------------------------------------------------------------


def test_plus_fallback_holds_until_then_lapses_renews_and_lifts(state: GuardState) -> None:
    a, b = "192.0.2.7", "192.0.2.8"
    assert state.plus_fallback(a, NOW) is None
    state.set_plus_fallback(a, NOW + 100)
    assert state.plus_fallback(a, NOW) == NOW + 100
    assert state.plus_fallback(b, NOW) is None
    assert state.plus_fallback(a, NOW + 100) is None  # lapsed
    state.set_plus_fallback(a, NOW + 200)  # renewed
    assert state.plus_fallback(a, NOW + 150) == NOW + 200
    state.set_plus_fallback(a, None)
    assert state.plus_fallback(a, NOW) is None
    state.set_plus_fallback(b, None)  # lifting what is not held is no error
    assert state.plus_fallback(b, NOW) is None


# --- pruning ------------------------------------------------------------------------------


def test_prune_keeps_what_the_windows_need(state: GuardState) -> None:
    state.record_failure(failure(-10, "192.0.2.1"), W)
    state.record_success("192.0.2.2", ALICE, NOW - 2000, reset_penalty=False)
    state.record_success("192.0.2.3", ALICE, NOW - 10, reset_penalty=False)
    state.set_plus_fallback("192.0.2.4", NOW - 1)
    state.set_plus_fallback("192.0.2.5", NOW + 100)
    b = block(ADDRESS, "192.0.2.6")
    state.start_blocks([b])
    state.prune(NOW, keep_seconds=900, known_seconds=1000)
    assert state.record_failure(failure(0, "192.0.2.1"), W).address_failures == 2
    assert state.snapshot("192.0.2.1", "x", "", NOW, W.penalty).penalty_failures == 2
    assert state.snapshot("192.0.2.2", "x", ALICE, NOW, W.penalty).known_since is None
    assert state.snapshot("192.0.2.3", "x", ALICE, NOW, W.penalty).known_since == NOW - 10
    assert state.plus_fallback("192.0.2.4", NOW - 5) is None  # lapsed, so gone
    assert state.plus_fallback("192.0.2.5", NOW) == NOW + 100
    assert state.active_blocks(NOW) == [b]


# --- several nodes, threads and processes -------------------------------------------------


def test_a_second_instance_sees_the_first_ones_writes(impl: Impl) -> None:
    a, b = impl.open(), impl.open()
    a.record_failure(failure(0), W)
    assert b.record_failure(failure(1), W).account_new == 2
    blk = block(ACCOUNT_NEW, ALICE)
    assert a.start_blocks([blk]) == [blk]
    assert b.start_blocks([blk]) == []
    assert b.snapshot("192.0.2.1", "192.0.2.0/24", ALICE, NOW + 1, W.penalty).blocks == (blk,)
    a.record_success("192.0.2.1", ALICE, NOW + 2, reset_penalty=True)
    s = b.snapshot("192.0.2.1", "192.0.2.0/24", ALICE, NOW + 3, W.penalty)
    assert (s.known_since, s.penalty_failures) == (NOW + 2, 0)
    a.set_plus_fallback("192.0.2.1", NOW + 100)
    assert b.plus_fallback("192.0.2.1", NOW) == NOW + 100
    assert b.unlock_account(ALICE) == 1
    assert a.active_blocks(NOW + 4) == []


def test_concurrent_failures_from_threads_are_each_counted_once(state: GuardState) -> None:
    threads, each = 4, 25
    seen: list[int] = []
    lock = threading.Lock()
    start = threading.Barrier(threads)

    def worker(n: int) -> None:
        start.wait()
        for i in range(each):
            c = state.record_failure(failure((n * each + i) / 1000, account=f"u{n}@x.org"), W)
            with lock:
                seen.append(c.address_failures)

    ts = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    total = threads * each
    # Recording and counting are one step: each failure saw itself and those before it.
    assert sorted(seen) == list(range(1, total + 1))
    assert state.snapshot("192.0.2.1", "x", "", NOW + 1, W.penalty).penalty_failures == total
    c = state.record_failure(failure(1), W)
    assert (c.address_failures, c.address_accounts) == (total + 1, threads + 1)


_RECORD = """
import sys
from smtpgate.auth.guard_state import RecordedFailure, Windows
from tests.contract.implementations import open_guard_state
name, target, now, n, tag = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
state = open_guard_state(name, target)
windows = Windows(900.0, 600.0, 300.0)
for i in range(n):
    state.record_failure(RecordedFailure(now + i / 1000, "192.0.2.1", "192.0.2.0/24",
                                         tag + "@x.org", False, True), windows)
state.close()
"""


def test_concurrent_failures_from_processes_are_each_counted_once(impl: Impl) -> None:
    state = impl.open()
    procs, each = 3, 20
    children = [
        subprocess.Popen([sys.executable, "-c", _RECORD, impl.name, impl.target, str(NOW),
                          str(each), f"p{n}"], cwd=ROOT)
        for n in range(procs)
    ]
    for p in children:
        assert p.wait(timeout=120) == 0
    total = procs * each
    assert state.snapshot("192.0.2.1", "x", "", NOW + 1, W.penalty).penalty_failures == total
    c = state.record_failure(failure(1, account="p0@x.org"), W)
    assert (c.address_failures, c.address_accounts, c.account_new) == (total + 1, procs, each + 1)


def test_concurrent_starts_of_one_block_start_it_once(impl: Impl) -> None:
    threads = 6
    states = [impl.open() for _ in range(threads)]  # one per thread: as many nodes
    blk = block(ACCOUNT_NEW, ALICE)
    results: list[list[Block]] = []
    lock = threading.Lock()
    start = threading.Barrier(threads)

    def worker(s: GuardState) -> None:
        start.wait()
        got = s.start_blocks([blk])
        with lock:
            results.append(got)

    ts = [threading.Thread(target=worker, args=(s,)) for s in states]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert sorted(results, key=len) == [[]] * (threads - 1) + [[blk]]


# --- faults -------------------------------------------------------------------------------


def test_a_closed_state_raises_its_own_error(impl: Impl) -> None:
    s = open_guard_state(impl.name, impl.target)
    s.close()
    with pytest.raises(GuardStoreError):
        s.snapshot("192.0.2.1", "192.0.2.0/24", ALICE, NOW, W.penalty)
    with pytest.raises(GuardStoreError):
        s.record_failure(failure(0), W)
    with pytest.raises(GuardStoreError):
        s.start_blocks([block(ADDRESS, "192.0.2.1")])
