"""``smtpgate db backup``: consistent copies of the SQLite databases, server running or not;
``smtpgate db migrate``: bring the schemas up to date (the only way for PostgreSQL).

The copies go through SQLite's online backup API, not ``cp``: a file copied
while a worker writes may be torn, and ``cp`` of the main file alone misses
what is still in the ``-wal`` file. Opening a store upgrades its schema (and
keeps a copy of the old file first, see ``auth/sqlite_file.py``); this command
does not open the stores, so it never upgrades anything.
"""

from __future__ import annotations

import os
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import click

from smtpgate.auth.sqlite_file import backup_database, schema_version_of
from smtpgate.cli.common import (
    DAMAGED_HINT,
    NotFound,
    OperationalError,
    config_option,
    get_config,
    sqlite_damaged,
    store_hint,
)
from smtpgate.plural import count


@click.group()
def db() -> None:
    """The account and guard databases."""


@db.command("backup")
@click.option(
    "--to",
    "dest_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Directory for the copies (created, mode 0700, if missing). "
    "Default: beside each database.",
)
@config_option
def backup(dest_dir: Path | None, config_path: Path | None) -> None:
    """Copy the account database and the guard database to NAME.bak-TIMESTAMP.

    Safe while the server runs: each copy is one consistent snapshot. Copies
    are created with mode 0600 (they hold password-derived secrets) and never
    overwrite a file."""
    cfg = get_config(config_path)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    accounts = cfg.path(cfg.accounts.database)
    on_server = cfg.accounts.backend == "postgresql"
    if on_server:
        click.echo("account database: on the PostgreSQL server, not copied here; "
                   "back it up with pg_dump (docs/directories.md)")
    elif not accounts.is_file():
        raise NotFound(
            f"no account database at {accounts}",
            "check [accounts].database; `smtpgate user add` creates the file",
        )
    if dest_dir is not None:
        try:
            dest_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as e:
            raise OperationalError(f"cannot create {dest_dir}: {e.strerror}") from None
    sources = []
    if cfg.state.backend == "redis":
        click.echo(f"guard state: in Redis ({cfg.state.redis_url}), not copied here; "
                   "back it up with Redis's own snapshots (docs/scale-out.md)")
    else:
        sources.append(("guard database", cfg.path(cfg.guard.database)))
    if not on_server:
        sources.insert(0, ("account database", accounts))
    for label, source in sources:
        if not source.is_file():
            # The server creates it at its first start; nothing to lose yet.
            click.echo(f"{label}: {source} does not exist yet, nothing to copy")
            continue
        target = (dest_dir or source.parent) / f"{source.name}.bak-{stamp}"
        try:
            backup_database(source, target)
        except FileExistsError:
            raise OperationalError(
                f"{target} exists", "wait a second and run the backup again"
            ) from None
        except PermissionError as e:
            raise OperationalError(
                f"cannot copy {source} to {target}: {e.strerror}",
                "run as the user that owns the databases (or root), or pick another --to",
            ) from None
        except (sqlite3.Error, OSError) as e:
            raise OperationalError(f"cannot copy {source} to {target}: {e}",
                                   DAMAGED_HINT if sqlite_damaged(e) else "") from None
        click.echo(f"{label}: {source} -> {target} ({_size(target)})")


def _size(path: Path) -> str:
    n = os.stat(path).st_size
    return f"{n / 1024:.0f} KiB" if n >= 1024 else count(n, "byte")


@db.command("migrate")
@config_option
def migrate(config_path: Path | None) -> None:
    """Bring the account database's schema (and the guard database's) up to date.

    PostgreSQL is migrated only by this command: `serve` and `smtpgate user ...`
    refuse a database whose schema is older, saying to run it. Each migration is
    one transaction; running it again, or on several hosts at once, is harmless.
    SQLite files upgrade themselves when opened (after copying the old file
    aside); this command does that now, explicitly."""
    from smtpgate.auth.accounts import migrate_accounts
    from smtpgate.auth.directory import StoreError
    from smtpgate.auth.guard_store import GuardStoreError, SqliteGuardStore
    from smtpgate.auth.sqlite_file import NewerSchema

    cfg = get_config(config_path)
    try:
        done = migrate_accounts(cfg)
    except StoreError as e:
        raise OperationalError(
            str(e), store_hint(e, "check [accounts] in the config (docs/directories.md)")
        ) from None
    except sqlite3.Error as e:
        raise OperationalError(f"account database: {e}",
                               DAMAGED_HINT if sqlite_damaged(e) else "") from None
    click.echo(f"account database: {done.where}: {_outcome(done.before, done.after)}")
    if cfg.state.backend == "redis":
        # No file to make: one no process would use, that looks like the state.
        click.echo(f"guard state: in Redis ({cfg.state.redis_url}), nothing to migrate")
        return
    guard = cfg.path(cfg.guard.database)
    if not guard.parent.is_dir():
        return
    try:
        before = schema_version_of(guard) if guard.exists() else 0
        SqliteGuardStore(guard).close()
        after = schema_version_of(guard)
    except (GuardStoreError, sqlite3.Error) as e:
        hint = NewerSchema.hint if isinstance(e, NewerSchema) else store_hint(e, "")
        raise OperationalError(f"guard database: {e}", hint) from None
    click.echo(f"guard database: {guard}: {_outcome(before, after)}")


def _outcome(before: int, after: int) -> str:
    if before == after:
        return f"schema v{after}, up to date"
    return f"schema v{before} -> v{after}, migrated"


COMMANDS: list[click.Command] = [db]
