"""``smtpgate db migrate`` on the SQLite files (for PostgreSQL: test_postgres.py)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from smtpgate.auth.store import MIGRATIONS, SCHEMA_VERSION

from .conftest import make_server


def test_db_migrate_upgrades_an_old_sqlite_file_keeping_a_copy_and_is_idempotent(
    tmp_path: Path,
) -> None:
    srv = make_server(tmp_path / "srv")
    db = srv.root / "accounts.sqlite"
    db.unlink(missing_ok=True)
    conn = sqlite3.connect(db)  # a file as the first released schema left it
    for statement in MIGRATIONS[0]:
        conn.execute(statement)
    conn.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied TEXT)")
    conn.execute("INSERT INTO schema_version VALUES (1, '2030-01-01T00:00:00.000000Z')")
    conn.commit()
    conn.close()

    out = srv.cli("db", "migrate").stdout
    assert f"account database: {db}: schema v1 -> v{SCHEMA_VERSION}, migrated" in out
    assert len(list(srv.root.glob("accounts.sqlite.bak-v1-*"))) == 1
    again = srv.cli("db", "migrate").stdout
    assert f"account database: {db}: schema v{SCHEMA_VERSION}, up to date" in again
    assert "guard database:" in again and "up to date" in again.splitlines()[-1]
    srv.add_user("alice@example.org", "correct horse battery")  # the upgraded file works


def test_db_migrate_refuses_a_newer_sqlite_file_untouched(tmp_path: Path) -> None:
    srv = make_server(tmp_path / "srv")
    srv.cli("db", "migrate")
    db = srv.root / "accounts.sqlite"
    conn = sqlite3.connect(db)
    conn.execute("INSERT INTO schema_version VALUES (99, '2040-01-01T00:00:00.000000Z')")
    conn.commit()
    conn.close()
    before = db.read_bytes()
    out = srv.cli("db", "migrate", check=False)
    assert out.returncode == 1
    assert "newer smtpgate" in out.stderr and "hint: upgrade smtpgate" in out.stderr
    assert db.read_bytes() == before
