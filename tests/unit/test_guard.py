"""The guard: penalty arithmetic, decisions, thresholds in SQLite, the async front."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from smtpgate.auth.guard import (
    Guard,
    GuardCheck,
    blocks_due,
    count_failure,
    decide,
    mail_login_key,
    penalty_delay,
    thresholds,
)
from smtpgate.auth.guard_store import (
    ACCOUNT,
    ACCOUNT_NEW,
    ADDRESS,
    SUBNET,
    THROTTLE,
    Block,
    FailureCounts,
    GuardStoreError,
    RecordedFailure,
    Snapshot,
    SqliteGuardStore,
)
from smtpgate.auth.networks import client_keys
from smtpgate.config import GuardConfig, StateConfig
from smtpgate.policy.sqlite_counters import SqliteRateCounters
from tests.unit.patient_state import PATIENT_STATE

CFG = GuardConfig(
    lockout_threshold=3,
    known_lockout_threshold=5,
    spray_accounts=3,
    subnet_spray_accounts=4,
    address_failure_limit=6,
    distributed_addresses=3,
    penalty_base=0.5,
    penalty_max=4.0,
)
T = thresholds(CFG)
ALICE = "alice@example.org"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteGuardStore]:
    s = SqliteGuardStore(tmp_path / "guard.sqlite")
    yield s
    s.close()


def fail(store: SqliteGuardStore, t: float, address: str, account: str, *, known: bool = False,
         counts: bool = True, subnet: str | None = None) -> list[Block]:
    f = RecordedFailure(t, address, subnet or client_keys(address).subnet, account, known, counts)
    return count_failure(store, f, T)


# --- pure parts -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("failures", "delay"), [(0, 0.0), (1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (5, 4.0), (500, 4.0)]
)
def test_penalty_doubles_from_base_and_is_capped(failures: int, delay: float) -> None:
    assert penalty_delay(failures, 0.5, 4.0) == delay


def test_client_keys_ipv4_is_one_address_ipv6_is_its_64() -> None:
    assert client_keys("192.0.2.7") == client_keys("::ffff:192.0.2.7")
    assert client_keys("192.0.2.7").subnet == "192.0.2.0/24"
    k = client_keys("2001:db8:1:2:aaaa::1")
    assert k.address == "2001:db8:1:2::/64" and k.subnet == "2001:db8:1::/48"
    assert client_keys("2001:db8:1:2:bbbb::9").address == k.address


def test_client_keys_are_computed_once_per_address_and_prefixes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 13: ``ipaddress`` ran on each of a login's several key look-ups; a
    repeated address (with the same prefixes) is answered from the per-process
    cache, the same keys; other prefixes are computed for themselves."""
    from smtpgate.auth import networks

    parsed: list[str] = []
    real = networks.parse_ip

    def counting(text: str) -> networks.IPAddress | None:
        parsed.append(text)
        return real(text)

    monkeypatch.setattr(networks, "parse_ip", counting)
    networks.client_keys.cache_clear()
    first = networks.client_keys("2001:db8:1:2:aaaa::1")
    assert networks.client_keys("2001:db8:1:2:aaaa::1") == first
    assert parsed == ["2001:db8:1:2:aaaa::1"]
    wider = networks.client_keys("2001:db8:1:2:aaaa::1", ipv6_prefix=56)
    assert wider.address == "2001:db8:1::/56" and len(parsed) == 2
    networks.client_keys.cache_clear()  # later tests see no counting parser's entries


def snap(*blocks: Block, known_since: float | None = None, last_new: float | None = None) -> Snapshot:
    return Snapshot(tuple(blocks), known_since, 0, last_new)


def block(kind: str, key: str = "k") -> Block:
    return Block(kind, key, 0.0, 2e9, "why")


@pytest.mark.parametrize(
    ("blocks", "known", "refused"),
    [
        ((block(ADDRESS),), True, ADDRESS),  # an address block spares nobody
        ((block(ACCOUNT),), True, ACCOUNT),  # nor a full account lock
        ((block(SUBNET),), True, None),  # the rest spare known addresses
        ((block(SUBNET),), False, SUBNET),
        ((block(ACCOUNT_NEW),), True, None),
        ((block(ACCOUNT_NEW),), False, ACCOUNT_NEW),
        ((), False, None),
    ],
)
def test_decide_known_addresses_are_spared_by_new_address_rules(
    blocks: tuple[Block, ...], known: bool, refused: str | None
) -> None:
    now = 1e6
    _, refusal = decide(snap(*blocks, known_since=now - 10 if known else None), now=now,
                        known_seconds=86400, throttle_interval=30)
    assert (refusal.kind if refusal else None) == refused


def test_decide_throttle_spaces_new_addresses() -> None:
    now = 1e6
    args = {"now": now, "known_seconds": 86400, "throttle_interval": 30}
    assert decide(snap(block(THROTTLE), last_new=now - 10), **args)[1] is not None
    assert decide(snap(block(THROTTLE), last_new=now - 31), **args)[1] is None
    assert decide(snap(block(THROTTLE), last_new=now - 10, known_since=now), **args)[1] is None


def test_decide_known_address_expires() -> None:
    known, _ = decide(snap(known_since=1e6 - 2 * 86400), now=1e6, known_seconds=86400,
                      throttle_interval=30)
    assert known is False


# --- thresholds in SQLite ---------------------------------------------------------------------


def test_new_address_failures_lock_for_new_addresses_at_the_threshold(store: SqliteGuardStore) -> None:
    assert fail(store, 1.0, "192.0.2.1", ALICE) == []
    assert fail(store, 2.0, "192.0.2.1", ALICE) == []
    started = fail(store, 3.0, "192.0.2.1", ALICE)
    assert [(b.kind, b.key) for b in started] == [(ACCOUNT_NEW, ALICE)]
    assert fail(store, 4.0, "192.0.2.1", ALICE) == []  # already locked: nothing new
    kinds = {b.kind for b in store.snapshot("198.51.100.1", "x", ALICE, 5.0, 900).blocks}
    assert kinds == {ACCOUNT_NEW}


def test_known_address_failures_count_apart_and_lock_everything(store: SqliteGuardStore) -> None:
    for i in range(4):
        assert fail(store, float(i), "192.0.2.1", ALICE, known=True) == []
    started = fail(store, 5.0, "192.0.2.1", ALICE, known=True)
    assert [b.kind for b in started] == [ACCOUNT]


def test_policy_refusals_do_not_count_toward_the_account(store: SqliteGuardStore) -> None:
    for i in range(5):
        started = fail(store, float(i), "192.0.2.1", ALICE, counts=False)
        assert all(b.kind not in (ACCOUNT, ACCOUNT_NEW) for b in started)


def test_spraying_blocks_the_address_and_subnet(store: SqliteGuardStore) -> None:
    assert fail(store, 1.0, "192.0.2.1", "a@x.org") == []
    assert fail(store, 2.0, "192.0.2.1", "b@x.org") == []
    assert [(b.kind, b.key) for b in fail(store, 3.0, "192.0.2.1", "c@x.org")] == [(ADDRESS, "192.0.2.1")]
    # A neighbour in the /24 adds a 4th distinct account: the subnet is blocked.
    started = fail(store, 4.0, "192.0.2.99", "d@x.org")
    assert [(b.kind, b.key) for b in started] == [(SUBNET, "192.0.2.0/24")]


def test_many_failures_from_one_address_block_it(store: SqliteGuardStore) -> None:
    cfg_kinds = []
    for i in range(6):
        cfg_kinds += [b.kind for b in fail(store, float(i), "192.0.2.1", f"u{i % 2}@x.org", counts=False)]
    assert cfg_kinds == [ADDRESS]


def test_distinct_new_addresses_throttle_the_account(store: SqliteGuardStore) -> None:
    fail(store, 1.0, "192.0.2.1", ALICE)
    fail(store, 2.0, "198.51.100.1", ALICE)
    started = fail(store, 3.0, "203.0.113.1", ALICE)
    assert {b.kind for b in started} == {THROTTLE, ACCOUNT_NEW}


def test_windows_forget_old_failures(store: SqliteGuardStore) -> None:
    fail(store, 1.0, "192.0.2.1", ALICE)
    fail(store, 2.0, "192.0.2.1", ALICE)
    assert fail(store, 2.0 + CFG.lockout_window, "192.0.2.1", ALICE) == []


def test_penalty_counts_and_success_resets(store: SqliteGuardStore) -> None:
    fail(store, 1.0, "192.0.2.1", "a@x.org")
    fail(store, 2.0, "192.0.2.1", "a@x.org")
    assert store.snapshot("192.0.2.1", "s", "", 3.0, 900).penalty_failures == 2
    assert store.snapshot("192.0.2.1", "s", "", 3.0 + 900, 900).penalty_failures == 0
    store.record_success("192.0.2.1", "a@x.org", 4.0, reset_penalty=True)
    s = store.snapshot("192.0.2.1", "s", "a@x.org", 5.0, 900)
    assert (s.penalty_failures, s.known_since) == (0, 4.0)


def test_unlock_and_unblock_lift_and_forget(store: SqliteGuardStore) -> None:
    for i in range(3):
        fail(store, float(i), "192.0.2.1", ALICE)
    fail(store, 3.0, "192.0.2.1", "b@x.org")
    assert [b.kind for b in fail(store, 3.5, "192.0.2.1", "c@x.org")] == [ADDRESS]
    assert store.unlock_account(ALICE) == 1
    assert fail(store, 4.0, "192.0.2.1", ALICE) == []  # its failures were forgotten
    assert store.unblock("192.0.2.1") == 1
    assert store.active_blocks(5.0) == []


def test_state_survives_reopening(tmp_path: Path) -> None:
    s = SqliteGuardStore(tmp_path / "g.sqlite")
    for i in range(3):
        fail(s, float(i), "192.0.2.1", ALICE)
    c = SqliteRateCounters(tmp_path / "g.sqlite")  # the counters share the file
    c.add_usage(["acct:a"], 10, 1, 2)
    c.close()
    s.close()
    s = SqliteGuardStore(tmp_path / "g.sqlite")
    c = SqliteRateCounters(tmp_path / "g.sqlite")
    try:
        assert [b.kind for b in s.active_blocks(4.0)] == [ACCOUNT_NEW]
        assert c.usage(["acct:a", "acct:b"], 0) == {"acct:a": (1, 2), "acct:b": (0, 0)}
    finally:
        s.close()
        c.close()


def test_prune_keeps_what_windows_need(store: SqliteGuardStore) -> None:
    fail(store, 1.0, "192.0.2.1", ALICE)
    store.record_success("198.51.100.1", ALICE, 1.0, reset_penalty=False)
    store.record_success("198.51.100.2", ALICE, 90.0, reset_penalty=False)
    store.prune(1.0 + 100, keep_seconds=50, known_seconds=50)
    assert store.snapshot("192.0.2.1", "s", ALICE, 102.0, 900).penalty_failures == 0
    assert store.snapshot("198.51.100.1", "s", ALICE, 102.0, 900).known_since is None
    assert store.snapshot("198.51.100.2", "s", ALICE, 102.0, 900).known_since == 90.0


def test_unusable_file_is_guard_store_error(tmp_path: Path) -> None:
    (tmp_path / "g.sqlite").write_bytes(b"not a database" * 100)
    with pytest.raises(GuardStoreError):
        SqliteGuardStore(tmp_path / "g.sqlite")


# --- the async front -----------------------------------------------------------------------------


@pytest.fixture
async def guard(tmp_path: Path) -> AsyncIterator[tuple[Guard, Clock]]:
    clock = Clock()
    g = Guard(SqliteGuardStore(tmp_path / "guard.sqlite"), CFG, PATIENT_STATE, clock=clock)
    yield g, clock
    await g.close()


async def test_check_penalty_lock_and_known_owner(guard: tuple[Guard, Clock]) -> None:
    g, clock = guard
    owner = await g.check("192.0.2.50", ALICE)
    await g.success(owner, ALICE)
    delays = []
    for _ in range(3):
        c = await g.check("203.0.113.9", ALICE)
        assert c.refusal is None
        delays.append(c.delay)
        await g.failure(c, counts_account=True)
        clock.now += 1
    assert delays == [0.0, 0.5, 1.0]
    refused = await g.check("203.0.113.9", "alice@EXAMPLE.org")  # same account, other spelling
    assert refused.refusal is not None and refused.refusal.kind == ACCOUNT_NEW
    assert refused.delay == CFG.penalty_max  # refusals are tarpitted
    assert (await g.check("192.0.2.50", ALICE)).refusal is None  # the owner's known address
    assert (await g.failure(refused, counts_account=True)) == []  # refusals are not counted


async def test_the_first_prune_comes_a_minute_after_start_not_with_the_first_failure(
    tmp_path: Path,
) -> None:
    clock = Clock()
    pruned: list[float] = []

    class CountingStore(SqliteGuardStore):
        def prune(self, now: float, keep_seconds: float, known_seconds: float) -> None:
            pruned.append(now)
            super().prune(now, keep_seconds, known_seconds)

    g = Guard(CountingStore(tmp_path / "g.sqlite"), CFG, PATIENT_STATE, clock=clock)
    try:
        await g.failure(await g.check("203.0.113.9", ALICE), counts_account=True)
        assert pruned == []  # the workers' first logins do not queue behind prunes
        clock.now += 61
        await g.failure(await g.check("203.0.113.10", ALICE), counts_account=True)
        assert pruned == [clock.now]
    finally:
        await g.close()


async def test_warm_up_writes_once_before_serving_and_a_slow_one_is_no_episode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = Clock()
    pruned: list[float] = []

    class SlowStore(SqliteGuardStore):
        delay = 0.0

        def prune(self, now: float, keep_seconds: float, known_seconds: float) -> None:
            time.sleep(self.delay)  # another process's start-up holding the write lock
            pruned.append(now)
            super().prune(now, keep_seconds, known_seconds)

    store = SlowStore(tmp_path / "g.sqlite")
    g = Guard(store, CFG, StateConfig(timeout=0.05), clock=clock)
    try:
        await g.warm_up()
        assert pruned == [clock.now]
        # Slower than the state timeout: waited for at start, not an episode.
        monkeypatch.setattr("smtpgate.auth.guard.WARM_UP_WAIT", 0.1)
        store.delay = 0.3
        await g.warm_up()
        assert not g.unavailable
        store.delay = 0.0
        await asyncio.sleep(0.35)  # it runs on, and ends
        check = await g.check("203.0.113.9", ALICE)
        assert check.refusal is None
        await g.failure(check, counts_account=True)
        assert not g.unavailable and len(pruned) == 2
    finally:
        await g.close()


async def test_allowlisted_addresses_are_invisible(tmp_path: Path) -> None:
    g = Guard(SqliteGuardStore(tmp_path / "g.sqlite"),
              CFG.model_copy(update={"allowlist": ["10.0.0.0/8"]}), PATIENT_STATE)
    try:
        for i in range(10):
            c = await g.check("10.1.2.3", f"u{i}@x.org")
            assert c.allowlisted and c.delay == 0
            await g.failure(c, counts_account=True)
        assert g.store.active_blocks(2e9 - 1) == []
    finally:
        await g.close()


class BrokenStore(SqliteGuardStore):
    def snapshot(self, *a: object, **k: object) -> Snapshot:
        raise GuardStoreError("disk on fire")

    def record_failure(self, *a: object, **k: object) -> list[Block]:
        raise GuardStoreError("disk on fire")


async def test_database_fault_fails_open_when_configured(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``[state] on_unavailable = "open"``; the default is tested in test_guard_unavailable."""
    g = Guard(BrokenStore(tmp_path / "g.sqlite"), CFG, StateConfig(on_unavailable="open"))
    try:
        c = await g.check("192.0.2.1", ALICE)
        assert c.refusal is None and c.delay == 0 and not c.unavailable
        assert await g.failure(c, counts_account=True) == []
        assert g.stats.faults == 2 and "guard database reads not answering (disk on fire)" in caplog.text
    finally:
        await g.close()


async def test_checks_do_not_block_the_event_loop(guard: tuple[Guard, Clock]) -> None:
    """Other coroutines keep running while the guard works (its SQL runs in a thread)."""
    g, _ = guard
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    for i in range(20):
        c: GuardCheck = await g.check("192.0.2.1", f"u{i}@x.org")
        await g.failure(c, counts_account=True)
    task.cancel()
    # The writes awaited on the thread let the ticker run (SQL on the loop would let
    # it run never); how often depends on the machine's load (9 for 20 writes seen
    # under a full test run), so only that it ran is asserted.
    assert ticks > 0


# --- blocks_due: counts and thresholds to blocks (pure) ------------------------------------


def counts(new: int = 0, known: int = 0, sources: int = 0, total: int = 1, accounts: int = 1,
           subnet_accounts: int = 1) -> FailureCounts:
    return FailureCounts(new, known, sources, total, accounts, subnet_accounts)


def due(f: RecordedFailure, n: FailureCounts) -> list[tuple[str, str]]:
    return [(b.kind, b.key) for b in blocks_due(f, n, T)]


F_NEW = RecordedFailure(100.0, "192.0.2.1", "192.0.2.0/24", ALICE, False, True)


def test_blocks_due_at_each_threshold_and_not_below() -> None:
    assert due(F_NEW, counts(new=T.lockout_threshold - 1)) == []
    assert due(F_NEW, counts(new=T.lockout_threshold)) == [(ACCOUNT_NEW, ALICE)]
    f_known = RecordedFailure(100.0, "192.0.2.1", "192.0.2.0/24", ALICE, True, True)
    assert due(f_known, counts(known=T.known_lockout_threshold - 1)) == []
    assert due(f_known, counts(known=T.known_lockout_threshold)) == [(ACCOUNT, ALICE)]
    assert due(F_NEW, counts(sources=T.distributed_addresses)) == [(THROTTLE, ALICE)]
    assert due(F_NEW, counts(total=T.address_failure_limit)) == [(ADDRESS, "192.0.2.1")]
    assert due(F_NEW, counts(subnet_accounts=T.subnet_spray_accounts)) == [(SUBNET, "192.0.2.0/24")]
    b = blocks_due(F_NEW, counts(new=T.lockout_threshold), T)[0]
    assert (b.since, b.until) == (100.0, 100.0 + T.lockout_duration)


def test_blocks_due_account_rules_need_a_counting_named_account() -> None:
    many = counts(new=99, known=99, sources=99)
    for f in (RecordedFailure(1.0, "192.0.2.1", "192.0.2.0/24", ALICE, False, False),
              RecordedFailure(1.0, "192.0.2.1", "192.0.2.0/24", "", False, True)):
        assert due(f, many) == []
    # a known address's failures never lock for new addresses or throttle, and vice versa
    f_known = RecordedFailure(1.0, "192.0.2.1", "192.0.2.0/24", ALICE, True, True)
    assert due(f_known, many) == [(ACCOUNT, ALICE)]
    assert due(F_NEW, many) == [(ACCOUNT_NEW, ALICE), (THROTTLE, ALICE)]


def test_blocks_due_spraying_is_the_one_reason_and_a_subnet_of_one_is_not_blocked() -> None:
    [b] = blocks_due(F_NEW, counts(total=99, accounts=T.spray_accounts), T)
    assert (b.kind, b.reason) == (ADDRESS, f"password spraying: failed against {T.spray_accounts} accounts")
    f = RecordedFailure(1.0, "2001:db8::/64", "2001:db8::/64", ALICE, False, False)
    assert due(f, counts(subnet_accounts=99)) == []


async def test_reconfigure_changes_the_thresholds_not_the_state(guard: tuple[Guard, Clock]) -> None:
    g, clock = guard
    for _ in range(2):
        await g.failure(await g.check("203.0.113.9", ALICE), counts_account=True)
        clock.now += 1
    g.reconfigure(CFG.model_copy(update={"lockout_threshold": 2}))
    # The two failures counted before the reload count toward the new threshold.
    started = await g.failure(await g.check("203.0.113.9", ALICE), counts_account=True)
    assert [b.kind for b in started] == [ACCOUNT_NEW]


@pytest.mark.parametrize("name, key", [
    ("admin:root", ""), ("ADMIN:root", ""), ("Admin:Root@example.org", ""),
    ("alice@example.org", "alice@example.org"), ("administrator@example.org",
                                                 "administrator@example.org"), ("", ""),
])
def test_a_mail_login_in_the_web_admins_key_space_counts_against_the_address_only(
        name: str, key: str) -> None:
    """``admin:NAME`` is a web admin's lockout key; a mail login never reaches it."""
    assert mail_login_key(name) == key


async def test_a_lockouts_log_line_escapes_the_name_the_client_typed(
    guard: tuple[Guard, Clock], caplog: pytest.LogCaptureFixture
) -> None:
    """The key of a lockout of a name that is no account is the name as the client
    sent it (bounded, not checked): a bidi override (U+202E), a line separator
    (U+2028) or a NEL in it went raw into the server log's "guard: account-new ...
    blocked" line, where the auth log's own line for the same attempt escapes it
    (seen with ``ev\\u202eil@example.org`` against smtpgate serve)."""
    g, clock = guard
    name = "ev\u202eil\u2028FORGED\x85@example.org"
    for i in range(CFG.lockout_threshold):
        c = await g.check(f"203.0.113.{i + 1}", name)
        await g.failure(c, counts_account=True)
        clock.now += 1
    lines = [r.getMessage() for r in caplog.records if "blocked until" in r.getMessage()]
    assert any("ev\\u202eil\\u2028FORGED\\x85@example.org" in line for line in lines), lines
    assert not any(c in line for line in lines for c in "\u202e\u2028\x85")
