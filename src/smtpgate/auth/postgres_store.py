"""Account store on PostgreSQL: the same accounts as the SQLite store, in a server
several smtpgate hosts can share.

Theory of operation
-------------------
``PostgresAccountStore`` implements ``AccountDirectory`` (what logins read) and
``AccountAdminStore`` (what ``smtpgate user ...`` writes through, one database
transaction per admin operation, each change with its admin-log row), with the
tables, columns and rules of ``auth/store.py`` in PostgreSQL's native types
(``timestamptz``, ``boolean``, ``jsonb``). ``auth/accounts.py`` opens it when
``[accounts].backend`` is "postgresql".

Choices, with reasons:

- **psycopg 3 with its synchronous ``ConnectionPool``**, not asyncpg: the
  directory and admin interfaces are synchronous (the auth service calls them
  from its worker threads, the CLI from its one thread), so a thread-safe pool
  fits them as they are; asyncpg would need an event loop per thread or a
  bridge back into the server's loop for every look-up. psycopg is the
  maintained libpq binding, and libpq gives every connection option (TLS,
  passfile, service files) for free.
- Connections run in autocommit; writes open an explicit transaction, and a
  unique violation inside one is caught in a savepoint so the transaction
  can still raise the store's own error (``AccountExists``, ``AliasTaken``).
- Each connection is checked when taken from the pool (one round trip): after
  the server restarts, the pool's old connections are dead, and handing one out
  would turn the first login after the restart into a 454.
- The server down or unreachable: taking a connection waits at most
  ``[accounts.postgresql].timeout`` seconds, then ``StoreUnavailable`` (454
  4.7.0, never 535) with the cause libpq gives. Once an outage is known, each
  operation first makes one direct attempt (``_refused_now``): a refused
  connection fails it at once instead of after the whole timeout, which is the
  bound for a server that does not answer. A statement gets as long
  (``statement_timeout``, set on every pooled connection): a table locked by a
  migration or a ``VACUUM FULL`` on another host, or a query gone slow, costs a
  login 454 after that bound, not a wait without end that holds the auth
  service's two read threads, and with them every other login. A server that
  accepts connections and never answers is asked by one login, not each: after
  an operation gets no answer, logins get 454 at once (``fail_fast``) until a
  probe or the pool sees it answer. The pool keeps retrying in the
  background (with backoff, given up and restarted every ``_RECONNECT`` seconds
  so that it never sleeps long), so logins recover by themselves.
- The server down **at start-up** is the same outage, not a reason to refuse
  to start (``outage_ok``, what ``serve`` opens with): the store opens, logins
  get 454 until the server answers, and the schema version, which could not be
  read, is checked on the pool's first connection; a wrong one fails that
  connection (logged once), so logins stay 454 until ``smtpgate db migrate``.
  What cannot pass by itself still refuses the opening: a refused login, no
  such database, a wrong schema (``postgres_schema.connect`` tells them apart).
- **Migrations are explicit** (``auth/postgres_schema.py``): opening never
  changes the schema; a database older than this version (or empty) is refused
  with a message that says to run ``smtpgate db migrate``.
- The password never sits in the DSN (config validation refuses one there); it
  is read from ``password_file`` when the store opens, and again for every new
  connection of the pool: a rotated password (ALTER ROLE, then the new one in
  the file) is in use from the next connection, which a database restart or the
  pool's hourly renewal of its connections will open anyway.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, Self

import psycopg
from psycopg import errors, sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool, PoolClosed, PoolTimeout

from smtpgate.auth.admin_store import (
    ALL_NAMES_QUERY,
    AccountExists,
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
from smtpgate.auth.directory import Account, AppPassword, CertificateRecord, StoreUnavailable
from smtpgate.auth.fail_fast import FailFast
from smtpgate.auth.legacy_hashes import LEGACY
from smtpgate.auth.names import lookup_key, name_key
from smtpgate.auth.outage_log import OutageLog
from smtpgate.auth.passwords import PasswordHasher, StoredHashError
from smtpgate.auth.postgres_probe import answers
from smtpgate.auth.postgres_schema import (
    CANCELLED,
    READ_ONLY,
    SCHEMA_VERSION,
    PostgresCancelled,
    PostgresReadOnly,
    PostgresSchemaTooNew,
    PostgresUnreachable,
    Row,
    SchemaNotMigrated,
    check_version,
    connect,
    connection_kwargs,
    current_version,
    one_line,
    schema_version,
    utcnow,
    where,
)
from smtpgate.config import AccountsConfig, PostgresConfig

log = logging.getLogger("smtpgate.auth.postgres")

#: psycopg_pool's lines for one failed connection attempt (the format strings of
#: its log calls). The pool retries about once a second while the database is
#: down, in every process: the outage they belong to is ``OutageLog``'s to report
#: (once, a summary a minute, once at the end), so these are dropped.
_POOL_CONNECT_FAILURES = frozenset({
    "error connecting in %r: %s",
    "reconnection attempt in pool %r failed after %s sec",
})


class _PoolLog(logging.Handler):
    """The pool's other warnings (a broken connection discarded, one returned in a
    transaction), in the server log's own format: without a handler, Python's last
    resort wrote them bare to stderr, beside ``server.log_file`` rather than in it."""

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg in _POOL_CONNECT_FAILURES:
            return
        logging.getLogger("smtpgate").handle(record)


def _route_pool_log() -> None:
    pool_log = logging.getLogger("psycopg.pool")
    if not any(isinstance(h, _PoolLog) for h in pool_log.handlers):
        pool_log.addHandler(_PoolLog())
        pool_log.propagate = False

#: The key that names the database, in what is logged about it.
DSN_KEY = "accounts.postgresql.dsn"

#: The account name or alias that is an address but for letter case (admin_store).
_CASE_TWIN = case_twin_query("%s")
#: Seconds the pool retries a lost connection before starting its backoff over.
_RECONNECT = 10.0

_ACCOUNT_COLUMNS = """a.*, (SELECT string_agg(c.scheme, ' ') FROM credentials c
    WHERE c.account = a.name) AS schemes"""


def _require_schema(label: str, current: int) -> None:
    """Raises ``PostgresSchemaTooNew`` or ``SchemaNotMigrated`` for a schema version
    this smtpgate cannot serve logins from."""
    check_version(label, current)
    if current < SCHEMA_VERSION:
        raise SchemaNotMigrated(
            f"{label}: the schema is v{current}, this smtpgate needs "
            f"v{SCHEMA_VERSION}; run `smtpgate db migrate` first"
        )


def _utc(t: datetime | None) -> datetime | None:
    return None if t is None else t.astimezone(UTC)


def _key(name: str) -> str:
    """``lookup_key``, made storable: PostgreSQL text holds no NUL and only valid
    UTF-8, and no account name has either, so such a name becomes "", which
    matches no account (as every other malformed name)."""
    key = lookup_key(name)
    if "\x00" in key:
        return ""
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        return ""
    return key


def _row_to_account(r: Row) -> Account:
    allowed, listeners, nets = r["allowed_mechanisms"], r["allowed_listeners"], r["allowed_networks"]
    return Account(
        name=r["name"],
        created=r["created"].astimezone(UTC),
        updated=r["updated"].astimezone(UTC),
        generation=r["generation"],
        locked=r["locked"],
        lock_reason=r["lock_reason"],
        locked_at=_utc(r["locked_at"]),
        password_changed=_utc(r["password_changed"]),
        last_login=_utc(r["last_login"]),
        last_mechanism=r["last_mechanism"],
        allowed_mechanisms=None if allowed is None else frozenset(allowed),
        cram_md5_enabled=r["cram_md5_enabled"],
        schemes=frozenset((r["schemes"] or "").split()),
        allowed_networks=None if nets is None else tuple(nets),
        allowed_listeners=None if listeners is None else frozenset(listeners),
        require_oauth=r["require_oauth"],
        password_max_age_days=r["password_max_age_days"],
        password_expires=_utc(r["password_expires"]),
        max_messages_per_hour=r["max_messages_per_hour"],
        max_recipients_per_hour=r["max_recipients_per_hour"],
    )


def _row_to_certificate(r: Row) -> CertificateRecord:
    return CertificateRecord(
        fingerprint=r["fingerprint"],
        account=r["account"],
        subject=r["subject"],
        not_after=_utc(r["not_after"]),
        added=r["added"].astimezone(UTC),
        revoked=_utc(r["revoked"]),
    )


def _row_to_app_password(r: Row) -> AppPassword:
    nets, mechs = r["networks"], r["mechanisms"]
    return AppPassword(
        id=r["id"],
        account=r["account"],
        name=r["name"],
        created=r["created"].astimezone(UTC),
        expires=_utc(r["expires"]),
        networks=None if nets is None else tuple(nets),
        mechanisms=None if mechs is None else frozenset(mechs),
        max_messages_per_hour=r["max_messages_per_hour"],
        max_recipients_per_hour=r["max_recipients_per_hour"],
        last_used=_utc(r["last_used"]),
        last_address=r["last_address"],
    )


def _app_digest(salt: str, password: str) -> str:
    return hmac.new(
        bytes.fromhex(salt), password.encode("utf-8", "surrogatepass"), hashlib.sha256
    ).hexdigest()


def _jsonb(items: Collection[str] | None) -> Jsonb | None:
    return None if items is None else Jsonb(sorted(set(items)))


def _details(details: Mapping[str, object]) -> Jsonb:
    return Jsonb(dict(details), dumps=lambda o: json.dumps(o, sort_keys=True, default=str))


def _read_account(c: psycopg.Connection[Row], name: str) -> Account | None:
    row = c.execute(
        f"SELECT {_ACCOUNT_COLUMNS} FROM accounts a WHERE a.name = %s", (_key(name),)
    ).fetchone()
    return None if row is None else _row_to_account(row)


def _insert_credentials(
    c: psycopg.Connection[Row], name: str, creds: Mapping[str, str], now: datetime
) -> None:
    if not creds:
        return
    with c.cursor() as cur:
        cur.executemany(
            "INSERT INTO credentials (account, scheme, data, created) VALUES (%s, %s, %s, %s) "
            "ON CONFLICT (account, scheme) DO UPDATE SET data = EXCLUDED.data, "
            "created = EXCLUDED.created",
            [(name, scheme, data, now) for scheme, data in creds.items()],
        )


class _PgWriter:
    """``AccountWriter`` on one open PostgreSQL transaction."""

    def __init__(self, c: psycopg.Connection[Row], actor: AuditActor, now: datetime) -> None:
        self._c = c
        self._actor = actor
        self._now = now
        self._look_alikes: LookAlikes | None = None

    # --- plumbing ---------------------------------------------------------------------

    def _audit(self, action: str, target: str, details: Mapping[str, object]) -> None:
        self._c.execute(
            "INSERT INTO admin_log (time, os_user, command, action, target, details) "
            "VALUES (%s, %s, %s, %s, %s, %s)",
            (self._now, self._actor.os_user, self._actor.command, action, target,
             _details(details)),
        )

    def _case_twin(self, address: str, owner: str = "") -> str | None:
        """As `SqliteAccountStore._case_twin` (``case_twin_query``)."""
        row = self._c.execute(_CASE_TWIN, case_twin_params(address, owner)).fetchone()
        return None if row is None else str(row["twin"])

    def _look_alike(self, address: str, owner: str = "") -> str | None:
        """As `_SqliteWriter._look_alike` (``LookAlikes``)."""
        if self._look_alikes is None:
            self._look_alikes = LookAlikes(
                (str(r["address"]), str(r["owner"])) for r in self._c.execute(ALL_NAMES_QUERY))
        return self._look_alikes.twin(address, owner)

    def _named(self, address: str, owner: str) -> None:
        """``address`` was made a name or alias of ``owner`` in this transaction."""
        if self._look_alikes is not None:
            self._look_alikes.add(address, owner)

    def _existing(self, name: str) -> str:
        key = _key(name)
        if self._c.execute(
            "SELECT 1 FROM accounts WHERE name = %s FOR UPDATE", (key,)
        ).fetchone() is None:
            raise NoSuchAccount(f"no account {name}")
        return key

    def _update(
        self, name: str, assignments: Mapping[str, object], action: str,
        details: Mapping[str, object],
    ) -> None:
        key = _key(name)
        cols = ", ".join(f"{col} = %s" for col in assignments)
        cur = self._c.execute(
            f"UPDATE accounts SET {cols}, updated = %s, generation = generation + 1 "
            "WHERE name = %s",
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
            "SELECT * FROM app_passwords WHERE account = %s AND name = %s",
            (_key(name), app_name),
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
        key = _key(name)
        alias_of = self._c.execute(
            "SELECT account FROM aliases WHERE address = %s", (key,)).fetchone()
        refuse_taken_name(key, None if alias_of is None else (alias_of["account"],),
                          self._case_twin(key), self._look_alike(key))
        wanted = dict(creds)
        if not cram_md5_enabled:
            wanted.pop(CRAM_MD5, None)
        try:
            with self._c.transaction():
                self._c.execute(
                    "INSERT INTO accounts (name, created, updated, password_changed, "
                    "allowed_mechanisms, cram_md5_enabled) VALUES (%s, %s, %s, %s, %s, %s)",
                    (key, self._now, self._now, self._now if wanted else None,
                     _jsonb(allowed_mechanisms), cram_md5_enabled),
                )
        except errors.UniqueViolation:
            raise AccountExists(f"account {key} already exists") from None
        self._named(key, key)
        _insert_credentials(self._c, key, wanted, self._now)
        self._audit("account created", key, {
            "password": "set" if wanted else "none",
            "cram_md5": cram_md5_enabled,
            "mechanisms": None if allowed_mechanisms is None else sorted(set(allowed_mechanisms)),
        })

    def remove_account(self, name: str) -> None:
        key = self._existing(name)
        self._c.execute("DELETE FROM accounts WHERE name = %s", (key,))
        self._look_alikes = None  # its names are free again
        self._audit("account removed", key, {})

    def replace_credentials(self, name: str, creds: Mapping[str, str]) -> None:
        key = _key(name)
        row = self._c.execute(
            "SELECT cram_md5_enabled FROM accounts WHERE name = %s FOR UPDATE", (key,)
        ).fetchone()
        if row is None:
            raise NoSuchAccount(f"no account {name}")
        wanted = dict(creds)
        if not row["cram_md5_enabled"]:
            wanted.pop(CRAM_MD5, None)
        self._c.execute("DELETE FROM credentials WHERE account = %s", (key,))
        _insert_credentials(self._c, key, wanted, self._now)
        self._c.execute(
            "UPDATE accounts SET generation = generation + 1, updated = %s, "
            "password_changed = %s, password_expires = NULL WHERE name = %s",
            (self._now, self._now, key),
        )
        self._audit("password changed", key, {"password": "changed"})

    def lock(self, name: str, reason: str) -> None:
        key = _key(name)
        cur = self._c.execute(
            "UPDATE accounts SET locked = true, lock_reason = %s, "
            "locked_at = CASE WHEN locked THEN locked_at ELSE %s END, "
            "generation = generation + 1, updated = %s WHERE name = %s",
            (reason, self._now, self._now, key),
        )
        if cur.rowcount == 0:
            raise NoSuchAccount(f"no account {name}")
        self._audit("account locked", key, {"reason": reason})

    def unlock(self, name: str) -> bool:
        key = _key(name)
        row = self._c.execute(
            "SELECT locked FROM accounts WHERE name = %s FOR UPDATE", (key,)
        ).fetchone()
        if row is None:
            raise NoSuchAccount(f"no account {name}")
        if not row["locked"]:
            return False
        self._c.execute(
            "UPDATE accounts SET locked = false, lock_reason = NULL, locked_at = NULL, "
            "generation = generation + 1, updated = %s WHERE name = %s",
            (self._now, key),
        )
        self._audit("account unlocked", key, {})
        return True

    # --- mechanism policy -------------------------------------------------------------

    def set_allowed_mechanisms(self, name: str, mechanisms: Collection[str] | None) -> None:
        key = _key(name)
        cur = self._c.execute(
            "UPDATE accounts SET allowed_mechanisms = %s, updated = %s WHERE name = %s",
            (_jsonb(mechanisms), self._now, key),
        )
        if cur.rowcount == 0:
            raise NoSuchAccount(f"no account {name}")
        self._audit("mechanisms changed", key, {
            "mechanisms": None if mechanisms is None else sorted(set(mechanisms))
        })

    def _set_cram_md5(self, name: str, enabled: bool) -> str:
        key = _key(name)
        cur = self._c.execute(
            "UPDATE accounts SET cram_md5_enabled = %s, updated = %s WHERE name = %s",
            (enabled, self._now, key),
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
            "DELETE FROM credentials WHERE account = %s AND scheme = %s", (key, CRAM_MD5)
        )

    # --- conditional access -----------------------------------------------------------

    def restrict_networks(self, name: str, networks: Sequence[str]) -> None:
        self._update(name, {"allowed_networks": Jsonb(list(networks))},
                     "access changed", {"networks": list(networks)})

    def allow_any_network(self, name: str) -> None:
        self._update(name, {"allowed_networks": None}, "access changed", {"networks": None})

    def restrict_listeners(self, name: str, listeners: Collection[str]) -> None:
        names = sorted(set(listeners))
        self._update(name, {"allowed_listeners": Jsonb(names)},
                     "access changed", {"listeners": names})

    def allow_any_listener(self, name: str) -> None:
        self._update(name, {"allowed_listeners": None}, "access changed", {"listeners": None})

    def set_require_oauth(self, name: str, required: bool) -> None:
        self._update(name, {"require_oauth": required},
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
        stamp = None if when is None else when.astimezone(UTC)
        self._update(name, {"password_expires": stamp}, "password expiry scheduled",
                     {"expires": None if stamp is None else stamp.isoformat()})

    # --- sender ownership -------------------------------------------------------------

    def add_alias(self, name: str, alias: str) -> bool:
        key = self._existing(name)
        if self._c.execute("SELECT 1 FROM accounts WHERE name = %s", (alias,)).fetchone():
            raise AliasTaken(f"{alias} is an account of its own")
        row = self._c.execute(
            "SELECT account FROM aliases WHERE address = %s", (alias,)
        ).fetchone()
        if row is not None:
            if row["account"] == key:
                return False
            raise AliasTaken(f"{alias} is already an alias of {row['account']}")
        if (twin := self._case_twin(alias, key)) is not None:
            raise AliasTaken(f"{alias} differs from {twin} only in letter case")
        if (twin := self._look_alike(alias, key)) is not None:
            raise AliasTaken(look_alike_refusal(alias, twin))
        try:
            with self._c.transaction():
                self._c.execute(
                    "INSERT INTO aliases (address, account, created) VALUES (%s, %s, %s)",
                    (alias, key, self._now),
                )
        except errors.UniqueViolation:  # another transaction took it meanwhile
            raise AliasTaken(f"{alias} is already an alias of another account") from None
        self._named(alias, key)
        self._audit("alias added", key, {"alias": alias})
        return True

    def remove_alias(self, name: str, alias: str) -> bool:
        key = self._existing(name)
        n = self._c.execute(
            "DELETE FROM aliases WHERE address = %s AND account = %s", (alias, key)
        ).rowcount
        if n:
            self._look_alikes = None
            self._audit("alias removed", key, {"alias": alias})
        return bool(n)

    def grant_domain(self, name: str, domain: str) -> bool:
        key = self._existing(name)
        n = self._c.execute(
            "INSERT INTO granted_domains (account, domain, created) VALUES (%s, %s, %s) "
            "ON CONFLICT DO NOTHING",
            (key, domain, self._now),
        ).rowcount
        if n:
            self._audit("domain granted", key, {"domain": domain})
        return bool(n)

    def revoke_domain(self, name: str, domain: str) -> bool:
        key = self._existing(name)
        n = self._c.execute(
            "DELETE FROM granted_domains WHERE account = %s AND domain = %s", (key, domain)
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
        try:
            with self._c.transaction():
                row = self._c.execute(
                    "INSERT INTO app_passwords (account, name, salt, digest, created, expires, "
                    "networks, mechanisms, max_messages_per_hour, max_recipients_per_hour) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING *",
                    (
                        key, app_name, salt, _app_digest(salt, secret), self._now, expires,
                        None if nets is None else Jsonb(nets),
                        None if mechs is None else Jsonb(mechs),
                        max_messages_per_hour, max_recipients_per_hour,
                    ),
                ).fetchone()
        except errors.UniqueViolation:
            raise AccountExists(f"{key} already has an app password named {app_name!r}") from None
        assert row is not None
        record = _row_to_app_password(row)
        self._audit("app password added", key, {
            "name": app_name,
            "expires": None if record.expires is None else record.expires.isoformat(),
            "networks": nets,
            "mechanisms": mechs,
            "max_messages_per_hour": max_messages_per_hour,
            "max_recipients_per_hour": max_recipients_per_hour,
        })
        return record

    def revoke_app_password(self, name: str, app_name: str) -> bool:
        key = self._existing(name)
        n = self._c.execute(
            "DELETE FROM app_passwords WHERE account = %s AND name = %s", (key, app_name)
        ).rowcount
        if n:
            self._audit("app password revoked", key, {"name": app_name})
        return bool(n)

    def expire_app_password(
        self, name: str, app_name: str, when: datetime, *, rename_to: str | None = None
    ) -> bool:
        key = _key(name)
        row = self._c.execute(
            "SELECT expires FROM app_passwords WHERE account = %s AND name = %s FOR UPDATE",
            (key, app_name),
        ).fetchone()
        if row is None:
            return False
        old = row["expires"]
        expires = when if old is None or old > when else old
        try:
            with self._c.transaction():
                self._c.execute(
                    "UPDATE app_passwords SET expires = %s, name = %s "
                    "WHERE account = %s AND name = %s",
                    (expires, rename_to or app_name, key, app_name),
                )
        except errors.UniqueViolation:
            raise AccountExists(f"{key} already has an app password named {rename_to!r}") from None
        self._audit("app password expiry scheduled", key, {
            "name": app_name, "renamed": rename_to,
            "expires": expires.astimezone(UTC).isoformat(),
        })
        return True

    # --- client certificates ----------------------------------------------------------

    def add_certificate(
        self, name: str, fingerprint: str, subject: str, not_after: datetime | None
    ) -> bool:
        key = self._existing(name)
        row = self._c.execute(
            "SELECT account, revoked FROM client_certificates WHERE fingerprint = %s FOR UPDATE",
            (fingerprint,),
        ).fetchone()
        if row is not None and row["revoked"] is None:
            if row["account"] != key:
                raise CertificateTaken(f"the certificate is registered to {row['account']}")
            return False
        self._c.execute(
            "INSERT INTO client_certificates "
            "(fingerprint, account, subject, not_after, added, revoked) "
            "VALUES (%s, %s, %s, %s, %s, NULL) ON CONFLICT (fingerprint) DO UPDATE SET "
            "account = EXCLUDED.account, subject = EXCLUDED.subject, "
            "not_after = EXCLUDED.not_after, added = EXCLUDED.added, revoked = NULL",
            (fingerprint, key, subject, not_after, self._now),
        )
        self._audit("certificate added", key, {"sha256": fingerprint, "subject": subject})
        return True

    def remove_certificate(self, name: str, fingerprint: str) -> bool:
        key = self._existing(name)
        n = self._c.execute(
            "UPDATE client_certificates SET revoked = %s "
            "WHERE fingerprint = %s AND account = %s AND revoked IS NULL",
            (self._now, fingerprint, key),
        ).rowcount
        if n:
            self._audit("certificate removed", key, {"sha256": fingerprint})
        return bool(n)

    # --- web admin accounts ------------------------------------------------------------

    def add_web_admin(self, name: str, password_hash: str, totp_secret: str) -> None:
        try:
            with self._c.transaction():  # a savepoint: the error leaves the rest usable
                self._c.execute(
                    "INSERT INTO web_admins (name, password_hash, totp_secret, created) "
                    "VALUES (%s, %s, %s, %s)", (name, password_hash, totp_secret, self._now))
        except errors.UniqueViolation:
            raise AccountExists(f"admin {name} already exists") from None
        self._audit("web admin created", name, {})

    def remove_web_admin(self, name: str) -> bool:
        n = self._c.execute("DELETE FROM web_admins WHERE name = %s", (name,)).rowcount
        if n:
            self._audit("web admin removed", name, {})
        return bool(n)

    def update_web_admin(self, name: str, *, password_hash: str | None = None,
                         totp_secret: str | None = None) -> bool:
        return update_web_admin_row(self._c.execute, self._audit, "%s", name,
                                    password_hash, totp_secret)

    def use_totp_step(self, name: str, step: int) -> bool:
        n = self._c.execute(
            "UPDATE web_admins SET totp_last_step = %s WHERE name = %s AND totp_last_step < %s",
            (step, name, step)).rowcount
        return bool(n)

    # --- changes made elsewhere -------------------------------------------------------

    def record(self, action: str, target: str, details: Mapping[str, object]) -> None:
        self._audit(action, target, details)


class _Refused(Exception):
    """A direct attempt during an outage failed (``_refused_now``): its cause."""


#: Seconds of one wait on the pool, between which a login looks whether the
#: pool's own attempts are failing (``PostgresAccountStore._pooled``).
_WAIT_SLICE = 0.25


def _watched_connections(failing: Callable[[bool], None]) -> type[psycopg.Connection[Row]]:
    """The pool's connection class: each of the pool's connection attempts tells
    ``failing`` whether it failed, so a login waiting on the pool learns that the
    server refuses without waiting out the timeout."""

    class _Watched(psycopg.Connection[Row]):
        @classmethod
        def connect(cls, conninfo: str = "", **kwargs: Any) -> Self:
            try:
                c = super().connect(conninfo, **kwargs)
            except psycopg.Error:
                failing(True)
                raise
            failing(False)
            return c

    return _Watched


class PostgresAccountStore:
    """``AccountStore`` (both sides) on a PostgreSQL database, through a pool.

    Opening connects once (so a wrong DSN, password or an unmigrated database is
    reported at once, with libpq's reason) and starts the pool. With
    ``outage_ok`` (``serve``), a server that cannot be reached now does not stop
    the opening: ``outage`` says why, logins get 454 4.7.0, the pool keeps trying,
    and the schema is checked on its first connection (``_configure``).

    Raises:
        PostgresUnreachable: the server cannot be reached (without ``outage_ok``).
        StoreUnavailable: the server refuses the login (or the password file
            cannot be read).
        SchemaNotMigrated: the schema is missing or older (``smtpgate db migrate``).
        PostgresSchemaTooNew: the schema is newer than this version knows.
    """

    #: It holds Argon2id hashes; the auth service verifies them.
    verifies_passwords = False

    def __init__(
        self,
        pg: PostgresConfig,
        accounts_cfg: AccountsConfig,
        *,
        clock: Callable[[], datetime] = utcnow,
        outage_ok: bool = False,
    ) -> None:
        self._hasher = PasswordHasher(accounts_cfg)
        self._clock = clock
        self._pg = pg
        #: What the auth service waits for one read hop at most (service.py): the
        #: pool's wait, the probe of the cause and a margin. libpq has no bound of
        #: its own on a server that stops answering without closing the connection.
        self.read_bound = 2 * pg.timeout + 1
        self._label = where(pg)
        #: A database down under login load fails every login: logged once, then a
        #: summary a minute, then once when it answers (``outage_log``).
        self._outage = OutageLog(self._label, log)
        #: After an operation got no answer, the next ones get 454 at once until a
        #: probe (a startup packet answered, or the pool connecting) shows the
        #: server answers: a silent server costs one login its timeout, not each.
        self._fail_fast = FailFast(lambda: answers(pg.dsn, pg.timeout),
                                   most=pg.retry_max, stuck_after=2 * pg.timeout)
        _route_pool_log()
        kwargs = connection_kwargs(pg)
        #: Why the database could not be reached at opening (None: it answered).
        self.outage: str | None = None
        #: The schema's refusal, as last logged (None: not refused since).
        self._schema_refusal: str | None = None
        self._schema_lock = threading.Lock()
        try:
            current = schema_version(pg)
        except PostgresUnreachable as e:
            if not outage_ok:
                raise
            self.outage = str(e)
            self._schema_checked = False
        else:
            _require_schema(self._label, current)
            self._schema_checked = True
        #: The pool's last connection attempt failed (``_watched_connections``).
        self._pool_failing = False
        #: What new connections log in with: read again for each (``_kwargs``).
        self._last_kwargs = kwargs
        self._pool: ConnectionPool[psycopg.Connection[Row]] = ConnectionPool(
            pg.dsn,
            connection_class=_watched_connections(self._set_pool_failing),
            kwargs=self._kwargs,
            min_size=1,
            max_size=pg.pool_size,
            timeout=pg.timeout,
            reconnect_timeout=_RECONNECT,
            configure=self._configure,
            check=ConnectionPool.check_connection,
            name="smtpgate-accounts",
            open=False,
        )
        self._pool.open(wait=False)

    # --- plumbing -------------------------------------------------------------------

    def _set_pool_failing(self, failing: bool) -> None:
        self._pool_failing = failing
        if not failing:
            self._fail_fast.answered()  # the pool connected: the server answers

    def fail_fast(self) -> None:
        """Raises ``StoreUnavailable`` at once while an operation got no answer
        lately and no probe has seen the server answer since (``fail_fast``);
        cheap and never blocking, so the auth service calls it on its event loop
        before sending a read to a thread (which may all be stuck on a silent
        server)."""
        cause = self._fail_fast.refusal()
        if cause is None:
            return
        self._outage.failed(cause)
        raise StoreUnavailable(f"{self._label}: {cause}; not tried again until it answers a probe")

    def _kwargs(self) -> dict[str, Any]:
        """A pool thread, for each new connection: the password file read again, so
        that a password the database administrator rotated (and wrote to the
        file) is used by the next connection without a restart or a reload; if
        the file cannot be read now, the last password read, and a warning."""
        try:
            self._last_kwargs = connection_kwargs(self._pg)
        except StoreUnavailable as e:
            log.warning("%s; new connections use the password read before", e)
        return {**self._last_kwargs, "row_factory": dict_row}

    def _configure(self, c: psycopg.Connection[Row]) -> None:
        """A new pooled connection: no statement runs (or waits for a lock) longer
        than ``timeout``; past it the server cancels it (``QueryCanceled``, 454).
        If the schema could not be checked at opening, it is checked now; a wrong
        one fails the connection (the pool tries again later), so logins keep
        getting 454 until ``smtpgate db migrate``."""
        try:
            if not self._schema_checked:
                self._check_schema(c)
            c.execute(sql.SQL("SET statement_timeout = {}").format(
                sql.Literal(max(1, round(self._pg.timeout * 1000)))))
        except BaseException:
            c.close()
            raise

    def _check_schema(self, c: psycopg.Connection[Row]) -> None:
        """The schema version on a pool thread's first connection after an outage at
        opening: logged once as an ERROR while it is wrong, once as INFO when good.

        Raises:
            SchemaNotMigrated, PostgresSchemaTooNew: it is wrong.
            psycopg.Error: it could not be read.
        """
        current = current_version(c)
        with self._schema_lock:
            try:
                _require_schema(self._label, current)
            except (SchemaNotMigrated, PostgresSchemaTooNew) as e:
                # SchemaNotMigrated names `smtpgate db migrate` itself.
                refusal = str(e) if isinstance(e, SchemaNotMigrated) else f"{e}; {e.hint}"
                if refusal != self._schema_refusal:
                    log.error("%s: %s; logins get 454 4.7.0 until then",
                              DSN_KEY, refusal)
                self._schema_refusal = refusal
                raise
            if not self._schema_checked:
                log.info("%s: %s answers (schema v%d): logins are served", DSN_KEY,
                         self._label, current)
            self._schema_checked = True
            self._schema_refusal = None

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """Map driver and pool errors to StoreUnavailable, with the cause; an outage
        (no connection, a connection lost, a statement cancelled) goes to the log
        through ``_outage``, as does the first operation that succeeds after it."""
        try:
            yield
        except PoolTimeout:
            cause = f"no connection within {self._pg.timeout:g}s ({self._cause()})"
            self._outage.failed(cause)
            self._fail_fast.failed(cause)
            raise StoreUnavailable(f"{self._label}: {cause}") from None
        except PoolClosed:
            raise StoreUnavailable(f"{self._label}: store is closed") from None
        except _Refused as e:
            self._outage.failed(str(e))
            self._fail_fast.failed(str(e))
            raise StoreUnavailable(f"{self._label}: {e}") from None
        except psycopg.Error as e:
            cause = one_line(str(e))
            if isinstance(e, psycopg.OperationalError):
                self._outage.failed(cause)
                if e.sqlstate is None:  # no answer (a lock's timeout is one: 57014)
                    self._fail_fast.failed(cause)
            kind = {READ_ONLY: PostgresReadOnly, CANCELLED: PostgresCancelled}.get(
                e.sqlstate or "", StoreUnavailable)
            raise kind(f"{self._label}: {cause}") from None
        self._outage.answered()
        self._fail_fast.answered()

    def _cause(self) -> str:
        """Why the pool has no connection: one direct attempt, for the log."""
        refusal = self._schema_refusal
        if refusal is not None:
            return refusal.removeprefix(f"{self._label}: ")
        try:
            with connect(self._pg, classify=False):  # one attempt: read_bound counts it
                return "the server answers again"
        except StoreUnavailable as e:
            return str(e).removeprefix(f"{self._label}: ")

    def _refused_now(self) -> bool:
        """During an outage (the last operation failed, or the store opened without
        the server), one direct attempt before waiting on the pool: a server that
        refuses (nothing listening, its host unreachable, a login refused) says so
        at once, and the pool, which gets the same answer, could only wait out
        ``timeout`` before the same 454. A server that does not answer costs this
        attempt its connect timeout, the bound the pool's wait had. The attempt
        connecting means the server is back: the pool is waited on as usual.
        Returns whether an attempt was made and connected.

        Raises:
            StoreUnavailable: the attempt failed (its cause, for ``_errors``).
        """
        if not (self._pool_failing or self._outage.down
                or (self.outage is not None and not self._schema_checked)):
            return False
        if self._schema_refusal is not None:
            return False  # it answers; the pool's connections fail the schema check
        try:
            with connect(self._pg, classify=False):
                return True
        except StoreUnavailable as e:
            raise _Refused(str(e).removeprefix(f"{self._label}: ")) from None

    def _pooled(self) -> psycopg.Connection[Row]:
        """A connection from the pool, waited for at most ``timeout`` in slices:
        between two, a pool whose own attempts fail (the server went away while
        this login waited) makes the login try the server itself
        (``_refused_now``) and fail as soon as that is refused."""
        deadline = time.monotonic() + self._pg.timeout
        answers = self._refused_now()
        while True:
            left = deadline - time.monotonic()
            try:
                return self._pool.getconn(timeout=max(0.01, min(_WAIT_SLICE, left)))
            except PoolTimeout:
                if left <= _WAIT_SLICE:
                    raise
            if not answers:  # once it answered, the pool's next attempt is waited for
                answers = self._refused_now()

    @contextmanager
    def _conn(self) -> Iterator[psycopg.Connection[Row]]:
        self.fail_fast()
        with self._fail_fast.operation(), self._errors():
            c = self._pooled()
            try:
                with c:
                    yield c
            finally:
                self._pool.putconn(c)

    @contextmanager
    def _tx(self) -> Iterator[psycopg.Connection[Row]]:
        with self._conn() as c, c.transaction():
            yield c

    # --- admin side -----------------------------------------------------------------

    @contextmanager
    def transaction(self, actor: AuditActor) -> Iterator[_PgWriter]:
        with self._tx() as c:
            yield _PgWriter(c, actor, self._clock())

    def get_account(self, name: str) -> Account | None:
        with self._conn() as c:
            return _read_account(c, name)

    def list_accounts(self) -> list[Account]:
        with self._conn() as c:
            rows = c.execute(f"SELECT {_ACCOUNT_COLUMNS} FROM accounts a ORDER BY a.name")
            return [_row_to_account(r) for r in rows]

    def get_credential(self, name: str, scheme: str) -> str | None:
        with self._conn() as c:
            row = c.execute(
                "SELECT data FROM credentials WHERE account = %s AND scheme = %s",
                (_key(name), scheme),
            ).fetchone()
        return None if row is None else str(row["data"])

    def verify_password(self, name: str, password: str) -> bool:
        encoded = self.get_credential(name, ARGON2ID)
        if encoded is None:
            return False
        try:
            return self._hasher.verify(encoded, password)
        except StoredHashError as e:
            raise StoreUnavailable(f"{self._label}: account {name}: {e}") from e

    def login_identity(self, name: str) -> str:
        return name_key(name)  # names are stored canonical: one spelling per account

    def aliases(self, name: str) -> list[str]:
        with self._conn() as c:
            rows = c.execute(
                "SELECT address FROM aliases WHERE account = %s ORDER BY address",
                (_key(name),),
            ).fetchall()
        return [r["address"] for r in rows]

    def alias_owner(self, address: str) -> str | None:
        with self._conn() as c:
            row = c.execute(
                "SELECT account FROM aliases WHERE address = %s", (address,)).fetchone()
        return None if row is None else str(row["account"])

    def granted_domains(self, name: str) -> list[str]:
        with self._conn() as c:
            rows = c.execute(
                "SELECT domain FROM granted_domains WHERE account = %s ORDER BY domain",
                (_key(name),),
            ).fetchall()
        return [r["domain"] for r in rows]

    def app_passwords(self, name: str | None = None) -> list[AppPassword]:
        with self._conn() as c:
            if name is None:
                rows = c.execute("SELECT * FROM app_passwords ORDER BY account, name").fetchall()
            else:
                rows = c.execute(
                    "SELECT * FROM app_passwords WHERE account = %s ORDER BY name",
                    (_key(name),),
                ).fetchall()
        return [_row_to_app_password(r) for r in rows]

    def certificate(self, fingerprint: str) -> CertificateRecord | None:
        with self._conn() as c:
            row = c.execute(
                "SELECT * FROM client_certificates WHERE fingerprint = %s", (fingerprint,)
            ).fetchone()
        return None if row is None else _row_to_certificate(row)

    def certificates(self, name: str) -> list[CertificateRecord]:
        with self._conn() as c:
            rows = c.execute(
                "SELECT * FROM client_certificates WHERE account = %s "
                "ORDER BY added, fingerprint",
                (_key(name),),
            ).fetchall()
        return [_row_to_certificate(r) for r in rows]

    def match_app_password(self, name: str, password: str) -> AppPassword | None:
        """Constant-time per comparison."""
        with self._conn() as c:
            rows = c.execute(
                "SELECT * FROM app_passwords WHERE account = %s", (_key(name),)
            ).fetchall()
        found = None
        for r in rows:  # no early exit: every row costs the same
            if hmac.compare_digest(_app_digest(r["salt"], password), r["digest"]):
                found = r
        return None if found is None else _row_to_app_password(found)

    def admin_log(
        self, *, since: datetime | None = None, target: str | None = None, limit: int = 1000
    ) -> list[AdminLogEntry]:
        where_sql: list[str] = []
        args: list[object] = []
        if since is not None:
            where_sql.append("time >= %s")
            args.append(since)
        if target is not None:
            where_sql.append("target = %s")
            args.append(target)
        clause = f"WHERE {' AND '.join(where_sql)}" if where_sql else ""
        with self._conn() as c:
            rows = c.execute(
                f"SELECT * FROM (SELECT id, time, os_user, command, action, target, details "
                f"FROM admin_log {clause} ORDER BY id DESC LIMIT %s) AS newest ORDER BY id",
                (*args, limit),
            ).fetchall()
        return [
            AdminLogEntry(r["id"], r["time"].astimezone(UTC), r["os_user"], r["command"],
                          r["action"], r["target"], r["details"])
            for r in rows
        ]

    def web_admins(self) -> list[WebAdmin]:
        with self._conn() as c:
            rows = c.execute(
                "SELECT name, password_hash, totp_secret, created FROM web_admins ORDER BY name"
            ).fetchall()
        return [WebAdmin(r["name"], r["password_hash"], r["totp_secret"],
                         r["created"].astimezone(UTC)) for r in rows]

    # --- directory side: bookkeeping made by logins (not audited) -------------------

    def put_credentials(self, name: str, creds: Mapping[str, str], *, generation: int) -> bool:
        key = _key(name)
        with self._tx() as c:
            row = c.execute(
                "SELECT generation, cram_md5_enabled FROM accounts WHERE name = %s FOR UPDATE",
                (key,),
            ).fetchone()
            if row is None or row["generation"] != generation:
                return False
            wanted = dict(creds)
            if not row["cram_md5_enabled"]:
                wanted.pop(CRAM_MD5, None)
            _insert_credentials(c, key, wanted, self._clock())
            if ARGON2ID in wanted:
                # An imported hash (``auth/legacy_hashes.py``) is replaced by the
                # Argon2id one made from the same password at its first login.
                c.execute(
                    "DELETE FROM credentials WHERE account = %s AND scheme = %s", (key, LEGACY)
                )
            return True

    def record_login(self, name: str, mechanism: str, when: datetime) -> None:
        with self._conn() as c:
            c.execute(
                "UPDATE accounts SET last_login = %s, last_mechanism = %s "
                "WHERE name = %s AND (last_login IS NULL OR last_login <= %s)",
                (when, mechanism.upper(), _key(name), when),
            )

    def record_app_password_use(self, app_id: int, when: datetime, address: str) -> None:
        with self._conn() as c:
            c.execute(
                "UPDATE app_passwords SET last_used = %s, last_address = %s "
                "WHERE id = %s AND (last_used IS NULL OR last_used <= %s)",
                (when, address, app_id, when),
            )

    def close(self) -> None:
        self._fail_fast.close()
        self._pool.close()
