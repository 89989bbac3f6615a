"""Guard state: failure records, blocks, known addresses, penalties, sending counters.

Theory of operation
-------------------
``GuardStore`` is the small synchronous interface the guard and the rate
limiter need; ``SqliteGuardStore`` implements it on one SQLite file, separate
from the account database. A shared store (Redis, PostgreSQL) for a cluster can
implement the same methods later.

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
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from smtpgate.auth.sqlite_file import NewerSchema, ThreadLocalSqlite

log = logging.getLogger("smtpgate.guard")


#: Block kinds. An address or subnet block refuses every AUTH from there; an
#: account block refuses every address; ``account-new`` refuses addresses the
#: account never logged in from; ``throttle`` spaces out new-address attempts.
ADDRESS = "address"
SUBNET = "subnet"
ACCOUNT = "account"
ACCOUNT_NEW = "account-new"
THROTTLE = "throttle"
BLOCK_KINDS = (ADDRESS, SUBNET, ACCOUNT, ACCOUNT_NEW, THROTTLE)


class GuardStoreError(Exception):
    """The guard database failed (I/O, corrupt, busy too long, closed)."""


class GuardSchemaTooNew(GuardStoreError, NewerSchema):
    """The guard database was written by a newer smtpgate; it is left untouched."""


@dataclass(frozen=True, slots=True)
class Block:
    kind: str
    key: str
    since: float
    until: float
    reason: str


@dataclass(frozen=True, slots=True)
class RecordedFailure:
    """One verified failed login, as recorded."""

    time: float
    address: str
    subnet: str
    #: The account name given (canonical spelling), or "" if none was.
    account: str
    #: The account had logged in from ``address`` before.
    known: bool
    #: Counts toward the account's lockout (a wrong secret, not a policy refusal).
    counts_account: bool


@dataclass(frozen=True, slots=True)
class Thresholds:
    """What ``record_failure`` compares the counts with (from ``[guard]``)."""

    lockout_threshold: int
    known_lockout_threshold: int
    lockout_window: float
    lockout_duration: float
    distributed_addresses: int
    throttle_duration: float
    spray_accounts: int
    subnet_spray_accounts: int
    address_failure_limit: int
    spray_window: float
    block_duration: float
    penalty_window: float


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What ``check`` needs to know about one (address, subnet, account)."""

    blocks: tuple[Block, ...]
    #: Last successful login of the account from the address, or None.
    known_since: float | None
    #: Recent failures from the address (0 once penalty_window has passed).
    penalty_failures: int
    #: Last failure against the account from a new address (for throttling).
    last_new_failure: float | None


class GuardStore(Protocol):
    """Every method may raise ``GuardStoreError``."""

    def snapshot(self, address: str, subnet: str, account: str, now: float, penalty_window: float) -> Snapshot: ...

    def record_failure(self, failure: RecordedFailure, t: Thresholds) -> list[Block]:
        """Store the failure, apply the thresholds; return the blocks it started."""
        ...

    def record_success(self, address: str, account: str, now: float, *, reset_penalty: bool) -> None: ...

    def active_blocks(self, now: float) -> list[Block]: ...

    def unlock_account(self, account: str) -> int:
        """Lift the account's lockouts and throttle and forget its failures; how many blocks went."""
        ...

    def unblock(self, key: str) -> int:
        """Lift address/subnet blocks with this key; how many went."""
        ...

    def usage(self, keys: Sequence[str], since_bucket: int) -> dict[str, tuple[int, int]]:
        """(messages, recipients) per key over buckets >= ``since_bucket``."""
        ...

    def add_usage(self, keys: Sequence[str], bucket: int, messages: int, recipients: int) -> None: ...

    def plus_fallback(self, address: str, now: float) -> float | None:
        """Until when -PLUS is held back from ``address`` (None: not held back)."""
        ...

    def set_plus_fallback(self, address: str, until: float | None) -> None:
        """Hold -PLUS back from ``address`` until ``until``; None lifts it."""
        ...

    def prune(self, now: float, keep_seconds: float, known_seconds: float) -> None:
        """Forget what no window needs any more (see ``SqliteGuardStore.prune``)."""
        ...

    def close(self) -> None: ...


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
    """``GuardStore`` on one SQLite file (created 0600), one connection per thread.

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
        self._open_file(path)
        try:
            with self._errors():
                self._upgrade_schema(
                    MIGRATIONS, datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
                )
        except BaseException:
            self.close()
            raise

    def _configure(self, conn: sqlite3.Connection) -> None:
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
                "(kind = 'address' AND key = ?) OR (kind = 'subnet' AND key = ?) OR "
                "(kind IN ('account', 'account-new', 'throttle') AND key = ?))",
                (now, address, subnet, account),
            ).fetchall()
            blocks = tuple(Block(*r) for r in rows)
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

    def active_blocks(self, now: float) -> list[Block]:
        with self._errors():
            rows = self._conn().execute(
                "SELECT kind, key, since, until, reason FROM blocks WHERE until > ? "
                "ORDER BY since, kind, key",
                (now,),
            ).fetchall()
        return [Block(*r) for r in rows]

    def usage(self, keys: Sequence[str], since_bucket: int) -> dict[str, tuple[int, int]]:
        out = {k: (0, 0) for k in keys}
        if not keys:
            return out
        marks = ",".join("?" * len(keys))
        with self._errors():
            rows = self._conn().execute(
                f"SELECT key, SUM(messages), SUM(recipients) FROM usage "
                f"WHERE key IN ({marks}) AND bucket >= ? GROUP BY key",
                (*keys, since_bucket),
            ).fetchall()
        for key, messages, recipients in rows:
            out[key] = (int(messages or 0), int(recipients or 0))
        return out

    # --- writes -------------------------------------------------------------------

    @staticmethod
    def _block(
        c: sqlite3.Connection, kind: str, key: str, now: float, duration: float, reason: str
    ) -> Block | None:
        """Start a block unless one is already running (then None)."""
        row = c.execute(
            "SELECT until FROM blocks WHERE kind = ? AND key = ?", (kind, key)
        ).fetchone()
        if row is not None and row[0] > now:
            return None
        block = Block(kind, key, now, now + duration, reason)
        c.execute(
            "INSERT OR REPLACE INTO blocks (kind, key, since, until, reason) VALUES (?, ?, ?, ?, ?)",
            (kind, key, block.since, block.until, reason),
        )
        return block

    def record_failure(self, f: RecordedFailure, t: Thresholds) -> list[Block]:
        now = f.time
        started: list[Block] = []
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
                (f.address, now, now - t.penalty_window),
            )

            def block(kind: str, key: str, duration: float, reason: str) -> None:
                b = self._block(c, kind, key, now, duration, reason)
                if b is not None:
                    started.append(b)

            if f.account and f.counts_account:
                since = now - t.lockout_window
                new, known, sources = c.execute(
                    "SELECT COALESCE(SUM(known = 0), 0), COALESCE(SUM(known = 1), 0), "
                    "COUNT(DISTINCT CASE WHEN known = 0 THEN address END) FROM failures "
                    "WHERE account = ? AND counts_account = 1 AND time > ?",
                    (f.account, since),
                ).fetchone()
                if not f.known and new >= t.lockout_threshold:
                    block(ACCOUNT_NEW, f.account, t.lockout_duration,
                          f"{new} failed logins from new addresses")
                if f.known and known >= t.known_lockout_threshold:
                    block(ACCOUNT, f.account, t.lockout_duration,
                          f"{known} failed logins from known addresses")
                if not f.known and sources >= t.distributed_addresses:
                    block(THROTTLE, f.account, t.throttle_duration,
                          f"{sources} new addresses failed against the account")
            since = now - t.spray_window
            total, accounts = c.execute(
                "SELECT COUNT(*), COUNT(DISTINCT account) FROM failures "
                "WHERE address = ? AND time > ?",
                (f.address, since),
            ).fetchone()
            if accounts >= t.spray_accounts:
                block(ADDRESS, f.address, t.block_duration,
                      f"password spraying: failed against {accounts} accounts")
            elif total >= t.address_failure_limit:
                block(ADDRESS, f.address, t.block_duration, f"{total} failed logins")
            (subnet_accounts,) = c.execute(
                "SELECT COUNT(DISTINCT account) FROM failures WHERE subnet = ? AND time > ?",
                (f.subnet, since),
            ).fetchone()
            if subnet_accounts >= t.subnet_spray_accounts and f.subnet != f.address:
                block(SUBNET, f.subnet, t.block_duration,
                      f"password spraying: subnet failed against {subnet_accounts} accounts")
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
                "DELETE FROM blocks WHERE key = ? AND kind IN ('account', 'account-new', 'throttle')",
                (account,),
            ).rowcount
            c.execute("DELETE FROM failures WHERE account = ?", (account,))
            return int(n)

    def unblock(self, key: str) -> int:
        with self._tx() as c:
            n = c.execute(
                "DELETE FROM blocks WHERE key = ? AND kind IN ('address', 'subnet')", (key,)
            ).rowcount
            c.execute("DELETE FROM failures WHERE address = ? OR subnet = ?", (key, key))
            c.execute("DELETE FROM penalty WHERE address = ?", (key,))
            return int(n)

    def add_usage(self, keys: Sequence[str], bucket: int, messages: int, recipients: int) -> None:
        with self._tx() as c:
            c.executemany(
                "INSERT INTO usage (key, bucket, messages, recipients) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (key, bucket) DO UPDATE SET messages = messages + excluded.messages, "
                "recipients = recipients + excluded.recipients",
                [(k, bucket, messages, recipients) for k in keys],
            )

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
        known addresses unused for ``known_seconds``, usage buckets older than
        a day, and lapsed -PLUS fallbacks."""
        cutoff = now - keep_seconds
        with self._tx() as c:
            c.execute("DELETE FROM plus_fallback WHERE until < ?", (now,))
            c.execute("DELETE FROM known WHERE last < ?", (now - known_seconds,))
            c.execute("DELETE FROM failures WHERE time < ?", (cutoff,))
            c.execute("DELETE FROM penalty WHERE last < ?", (cutoff,))
            c.execute("DELETE FROM blocks WHERE until < ?", (cutoff,))
            c.execute("DELETE FROM usage WHERE bucket < ?", (int((now - 86400) // 60),))

