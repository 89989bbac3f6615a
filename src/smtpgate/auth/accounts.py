"""Opening the account backend that ``[accounts].backend`` names.

The one place that knows which backends exist: the server (its auth service and
its start-up check), every ``smtpgate user ...`` command (through the admin
service), ``init`` and ``report`` open their accounts here. A new backend (the
PostgreSQL and LDAP directories) adds a value to ``AccountsConfig.backend`` and
a branch here, and passes ``tests/contract``; nothing else changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import assert_never

from smtpgate.auth.admin_store import AccountStore
from smtpgate.auth.store import SqliteAccountStore
from smtpgate.config import Config, PostgresConfig


def open_account_store(cfg: Config, *, outage_ok: bool = False,
                       quiet: bool = False, one_shot: bool = False) -> AccountStore:
    """The account backend of ``cfg``, both sides (read and admin).

    ``outage_ok`` (what ``serve`` opens): a PostgreSQL server that cannot be
    reached now is no reason to fail; the store opens, says why in its
    ``outage``, and logins get 454 4.7.0 until the server answers. (The LDAP
    backend always opens so; the admin commands leave it False, to stop at once.)

    ``quiet`` (LDAP): the caller reports a failure itself (``status``): the
    directory's outage is not logged, and one at opening is raised
    (``open_ldap_store``).

    ``one_shot`` (LDAP; the admin commands): a command run once reports the error
    each call gets, so the directory's outage is not logged as the server's is
    (that line speaks of logins and 454) and there is no fail-fast window (each
    call asks the directory); a directory down at opening is no error, so the
    commands that do not need it (``guard list``, ``admin-log``) still work.

    Raises:
        StoreUnavailable: it cannot be opened (a file that is not a database,
            a missing directory, a schema newer than this version knows, a
            database server that refuses the login; ``PostgresUnreachable``: one
            that does not answer, without ``outage_ok``).
    """
    backend = cfg.accounts.backend
    if backend == "sqlite":
        return SqliteAccountStore(cfg.path(cfg.accounts.database), cfg.accounts)
    if backend == "postgresql":
        from smtpgate.auth.postgres_store import PostgresAccountStore

        return PostgresAccountStore(_postgres(cfg), cfg.accounts, outage_ok=outage_ok)
    if backend == "ldap":
        from smtpgate.auth.ldap_store import open_ldap_store

        return open_ldap_store(cfg, quiet=quiet, one_shot=one_shot)
    assert_never(backend)


def _postgres(cfg: Config) -> PostgresConfig:
    """``[accounts.postgresql]`` with its password file resolved against the config."""
    pg = cfg.accounts.postgresql
    if pg.password_file is None:
        return pg
    return pg.model_copy(update={"password_file": cfg.path(pg.password_file)})


def accounts_key(cfg: Config) -> str:
    """The config key that names where ``cfg``'s accounts are (for error messages)."""
    backend = cfg.accounts.backend
    if backend == "sqlite":
        return "accounts.database"
    if backend == "postgresql":
        return "accounts.postgresql.dsn"
    if backend == "ldap":
        return "accounts.ldap.url"
    assert_never(backend)


@dataclass(frozen=True, slots=True)
class Migration:
    """What ``migrate_accounts`` did: where, and the schema version before and after."""

    where: str
    before: int
    after: int


def migrate_accounts(cfg: Config) -> Migration:
    """Bring the account backend's schema up to date (``smtpgate db migrate``).

    SQLite upgrades itself when opened (after copying the old file aside,
    ``auth/sqlite_file.py``), so this opens it; PostgreSQL is only ever
    migrated here (``auth/postgres_schema.py``: a shared database changes when its
    administrator says so).

    Raises:
        StoreUnavailable: the backend cannot be reached, or the migration failed
            (nothing was applied).
    """
    backend = cfg.accounts.backend
    if backend == "sqlite" or backend == "ldap":  # ldap: its local overlay
        from smtpgate.auth.sqlite_file import schema_version_of

        path = cfg.path(cfg.accounts.database)
        before = schema_version_of(path) if path.exists() else 0
        SqliteAccountStore(path, cfg.accounts).close()
        return Migration(str(path), before, schema_version_of(path))
    if backend == "postgresql":
        from smtpgate.auth import postgres_schema

        pg = _postgres(cfg)
        before, after = postgres_schema.migrate(pg)
        return Migration(postgres_schema.where(pg), before, after)
    assert_never(backend)
