"""The PostgreSQL account database: its schema, its versions and ``smtpgate db migrate``,
and how a connection is made (the store itself is ``auth/postgres_store.py``).

Migrations are explicit: opening the store never changes the schema; a database
older than this version (or empty) is refused with a message that says to run
``smtpgate db migrate``, which applies the missing versions in one transaction
under an advisory lock, so that two at once cannot both apply one. A shared
database upgraded silently by whichever host restarts first would surprise the
others; its administrator decides when. The tables mirror ``auth/store.py``'s
SQLite schema in PostgreSQL's own types (``timestamptz``, ``boolean``, ``jsonb``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final

import psycopg
from psycopg import conninfo, pq
from psycopg.rows import dict_row

from smtpgate.auth.directory import StoreUnavailable
from smtpgate.auth.names import unified_spelling
from smtpgate.auth.postgres_probe import first_answer, refusal_sqlstate
from smtpgate.auth.sqlite_file import NewerSchema
from smtpgate.config import PostgresConfig

log = logging.getLogger("smtpgate.auth.postgres")

Row = dict[str, Any]

#: pg_advisory_xact_lock key held by ``migrate`` ("smtpgate" in ASCII, truncated).
_MIGRATE_LOCK = 0x736D747067617465

class SchemaNotMigrated(StoreUnavailable):
    """The database's schema is older than this version (or absent): run
    ``smtpgate db migrate``. Nothing was changed."""

    hint = "run `smtpgate db migrate` (docs/directories.md, \"PostgreSQL\")"


class PostgresUnreachable(StoreUnavailable):
    """The server could not be reached (refused, timed out, no such host), or it is
    not taking connections now (starting up, shutting down): an outage, not a
    configuration that can never work. ``serve`` starts anyway and answers logins
    454 4.7.0 until the database answers (``outage``)."""


class PasswordFileUnreadable(StoreUnavailable):
    """The database password file cannot be read."""

    key = "accounts.postgresql.password_file"


class PostgresReadOnly(StoreUnavailable):
    """The server answered but refuses writes (SQLSTATE 25006): a standby, where a
    failover left the DSN, or ``default_transaction_read_only``. Not the network
    or the password, which the generic hint sent the administrator to check."""

    hint = ("the database refuses writes: a standby (after a failover the DSN may name "
            "the old primary, now a replica) or default_transaction_read_only; point "
            "accounts.postgresql.dsn at the primary (with several hosts, add "
            "target_session_attrs=read-write)")


#: SQLSTATE read_only_sql_transaction.
READ_ONLY = "25006"


class PostgresCancelled(StoreUnavailable):
    """The server cancelled a statement (SQLSTATE 57014): it ran past the
    ``statement_timeout`` every connection sets to ``timeout``, mostly waiting on a
    lock another session holds, or an administrator cancelled it. The generic hint
    sent the administrator to the DSN and the password, which were fine."""

    hint = ("a statement ran longer than accounts.postgresql.timeout and the server "
            "cancelled it: another session may hold a lock on smtpgate's tables (a "
            "LOCK TABLE, VACUUM FULL, ALTER TABLE or an open transaction; see pg_locks "
            "and pg_stat_activity); try again once it is released")


#: SQLSTATE query_canceled.
CANCELLED = "57014"


class PostgresNoRight(StoreUnavailable):
    """``db migrate`` may not create the tables (SQLSTATE 42501): the role does not
    own the database and has no CREATE right on the schema it creates them in (since
    PostgreSQL 15 nobody but the database's owner may create in ``public``)."""

    hint = ("the role in accounts.postgresql.dsn may not create tables in the first "
            "schema of its search_path: make it the database's owner, or give it a "
            "schema of its own (CREATE SCHEMA smtpgate AUTHORIZATION smtpgate); a "
            "serving role that only reads and writes the tables: run db migrate with "
            "the DSN of their owner (docs/directories.md, \"PostgreSQL\")")


#: SQLSTATE insufficient_privilege.
NO_RIGHT = "42501"


class PostgresSchemaTooNew(StoreUnavailable, NewerSchema):
    """The database was migrated by a newer smtpgate; it is left untouched."""


# Each migration is a list of statements applied in one transaction; its version
# is its index + 1. Never edit a released migration: append a new one.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE accounts (
            name text PRIMARY KEY,
            created timestamptz NOT NULL,
            updated timestamptz NOT NULL,
            generation bigint NOT NULL DEFAULT 0,
            locked boolean NOT NULL DEFAULT false,
            lock_reason text,
            locked_at timestamptz,
            password_changed timestamptz,
            last_login timestamptz,
            last_mechanism text,
            allowed_mechanisms jsonb,
            cram_md5_enabled boolean NOT NULL DEFAULT false,
            allowed_networks jsonb,
            allowed_listeners jsonb,
            require_oauth boolean NOT NULL DEFAULT false,
            password_max_age_days double precision,
            password_expires timestamptz,
            max_messages_per_hour integer,
            max_recipients_per_hour integer
        )""",
        """CREATE TABLE credentials (
            account text NOT NULL REFERENCES accounts(name)
                ON DELETE CASCADE ON UPDATE CASCADE,
            scheme text NOT NULL,
            data text NOT NULL,
            created timestamptz NOT NULL,
            PRIMARY KEY (account, scheme)
        )""",
        """CREATE TABLE aliases (
            address text PRIMARY KEY,
            account text NOT NULL REFERENCES accounts(name)
                ON DELETE CASCADE ON UPDATE CASCADE,
            created timestamptz NOT NULL
        )""",
        "CREATE INDEX aliases_account ON aliases (account)",
        """CREATE TABLE granted_domains (
            account text NOT NULL REFERENCES accounts(name)
                ON DELETE CASCADE ON UPDATE CASCADE,
            domain text NOT NULL,
            created timestamptz NOT NULL,
            PRIMARY KEY (account, domain)
        )""",
        """CREATE TABLE app_passwords (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            account text NOT NULL REFERENCES accounts(name)
                ON DELETE CASCADE ON UPDATE CASCADE,
            name text NOT NULL,
            salt text NOT NULL,
            digest text NOT NULL,
            created timestamptz NOT NULL,
            expires timestamptz,
            networks jsonb,
            mechanisms jsonb,
            max_messages_per_hour integer,
            max_recipients_per_hour integer,
            last_used timestamptz,
            last_address text,
            UNIQUE (account, name)
        )""",
        """CREATE TABLE admin_log (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            time timestamptz NOT NULL,
            os_user text NOT NULL,
            command text NOT NULL,
            action text NOT NULL,
            target text NOT NULL,
            details jsonb NOT NULL
        )""",
        "CREATE INDEX admin_log_time ON admin_log (time)",
    ),
    (
        # Issue 16: TLS client certificates for SASL EXTERNAL (as in auth/store.py).
        """CREATE TABLE client_certificates (
            fingerprint text PRIMARY KEY,
            account text NOT NULL REFERENCES accounts(name)
                ON DELETE CASCADE ON UPDATE CASCADE,
            subject text NOT NULL,
            not_after timestamptz,
            added timestamptz NOT NULL,
            revoked timestamptz
        )""",
        "CREATE INDEX client_certificates_account ON client_certificates (account)",
    ),
    (
        # Issue 14: the web admin's administrators (as in auth/store.py).
        """CREATE TABLE web_admins (
            name text PRIMARY KEY,
            password_hash text NOT NULL,
            totp_secret text NOT NULL,
            created timestamptz NOT NULL
        )""",
    ),
    # One spelling per internationalised domain (auth/names.py): rows renamed by
    # ``_unify_idn_spellings``, below, as SQL cannot decode Punycode.
    (),
    (
        # The TOTP time step each admin last logged in with (as in auth/store.py).
        "ALTER TABLE web_admins ADD COLUMN totp_last_step bigint NOT NULL DEFAULT -1",
    ),
    # Login names without letter case (auth/names.py): rows renamed by
    # ``_lower_local_parts``, below.
    (),
)
SCHEMA_VERSION = len(MIGRATIONS)

#: (table, column, its primary key's columns): what ``_unify_idn_spellings`` renames.
_SPELLED = (
    ("accounts", "name", ("name",)),
    ("aliases", "address", ("address",)),
    ("granted_domains", "domain", ("account", "domain")),
)


#: The tables whose rows a rename left behind are named in a warning: an account or
#: alias nobody reaches (a granted domain left twice grants the same thing).
_NAMED_WHEN_KEPT = {"accounts": "account", "aliases": "alias"}


def _unify_idn_spellings(c: psycopg.Connection[Row]) -> None:
    """Migration 4 (the SQLite file's 5, ``auth/store.py``): a name, alias or granted domain stored
    with A-labels is renamed to its U-labels (the rows naming an account follow,
    ON UPDATE CASCADE). Where the other spelling is stored too, both stay
    (docs/accounts.md). Only rows holding ``xn--`` or a non-ASCII character are read."""
    _rename_spellings(c, "{column} LIKE '%%xn--%%' OR {column} ~ '[^\x01-\x7f]'", _SPELLED)


def _rename_spellings(
    c: psycopg.Connection[Row], selects: str, spelled: tuple[tuple[str, str, tuple[str, ...]], ...]
) -> None:
    """Rename the rows ``selects`` picks (a condition on ``{column}``) to their
    ``unified_spelling``, unless that spelling is taken."""
    for table, column, key in spelled:
        cols = ", ".join(key)
        rows = c.execute(
            f"SELECT {cols} FROM {table} WHERE " + selects.format(column=column)
        ).fetchall()
        for row in rows:
            old = row[column]
            new = unified_spelling(old)
            if new == old:
                continue
            where = " AND ".join(f"{k} = %({k})s" for k in key)
            clash = " AND ".join(
                f"{k} = %(new)s" if k == column else f"{k} = %({k})s" for k in key
            )
            done = c.execute(
                f"UPDATE {table} SET {column} = %(new)s WHERE {where} "
                f"AND NOT EXISTS (SELECT 1 FROM {table} WHERE {clash})",
                {**row, "new": new},
            )
            if done.rowcount == 0 and table in _NAMED_WHEN_KEPT:
                # Both spellings stay; no login or command reaches this one any more,
                # which the administrator must hear now, not from a user's 535.
                log.warning(
                    "account database: %s '%s' was not renamed to '%s', which is %s: "
                    "no login or command reaches '%s' any more; move what it holds to "
                    "'%s', then delete its row (docs/accounts.md, \"Upgrades and backups\")",
                    _NAMED_WHEN_KEPT[table], old, new,
                    "another account" if table == "accounts" else "an alias already",
                    old, new)


def _lower_local_parts(c: psycopg.Connection[Row]) -> None:
    """Migration 6 (the SQLite file's 7): a name or alias stored with capitals is
    renamed to lower case (``unified_spelling``), as ``_unify_idn_spellings`` renames.
    Read: the rows that ``lower()`` would change, and every row with a non-ASCII
    character, which Python decides for. PostgreSQL's ``lower()`` follows the
    database's LC_CTYPE, and under ``C`` (a common choice for speed) it lowers ASCII
    only: ``Émile@example.org`` was left as it was, and no login reached it (logins
    look up ``émile@example.org``), where the SQLite file's migration renamed it."""
    _rename_spellings(c, "{column} <> lower({column}) OR {column} ~ '[^\x01-\x7f]'",
                      _SPELLED[:2])


#: Steps in Python run after a version's statements, in the same transaction.
_DATA_STEPS: dict[int, Callable[[psycopg.Connection[Row]], None]] = {
    4: _unify_idn_spellings, 6: _lower_local_parts}


def utcnow() -> datetime:
    return datetime.now(UTC)


def where(pg: PostgresConfig) -> str:
    """The database named by the DSN, for messages (never a password)."""
    try:
        p = conninfo.conninfo_to_dict(pg.dsn)
    except psycopg.Error:
        return "PostgreSQL database"
    name = p.get("dbname") or p.get("user") or "(default)"
    hosts, ports = p.get("host") or p.get("hostaddr"), p.get("port")
    return f"PostgreSQL database {name} on {_servers(str(hosts or ''), str(ports or ''))}"


def _servers(hosts: str, ports: str) -> str:
    """``host:port`` of each server a DSN lists, in libpq's order. libpq pairs a
    comma-separated ``host`` with ``port`` item by item (one port serves them all),
    so ``h1,h2`` and ``5432,5433`` are ``h1:5432,h2:5433``; joined as they stood
    they read ``h1,h2:5432,5433``, which names neither server (docs/scale-out.md's
    failover DSN)."""
    names = (hosts or "local socket").split(",")
    numbers = (ports or "").split(",")
    if len(numbers) != len(names):
        numbers = [numbers[0]] * len(names)
    return ",".join(
        (f"[{h}]" if ":" in h and not h.startswith("/") and n else h) + (f":{n}" if n else "")
        for h, n in zip(names, numbers))


#: TCP keepalives on every connection, unless the DSN sets its own. libpq turns them
#: on but leaves their timing to the kernel: two hours of silence before the first
#: probe, so a pooled connection to a host that vanished without a reset (a pulled
#: cable, a VM gone, a firewall that forgot the flow) was found dead after more than
#: two hours, holding a pool slot and whatever waited on it. With these, after
#: 60 + 5 x 10 s; and data the server never acknowledges ends the connection after
#: 30 s (``tcp_user_timeout``, in ms). Unix sockets ignore them.
KEEPALIVES: Final[dict[str, int]] = {
    "keepalives": 1,
    "keepalives_idle": 60,
    "keepalives_interval": 10,
    "keepalives_count": 5,
    "tcp_user_timeout": 30_000,
}


def connection_kwargs(pg: PostgresConfig) -> dict[str, Any]:
    """libpq options besides the DSN: the password from its file (a path already
    resolved against the config's directory), a connect timeout, and `KEEPALIVES`
    where the DSN does not set them (an option given here would override the DSN's).

    Raises:
        StoreUnavailable: the password file cannot be read (naming its key).
    """
    in_dsn = conninfo.conninfo_to_dict(pg.dsn)
    kwargs: dict[str, Any] = {
        "connect_timeout": max(1, int(pg.timeout)),
        "application_name": "smtpgate",
        "autocommit": True,
        **{k: v for k, v in KEEPALIVES.items() if k not in in_dsn},
    }
    if pg.password_file is not None:
        path = pg.password_file
        try:
            kwargs["password"] = path.read_text().strip("\r\n")
        except OSError as e:
            raise PasswordFileUnreadable(
                f"[accounts.postgresql].password_file: cannot read {path}: {e.strerror}"
            ) from None
    return kwargs


def current_version(c: psycopg.Connection[Row]) -> int:
    exists = c.execute("SELECT to_regclass('schema_version') IS NOT NULL AS e").fetchone()
    if exists is None or not exists["e"]:
        return 0
    row = c.execute("SELECT COALESCE(MAX(version), 0) AS v FROM schema_version").fetchone()
    return 0 if row is None else int(row["v"])


#: SQLSTATE classes of a server that is there but cannot serve now: 08 connection
#: exception, 53 insufficient resources (too many connections, disk full), 57
#: operator intervention (shutting down, starting up, a statement cancelled).
_OUTAGE_CLASSES = frozenset({"08", "53", "57"})


def outage_state(sqlstate: str | None) -> bool:
    """Whether an error with this SQLSTATE is an outage (it passes by itself) rather
    than a configuration that can never work: a wrong password or no such role
    (class 28), no such database (3D000), no right to read the schema (42501)...
    An error without one never came from the server: the connection broke."""
    return sqlstate is None or sqlstate[:2] in _OUTAGE_CLASSES


def _answers(pg: PostgresConfig) -> bool:
    """Whether the server answers at all (libpq's ``PQping``, which needs no valid
    login): a failed connection carries no SQLSTATE in psycopg, and libpq's message
    is localised text, never parsed. ``PQping`` decides on the server's SQLSTATE
    itself: "starting up" or "shutting down" (57P03) is a rejection, any other
    answer (a refused login, no such database) means the server is there."""
    try:
        info = conninfo.make_conninfo(pg.dsn, connect_timeout=max(1, int(pg.timeout)))
    except psycopg.Error:
        return True  # a DSN libpq cannot parse is no outage
    # NO_ATTEMPT: libpq found the parameters invalid, which no waiting mends.
    return ping(info) in (pq.Ping.OK, pq.Ping.NO_ATTEMPT)


def _there_without_tls(pg: PostgresConfig) -> bool:
    """Whether a server that ``PQping`` heard nothing from answers a bare startup
    packet (no TLS, no password) after all, other than with an outage's refusal
    (starting up, full). ``PQping`` speaks TLS as the DSN says, so a certificate
    that fails verification (another CA, another name), a missing ``sslrootcert``
    or client certificate, or ``sslmode=require`` against a server without TLS
    failed it like a silent server: taken for an outage, ``serve`` started and
    answered every login 454 4.7.0 for good, and ``config check`` said OK, where
    the server did answer and the configuration can never work. Asked only after a
    connection that failed quickly: a server too slow to let libpq in within its
    timeout, which may answer this packet, is an outage."""
    answer = first_answer(pg.dsn, max(1.0, pg.timeout))
    return answer is not None and not (answer and outage_state(answer))


def ping(info: str) -> pq.Ping:
    """libpq's ``PQping`` of the connection string ``info`` (no password in it)."""
    return pq.Ping(pq.PGconn.ping(info.encode()))


def one_line(text: str) -> str:
    """``text`` with its line breaks and runs of white space as single spaces."""
    return " ".join(text.split())


def connect(pg: PostgresConfig, *, classify: bool = True) -> psycopg.Connection[Row]:
    """A new connection (autocommit).

    Raises:
        PostgresUnreachable: the server cannot be reached or takes no connections now
            (only with ``classify``, which may take a ``PQping`` and a second try).
        StoreUnavailable: the server refused the login (a wrong password, no such
            role or database), or the password file cannot be read.
    """
    kwargs = connection_kwargs(pg)
    tries = 2
    while True:
        tries -= 1
        started = time.monotonic()
        try:
            return psycopg.connect(pg.dsn, row_factory=dict_row, **kwargs)
        except psycopg.Error as e:
            error = e
        # A connection that failed before its timeout was no timeout: refused, or
        # answered (a TLS handshake that fails is answered, see _there_without_tls).
        quick = time.monotonic() - started < kwargs["connect_timeout"]
        if not classify:
            outage = False
        elif error.sqlstate is not None:
            outage = outage_state(error.sqlstate)
        elif not _answers(pg) and not (quick and _there_without_tls(pg)):
            outage = True
        elif (refused := refusal_sqlstate(pg.dsn, max(1.0, pg.timeout))) is not None:
            # It answers, but full ("too many clients already", before any
            # login): an outage, which psycopg's error does not say (postgres_probe.py).
            outage = outage_state(refused)
        elif tries:
            continue  # it answers: it may have come up in between, so ask it again
        else:
            outage = False
        kind = PostgresUnreachable if outage else StoreUnavailable
        # libpq's messages run over lines ("...refused\n\tIs the server running
        # ...?"): one line, so each log record that quotes it stays one line.
        raise kind(f"{where(pg)}: {one_line(str(error))}") from None


def check_version(label: str, current: int) -> None:
    if current > SCHEMA_VERSION:
        raise PostgresSchemaTooNew(
            f"{label}: this database was migrated by a newer smtpgate (schema v{current}, "
            f"this version knows up to v{SCHEMA_VERSION})"
        )


def schema_version(pg: PostgresConfig) -> int:
    """The database's schema version (0: none yet).

    Raises:
        PostgresUnreachable: the server cannot be reached, or went away.
        StoreUnavailable: it refused the login, or the reading of the version.
    """
    with connect(pg) as c:
        try:
            return current_version(c)
        except psycopg.Error as e:
            kind = PostgresUnreachable if outage_state(e.sqlstate) else StoreUnavailable
            raise kind(f"{where(pg)}: {one_line(str(e))}") from None


def migrate(
    pg: PostgresConfig, *, clock: Callable[[], datetime] = utcnow
) -> tuple[int, int]:
    """Apply the missing migrations in one transaction; (version before, version after).

    Raises:
        StoreUnavailable: the server cannot be reached, or a statement failed
            (nothing was applied).
        PostgresSchemaTooNew: the database is newer than this version.
    """
    label = where(pg)
    with connect(pg) as c:
        try:
            with c.transaction():
                c.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATE_LOCK,))
                current = current_version(c)
                check_version(label, current)
                if current < SCHEMA_VERSION:  # up to date: nothing to write (a standby)
                    c.execute(
                        "CREATE TABLE IF NOT EXISTS schema_version ("
                        "version integer PRIMARY KEY, applied timestamptz NOT NULL)"
                    )
                for version in range(current + 1, SCHEMA_VERSION + 1):
                    for statement in MIGRATIONS[version - 1]:
                        c.execute(statement)
                    if (step := _DATA_STEPS.get(version)) is not None:
                        step(c)
                    c.execute(
                        "INSERT INTO schema_version (version, applied) VALUES (%s, %s)",
                        (version, clock()),
                    )
        except psycopg.Error as e:
            kind = {READ_ONLY: PostgresReadOnly, NO_RIGHT: PostgresNoRight}.get(
                e.sqlstate or "", StoreUnavailable)
            # One line: the server's message runs over three (the statement, a caret).
            raise kind(f"{label}: migration failed: {one_line(str(e))}") from None
    if current < SCHEMA_VERSION:
        log.warning("%s: schema migrated from v%d to v%d", label, current, SCHEMA_VERSION)
    return current, SCHEMA_VERSION
