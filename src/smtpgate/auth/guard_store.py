"""The guard state and the sending counters on one SQLite file.

Theory of operation
-------------------
``SqliteGuardStore`` implements ``GuardState`` (``guard_state.py``): failure
records, blocks, known addresses, penalties and the -PLUS fallback, for one node
(its worker processes share the file). The sending counters of the rate limiter
live in the same file (the ``usage`` table) behind their own interface
(``policy/sqlite_counters.py``); this module owns the file's schema for both.

Why a file of its own: under a flood of wrong passwords every verified failure
is a write, and those writes must not queue behind (or hold up) the
administrative writes on the account database. The state here is also
disposable: deleting the file forgets every counter and block, and loses no
account.

Durability: every write commits before the caller's reply goes out, with
``synchronous=NORMAL`` in WAL mode. A committed transaction is in the WAL file,
so it survives ``kill -9`` of the server (the kernel holds the pages); only a
power cut may lose the last few, which loses a few counted failures, not an
account. Several processes share the file as the account database does.

Times are Unix seconds (``REAL``) from the guard's clock.
"""

from __future__ import annotations

import logging
import math
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from smtpgate.auth import sqlite_space
from smtpgate.auth.guard_state import (
    ACCOUNT,
    ACCOUNT_KINDS,
    ACCOUNT_NEW,
    ADDRESS,
    BLOCK_KINDS,
    SUBNET,
    THROTTLE,
    Block,
    FailureCounts,
    GuardStoreError,
    RecordedFailure,
    Snapshot,
    Windows,
)
from smtpgate.auth.sqlite_file import NewerSchema, ThreadLocalSqlite

log = logging.getLogger("smtpgate.guard")

#: 9999-12-31T23:59:59Z, the last time Python's datetime holds.
LAST_TIME = 253402300799.0


def _time(value: object) -> float | None:
    """A block's time as stored, or None when it is no number (a hand edit); past
    the year 9999 (1e300, inf) it is `LAST_TIME`."""
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        return None
    return min(float(value), LAST_TIME)


def _text(value: object) -> str:
    """A block's reason as text, whatever a hand edit stored there."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else str(value)


class DamagedBlock(GuardStoreError):
    """A block row whose times are no numbers (a hand edit)."""

    hint = ("lift it with 'smtpgate guard unblock KEY', or correct the row with sqlite3 "
            "(since and until are seconds since 1970)")

# The interface's values, re-exported: whoever opens this store handles them.
__all__ = [
    "ACCOUNT", "ACCOUNT_NEW", "ADDRESS", "BLOCK_KINDS", "MIGRATIONS", "SUBNET", "THROTTLE",
    "Block", "FailureCounts", "GuardSchemaTooNew", "GuardStoreError", "RecordedFailure",
    "Snapshot", "SqliteGuardStore", "Windows",
]


class GuardSchemaTooNew(GuardStoreError, NewerSchema):
    """The guard database was written by a newer smtpgate; it is left untouched."""


# Each migration is a list of statements run in one transaction; its version is its
# index + 1. Never edit a released migration: append a new one. Version 1 is the
# schema of the files written before versions were recorded (hence IF NOT EXISTS).
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE IF NOT EXISTS failures (
            time REAL NOT NULL,
            address TEXT NOT NULL,
            subnet TEXT NOT NULL,
            account TEXT,
            known INTEGER NOT NULL,
            counts_account INTEGER NOT NULL
        )""",
        "CREATE INDEX IF NOT EXISTS failures_address ON failures (address, time)",
        "CREATE INDEX IF NOT EXISTS failures_subnet ON failures (subnet, time)",
        "CREATE INDEX IF NOT EXISTS failures_account ON failures (account, time)",
        "CREATE INDEX IF NOT EXISTS failures_time ON failures (time)",
        """CREATE TABLE IF NOT EXISTS blocks (
            kind TEXT NOT NULL,
            key TEXT NOT NULL,
            since REAL NOT NULL,
            until REAL NOT NULL,
            reason TEXT NOT NULL,
            PRIMARY KEY (kind, key)
        )""",
        """CREATE TABLE IF NOT EXISTS known (
            account TEXT NOT NULL,
            address TEXT NOT NULL,
            first REAL NOT NULL,
            last REAL NOT NULL,
            PRIMARY KEY (account, address)
        )""",
        """CREATE TABLE IF NOT EXISTS penalty (
            address TEXT PRIMARY KEY NOT NULL,
            failures INTEGER NOT NULL,
            last REAL NOT NULL
        )""",
        # The channel-binding fallback (docs/mechanisms.md): addresses whose client
        # gave up on a -PLUS mechanism before its first message.
        """CREATE TABLE IF NOT EXISTS plus_fallback (
            address TEXT PRIMARY KEY NOT NULL,
            until REAL NOT NULL
        )""",
        """CREATE TABLE IF NOT EXISTS usage (
            key TEXT NOT NULL,
            bucket INTEGER NOT NULL,
            messages INTEGER NOT NULL,
            recipients INTEGER NOT NULL,
            PRIMARY KEY (key, bucket)
        )""",
    ),
)


class SqliteGuardStore(ThreadLocalSqlite):
    """``GuardState`` on one SQLite file (created 0600), one connection per thread.

    Opening brings the schema up to date, after copying an older file aside (see
    ``sqlite_file``, "Schema upgrades").

    Raises (constructor):
        GuardStoreError: the file cannot be opened or is not a database.
        GuardSchemaTooNew: the file has a schema newer than this version knows.
    """

    _label = "guard database"
    _error = GuardStoreError
    _too_new = GuardSchemaTooNew

    def __init__(self, path: Path) -> None:
        #: Rows of the blocks table the login path could not use, warned of once.
        self._skipped: set[tuple[str, str, str, str]] = set()
        self._open_upgraded(
            path, MIGRATIONS, datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        )
        try:
            with self._errors():
                sqlite_space.use_incremental_vacuum(self._conn(), self._label, path)
        except BaseException:
            self.close()
            raise

    def _configure(self, conn: sqlite3.Connection) -> None:
        sqlite_space.configure(conn)
        conn.execute("PRAGMA synchronous = NORMAL")

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._errors(), self._transaction(self._conn()) as conn:
            yield conn

    # --- reads --------------------------------------------------------------------

    def snapshot(
        self, address: str, subnet: str, account: str, now: float, penalty_window: float
    ) -> Snapshot:
        with self._errors():
            c = self._conn()
            rows = c.execute(
                "SELECT kind, key, since, until, reason FROM blocks WHERE until > ? AND ("
                "(kind = ? AND key = ?) OR (kind = ? AND key = ?) OR "
                "(kind IN (?, ?, ?) AND key = ?))",
                (now, ADDRESS, address, SUBNET, subnet, *ACCOUNT_KINDS, account),
            ).fetchall()
            blocks = tuple(b for b in (self._enforced(r, now) for r in rows) if b is not None)
            known_since: float | None = None
            if account:
                row = c.execute(
                    "SELECT last FROM known WHERE account = ? AND address = ?", (account, address)
                ).fetchone()
                known_since = None if row is None else float(row[0])
            row = c.execute(
                "SELECT failures, last FROM penalty WHERE address = ?", (address,)
            ).fetchone()
            penalty = int(row[0]) if row is not None and row[1] > now - penalty_window else 0
            last_new: float | None = None
            if account and any(b.kind == THROTTLE for b in blocks):
                row = c.execute(
                    "SELECT MAX(time) FROM failures WHERE account = ? AND known = 0",
                    (account,),
                ).fetchone()
                last_new = None if row is None or row[0] is None else float(row[0])
        return Snapshot(blocks, known_since, penalty, last_new)

    def _enforced(self, row: Sequence[object], now: float) -> Block | None:
        """A block of the login path's snapshot, or None for a row it cannot use.

        A row edited by hand with sqlite3 passed as stored, and the check of every
        login it matched failed (a 454 and a traceback): a time that is text
        (``'tomorrow'``, which SQLite orders after every number, so it is "in
        force") or a blob is no time, and one past the year 9999 (1e300, inf, for
        "for ever") made the refusal's ``until`` stamp raise OverflowError. The
        last is held until 9999-12-31, as ``guard list`` shows it. A row whose
        ``until`` is no time cannot be enforced (when would it end?) and is
        skipped; one whose ``since`` alone is none is enforced until its
        ``until``, as begun now. Either is one warning per row in the server log
        (``guard list`` names the row as an error too); the other blocks of the
        snapshot, and so the login's decision, stand."""
        kind, key, since, until, reason = row
        start, end = _time(since), _time(until)
        if start is not None and end is not None:
            return Block(str(kind), str(key), start, end, _text(reason))
        marker = (str(kind), str(key), repr(since), repr(until))
        if marker not in self._skipped:
            if len(self._skipped) >= 1000:
                self._skipped.clear()
            self._skipped.add(marker)
            log.warning(
                "guard database %s: the block of %s %r holds a time that is no number "
                "(since %r, until %r): %s; lift it with 'smtpgate guard unblock' or correct "
                "the row with sqlite3 (since and until are seconds since 1970)",
                self.path, kind, key, since, until,
                "not enforced" if end is None else "enforced as begun now")
        if end is None:
            return None
        return Block(str(kind), str(key), min(now, end), end, _text(reason))

    def active_blocks(self, now: float) -> list[Block]:
        with self._errors():
            rows = self._conn().execute(
                "SELECT kind, key, since, until, reason FROM blocks WHERE until > ? "
                "ORDER BY since, kind, key",
                (now,),
            ).fetchall()
        return [self._listed(r) for r in rows]

    def _listed(self, row: Sequence[object]) -> Block:
        """A block as the listings show it (``guard list``, ``status``, ``report``, the
        web admin). A row edited by hand may hold a time that is no number ('tomorrow'
        is TEXT, which SQLite orders after every number, so it is "in force") or one
        past the year 9999 (1e300 for "for ever"): each was a traceback from every
        listing. The first is `DamagedBlock`; the second is shown as 9999-12-31."""
        kind, key, since, until, reason = row
        try:
            start, end = float(since), float(until)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise DamagedBlock(
                f"guard database {self.path}: the block of {kind} {key!r} holds a time "
                f"that is no number (since {since!r}, until {until!r})"
            ) from None
        return Block(str(kind), str(key), min(start, LAST_TIME), min(end, LAST_TIME), str(reason))

    # --- writes -------------------------------------------------------------------

    def record_failure(self, f: RecordedFailure, w: Windows) -> FailureCounts:
        now = f.time
        with self._tx() as c:
            c.execute(
                "INSERT INTO failures (time, address, subnet, account, known, counts_account) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (now, f.address, f.subnet, f.account or None, int(f.known), int(f.counts_account)),
            )
            c.execute(
                "INSERT INTO penalty (address, failures, last) VALUES (?, 1, ?) "
                "ON CONFLICT (address) DO UPDATE SET "
                "failures = CASE WHEN last > ? THEN failures + 1 ELSE 1 END, last = excluded.last",
                (f.address, now, now - w.penalty),
            )
            new = known = sources = 0
            if f.account and f.counts_account:
                new, known, sources = c.execute(
                    "SELECT COALESCE(SUM(known = 0), 0), COALESCE(SUM(known = 1), 0), "
                    "COUNT(DISTINCT CASE WHEN known = 0 THEN address END) FROM failures "
                    "WHERE account = ? AND counts_account = 1 AND time > ?",
                    (f.account, now - w.lockout),
                ).fetchone()
            since = now - w.spray
            total, accounts = c.execute(
                "SELECT COUNT(*), COUNT(DISTINCT account) FROM failures "
                "WHERE address = ? AND time > ?",
                (f.address, since),
            ).fetchone()
            (subnet_accounts,) = c.execute(
                "SELECT COUNT(DISTINCT account) FROM failures WHERE subnet = ? AND time > ?",
                (f.subnet, since),
            ).fetchone()
        return FailureCounts(
            account_new=int(new),
            account_known=int(known),
            account_new_addresses=int(sources),
            address_failures=int(total),
            address_accounts=int(accounts),
            subnet_accounts=int(subnet_accounts),
        )

    def start_blocks(self, blocks: Sequence[Block]) -> list[Block]:
        started: list[Block] = []
        if not blocks:
            return started
        with self._tx() as c:
            for b in blocks:
                row = c.execute(
                    "SELECT until FROM blocks WHERE kind = ? AND key = ?", (b.kind, b.key)
                ).fetchone()
                if row is not None and row[0] > b.since:
                    continue  # one is in force: it runs its course
                c.execute(
                    "INSERT OR REPLACE INTO blocks (kind, key, since, until, reason) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (b.kind, b.key, b.since, b.until, b.reason),
                )
                started.append(b)
        return started

    def record_success(self, address: str, account: str, now: float, *, reset_penalty: bool) -> None:
        with self._tx() as c:
            c.execute(
                "INSERT INTO known (account, address, first, last) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (account, address) DO UPDATE SET last = MAX(last, excluded.last)",
                (account, address, now, now),
            )
            if reset_penalty:
                c.execute("DELETE FROM penalty WHERE address = ?", (address,))

    def unlock_account(self, account: str) -> int:
        with self._tx() as c:
            n = c.execute(
                "DELETE FROM blocks WHERE key = ? AND kind IN (?, ?, ?)", (account, *ACCOUNT_KINDS)
            ).rowcount
            c.execute("DELETE FROM failures WHERE account = ?", (account,))
            return int(n)

    def forget_addresses(self, account: str) -> int:
        with self._tx() as c:
            return int(c.execute("DELETE FROM known WHERE account = ?", (account,)).rowcount)

    def unblock(self, key: str) -> int:
        with self._tx() as c:
            n = c.execute(
                "DELETE FROM blocks WHERE key = ? AND kind IN (?, ?)", (key, ADDRESS, SUBNET)
            ).rowcount
            c.execute("DELETE FROM failures WHERE address = ? OR subnet = ?", (key, key))
            c.execute("DELETE FROM penalty WHERE address = ?", (key,))
            return int(n)

    def plus_fallback(self, address: str, now: float) -> float | None:
        with self._errors():
            row = self._conn().execute(
                "SELECT until FROM plus_fallback WHERE address = ? AND until > ?", (address, now)
            ).fetchone()
        return None if row is None else float(row[0])

    def set_plus_fallback(self, address: str, until: float | None) -> None:
        with self._tx() as c:
            if until is None:
                c.execute("DELETE FROM plus_fallback WHERE address = ?", (address,))
            else:
                c.execute(
                    "INSERT INTO plus_fallback (address, until) VALUES (?, ?) "
                    "ON CONFLICT (address) DO UPDATE SET until = excluded.until",
                    (address, until),
                )

    def prune(self, now: float, keep_seconds: float, known_seconds: float) -> None:
        """Drop failures, penalties and expired blocks older than ``keep_seconds``,
        known addresses unused for ``known_seconds``, and lapsed -PLUS fallbacks;
        then give the file's free pages back if many are (``sqlite_space``), those
        of the sending counters' old buckets too (which prune themselves)."""
        cutoff = now - keep_seconds
        with self._tx() as c:
            c.execute("DELETE FROM plus_fallback WHERE until < ?", (now,))
            c.execute("DELETE FROM known WHERE last < ?", (now - known_seconds,))
            c.execute("DELETE FROM failures WHERE time < ?", (cutoff,))
            c.execute("DELETE FROM penalty WHERE last < ?", (cutoff,))
            c.execute("DELETE FROM blocks WHERE until < ?", (cutoff,))
        with self._errors():
            sqlite_space.reclaim(self._conn())

