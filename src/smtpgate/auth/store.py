"""Account store: the ``AccountStore`` interface and its SQLite implementation.

Theory of operation
-------------------
``AccountStore`` is deliberately small and synchronous: the auth service calls
it from worker threads, and a PostgreSQL or LDAP store can implement the same
methods later. Names passed in are canonicalised (``names.canonical_name``);
a name that is not a valid address simply matches no account.

``SqliteAccountStore`` choices, with reasons:

- One connection per thread (``threading.local``): sqlite3 connections must not
  be used by two threads at once, and per-thread connections need no lock.
- WAL journal: readers never wait for a writer, so logins keep working while
  ``smtpgate user ...`` writes, and several server processes share one file.
- ``busy_timeout`` of 5 s: a writer that finds another writer waits for it
  instead of failing at once; past 5 s the fault is real and is reported.
- ``synchronous=FULL`` for administrative writes (add, password, lock,
  remove): when ``user lock`` says done, the lock survives a power cut. In WAL
  mode that costs one fsync per commit, which is nothing at admin rates.
- ``synchronous=NORMAL`` for the high-rate bookkeeping writes (last login,
  re-derived secrets): a power cut may lose the last few, which is harmless
  (they are advisory or derivable again), and the database stays consistent.
  A later FULL commit also makes the earlier NORMAL ones durable.
- ``accounts.generation`` goes up on every password or lock change, so a
  process can tell cheaply whether what it remembers about an account is stale.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from smtpgate.auth.credentials import CRAM_MD5, derive, wanted_schemes
from smtpgate.auth.names import canonical_name, lookup_key
from smtpgate.auth.passwords import PasswordHasher, check_new_password
from smtpgate.config import KNOWN_MECHANISMS, AccountsConfig

log = logging.getLogger("smtpgate.auth.store")

#: Seconds a connection waits for another writer before giving up (see above).
BUSY_TIMEOUT = 5.0
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


class StoreError(Exception):
    """Base of account store errors."""


class StoreUnavailable(StoreError):
    """The backend failed (I/O error, corrupt file, busy too long, closed): a
    temporary fault, never a reason to call the client's credentials wrong."""


class AccountExists(StoreError):
    """``add_account`` for a name that is taken."""


class NoSuchAccount(StoreError):
    """A change to an account that does not exist."""


@dataclass(frozen=True, slots=True)
class Account:
    """One account's state; secrets are fetched separately with ``get_credential``."""

    name: str
    created: datetime
    updated: datetime
    #: Goes up on every password or lock change; caches compare it.
    generation: int
    locked: bool
    lock_reason: str | None
    locked_at: datetime | None
    password_changed: datetime | None
    last_login: datetime | None
    last_mechanism: str | None
    #: Mechanisms this account may use; None means all that a listener offers.
    allowed_mechanisms: frozenset[str] | None
    cram_md5_enabled: bool
    #: The credential schemes stored for the account ('argon2id', 'scram-sha-1', ...).
    schemes: frozenset[str]

    def allows(self, mechanism: str) -> bool:
        return self.allowed_mechanisms is None or mechanism.upper() in self.allowed_mechanisms


class AccountStore(Protocol):
    """What the auth service and the CLI need from an account store.

    Every method may raise ``StoreUnavailable`` for a backend fault.
    """

    def add_account(
        self,
        name: str,
        password: str | None,
        *,
        cram_md5_enabled: bool = False,
        allowed_mechanisms: Collection[str] | None = None,
    ) -> Account:
        """Create an account; with ``password`` None it has no credentials yet.

        Raises: InvalidAccountName, PasswordPolicyError, AccountExists.
        """
        ...

    def remove_account(self, name: str) -> None:
        """Delete an account and its credentials. Raises: NoSuchAccount."""
        ...

    def set_password(self, name: str, password: str) -> None:
        """Replace all credentials with ones derived from ``password``.

        Raises: PasswordPolicyError, NoSuchAccount.
        """
        ...

    def get_account(self, name: str) -> Account | None: ...

    def list_accounts(self) -> list[Account]: ...

    def lock(self, name: str, reason: str) -> None:
        """Refuse every login of the account. Raises: NoSuchAccount."""
        ...

    def unlock(self, name: str) -> bool:
        """Allow logins again; False if it was not locked. Raises: NoSuchAccount."""
        ...

    def get_credential(self, name: str, scheme: str) -> str | None:
        """The stored data of one scheme, or None if the account has none."""
        ...

    def put_credentials(self, name: str, creds: Mapping[str, str], *, generation: int) -> bool:
        """Add or replace schemes derived from the *current* password, only if the
        account's generation is still ``generation``; False if it moved on (the
        password changed meanwhile, so these secrets would be stale)."""
        ...

    def record_login(self, name: str, mechanism: str, when: datetime) -> None:
        """Remember the last successful login; never moves the time backwards."""
        ...

    def set_cram_md5_enabled(self, name: str, enabled: bool) -> None:
        """Opt in or out of CRAM-MD5. Disabling deletes the secret at once;
        enabling stores it at the next password change or PLAIN/LOGIN login."""
        ...

    def set_allowed_mechanisms(self, name: str, mechanisms: Collection[str] | None) -> None: ...

    def close(self) -> None: ...


# Each migration is a list of statements run in one transaction; its version is
# its index + 1. Never edit a released migration: append a new one.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE accounts (
            name TEXT PRIMARY KEY NOT NULL,
            created TEXT NOT NULL,
            updated TEXT NOT NULL,
            generation INTEGER NOT NULL DEFAULT 0,
            locked INTEGER NOT NULL DEFAULT 0 CHECK (locked IN (0, 1)),
            lock_reason TEXT,
            locked_at TEXT,
            password_changed TEXT,
            last_login TEXT,
            last_mechanism TEXT,
            allowed_mechanisms TEXT,
            cram_md5_enabled INTEGER NOT NULL DEFAULT 0 CHECK (cram_md5_enabled IN (0, 1))
        )""",
        """CREATE TABLE credentials (
            account TEXT NOT NULL REFERENCES accounts(name)
                ON DELETE CASCADE ON UPDATE CASCADE,
            scheme TEXT NOT NULL,
            data TEXT NOT NULL,
            created TEXT NOT NULL,
            PRIMARY KEY (account, scheme)
        )""",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)

_ACCOUNT_COLUMNS = """a.name, a.created, a.updated, a.generation, a.locked, a.lock_reason,
    a.locked_at, a.password_changed, a.last_login, a.last_mechanism, a.allowed_mechanisms,
    a.cram_md5_enabled,
    (SELECT group_concat(c.scheme, ' ') FROM credentials c WHERE c.account = a.name) AS schemes"""


def _utcnow() -> datetime:
    return datetime.now(UTC)


def format_time(t: datetime) -> str:
    """Fixed-width UTC text, so that SQL string order is time order."""
    return t.astimezone(UTC).strftime(_TIME_FORMAT)


def _parse_time(s: str | None) -> datetime | None:
    return None if s is None else datetime.strptime(s, _TIME_FORMAT).replace(tzinfo=UTC)


def _row_to_account(r: sqlite3.Row) -> Account:
    allowed = r["allowed_mechanisms"]
    created = _parse_time(r["created"])
    updated = _parse_time(r["updated"])
    assert created is not None and updated is not None
    return Account(
        name=r["name"],
        created=created,
        updated=updated,
        generation=r["generation"],
        locked=bool(r["locked"]),
        lock_reason=r["lock_reason"],
        locked_at=_parse_time(r["locked_at"]),
        password_changed=_parse_time(r["password_changed"]),
        last_login=_parse_time(r["last_login"]),
        last_mechanism=r["last_mechanism"],
        allowed_mechanisms=None if allowed is None else frozenset(json.loads(allowed)),
        cram_md5_enabled=bool(r["cram_md5_enabled"]),
        schemes=frozenset((r["schemes"] or "").split()),
    )


def _mechanisms_json(mechanisms: Collection[str] | None) -> str | None:
    if mechanisms is None:
        return None
    upper = sorted({m.upper() for m in mechanisms})
    for m in upper:
        if m not in KNOWN_MECHANISMS:
            raise ValueError(f"unknown mechanism {m!r}")
    return json.dumps(upper)


class SqliteAccountStore:
    """``AccountStore`` on one SQLite file, shareable by several processes.

    Opening creates the file (mode 0600: it holds password-derived secrets)
    and brings its schema up to date.

    Raises:
        StoreUnavailable: the file cannot be opened, is not a database, or has
            a schema newer than this version of smtpgate knows.
    """

    def __init__(
        self,
        path: Path,
        accounts_cfg: AccountsConfig,
        *,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self._path = path
        self._cfg = accounts_cfg
        self._hasher = PasswordHasher(accounts_cfg)
        self._clock = clock
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._closed = False
        with self._errors():
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                pass
            else:
                os.close(fd)
        try:
            with self._errors():
                self._migrate()
        except BaseException:
            self.close()
            raise

    @property
    def path(self) -> Path:
        return self._path

    # --- plumbing ---------------------------------------------------------------

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """Map sqlite3 and OS errors to StoreUnavailable at the boundary."""
        try:
            yield
        except (sqlite3.Error, OSError) as e:
            raise StoreUnavailable(f"account database {self._path}: {e}") from e

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        with self._lock:
            if self._closed:
                raise StoreUnavailable(f"account database {self._path}: store is closed")
            # check_same_thread=False only so that close() may close every
            # thread's connection; each is still used by its own thread alone.
            conn = sqlite3.connect(
                self._path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
            )
            self._all.append(conn)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA synchronous = FULL")
        self._local.conn = conn
        self._local.durable = True
        return conn

    @contextmanager
    def _tx(self, *, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """One write transaction; BEGIN IMMEDIATE takes the write lock up front so
        a read-then-write cannot fail half-way with SQLITE_BUSY."""
        with self._errors():
            conn = self._conn()
            if self._local.durable != durable:
                conn.execute(f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}")
                self._local.durable = durable
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _migrate(self) -> None:
        conn = self._conn()
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            log.warning(
                "%s: journal_mode is %s, not WAL; concurrency will suffer", self._path, mode
            )
        with self._tx() as c:
            c.execute(
                "CREATE TABLE IF NOT EXISTS schema_version ("
                "version INTEGER PRIMARY KEY NOT NULL, applied TEXT NOT NULL)"
            )
            current = c.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()[
                0
            ]
            if current > SCHEMA_VERSION:
                raise StoreUnavailable(
                    f"account database {self._path}: schema version {current} is newer than "
                    f"this smtpgate supports ({SCHEMA_VERSION})"
                )
            for version in range(current + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[version - 1]:
                    c.execute(statement)
                c.execute(
                    "INSERT INTO schema_version (version, applied) VALUES (?, ?)",
                    (version, format_time(self._clock())),
                )

    def _now(self) -> str:
        return format_time(self._clock())

    # --- reads -------------------------------------------------------------------

    def get_account(self, name: str) -> Account | None:
        with self._errors():
            row = (
                self._conn()
                .execute(
                    f"SELECT {_ACCOUNT_COLUMNS} FROM accounts a WHERE a.name = ?",
                    (lookup_key(name),),
                )
                .fetchone()
            )
        return None if row is None else _row_to_account(row)

    def list_accounts(self) -> list[Account]:
        with self._errors():
            rows = self._conn().execute(
                f"SELECT {_ACCOUNT_COLUMNS} FROM accounts a ORDER BY a.name"
            )
            return [_row_to_account(r) for r in rows]

    def get_credential(self, name: str, scheme: str) -> str | None:
        with self._errors():
            row = (
                self._conn()
                .execute(
                    "SELECT data FROM credentials WHERE account = ? AND scheme = ?",
                    (lookup_key(name), scheme),
                )
                .fetchone()
            )
        return None if row is None else str(row[0])

    # --- writes ------------------------------------------------------------------

    def add_account(
        self,
        name: str,
        password: str | None,
        *,
        cram_md5_enabled: bool = False,
        allowed_mechanisms: Collection[str] | None = None,
    ) -> Account:
        name = canonical_name(name)
        allowed = _mechanisms_json(allowed_mechanisms)
        creds: dict[str, str] = {}
        if password is not None:
            check_new_password(password)
            # Hash before the transaction: Argon2 must not hold the write lock.
            creds = derive(password, wanted_schemes(cram_md5_enabled), self._cfg, self._hasher)
        now = self._now()
        with self._tx() as c:
            try:
                c.execute(
                    "INSERT INTO accounts (name, created, updated, password_changed, "
                    "allowed_mechanisms, cram_md5_enabled) VALUES (?, ?, ?, ?, ?, ?)",
                    (name, now, now, now if creds else None, allowed, int(cram_md5_enabled)),
                )
            except sqlite3.IntegrityError:
                raise AccountExists(f"account {name} already exists") from None
            self._insert_credentials(c, name, creds, now)
        account = self.get_account(name)
        assert account is not None
        return account

    @staticmethod
    def _insert_credentials(
        c: sqlite3.Connection, name: str, creds: Mapping[str, str], now: str
    ) -> None:
        c.executemany(
            "INSERT OR REPLACE INTO credentials (account, scheme, data, created) VALUES (?, ?, ?, ?)",
            [(name, scheme, data, now) for scheme, data in creds.items()],
        )

    def remove_account(self, name: str) -> None:
        with self._tx() as c:
            if c.execute("DELETE FROM accounts WHERE name = ?", (lookup_key(name),)).rowcount == 0:
                raise NoSuchAccount(f"no account {name}")

    def set_password(self, name: str, password: str) -> None:
        check_new_password(password)
        account = self.get_account(name)
        if account is None:
            raise NoSuchAccount(f"no account {name}")
        creds = derive(password, wanted_schemes(account.cram_md5_enabled), self._cfg, self._hasher)
        now = self._now()
        with self._tx() as c:
            row = c.execute(
                "SELECT cram_md5_enabled FROM accounts WHERE name = ?", (account.name,)
            ).fetchone()
            if row is None:
                raise NoSuchAccount(f"no account {name}")
            if not row[0]:
                creds.pop(CRAM_MD5, None)  # opted out while we were hashing
            # Every old secret derives from the old password: drop them all.
            c.execute("DELETE FROM credentials WHERE account = ?", (account.name,))
            self._insert_credentials(c, account.name, creds, now)
            c.execute(
                "UPDATE accounts SET generation = generation + 1, updated = ?, "
                "password_changed = ? WHERE name = ?",
                (now, now, account.name),
            )

    def lock(self, name: str, reason: str) -> None:
        now = self._now()
        with self._tx() as c:
            cur = c.execute(
                "UPDATE accounts SET locked = 1, lock_reason = ?, "
                "locked_at = CASE WHEN locked THEN locked_at ELSE ? END, "
                "generation = generation + 1, updated = ? WHERE name = ?",
                (reason, now, now, lookup_key(name)),
            )
            if cur.rowcount == 0:
                raise NoSuchAccount(f"no account {name}")

    def unlock(self, name: str) -> bool:
        now = self._now()
        with self._tx() as c:
            row = c.execute(
                "SELECT locked FROM accounts WHERE name = ?", (lookup_key(name),)
            ).fetchone()
            if row is None:
                raise NoSuchAccount(f"no account {name}")
            if not row[0]:
                return False
            c.execute(
                "UPDATE accounts SET locked = 0, lock_reason = NULL, locked_at = NULL, "
                "generation = generation + 1, updated = ? WHERE name = ?",
                (now, lookup_key(name)),
            )
            return True

    def put_credentials(self, name: str, creds: Mapping[str, str], *, generation: int) -> bool:
        key = lookup_key(name)
        with self._tx(durable=False) as c:
            row = c.execute(
                "SELECT generation, cram_md5_enabled FROM accounts WHERE name = ?", (key,)
            ).fetchone()
            if row is None or row[0] != generation:
                return False
            wanted = dict(creds)
            if not row[1]:
                wanted.pop(CRAM_MD5, None)  # the opt-in is checked here, at the source
            self._insert_credentials(c, key, wanted, self._now())
            return True

    def record_login(self, name: str, mechanism: str, when: datetime) -> None:
        stamp = format_time(when)
        with self._tx(durable=False) as c:
            # The guard keeps the newest login when writers from several
            # processes (or a late fire-and-forget write) arrive out of order.
            c.execute(
                "UPDATE accounts SET last_login = ?, last_mechanism = ? "
                "WHERE name = ? AND (last_login IS NULL OR last_login <= ?)",
                (stamp, mechanism.upper(), lookup_key(name), stamp),
            )

    def set_cram_md5_enabled(self, name: str, enabled: bool) -> None:
        key = lookup_key(name)
        with self._tx() as c:
            cur = c.execute(
                "UPDATE accounts SET cram_md5_enabled = ?, updated = ? WHERE name = ?",
                (int(enabled), self._now(), key),
            )
            if cur.rowcount == 0:
                raise NoSuchAccount(f"no account {name}")
            if not enabled:
                c.execute(
                    "DELETE FROM credentials WHERE account = ? AND scheme = ?", (key, CRAM_MD5)
                )

    def set_allowed_mechanisms(self, name: str, mechanisms: Collection[str] | None) -> None:
        allowed = _mechanisms_json(mechanisms)
        with self._tx() as c:
            cur = c.execute(
                "UPDATE accounts SET allowed_mechanisms = ?, updated = ? WHERE name = ?",
                (allowed, self._now(), lookup_key(name)),
            )
            if cur.rowcount == 0:
                raise NoSuchAccount(f"no account {name}")

    def close(self) -> None:
        """Close every thread's connection. Call when no thread uses the store."""
        with self._lock:
            self._closed = True
            conns, self._all = self._all, []
        for conn in conns:
            conn.close()
        self._local = threading.local()
