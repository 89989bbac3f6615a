"""Account store: the SQLite backend, both its read side and its admin side.

Theory of operation
-------------------
``SqliteAccountStore`` implements ``AccountDirectory`` (``auth/directory.py``:
what logins read) and ``AccountAdminStore`` (``auth/admin_store.py``: what the
admin service writes through, one transaction per operation, each change with
its admin-log row). It keeps what it is given: derived secrets, never a
password; ``auth/accounts.py`` opens it when ``[accounts].backend`` is
"sqlite". Names passed in are canonicalised (``names.lookup_key``); a name that
is not a valid address simply matches no account.

Choices, with reasons:

- One connection per thread (``threading.local``): sqlite3 connections must not
  be used by two threads at once, and per-thread connections need no lock.
- WAL journal: readers never wait for a writer, so logins keep working while
  ``smtpgate user ...`` writes, and several server processes share one file.
- ``busy_timeout`` of 5 s: a writer that finds another writer waits for it
  instead of failing at once; past 5 s the fault is real and is reported.
- ``synchronous=FULL`` for administrative writes (a writer's transaction):
  when ``user lock`` says done, the lock survives a power cut. In WAL mode that
  costs one fsync per commit, which is nothing at admin rates.
- ``synchronous=NORMAL`` for the high-rate bookkeeping writes (last login,
  re-derived secrets): a power cut may lose the last few, which is harmless
  (they are advisory or derivable again), and the database stays consistent.
  A later FULL commit also makes the earlier NORMAL ones durable.
- ``accounts.generation`` goes up on every password, lock or policy change, so
  a process can tell cheaply whether what it remembers about an account is stale.
- App passwords are random (``credentials.generate_app_password``), so they are
  stored as a salted HMAC-SHA256, not Argon2id: no dictionary attack applies to
  them, and checking one costs microseconds.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import sqlite3
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from smtpgate.auth.admin_store import (
    ALL_NAMES_QUERY,
    AccountAdminStore,
    AccountExists,
    AccountStore,
    AccountWriter,
    AdminLogEntry,
    AliasTaken,
    AuditActor,
    CertificateTaken,
    LookAlikes,
    NoSuchAccount,
    WebAdmin,
    case_twin_params,
    case_twin_query,
    look_alike_refusal,
    refuse_taken_name,
    update_web_admin_row,
)
from smtpgate.auth.credentials import ARGON2ID, CRAM_MD5
from smtpgate.auth.directory import (
    Account,
    AppPassword,
    CertificateRecord,
    StoreError,
    StoreUnavailable,
)
from smtpgate.auth.legacy_hashes import LEGACY
from smtpgate.auth.names import lookup_key, name_key, unified_spelling
from smtpgate.auth.passwords import PasswordHasher, StoredHashError
from smtpgate.auth.sqlite_file import NewerSchema, ThreadLocalSqlite
from smtpgate.config import AccountsConfig

# The interfaces' names are re-exported: callers of the store catch its errors here.
__all__ = [
    "SCHEMA_VERSION",
    "Account",
    "AccountAdminStore",
    "AccountExists",
    "AccountStore",
    "AccountWriter",
    "AdminLogEntry",
    "AliasTaken",
    "AppPassword",
    "AuditActor",
    "NoSuchAccount",
    "SchemaTooNew",
    "SqliteAccountStore",
    "StoreError",
    "StoreUnavailable",
]

log = logging.getLogger("smtpgate.auth.store")

#: The account name or alias that is an address but for letter case (admin_store).
_CASE_TWIN = case_twin_query("?")

_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


class SchemaTooNew(StoreUnavailable, NewerSchema):
    """The database was written by a newer smtpgate; it is left untouched."""


#: The SQL function (``unified_spelling``) each connection has, for migrations 5 and 7.
_UNIFIED = "smtpgate_unified_spelling"

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
    (
        # Issue 16: TLS client certificates for SASL EXTERNAL, by SHA-256 fingerprint;
        # a removed one keeps its row with ``revoked`` set.
        """CREATE TABLE client_certificates (
            fingerprint TEXT PRIMARY KEY NOT NULL,
            account TEXT NOT NULL REFERENCES accounts(name)
                ON DELETE CASCADE ON UPDATE CASCADE,
            subject TEXT NOT NULL,
            not_after TEXT,
            added TEXT NOT NULL,
            revoked TEXT
        )""",
        "CREATE INDEX client_certificates_account ON client_certificates (account)",
    ),
    (
        # Issue 14: the web admin's administrators (not mail accounts).
        """CREATE TABLE web_admins (
            name TEXT PRIMARY KEY NOT NULL,
            password_hash TEXT NOT NULL,
            totp_secret TEXT NOT NULL,
            created TEXT NOT NULL
        )""",
    ),
    (
        # One spelling per internationalised domain (auth/names.py): a name, alias
        # or granted domain stored with A-labels (user@xn--bcher-kva.example) is
        # renamed to its U-labels, the rows that name it following (ON UPDATE
        # CASCADE). Where both spellings were stored as two rows, OR IGNORE keeps
        # both; docs/accounts.md says how to find and merge them.
        f"UPDATE OR IGNORE accounts SET name = {_UNIFIED}(name) WHERE name <> {_UNIFIED}(name)",
        f"UPDATE OR IGNORE aliases SET address = {_UNIFIED}(address) WHERE address <> {_UNIFIED}(address)",
        f"UPDATE OR IGNORE granted_domains SET domain = {_UNIFIED}(domain) WHERE domain <> {_UNIFIED}(domain)",
    ),
    (
        # The TOTP time step each admin last logged in with: a code is good once,
        # across restarts and processes (web/site.py).
        "ALTER TABLE web_admins ADD COLUMN totp_last_step INTEGER NOT NULL DEFAULT -1",
    ),
    (
        # Login names without letter case (auth/names.py): a name or alias stored with
        # capitals (Alice@example.org) is renamed to lower case, the rows naming it
        # following. Accounts and aliases differing only in case were refused before,
        # so none collide; OR IGNORE keeps both if a Unicode capital made a pair.
        f"UPDATE OR IGNORE accounts SET name = {_UNIFIED}(name) WHERE name <> {_UNIFIED}(name)",
        f"UPDATE OR IGNORE aliases SET address = {_UNIFIED}(address) WHERE address <> {_UNIFIED}(address)",
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
    if s is None:
        return None
    # What format_time writes, read by the C parser: strptime costs 6 µs a value
    # and an account row holds up to five, read at every login (bench/README.md).
    if len(s) == 27 and s[10] == "T" and s[-1] == "Z":
        try:
            return datetime.fromisoformat(s)  # "Z": UTC
        except ValueError:
            pass
    return datetime.strptime(s, _TIME_FORMAT).replace(tzinfo=UTC)


class DamagedRecord(StoreUnavailable):
    """A row whose values this version cannot read: a time not in `format_time`'s
    form, a JSON list that is no JSON, a NULL where a value must be. Typically a hand
    edit with sqlite3 (``datetime('now')`` writes ``2026-12-04 05:39:00``). It was a
    ValueError traceback from every command that lists accounts, and an "internal
    error" with a traceback in the server log at the account's login. The store
    answered (``backend_failed`` False): its data for this one row is unusable."""

    backend_failed = False
    hint = ("correct the row with sqlite3 (times are written as 2026-12-04T05:39:00.000000Z, "
            "lists as JSON) or remove it, with the server stopped; or restore a backup "
            "(docs/accounts.md, \"Upgrades and backups\")")


def _damaged(what: str, r: sqlite3.Row, key: str, e: Exception) -> DamagedRecord:
    try:
        name = r[key]
    except (IndexError, KeyError):
        name = "?"
    return DamagedRecord(f"{what} {name!r} in the account database holds a value this "
                         f"version cannot read: {e}")


def _row_to_account(r: sqlite3.Row) -> Account:
    try:
        return _account_of(r)
    except (ValueError, TypeError, AssertionError) as e:  # JSONDecodeError is a ValueError
        raise _damaged("account", r, "name", e) from e


def _row_to_certificate(r: sqlite3.Row) -> CertificateRecord:
    try:
        return _certificate_of(r)
    except (ValueError, TypeError, AssertionError) as e:
        raise _damaged("the certificate", r, "fingerprint", e) from e


def _row_to_app_password(r: sqlite3.Row) -> AppPassword:
    try:
        return _app_password_of(r)
    except (ValueError, TypeError, AssertionError) as e:
        raise _damaged("the app password", r, "name", e) from e


def _account_of(r: sqlite3.Row) -> Account:
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


def _certificate_of(r: sqlite3.Row) -> CertificateRecord:
    added = _parse_time(r["added"])
    assert added is not None
    return CertificateRecord(
        fingerprint=r["fingerprint"],
        account=r["account"],
        subject=r["subject"],
        not_after=_parse_time(r["not_after"]),
        added=added,
        revoked=_parse_time(r["revoked"]),
    )


def _json_tuple(text: str | None) -> tuple[str, ...] | None:
    return None if text is None else tuple(json.loads(text))


def _app_password_of(r: sqlite3.Row) -> AppPassword:
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


def _json_list(items: Collection[str] | None) -> str | None:
    return None if items is None else json.dumps(sorted(set(items)))


def _read_account(c: sqlite3.Connection, name: str) -> Account | None:
    row = c.execute(
        f"SELECT {_ACCOUNT_COLUMNS} FROM accounts a WHERE a.name = ?", (lookup_key(name),)
    ).fetchone()
    return None if row is None else _row_to_account(row)


def _insert_credentials(
    c: sqlite3.Connection, name: str, creds: Mapping[str, str], now: str
) -> None:
    c.executemany(
        "INSERT OR REPLACE INTO credentials (account, scheme, data, created) VALUES (?, ?, ?, ?)",
        [(name, scheme, data, now) for scheme, data in creds.items()],
    )


class _SqliteWriter:
    """``AccountWriter`` on one open SQLite transaction (``SqliteAccountStore.transaction``)."""

    def __init__(self, c: sqlite3.Connection, actor: AuditActor, now: str) -> None:
        self._c = c
        self._actor = actor
        self._now = now
        self._look_alikes: LookAlikes | None = None

    # --- plumbing ---------------------------------------------------------------------

    def _audit(self, action: str, target: str, details: Mapping[str, object]) -> None:
        """One admin-log row in this transaction; ``details`` never hold a secret."""
        self._c.execute(
            "INSERT INTO admin_log (time, os_user, command, action, target, details) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (
                self._now,
                self._actor.os_user,
                self._actor.command,
                action,
                target,
                json.dumps(dict(details), sort_keys=True, default=str),
            ),
        )

    def _case_twin(self, address: str, owner: str = "") -> str | None:
        """Another account's name or alias that is ``address`` but for letter case
        (``case_twin_query``); ``owner``'s own names may differ in case."""
        row = self._c.execute(_CASE_TWIN, case_twin_params(address, owner)).fetchone()
        return None if row is None else str(row[0])

    def _look_alike(self, address: str, owner: str = "") -> str | None:
        """Another account's name or alias that reads as ``address`` (``LookAlikes``)."""
        if self._look_alikes is None:
            self._look_alikes = LookAlikes(
                (str(r[0]), str(r[1])) for r in self._c.execute(ALL_NAMES_QUERY))
        return self._look_alikes.twin(address, owner)

    def _named(self, address: str, owner: str) -> None:
        """``address`` was made a name or alias of ``owner`` in this transaction."""
        if self._look_alikes is not None:
            self._look_alikes.add(address, owner)

    def _existing(self, name: str) -> str:
        """The account's key; NoSuchAccount if there is none."""
        key = lookup_key(name)
        if self._c.execute("SELECT 1 FROM accounts WHERE name = ?", (key,)).fetchone() is None:
            raise NoSuchAccount(f"no account {name}")
        return key

    def _update(
        self, name: str, assignments: Mapping[str, object], action: str,
        details: Mapping[str, object],
    ) -> None:
        key = lookup_key(name)
        cols = ", ".join(f"{col} = ?" for col in assignments)
        cur = self._c.execute(
            f"UPDATE accounts SET {cols}, updated = ?, generation = generation + 1 WHERE name = ?",
            (*assignments.values(), self._now, key),
        )
        if cur.rowcount == 0:
            raise NoSuchAccount(f"no account {name}")
        self._audit(action, key, details)

    # --- reads ------------------------------------------------------------------------

    def get_account(self, name: str) -> Account | None:
        return _read_account(self._c, name)

    def app_password(self, name: str, app_name: str) -> AppPassword | None:
        row = self._c.execute(
            "SELECT * FROM app_passwords WHERE account = ? AND name = ?",
            (lookup_key(name), app_name),
        ).fetchone()
        return None if row is None else _row_to_app_password(row)

    # --- accounts and their secrets ---------------------------------------------------

    def create_account(
        self,
        name: str,
        creds: Mapping[str, str],
        *,
        cram_md5_enabled: bool = False,
        allowed_mechanisms: Collection[str] | None = None,
    ) -> None:
        key = lookup_key(name)
        allowed = _json_list(allowed_mechanisms)
        refuse_taken_name(key, self._c.execute(
            "SELECT account FROM aliases WHERE address = ?", (key,)).fetchone(),
            self._case_twin(key), self._look_alike(key))
        wanted = dict(creds)
        if not cram_md5_enabled:
            wanted.pop(CRAM_MD5, None)
        try:
            self._c.execute(
                "INSERT INTO accounts (name, created, updated, password_changed, "
                "allowed_mechanisms, cram_md5_enabled) VALUES (?, ?, ?, ?, ?, ?)",
                (key, self._now, self._now, self._now if wanted else None, allowed,
                 int(cram_md5_enabled)),
            )
        except sqlite3.IntegrityError:
            raise AccountExists(f"account {key} already exists") from None
        self._named(key, key)
        _insert_credentials(self._c, key, wanted, self._now)
        self._audit("account created", key, {
            "password": "set" if wanted else "none",
            "cram_md5": cram_md5_enabled,
            "mechanisms": None if allowed is None else json.loads(allowed),
        })

    def remove_account(self, name: str) -> None:
        key = self._existing(name)
        self._c.execute("DELETE FROM accounts WHERE name = ?", (key,))
        self._look_alikes = None  # its names are free again
        self._audit("account removed", key, {})

    def replace_credentials(self, name: str, creds: Mapping[str, str]) -> None:
        key = lookup_key(name)
        row = self._c.execute(
            "SELECT cram_md5_enabled FROM accounts WHERE name = ?", (key,)
        ).fetchone()
        if row is None:
            raise NoSuchAccount(f"no account {name}")
        wanted = dict(creds)
        if not row[0]:
            wanted.pop(CRAM_MD5, None)  # opted out while the caller was hashing
        # Every old secret derives from the old password: drop them all.
        self._c.execute("DELETE FROM credentials WHERE account = ?", (key,))
        _insert_credentials(self._c, key, wanted, self._now)
        self._c.execute(
            "UPDATE accounts SET generation = generation + 1, updated = ?, "
            "password_changed = ?, password_expires = NULL WHERE name = ?",
            (self._now, self._now, key),
        )
        self._audit("password changed", key, {"password": "changed"})

    def lock(self, name: str, reason: str) -> None:
        key = lookup_key(name)
        cur = self._c.execute(
            "UPDATE accounts SET locked = 1, lock_reason = ?, "
            "locked_at = CASE WHEN locked THEN locked_at ELSE ? END, "
            "generation = generation + 1, updated = ? WHERE name = ?",
            (reason, self._now, self._now, key),
        )
        if cur.rowcount == 0:
            raise NoSuchAccount(f"no account {name}")
        self._audit("account locked", key, {"reason": reason})

    def unlock(self, name: str) -> bool:
        key = lookup_key(name)
        row = self._c.execute("SELECT locked FROM accounts WHERE name = ?", (key,)).fetchone()
        if row is None:
            raise NoSuchAccount(f"no account {name}")
        if not row[0]:
            return False
        self._c.execute(
            "UPDATE accounts SET locked = 0, lock_reason = NULL, locked_at = NULL, "
            "generation = generation + 1, updated = ? WHERE name = ?",
            (self._now, key),
        )
        self._audit("account unlocked", key, {})
        return True

    # --- mechanism policy -------------------------------------------------------------

    def set_allowed_mechanisms(self, name: str, mechanisms: Collection[str] | None) -> None:
        allowed = _json_list(mechanisms)
        key = lookup_key(name)
        cur = self._c.execute(
            "UPDATE accounts SET allowed_mechanisms = ?, updated = ? WHERE name = ?",
            (allowed, self._now, key),
        )
        if cur.rowcount == 0:
            raise NoSuchAccount(f"no account {name}")
        self._audit("mechanisms changed", key, {
            "mechanisms": None if allowed is None else json.loads(allowed)
        })

    def _set_cram_md5(self, name: str, enabled: bool) -> str:
        key = lookup_key(name)
        cur = self._c.execute(
            "UPDATE accounts SET cram_md5_enabled = ?, updated = ? WHERE name = ?",
            (int(enabled), self._now, key),
        )
        if cur.rowcount == 0:
            raise NoSuchAccount(f"no account {name}")
        self._audit("cram-md5 setting changed", key, {"enabled": enabled})
        return key

    def enable_cram_md5(self, name: str, secret: str | None = None) -> None:
        key = self._set_cram_md5(name, True)
        if secret is not None:
            _insert_credentials(self._c, key, {CRAM_MD5: secret}, self._now)

    def disable_cram_md5(self, name: str) -> None:
        key = self._set_cram_md5(name, False)
        self._c.execute(
            "DELETE FROM credentials WHERE account = ? AND scheme = ?", (key, CRAM_MD5)
        )

    # --- conditional access -----------------------------------------------------------

    def restrict_networks(self, name: str, networks: Sequence[str]) -> None:
        self._update(name, {"allowed_networks": json.dumps(list(networks))},
                     "access changed", {"networks": list(networks)})

    def allow_any_network(self, name: str) -> None:
        self._update(name, {"allowed_networks": None}, "access changed", {"networks": None})

    def restrict_listeners(self, name: str, listeners: Collection[str]) -> None:
        names = sorted(set(listeners))
        self._update(name, {"allowed_listeners": json.dumps(names)},
                     "access changed", {"listeners": names})

    def allow_any_listener(self, name: str) -> None:
        self._update(name, {"allowed_listeners": None}, "access changed", {"listeners": None})

    def set_require_oauth(self, name: str, required: bool) -> None:
        self._update(name, {"require_oauth": int(required)},
                     "access changed", {"require_oauth": required})

    # --- sending rates ----------------------------------------------------------------

    def set_message_rate(self, name: str, per_hour: int | None) -> None:
        self._update(name, {"max_messages_per_hour": per_hour},
                     "rate limits changed", {"max_messages_per_hour": per_hour})

    def set_recipient_rate(self, name: str, per_hour: int | None) -> None:
        self._update(name, {"max_recipients_per_hour": per_hour},
                     "rate limits changed", {"max_recipients_per_hour": per_hour})

    # --- password age -----------------------------------------------------------------

    def set_password_max_age(self, name: str, days: float | None) -> None:
        self._update(name, {"password_max_age_days": days},
                     "password max age changed", {"days": days})

    def schedule_password_expiry(self, name: str, when: datetime | None) -> None:
        stamp = None if when is None else format_time(when)
        self._update(name, {"password_expires": stamp},
                     "password expiry scheduled", {"expires": stamp})

    # --- sender ownership -------------------------------------------------------------

    def add_alias(self, name: str, alias: str) -> bool:
        key = self._existing(name)
        if self._c.execute("SELECT 1 FROM accounts WHERE name = ?", (alias,)).fetchone():
            raise AliasTaken(f"{alias} is an account of its own")
        row = self._c.execute(
            "SELECT account FROM aliases WHERE address = ?", (alias,)
        ).fetchone()
        if row is not None:
            if row[0] == key:
                return False
            raise AliasTaken(f"{alias} is already an alias of {row[0]}")
        if (twin := self._case_twin(alias, key)) is not None:
            raise AliasTaken(f"{alias} differs from {twin} only in letter case")
        if (twin := self._look_alike(alias, key)) is not None:
            raise AliasTaken(look_alike_refusal(alias, twin))
        self._c.execute(
            "INSERT INTO aliases (address, account, created) VALUES (?, ?, ?)",
            (alias, key, self._now),
        )
        self._named(alias, key)
        self._audit("alias added", key, {"alias": alias})
        return True

    def remove_alias(self, name: str, alias: str) -> bool:
        key = self._existing(name)
        n = self._c.execute(
            "DELETE FROM aliases WHERE address = ? AND account = ?", (alias, key)
        ).rowcount
        if n:
            self._look_alikes = None
            self._audit("alias removed", key, {"alias": alias})
        return bool(n)

    def grant_domain(self, name: str, domain: str) -> bool:
        key = self._existing(name)
        n = self._c.execute(
            "INSERT OR IGNORE INTO granted_domains (account, domain, created) VALUES (?, ?, ?)",
            (key, domain, self._now),
        ).rowcount
        if n:
            self._audit("domain granted", key, {"domain": domain})
        return bool(n)

    def revoke_domain(self, name: str, domain: str) -> bool:
        key = self._existing(name)
        n = self._c.execute(
            "DELETE FROM granted_domains WHERE account = ? AND domain = ?", (key, domain)
        ).rowcount
        if n:
            self._audit("domain revoked", key, {"domain": domain})
        return bool(n)

    # --- app passwords ----------------------------------------------------------------

    def add_app_password(
        self,
        name: str,
        app_name: str,
        secret: str,
        *,
        expires: datetime | None = None,
        networks: Sequence[str] | None = None,
        mechanisms: Collection[str] | None = None,
        max_messages_per_hour: int | None = None,
        max_recipients_per_hour: int | None = None,
    ) -> AppPassword:
        key = self._existing(name)
        salt = secrets.token_hex(16)
        nets = None if networks is None else list(networks)
        mechs = None if mechanisms is None else sorted(set(mechanisms))
        stamp = None if expires is None else format_time(expires)
        try:
            cur = self._c.execute(
                "INSERT INTO app_passwords (account, name, salt, digest, created, expires, "
                "networks, mechanisms, max_messages_per_hour, max_recipients_per_hour) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    key, app_name, salt, _app_digest(salt, secret), self._now, stamp,
                    None if nets is None else json.dumps(nets),
                    None if mechs is None else json.dumps(mechs),
                    max_messages_per_hour, max_recipients_per_hour,
                ),
            )
        except sqlite3.IntegrityError:
            raise AccountExists(f"{key} already has an app password named {app_name!r}") from None
        self._audit("app password added", key, {
            "name": app_name,
            "expires": stamp,
            "networks": nets,
            "mechanisms": mechs,
            "max_messages_per_hour": max_messages_per_hour,
            "max_recipients_per_hour": max_recipients_per_hour,
        })
        row = self._c.execute(
            "SELECT * FROM app_passwords WHERE id = ?", (cur.lastrowid,)
        ).fetchone()
        return _row_to_app_password(row)

    def revoke_app_password(self, name: str, app_name: str) -> bool:
        key = self._existing(name)
        n = self._c.execute(
            "DELETE FROM app_passwords WHERE account = ? AND name = ?", (key, app_name)
        ).rowcount
        if n:
            self._audit("app password revoked", key, {"name": app_name})
        return bool(n)

    def expire_app_password(
        self, name: str, app_name: str, when: datetime, *, rename_to: str | None = None
    ) -> bool:
        key = lookup_key(name)
        stamp = format_time(when)
        row = self._c.execute(
            "SELECT expires FROM app_passwords WHERE account = ? AND name = ?", (key, app_name)
        ).fetchone()
        if row is None:
            return False
        expires = stamp if row[0] is None or row[0] > stamp else row[0]
        try:
            self._c.execute(
                "UPDATE app_passwords SET expires = ?, name = ? WHERE account = ? AND name = ?",
                (expires, rename_to or app_name, key, app_name),
            )
        except sqlite3.IntegrityError:
            raise AccountExists(f"{key} already has an app password named {rename_to!r}") from None
        self._audit("app password expiry scheduled", key,
                    {"name": app_name, "renamed": rename_to, "expires": expires})
        return True

    # --- client certificates ------------------------------------------------------------

    def add_certificate(
        self, name: str, fingerprint: str, subject: str, not_after: datetime | None
    ) -> bool:
        key = self._existing(name)
        row = self._c.execute(
            "SELECT account, revoked FROM client_certificates WHERE fingerprint = ?",
            (fingerprint,),
        ).fetchone()
        if row is not None and row["revoked"] is None:
            if row["account"] != key:
                raise CertificateTaken(f"the certificate is registered to {row['account']}")
            return False
        self._c.execute(
            "INSERT OR REPLACE INTO client_certificates "
            "(fingerprint, account, subject, not_after, added, revoked) "
            "VALUES (?, ?, ?, ?, ?, NULL)",
            (fingerprint, key, subject, None if not_after is None else format_time(not_after),
             self._now),
        )
        self._audit("certificate added", key, {"sha256": fingerprint, "subject": subject})
        return True

    def remove_certificate(self, name: str, fingerprint: str) -> bool:
        key = self._existing(name)
        n = self._c.execute(
            "UPDATE client_certificates SET revoked = ? "
            "WHERE fingerprint = ? AND account = ? AND revoked IS NULL",
            (self._now, fingerprint, key),
        ).rowcount
        if n:
            self._audit("certificate removed", key, {"sha256": fingerprint})
        return bool(n)

    # --- web admin accounts --------------------------------------------------------------

    def add_web_admin(self, name: str, password_hash: str, totp_secret: str) -> None:
        try:
            self._c.execute(
                "INSERT INTO web_admins (name, password_hash, totp_secret, created) "
                "VALUES (?, ?, ?, ?)", (name, password_hash, totp_secret, self._now))
        except sqlite3.IntegrityError:
            raise AccountExists(f"admin {name} already exists") from None
        self._audit("web admin created", name, {})

    def remove_web_admin(self, name: str) -> bool:
        n = self._c.execute("DELETE FROM web_admins WHERE name = ?", (name,)).rowcount
        if n:
            self._audit("web admin removed", name, {})
        return bool(n)

    def update_web_admin(self, name: str, *, password_hash: str | None = None,
                         totp_secret: str | None = None) -> bool:
        return update_web_admin_row(self._c.execute, self._audit, "?", name,
                                    password_hash, totp_secret)

    def use_totp_step(self, name: str, step: int) -> bool:
        n = self._c.execute(
            "UPDATE web_admins SET totp_last_step = ? WHERE name = ? AND totp_last_step < ?",
            (step, name, step)).rowcount
        return bool(n)

    # --- changes made elsewhere ---------------------------------------------------------

    def record(self, action: str, target: str, details: Mapping[str, object]) -> None:
        self._audit(action, target, details)


class SqliteAccountStore(ThreadLocalSqlite):
    """``AccountStore`` (both sides) on one SQLite file, shareable by several processes.

    Opening creates the file (mode 0600: it holds password-derived secrets)
    and brings its schema up to date, after copying an older file aside (see
    ``sqlite_file``, "Schema upgrades").

    Raises:
        StoreUnavailable: the file cannot be opened or is not a database.
        SchemaTooNew: the file has a schema newer than this version knows.
    """

    #: It holds Argon2id hashes; the auth service verifies them.
    verifies_passwords = False

    def __init__(
        self,
        path: Path,
        accounts_cfg: AccountsConfig,
        *,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        # Verification only (``verify_password``): a hash carries its own parameters.
        self._hasher = PasswordHasher(accounts_cfg)
        self._clock = clock
        self._open_upgraded(path, MIGRATIONS, format_time(self._clock()))

    # --- plumbing ---------------------------------------------------------------

    _label = "account database"
    _error = StoreUnavailable
    _too_new = SchemaTooNew

    def _configure(self, conn: sqlite3.Connection) -> None:
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA synchronous = FULL")
        conn.create_function(_UNIFIED, 1, unified_spelling, deterministic=True)

    def _after_upgrade(self, c: sqlite3.Connection, old_version: int) -> None:
        """Name each account and alias that migrations 5 and 7 could not rename.

        Before 2026-12-01 two accounts could differ only in letter case
        (``Bob@example.org`` beside ``bob@example.org``) or in the spelling of an
        internationalised domain; the renames keep both (``OR IGNORE``), and no
        login reaches the one left behind any more, since every login and command
        now finds the other. An upgrade that said nothing of it would leave the
        administrator to learn it from a user's 535, so each is one warning here,
        with what to do (docs/accounts.md)."""
        del old_version  # the renames are idempotent: whatever is left is reported
        twins = c.execute(
            f"SELECT a.name, {_UNIFIED}(a.name) FROM accounts a "
            f"WHERE a.name <> {_UNIFIED}(a.name) AND EXISTS "
            f"(SELECT 1 FROM accounts b WHERE b.name = {_UNIFIED}(a.name)) ORDER BY a.name"
        ).fetchall()
        for name, other in twins:
            log.warning(
                "%s %s: account '%s' was not renamed to '%s', which is another account: "
                "no login reaches '%s' any more; move what it holds to '%s', then delete "
                "its row (docs/accounts.md, \"Upgrades and backups\")",
                self._label, self._path, name, other, name, other)
        aliases = c.execute(
            f"SELECT a.address, a.account, b.address, b.account FROM aliases a "
            f"JOIN aliases b ON b.address = {_UNIFIED}(a.address) "
            f"WHERE a.address <> {_UNIFIED}(a.address) ORDER BY a.address"
        ).fetchall()
        for address, account, other, owner in aliases:
            log.warning(
                "%s %s: alias '%s' of '%s' was not renamed to '%s', an alias of '%s': "
                "only '%s' sends as it now; delete the row of '%s' (docs/accounts.md, "
                "\"Upgrades and backups\")",
                self._label, self._path, address, account, other, owner, owner, address)

    @contextmanager
    def _tx(self, *, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """One write transaction. ``durable`` (synchronous=FULL) for admin changes that
        must survive a power cut once reported; NORMAL for bookkeeping."""
        with self._errors():
            conn = self._conn()
            # Per thread: only its waiting connection writes (``without_waiting``'s
            # is the loop's, for reads); unset until its first transaction.
            if getattr(self._local, "durable", None) != durable:
                conn.execute(f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}")
                self._local.durable = durable
            with self._transaction(conn) as c:
                yield c

    def _now(self) -> str:
        return format_time(self._clock())

    # --- admin side: transactions -------------------------------------------------

    @contextmanager
    def transaction(self, actor: AuditActor) -> Iterator[_SqliteWriter]:
        with self._tx() as c:
            yield _SqliteWriter(c, actor, self._now())

    # --- reads (both sides) ---------------------------------------------------------

    def get_account(self, name: str) -> Account | None:
        with self._errors():
            return _read_account(self._conn(), name)

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

    def verify_password(self, name: str, password: str) -> bool:
        encoded = self.get_credential(name, ARGON2ID)
        if encoded is None:
            return False
        try:
            return self._hasher.verify(encoded, password)
        except StoredHashError as e:
            raise StoreUnavailable(f"{self._label} {self._path}: account {name}: {e}") from e

    def login_identity(self, name: str) -> str:
        return name_key(name)  # names are stored canonical: one spelling per account

    def aliases(self, name: str) -> list[str]:
        with self._errors():
            rows = self._conn().execute(
                "SELECT address FROM aliases WHERE account = ? ORDER BY address", (lookup_key(name),)
            ).fetchall()
        return [r[0] for r in rows]

    def alias_owner(self, address: str) -> str | None:
        with self._errors():
            row = self._conn().execute(
                "SELECT account FROM aliases WHERE address = ?", (address,)).fetchone()
        return None if row is None else str(row[0])

    def granted_domains(self, name: str) -> list[str]:
        with self._errors():
            rows = self._conn().execute(
                "SELECT domain FROM granted_domains WHERE account = ? ORDER BY domain",
                (lookup_key(name),),
            ).fetchall()
        return [r[0] for r in rows]

    def app_passwords(self, name: str | None = None) -> list[AppPassword]:
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

    def certificate(self, fingerprint: str) -> CertificateRecord | None:
        with self._errors():
            row = self._conn().execute(
                "SELECT * FROM client_certificates WHERE fingerprint = ?", (fingerprint,)
            ).fetchone()
        return None if row is None else _row_to_certificate(row)

    def certificates(self, name: str) -> list[CertificateRecord]:
        with self._errors():
            rows = self._conn().execute(
                "SELECT * FROM client_certificates WHERE account = ? ORDER BY added, fingerprint",
                (lookup_key(name),),
            ).fetchall()
        return [_row_to_certificate(r) for r in rows]

    def match_app_password(self, name: str, password: str) -> AppPassword | None:
        """Constant-time per comparison."""
        with self._errors():
            rows = self._conn().execute(
                "SELECT * FROM app_passwords WHERE account = ?", (lookup_key(name),)
            ).fetchall()
        found = None
        for r in rows:  # no early exit: every row costs the same
            if hmac.compare_digest(_app_digest(r["salt"], password), r["digest"]):
                found = r
        return None if found is None else _row_to_app_password(found)

    def admin_log(
        self, *, since: datetime | None = None, target: str | None = None, limit: int = 1000
    ) -> list[AdminLogEntry]:
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

    def web_admins(self) -> list[WebAdmin]:
        with self._errors():
            rows = self._conn().execute(
                "SELECT name, password_hash, totp_secret, created FROM web_admins ORDER BY name"
            ).fetchall()
        return [WebAdmin(r["name"], r["password_hash"], r["totp_secret"],
                         _parse_time(r["created"]) or _utcnow()) for r in rows]

    # --- directory side: bookkeeping made by logins (not audited) -------------------

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
            _insert_credentials(c, key, wanted, self._now())
            if ARGON2ID in wanted:
                # An imported hash (``auth/legacy_hashes.py``) is replaced by the
                # Argon2id one made from the same password at its first login.
                c.execute(
                    "DELETE FROM credentials WHERE account = ? AND scheme = ?", (key, LEGACY)
                )
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

    def record_app_password_use(self, app_id: int, when: datetime, address: str) -> None:
        stamp = format_time(when)
        with self._tx(durable=False) as c:
            c.execute(
                "UPDATE app_passwords SET last_used = ?, last_address = ? "
                "WHERE id = ? AND (last_used IS NULL OR last_used <= ?)",
                (stamp, address, app_id, stamp),
            )

