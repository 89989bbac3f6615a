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
- Every administrative change (the methods the CLI calls) appends a row to
  ``admin_log`` *in the same transaction*: who (the OS user), when, which
  command, what changed. Never a secret: a new password is recorded as
  "changed", an app password by its name and scope.
- App passwords are random (about 100 bits from ``secrets``), so they are
  stored as a salted HMAC-SHA256, not Argon2id: no dictionary attack applies to
  them, and checking one costs microseconds. They work with PLAIN and LOGIN
  (SCRAM keys are per password, and a SCRAM exchange names one set of keys).
"""

from __future__ import annotations

import getpass
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import sqlite3
import sys
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

from smtpgate import mechanism_facts
from smtpgate.auth.credentials import CRAM_MD5, derive, wanted_schemes
from smtpgate.auth.names import canonical_name, lookup_key
from smtpgate.auth.passwords import PasswordHasher, check_new_password
from smtpgate.auth.sqlite_file import NewerSchema, ThreadLocalSqlite
from smtpgate.config import AccountsConfig

log = logging.getLogger("smtpgate.auth.store")

_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


class StoreError(Exception):
    """Base of account store errors."""


class StoreUnavailable(StoreError):
    """The backend failed (I/O error, corrupt file, busy too long, closed): a
    temporary fault, never a reason to call the client's credentials wrong."""


class SchemaTooNew(StoreUnavailable, NewerSchema):
    """The database was written by a newer smtpgate; it is left untouched."""


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
    # --- conditional access (None: no restriction) ---
    allowed_networks: tuple[str, ...] | None = None
    allowed_listeners: frozenset[str] | None = None
    #: Only OAUTHBEARER/XOAUTH2 may log in (a high-risk account).
    require_oauth: bool = False
    # --- password age ---
    #: Days a password lasts; None: [passwords].max_age_days; 0: no limit.
    password_max_age_days: float | None = None
    #: Set by `user rotate`: the password stops working at this time.
    password_expires: datetime | None = None
    # --- sending rates (None: the [limits] default; 0: unlimited) ---
    max_messages_per_hour: int | None = None
    max_recipients_per_hour: int | None = None

    def allows(self, mechanism: str) -> bool:
        return self.allowed_mechanisms is None or mechanism.upper() in self.allowed_mechanisms

    def password_expiry(self, default_max_age_days: float) -> datetime | None:
        """When the password stops working, or None if never."""
        out = self.password_expires
        days = default_max_age_days if self.password_max_age_days is None else self.password_max_age_days
        if days > 0 and self.password_changed is not None:
            aged = self.password_changed + timedelta(days=days)
            out = aged if out is None else min(out, aged)
        return out


#: App passwords look like ``abcd-efgh-jkmn-pqrs-tuvw``: 20 symbols from a
#: 31-letter alphabet without look-alikes (0/o, 1/l/i), so 99 bits, typed
#: easily on a phone. Only a password of this shape is tried as an app password.
APP_PASSWORD_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"
APP_PASSWORD_RE = re.compile(r"[a-z2-9]{4}(?:-[a-z2-9]{4}){4}")
APP_PASSWORD_MECHANISMS = tuple(mechanism_facts.in_strength_order(mechanism_facts.CLEARTEXT))


def generate_app_password() -> str:
    groups = ("".join(secrets.choice(APP_PASSWORD_ALPHABET) for _ in range(4)) for _ in range(5))
    return "-".join(groups)


@dataclass(frozen=True, slots=True)
class AppPassword:
    """One app password's record (never its secret)."""

    id: int
    account: str
    name: str
    created: datetime
    expires: datetime | None
    #: CIDRs it may be used from; None: anywhere the account may log in from.
    networks: tuple[str, ...] | None
    #: Mechanisms it may be used with; None: PLAIN and LOGIN.
    mechanisms: frozenset[str] | None
    max_messages_per_hour: int | None
    max_recipients_per_hour: int | None
    last_used: datetime | None
    last_address: str | None

    def expired(self, now: datetime) -> bool:
        return self.expires is not None and self.expires <= now


@dataclass(frozen=True, slots=True)
class AuditActor:
    """Who makes administrative changes: the OS user and the command."""

    os_user: str
    command: str


def default_actor() -> AuditActor:
    """The OS user running this process, and its command line without options."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid={os.getuid()}"
    words = [os.path.basename(sys.argv[0]) if sys.argv else "smtpgate"]
    for arg in sys.argv[1:4]:
        if arg.startswith("-"):
            break
        words.append(arg)
    return AuditActor(user, " ".join(words))


@dataclass(frozen=True, slots=True)
class AdminLogEntry:
    id: int
    time: datetime
    os_user: str
    command: str
    action: str
    target: str
    details: dict[str, object] = field(default_factory=dict)


class AliasTaken(StoreError):
    """The alias is an account's name or another account's alias."""


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
    (
        # Issue 4: conditional access, password age, sending rates.
        "ALTER TABLE accounts ADD COLUMN allowed_networks TEXT",
        "ALTER TABLE accounts ADD COLUMN allowed_listeners TEXT",
        "ALTER TABLE accounts ADD COLUMN require_oauth INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE accounts ADD COLUMN password_max_age_days REAL",
        "ALTER TABLE accounts ADD COLUMN password_expires TEXT",
        "ALTER TABLE accounts ADD COLUMN max_messages_per_hour INTEGER",
        "ALTER TABLE accounts ADD COLUMN max_recipients_per_hour INTEGER",
        """CREATE TABLE aliases (
            address TEXT PRIMARY KEY NOT NULL,
            account TEXT NOT NULL REFERENCES accounts(name)
                ON DELETE CASCADE ON UPDATE CASCADE,
            created TEXT NOT NULL
        )""",
        "CREATE INDEX aliases_account ON aliases (account)",
        """CREATE TABLE granted_domains (
            account TEXT NOT NULL REFERENCES accounts(name)
                ON DELETE CASCADE ON UPDATE CASCADE,
            domain TEXT NOT NULL,
            created TEXT NOT NULL,
            PRIMARY KEY (account, domain)
        )""",
        """CREATE TABLE app_passwords (
            id INTEGER PRIMARY KEY,
            account TEXT NOT NULL REFERENCES accounts(name)
                ON DELETE CASCADE ON UPDATE CASCADE,
            name TEXT NOT NULL,
            salt TEXT NOT NULL,
            digest TEXT NOT NULL,
            created TEXT NOT NULL,
            expires TEXT,
            networks TEXT,
            mechanisms TEXT,
            max_messages_per_hour INTEGER,
            max_recipients_per_hour INTEGER,
            last_used TEXT,
            last_address TEXT,
            UNIQUE (account, name)
        )""",
        """CREATE TABLE admin_log (
            id INTEGER PRIMARY KEY,
            time TEXT NOT NULL,
            os_user TEXT NOT NULL,
            command TEXT NOT NULL,
            action TEXT NOT NULL,
            target TEXT NOT NULL,
            details TEXT NOT NULL
        )""",
        "CREATE INDEX admin_log_time ON admin_log (time)",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)

_ACCOUNT_COLUMNS = """a.name, a.created, a.updated, a.generation, a.locked, a.lock_reason,
    a.locked_at, a.password_changed, a.last_login, a.last_mechanism, a.allowed_mechanisms,
    a.cram_md5_enabled, a.allowed_networks, a.allowed_listeners, a.require_oauth,
    a.password_max_age_days, a.password_expires, a.max_messages_per_hour,
    a.max_recipients_per_hour,
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
        allowed_networks=_json_tuple(r["allowed_networks"]),
        allowed_listeners=None
        if r["allowed_listeners"] is None
        else frozenset(json.loads(r["allowed_listeners"])),
        require_oauth=bool(r["require_oauth"]),
        password_max_age_days=r["password_max_age_days"],
        password_expires=_parse_time(r["password_expires"]),
        max_messages_per_hour=r["max_messages_per_hour"],
        max_recipients_per_hour=r["max_recipients_per_hour"],
    )


def _json_tuple(text: str | None) -> tuple[str, ...] | None:
    return None if text is None else tuple(json.loads(text))


def _row_to_app_password(r: sqlite3.Row) -> AppPassword:
    created = _parse_time(r["created"])
    assert created is not None
    mechs = r["mechanisms"]
    return AppPassword(
        id=r["id"],
        account=r["account"],
        name=r["name"],
        created=created,
        expires=_parse_time(r["expires"]),
        networks=_json_tuple(r["networks"]),
        mechanisms=None if mechs is None else frozenset(json.loads(mechs)),
        max_messages_per_hour=r["max_messages_per_hour"],
        max_recipients_per_hour=r["max_recipients_per_hour"],
        last_used=_parse_time(r["last_used"]),
        last_address=r["last_address"],
    )


def _app_digest(salt: str, password: str) -> str:
    return hmac.new(
        bytes.fromhex(salt), password.encode("utf-8", "surrogatepass"), hashlib.sha256
    ).hexdigest()


def _mechanisms_json(mechanisms: Collection[str] | None) -> str | None:
    if mechanisms is None:
        return None
    upper = sorted({m.upper() for m in mechanisms})
    for m in upper:
        if mechanism_facts.facts(m) is None:
            raise ValueError(f"unknown mechanism {m!r}")
    return json.dumps(upper)


class SqliteAccountStore(ThreadLocalSqlite):
    """``AccountStore`` on one SQLite file, shareable by several processes.

    Opening creates the file (mode 0600: it holds password-derived secrets)
    and brings its schema up to date, after copying an older file aside (see
    ``sqlite_file``, "Schema upgrades").

    Raises:
        StoreUnavailable: the file cannot be opened or is not a database.
        SchemaTooNew: the file has a schema newer than this version knows.
    """

    def __init__(
        self,
        path: Path,
        accounts_cfg: AccountsConfig,
        *,
        clock: Callable[[], datetime] = _utcnow,
        actor: AuditActor | None = None,
    ) -> None:
        self._actor = actor
        self._cfg = accounts_cfg
        self._hasher = PasswordHasher(accounts_cfg)
        self._clock = clock
        self._open_file(path)
        try:
            with self._errors():
                self._upgrade_schema(MIGRATIONS, format_time(self._clock()))
        except BaseException:
            self.close()
            raise

    # --- plumbing ---------------------------------------------------------------

    _label = "account database"
    _error = StoreUnavailable
    _too_new = SchemaTooNew

    def _configure(self, conn: sqlite3.Connection) -> None:
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA synchronous = FULL")
        self._local.durable = True

    @contextmanager
    def _tx(self, *, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """One write transaction. ``durable`` (synchronous=FULL) for admin changes that
        must survive a power cut once reported; NORMAL for bookkeeping."""
        with self._errors():
            conn = self._conn()
            if self._local.durable != durable:
                conn.execute(f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}")
                self._local.durable = durable
            with self._transaction(conn) as c:
                yield c

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
            self._audit(c, "account created", name, {
                "password": "set" if creds else "none",
                "cram_md5": cram_md5_enabled,
                "mechanisms": None if allowed is None else json.loads(allowed),
            })
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
            self._audit(c, "account removed", lookup_key(name), {})

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
                "password_changed = ?, password_expires = NULL WHERE name = ?",
                (now, now, account.name),
            )
            self._audit(c, "password changed", account.name, {"password": "changed"})

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
            self._audit(c, "account locked", lookup_key(name), {"reason": reason})

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
            self._audit(c, "account unlocked", lookup_key(name), {})
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
            self._audit(c, "cram-md5 setting changed", key, {"enabled": enabled})

    def set_allowed_mechanisms(self, name: str, mechanisms: Collection[str] | None) -> None:
        allowed = _mechanisms_json(mechanisms)
        with self._tx() as c:
            cur = c.execute(
                "UPDATE accounts SET allowed_mechanisms = ?, updated = ? WHERE name = ?",
                (allowed, self._now(), lookup_key(name)),
            )
            if cur.rowcount == 0:
                raise NoSuchAccount(f"no account {name}")
            self._audit(c, "mechanisms changed", lookup_key(name), {
                "mechanisms": None if allowed is None else json.loads(allowed)
            })

    # --- admin audit trail ----------------------------------------------------------

    def _audit(
        self, c: sqlite3.Connection, action: str, target: str, details: Mapping[str, object]
    ) -> None:
        """Append one admin-log row inside the caller's transaction. ``details``
        must never hold a secret."""
        if self._actor is None:
            self._actor = default_actor()
        c.execute(
            "INSERT INTO admin_log (time, os_user, command, action, target, details) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (
                self._now(),
                self._actor.os_user,
                self._actor.command,
                action,
                target,
                json.dumps(dict(details), sort_keys=True, default=str),
            ),
        )

    def audit(self, action: str, target: str, details: Mapping[str, object]) -> None:
        """Record an administrative change made outside this store (e.g. a guard
        lock lifted by ``user unlock``)."""
        with self._tx() as c:
            self._audit(c, action, target, details)

    def admin_log(
        self, *, since: datetime | None = None, target: str | None = None, limit: int = 1000
    ) -> list[AdminLogEntry]:
        """Admin-log entries, oldest first (the newest ``limit`` of them)."""
        where, args = [], []
        if since is not None:
            where.append("time >= ?")
            args.append(format_time(since))
        if target is not None:
            where.append("target = ?")
            args.append(target)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        with self._errors():
            rows = self._conn().execute(
                f"SELECT * FROM (SELECT id, time, os_user, command, action, target, details "
                f"FROM admin_log {clause} ORDER BY id DESC LIMIT ?) ORDER BY id",
                (*args, limit),
            ).fetchall()
        out = []
        for r in rows:
            t = _parse_time(r["time"])
            assert t is not None
            out.append(AdminLogEntry(r["id"], t, r["os_user"], r["command"], r["action"],
                                     r["target"], json.loads(r["details"])))
        return out

    # --- conditional access, password age, rates -------------------------------------

    def _update_account(
        self, c: sqlite3.Connection, name: str, assignments: Mapping[str, object]
    ) -> str:
        key = lookup_key(name)
        cols = ", ".join(f"{col} = ?" for col in assignments)
        cur = c.execute(
            f"UPDATE accounts SET {cols}, updated = ?, generation = generation + 1 WHERE name = ?",
            (*assignments.values(), self._now(), key),
        )
        if cur.rowcount == 0:
            raise NoSuchAccount(f"no account {name}")
        return key

    def set_access(
        self,
        name: str,
        *,
        networks: Collection[str] | None | bool = False,
        listeners: Collection[str] | None | bool = False,
        require_oauth: bool | None = None,
    ) -> None:
        """Change conditional access; an argument left at its default (False for
        the collections, None for the flag) is not changed; None for a collection
        lifts that restriction.

        Raises: NoSuchAccount, ValueError (a network that is not CIDR).
        """
        import ipaddress

        changes: dict[str, object] = {}
        details: dict[str, object] = {}
        if networks is not False:
            nets = None
            if networks is not None and networks is not True:
                nets = [str(ipaddress.ip_network(n, strict=False)) for n in networks]
            changes["allowed_networks"] = None if nets is None else json.dumps(nets)
            details["networks"] = nets
        if listeners is not False:
            names = None
            if listeners is not None and listeners is not True:
                names = sorted(set(listeners))
            changes["allowed_listeners"] = None if names is None else json.dumps(names)
            details["listeners"] = names
        if require_oauth is not None:
            changes["require_oauth"] = int(require_oauth)
            details["require_oauth"] = require_oauth
        if not changes:
            return
        with self._tx() as c:
            key = self._update_account(c, name, changes)
            self._audit(c, "access changed", key, details)

    def set_password_max_age(self, name: str, days: float | None) -> None:
        """Days a password of this account lasts; None: the global default; 0: forever."""
        with self._tx() as c:
            key = self._update_account(c, name, {"password_max_age_days": days})
            self._audit(c, "password max age changed", key, {"days": days})

    def schedule_password_expiry(self, name: str, when: datetime | None) -> None:
        """Make the current password stop working at ``when`` (None: cancel)."""
        with self._tx() as c:
            key = self._update_account(
                c, name, {"password_expires": None if when is None else format_time(when)}
            )
            self._audit(c, "password expiry scheduled", key,
                        {"expires": None if when is None else format_time(when)})

    def set_rate_limits(
        self, name: str, *, messages_per_hour: int | None | bool = False,
        recipients_per_hour: int | None | bool = False,
    ) -> None:
        """Per-account rates; None: the [limits] default; 0: unlimited; False: unchanged."""
        changes: dict[str, object] = {}
        if messages_per_hour is not False:
            changes["max_messages_per_hour"] = messages_per_hour
        if recipients_per_hour is not False:
            changes["max_recipients_per_hour"] = recipients_per_hour
        if not changes:
            return
        with self._tx() as c:
            key = self._update_account(c, name, changes)
            self._audit(c, "rate limits changed", key, changes)

    # --- aliases and granted domains ---------------------------------------------------

    def add_alias(self, name: str, alias: str) -> None:
        """Let account ``name`` send as ``alias``.

        Raises: NoSuchAccount, InvalidAccountName, AliasTaken.
        """
        alias = canonical_name(alias)
        key = lookup_key(name)
        with self._tx() as c:
            if c.execute("SELECT 1 FROM accounts WHERE name = ?", (key,)).fetchone() is None:
                raise NoSuchAccount(f"no account {name}")
            if c.execute("SELECT 1 FROM accounts WHERE name = ?", (alias,)).fetchone():
                raise AliasTaken(f"{alias} is an account of its own")
            row = c.execute("SELECT account FROM aliases WHERE address = ?", (alias,)).fetchone()
            if row is not None:
                if row[0] == key:
                    return
                raise AliasTaken(f"{alias} is already an alias of {row[0]}")
            c.execute(
                "INSERT INTO aliases (address, account, created) VALUES (?, ?, ?)",
                (alias, key, self._now()),
            )
            self._audit(c, "alias added", key, {"alias": alias})

    def remove_alias(self, name: str, alias: str) -> bool:
        """False if ``alias`` was not an alias of the account. Raises: NoSuchAccount."""
        key = lookup_key(name)
        alias = lookup_key(alias)
        with self._tx() as c:
            if c.execute("SELECT 1 FROM accounts WHERE name = ?", (key,)).fetchone() is None:
                raise NoSuchAccount(f"no account {name}")
            n = c.execute(
                "DELETE FROM aliases WHERE address = ? AND account = ?", (alias, key)
            ).rowcount
            if n:
                self._audit(c, "alias removed", key, {"alias": alias})
            return bool(n)

    def aliases(self, name: str) -> list[str]:
        with self._errors():
            rows = self._conn().execute(
                "SELECT address FROM aliases WHERE account = ? ORDER BY address", (lookup_key(name),)
            ).fetchall()
        return [r[0] for r in rows]

    def grant_domain(self, name: str, domain: str) -> None:
        """Let account ``name`` send as any address in ``domain``. Raises: NoSuchAccount."""
        domain = canonical_name(f"x@{domain.strip().lower().lstrip('@')}").split("@", 1)[1]
        key = lookup_key(name)
        with self._tx() as c:
            if c.execute("SELECT 1 FROM accounts WHERE name = ?", (key,)).fetchone() is None:
                raise NoSuchAccount(f"no account {name}")
            n = c.execute(
                "INSERT OR IGNORE INTO granted_domains (account, domain, created) VALUES (?, ?, ?)",
                (key, domain, self._now()),
            ).rowcount
            if n:
                self._audit(c, "domain granted", key, {"domain": domain})

    def revoke_domain(self, name: str, domain: str) -> bool:
        key = lookup_key(name)
        domain = domain.strip().lower().lstrip("@")
        with self._tx() as c:
            if c.execute("SELECT 1 FROM accounts WHERE name = ?", (key,)).fetchone() is None:
                raise NoSuchAccount(f"no account {name}")
            n = c.execute(
                "DELETE FROM granted_domains WHERE account = ? AND domain = ?", (key, domain)
            ).rowcount
            if n:
                self._audit(c, "domain revoked", key, {"domain": domain})
            return bool(n)

    def granted_domains(self, name: str) -> list[str]:
        with self._errors():
            rows = self._conn().execute(
                "SELECT domain FROM granted_domains WHERE account = ? ORDER BY domain",
                (lookup_key(name),),
            ).fetchall()
        return [r[0] for r in rows]

    # --- app passwords -------------------------------------------------------------------

    def add_app_password(
        self,
        name: str,
        app_name: str,
        *,
        expires: datetime | None = None,
        networks: Collection[str] | None = None,
        mechanisms: Collection[str] | None = None,
        max_messages_per_hour: int | None = None,
        max_recipients_per_hour: int | None = None,
        _secret: str | None = None,
    ) -> tuple[AppPassword, str]:
        """Create an app password; return its record and the secret (shown once).

        Raises: NoSuchAccount, ValueError (bad name, network or mechanism),
        AccountExists (the account has an app password of that name).
        """
        import ipaddress

        app_name = app_name.strip()
        if not app_name or len(app_name) > 64 or any(not ch.isprintable() for ch in app_name):
            raise ValueError("an app password name is 1-64 printable characters")
        nets = None if networks is None else [str(ipaddress.ip_network(n, strict=False)) for n in networks]
        mechs = None
        if mechanisms is not None:
            mechs = sorted({m.upper() for m in mechanisms})
            for m in mechs:
                if m not in APP_PASSWORD_MECHANISMS:
                    raise ValueError(f"app passwords work with {' and '.join(APP_PASSWORD_MECHANISMS)} only, not {m}")
        secret = _secret or generate_app_password()
        salt = secrets.token_hex(16)
        key = lookup_key(name)
        now = self._now()
        with self._tx() as c:
            if c.execute("SELECT 1 FROM accounts WHERE name = ?", (key,)).fetchone() is None:
                raise NoSuchAccount(f"no account {name}")
            try:
                cur = c.execute(
                    "INSERT INTO app_passwords (account, name, salt, digest, created, expires, "
                    "networks, mechanisms, max_messages_per_hour, max_recipients_per_hour) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        key, app_name, salt, _app_digest(salt, secret), now,
                        None if expires is None else format_time(expires),
                        None if nets is None else json.dumps(nets),
                        None if mechs is None else json.dumps(mechs),
                        max_messages_per_hour, max_recipients_per_hour,
                    ),
                )
            except sqlite3.IntegrityError:
                raise AccountExists(f"{key} already has an app password named {app_name!r}") from None
            row_id = cur.lastrowid
            self._audit(c, "app password added", key, {
                "name": app_name,
                "expires": None if expires is None else format_time(expires),
                "networks": nets,
                "mechanisms": mechs,
                "max_messages_per_hour": max_messages_per_hour,
                "max_recipients_per_hour": max_recipients_per_hour,
            })
        record = self._app_password_by_id(int(row_id or 0))
        assert record is not None
        return record, secret

    def _app_password_by_id(self, row_id: int) -> AppPassword | None:
        with self._errors():
            row = self._conn().execute(
                "SELECT * FROM app_passwords WHERE id = ?", (row_id,)
            ).fetchone()
        return None if row is None else _row_to_app_password(row)

    def app_passwords(self, name: str | None = None) -> list[AppPassword]:
        """The app passwords of one account, or of all accounts."""
        with self._errors():
            if name is None:
                rows = self._conn().execute(
                    "SELECT * FROM app_passwords ORDER BY account, name"
                ).fetchall()
            else:
                rows = self._conn().execute(
                    "SELECT * FROM app_passwords WHERE account = ? ORDER BY name",
                    (lookup_key(name),),
                ).fetchall()
        return [_row_to_app_password(r) for r in rows]

    def match_app_password(self, name: str, password: str) -> AppPassword | None:
        """The app password of account ``name`` that ``password`` is, if any (expired
        or not: the caller decides). Constant-time per comparison."""
        with self._errors():
            rows = self._conn().execute(
                "SELECT * FROM app_passwords WHERE account = ?", (lookup_key(name),)
            ).fetchall()
        found = None
        for r in rows:  # no early exit: every row costs the same
            if hmac.compare_digest(_app_digest(r["salt"], password), r["digest"]):
                found = r
        return None if found is None else _row_to_app_password(found)

    def revoke_app_password(self, name: str, app_name: str) -> bool:
        """Delete the app password; False if the account has none of that name."""
        key = lookup_key(name)
        with self._tx() as c:
            if c.execute("SELECT 1 FROM accounts WHERE name = ?", (key,)).fetchone() is None:
                raise NoSuchAccount(f"no account {name}")
            n = c.execute(
                "DELETE FROM app_passwords WHERE account = ? AND name = ?", (key, app_name)
            ).rowcount
            if n:
                self._audit(c, "app password revoked", key, {"name": app_name})
            return bool(n)

    def expire_app_password(self, name: str, app_name: str, when: datetime, *, rename_to: str | None = None) -> bool:
        """Make the app password stop working at ``when`` (sooner only), optionally
        renaming it (so that a new one can take its name)."""
        key = lookup_key(name)
        stamp = format_time(when)
        with self._tx() as c:
            row = c.execute(
                "SELECT expires FROM app_passwords WHERE account = ? AND name = ?", (key, app_name)
            ).fetchone()
            if row is None:
                return False
            expires = stamp if row[0] is None or row[0] > stamp else row[0]
            c.execute(
                "UPDATE app_passwords SET expires = ?, name = ? WHERE account = ? AND name = ?",
                (expires, rename_to or app_name, key, app_name),
            )
            self._audit(c, "app password expiry scheduled", key,
                        {"name": app_name, "renamed": rename_to, "expires": expires})
            return True

    def record_app_password_use(self, row_id: int, when: datetime, address: str) -> None:
        """Bookkeeping (not audited): last use of an app password."""
        stamp = format_time(when)
        with self._tx(durable=False) as c:
            c.execute(
                "UPDATE app_passwords SET last_used = ?, last_address = ? "
                "WHERE id = ? AND (last_used IS NULL OR last_used <= ?)",
                (stamp, address, row_id, stamp),
            )

