"""Schema upgrades of the account and guard databases are never silent: the old
file is copied aside first and a line says so; a file from a newer smtpgate is
refused in those words; `smtpgate db backup` makes consistent copies online."""

from __future__ import annotations

import logging
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from smtpgate.admin import AccountAdmin
from smtpgate.auth import guard_store
from smtpgate.auth.guard_store import GuardSchemaTooNew, GuardStoreError, SqliteGuardStore
from smtpgate.auth.sqlite_file import NewerSchema, backup_database
from smtpgate.auth.store import (
    MIGRATIONS,
    SCHEMA_VERSION,
    AuditActor,
    SchemaTooNew,
    SqliteAccountStore,
    StoreUnavailable,
)
from smtpgate.cli.main import cli

from .cli_support import FAST, write_config

OLD = "old@example.org"
T0 = "2020-01-01T00:00:00.000000Z"


def version_1_database(path: Path) -> None:
    """An account database as smtpgate's first schema left it, with one account."""
    conn = sqlite3.connect(path)
    conn.execute(
        "CREATE TABLE schema_version (version INTEGER PRIMARY KEY NOT NULL, applied TEXT NOT NULL)"
    )
    for stmt in MIGRATIONS[0]:
        conn.execute(stmt)
    conn.execute("INSERT INTO schema_version VALUES (1, 'x')")
    conn.execute("INSERT INTO accounts (name, created, updated) VALUES (?, ?, ?)", (OLD, T0, T0))
    conn.commit()
    conn.close()


def mark_newer(path: Path, version: int) -> None:
    conn = sqlite3.connect(path)
    conn.execute("INSERT INTO schema_version VALUES (?, 'later')", (version,))
    conn.commit()
    conn.close()


def query(path: Path, sql: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def copies(directory: Path, pattern: str) -> list[Path]:
    return sorted(directory.glob(pattern))


def test_upgrade_copies_the_old_file_aside_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "accounts.sqlite"
    version_1_database(db)
    with caplog.at_level(logging.INFO):
        SqliteAccountStore(db, FAST).close()
    (copy,) = copies(tmp_path, "accounts.sqlite.bak-v1-*")
    # The copy is the old file, untouched: version 1 and its account.
    assert query(copy, "SELECT MAX(version) FROM schema_version") == [(1,)]
    assert query(copy, "SELECT name FROM accounts") == [(OLD,)]
    assert stat.S_IMODE(copy.stat().st_mode) == 0o600
    assert query(db, "SELECT MAX(version) FROM schema_version") == [(SCHEMA_VERSION,)]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        (
            f"account database {db}: upgrading the schema from v1 to v{SCHEMA_VERSION}; "
            f"the old file is saved as {copy}"
        )
    ]
    # Opening again is quiet and makes no second copy.
    caplog.clear()
    SqliteAccountStore(db, FAST).close()
    assert copies(tmp_path, "accounts.sqlite.bak-*") == [copy]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_new_database_is_created_without_a_copy_or_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        SqliteAccountStore(tmp_path / "accounts.sqlite", FAST).close()
        SqliteGuardStore(tmp_path / "guard.sqlite").close()
    assert copies(tmp_path, "*.bak-*") == []
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_newer_schema_is_refused_in_those_words_and_left_untouched(tmp_path: Path) -> None:
    db = tmp_path / "accounts.sqlite"
    SqliteAccountStore(db, FAST).close()
    mark_newer(db, 99)
    before = db.read_bytes()
    with pytest.raises(SchemaTooNew) as info:
        SqliteAccountStore(db, FAST)
    assert str(info.value) == (
        f"account database {db}: this database was written by a newer smtpgate "
        f"(schema v99, this version knows up to v{SCHEMA_VERSION})"
    )
    # Still the store's error type for callers that handle any fault, and no copy.
    assert isinstance(info.value, StoreUnavailable) and isinstance(info.value, NewerSchema)
    assert copies(tmp_path, "*.bak-*") == []
    assert db.read_bytes() == before


def test_guard_database_upgrade_from_unversioned_file(tmp_path: Path) -> None:
    """Guard files written before versions were recorded count as v0: copied, then v1."""
    db = tmp_path / "guard.sqlite"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE penalty (address TEXT PRIMARY KEY NOT NULL, "
                 "failures INTEGER NOT NULL, last REAL NOT NULL)")
    conn.execute("INSERT INTO penalty VALUES ('192.0.2.7', 3, 1.0)")
    conn.commit()
    conn.close()
    store = SqliteGuardStore(db)
    store.close()
    (copy,) = copies(tmp_path, "guard.sqlite.bak-v0-*")
    assert query(copy, "SELECT address FROM penalty") == [("192.0.2.7",)]
    assert query(db, "SELECT MAX(version) FROM schema_version") == [(len(guard_store.MIGRATIONS),)]
    assert query(db, "SELECT failures FROM penalty") == [(3,)]


def test_guard_database_from_a_newer_smtpgate(tmp_path: Path) -> None:
    db = tmp_path / "guard.sqlite"
    SqliteGuardStore(db).close()
    mark_newer(db, 42)
    with pytest.raises(GuardSchemaTooNew, match=r"written by a newer smtpgate \(schema v42, "):
        SqliteGuardStore(db)
    assert issubclass(GuardSchemaTooNew, GuardStoreError)


def test_cli_hint_for_a_newer_schema_is_not_about_permissions(tmp_path: Path) -> None:
    config = write_config(tmp_path, database=False)
    SqliteAccountStore(tmp_path / "accounts.sqlite", FAST).close()
    mark_newer(tmp_path / "accounts.sqlite", SCHEMA_VERSION + 1)
    result = CliRunner().invoke(cli, ["user", "list", "--config", str(config)])
    assert result.exit_code == 1
    assert (
        f"this database was written by a newer smtpgate (schema v{SCHEMA_VERSION + 1}, "
        f"this version knows up to v{SCHEMA_VERSION})"
    ) in result.output
    assert "hint: upgrade smtpgate" in result.output
    assert "permission" not in result.output


def test_cli_prints_the_upgrade_line(tmp_path: Path) -> None:
    """A real command (no test logging handlers): the warning reaches stderr."""
    config = write_config(tmp_path, database=False)
    version_1_database(tmp_path / "accounts.sqlite")
    smtpgate = Path(sys.executable).parent / "smtpgate"
    result = subprocess.run(
        [str(smtpgate), "user", "list", "--config", str(config)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert f"upgrading the schema from v1 to v{SCHEMA_VERSION}" in result.stderr
    assert OLD in result.stdout
    assert len(copies(tmp_path, "accounts.sqlite.bak-v1-*")) == 1


# --- smtpgate db backup -------------------------------------------------------------------


def test_backup_is_a_consistent_snapshot_while_a_writer_holds_the_lock(tmp_path: Path) -> None:
    db = tmp_path / "accounts.sqlite"
    store = SqliteAccountStore(db, FAST)
    AccountAdmin(store, FAST, actor=AuditActor("ops", "pytest")).add_account(
        "alice@example.org", "pencil"
    )
    writer = sqlite3.connect(db, isolation_level=None)
    try:
        writer.execute("BEGIN IMMEDIATE")
        writer.execute(
            "INSERT INTO accounts (name, created, updated) VALUES ('half@example.org', ?, ?)",
            (T0, T0),
        )
        copy = tmp_path / "copy.sqlite"
        backup_database(db, copy)  # does not wait for the writer (WAL)
    finally:
        writer.execute("ROLLBACK")
        writer.close()
        store.close()
    assert query(copy, "PRAGMA integrity_check") == [("ok",)]
    assert query(copy, "SELECT name FROM accounts") == [("alice@example.org",)]
    assert stat.S_IMODE(copy.stat().st_mode) == 0o600
    # Never overwrites, never creates the source.
    with pytest.raises(FileExistsError):
        backup_database(db, copy)
    with pytest.raises(FileNotFoundError):
        backup_database(tmp_path / "missing.sqlite", tmp_path / "x.sqlite")
    assert not (tmp_path / "missing.sqlite").exists() and not (tmp_path / "x.sqlite").exists()


def test_db_backup_command(tmp_path: Path) -> None:
    config = write_config(tmp_path, database=False)
    store = SqliteAccountStore(tmp_path / "accounts.sqlite", FAST)
    AccountAdmin(store, FAST, actor=AuditActor("ops", "pytest")).add_account(
        "alice@example.org", "pencil"
    )
    SqliteGuardStore(tmp_path / "guard.sqlite").close()
    dest = tmp_path / "backups"
    try:  # the store stays open: a backup of a database in use
        result = CliRunner().invoke(cli, ["db", "backup", "--to", str(dest), "--config", str(config)])
    finally:
        store.close()
    assert result.exit_code == 0, result.output
    (accounts,) = copies(dest, "accounts.sqlite.bak-*")
    (guard,) = copies(dest, "guard.sqlite.bak-*")
    assert f"-> {accounts}" in result.output and f"-> {guard}" in result.output
    assert query(accounts, "SELECT name FROM accounts") == [("alice@example.org",)]
    assert stat.S_IMODE(dest.stat().st_mode) == 0o700
    assert stat.S_IMODE(accounts.stat().st_mode) == 0o600


def test_db_backup_defaults_to_beside_the_databases_and_skips_a_missing_guard(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path, database=False)
    SqliteAccountStore(tmp_path / "accounts.sqlite", FAST).close()
    result = CliRunner().invoke(cli, ["db", "backup", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert len(copies(tmp_path, "accounts.sqlite.bak-*")) == 1
    assert "guard database" in result.output and "does not exist yet" in result.output
    assert not (tmp_path / "guard.sqlite").exists()


def test_db_backup_without_a_database_exits_3(tmp_path: Path) -> None:
    config = write_config(tmp_path, database=False)
    result = CliRunner().invoke(cli, ["db", "backup", "--config", str(config)])
    assert result.exit_code == 3
    assert "no account database" in result.output
    assert not (tmp_path / "accounts.sqlite").exists()


def test_db_backup_to_an_impossible_place_exits_1(tmp_path: Path) -> None:
    config = write_config(tmp_path, database=False)
    SqliteAccountStore(tmp_path / "accounts.sqlite", FAST).close()
    (tmp_path / "a-file").write_text("")
    result = CliRunner().invoke(
        cli, ["db", "backup", "--to", str(tmp_path / "a-file" / "sub"), "--config", str(config)]
    )
    assert result.exit_code == 1 and "cannot create" in result.output
