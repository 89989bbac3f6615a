"""The guard's SQLite file gives back what a flood of failing addresses took.

Each distinct failing address left rows (its failures, its penalty) that the
prune deleted only after the next recorded failure, and the pages they freed
stayed in the file: 1.4 MB after 6,000 addresses, for good. The guard now prunes
from the server's tick as well, and the file (``auth/sqlite_space.py``) gives
its free pages back; the sending counters' old buckets, in the same file, too.
Real SQLite files, the guard's own clock stepped past its windows.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from smtpgate.auth.guard import PRUNE_EVERY, Guard, count_failure, thresholds
from smtpgate.auth.guard_store import MIGRATIONS, RecordedFailure, SqliteGuardStore
from smtpgate.auth.sqlite_space import WAL_SIZE_LIMIT
from smtpgate.config import GuardConfig
from smtpgate.policy.rate_counters import KEEP_BUCKETS
from smtpgate.policy.sqlite_counters import SqliteRateCounters
from tests.unit.patient_state import PATIENT_STATE

CFG = GuardConfig()
T = thresholds(CFG)
#: Past every window and duration of ``CFG``, and the prune's own interval.
ALL_OVER = max(CFG.spray_window, CFG.lockout_window, CFG.penalty_window, CFG.block_duration,
               CFG.lockout_duration, CFG.throttle_duration) + PRUNE_EVERY + 1


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def flood(store: SqliteGuardStore, t: float, wave: int, n: int, *, counted: int = 200) -> None:
    """``n`` wrong passwords, each from an address of its own: the first ``counted``
    through the store as the guard records them, the rest as the same rows in one
    transaction (a commit each costs this disk milliseconds)."""
    def address(i: int) -> str:
        return f"10.{wave}.{i // 250}.{i % 250}"

    for i in range(min(n, counted)):
        count_failure(store, RecordedFailure(t, address(i), f"{address(i)}/32",
                                             f"u{i}@example.org", False, True), T)
    c = sqlite3.connect(store.path, isolation_level=None)
    try:
        c.execute("BEGIN IMMEDIATE")
        c.executemany("INSERT INTO failures VALUES (?, ?, ?, ?, 0, 1)",
                      [(t, address(i), f"{address(i)}/32", f"u{i}@example.org")
                       for i in range(counted, n)])
        c.executemany("INSERT INTO penalty VALUES (?, 1, ?)",
                      [(address(i), t) for i in range(counted, n)])
        c.execute("COMMIT")
    finally:
        c.close()


def checkpointed(path: Path) -> int:
    """The file's size with the WAL's pages written into it."""
    c = sqlite3.connect(path)
    try:
        c.execute("PRAGMA wal_checkpoint(PASSIVE)")
    finally:
        c.close()
    return size(path)


def rows(path: Path, table: str) -> int:
    c = sqlite3.connect(path)
    try:
        return int(c.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
    finally:
        c.close()


def size(path: Path) -> int:
    return path.stat().st_size


async def test_a_flood_is_pruned_without_a_further_failure_and_its_space_given_back(
    tmp_path: Path,
) -> None:
    path = tmp_path / "guard.sqlite"
    clock = Clock()
    store = SqliteGuardStore(path)
    g = Guard(store, CFG, PATIENT_STATE, clock=clock)
    try:
        flood(store, clock.now, 1, 6000)
        assert rows(path, "failures") == rows(path, "penalty") == 6000
        grown = checkpointed(path)
        assert grown > 1_000_000
        # The windows are over; no login fails again. The server's tick prunes.
        clock.now += ALL_OVER
        await g.tick()
        assert rows(path, "failures") == rows(path, "penalty") == 0
        assert size(path) < 100_000 < grown
        assert size(path.with_name("guard.sqlite-wal")) <= WAL_SIZE_LIMIT
    finally:
        await g.close()


async def test_wave_after_wave_of_new_addresses_the_file_stays_bounded(tmp_path: Path) -> None:
    path = tmp_path / "guard.sqlite"
    clock = Clock()
    store = SqliteGuardStore(path)
    g = Guard(store, CFG, PATIENT_STATE, clock=clock)
    sizes = []
    try:
        for wave in range(5):
            flood(store, clock.now, wave, 3000, counted=50)
            clock.now += ALL_OVER
            await g.tick()
            sizes.append(size(path))
        assert rows(path, "failures") == 0
        assert max(sizes) < 100_000, sizes
    finally:
        await g.close()


def test_the_sending_counters_old_buckets_go_and_their_pages_with_them(tmp_path: Path) -> None:
    path = tmp_path / "guard.sqlite"
    store = SqliteGuardStore(path)
    counters = SqliteRateCounters(path)
    try:
        bucket = 500_000
        for i in range(0, 6000, 500):
            counters.add_usage([f"account:u{j}@example.org" for j in range(i, i + 500)],
                               bucket, 1, 1)
        grown = checkpointed(path)
        # A day later one message: the old bucket is forgotten on that write ...
        counters.add_usage(["account:u0@example.org"], bucket + KEEP_BUCKETS + 1, 1, 1)
        assert rows(path, "usage") == 1
        # ... and the guard's next prune gives the file back its pages.
        store.prune(0.0, 60.0, 60.0)
        assert size(path) < grown // 4
    finally:
        counters.close()
        store.close()


def test_a_file_from_before_is_converted_once_at_open(tmp_path: Path) -> None:
    """auto_vacuum can only change with a VACUUM: a file an older smtpgate wrote
    (auto_vacuum none, its free pages kept) is rewritten when the guard opens it."""
    path = tmp_path / "guard.sqlite"
    c = sqlite3.connect(path, isolation_level=None)
    c.execute("PRAGMA journal_mode = WAL")
    for statement in MIGRATIONS[0]:
        c.execute(statement)
    c.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY NOT NULL, "
              "applied TEXT NOT NULL)")
    c.execute("INSERT INTO schema_version VALUES (1, '2026-01-01T00:00:00.000000Z')")
    c.execute("BEGIN")
    c.executemany("INSERT INTO penalty VALUES (?, 1, 0)", [(f"a{i}",) for i in range(20000)])
    c.execute("COMMIT")
    c.execute("DELETE FROM penalty")
    c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert c.execute("PRAGMA auto_vacuum").fetchone()[0] == 0
    c.close()
    before = size(path)
    SqliteGuardStore(path).close()
    c = sqlite3.connect(path)
    try:
        assert c.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental
    finally:
        c.close()
    assert size(path) < before // 4


def test_a_connection_opened_while_another_process_writes_reads_at_once(tmp_path: Path) -> None:
    """A worker opens a connection per thread (and one that never waits, for the
    loop's reads) when it first needs one. Setting ``auto_vacuum`` on each took the
    write lock, so a worker whose first login came while a backup or an ``sqlite3``
    shell held it found the guard's reads failing (the loop's at once, the thread's
    after the busy timeout) and refused even its owners' known addresses."""
    path = tmp_path / "guard.sqlite"
    store = SqliteGuardStore(path)
    counters = SqliteRateCounters(path)
    count_failure(store, RecordedFailure(1.0, "192.0.2.1", "192.0.2.0/24",
                                         "alice@example.org", False, True), T)
    holder = sqlite3.connect(path, isolation_level=None, timeout=0)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with store.without_waiting():  # a new connection, busy timeout 0
            snap = store.snapshot("192.0.2.1", "192.0.2.0/24", "alice@example.org", 2.0, 3600)
        assert snap.penalty_failures == 1
        with counters.without_waiting():
            assert counters.usage(["alice@example.org"], 0) == {"alice@example.org": (0, 0)}
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        counters.close()
        store.close()
    c = sqlite3.connect(path)
    try:
        assert c.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # a new file is still made so
    finally:
        c.close()
