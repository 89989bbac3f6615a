"""Login names have no letter case (auth/names.py): ``Alice@example.org`` is the
account ``alice@example.org``, in every command, login and sending check, and a
database from before the rule is brought to it when opened (auth/store.py v7)."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import pytest

from smtpgate.auth.credentials import ARGON2ID
from smtpgate.auth.store import MIGRATIONS, SqliteAccountStore
from smtpgate.config import AccountsConfig

FAST = AccountsConfig(argon2_memory_kib=8192, argon2_time_cost=1, argon2_parallelism=1,
                      scram_iterations=4096)
T = "2020-01-01T00:00:00.000000Z"


def _v6_file(db: Path) -> None:
    """An account database as version 6 wrote it, with capitals in names."""
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA foreign_keys = ON")
    # v5's renames run on no rows yet: any function of that name will do.
    conn.create_function("smtpgate_unified_spelling", 1, lambda s: s)
    conn.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied TEXT)")
    for version in range(6):
        for stmt in MIGRATIONS[version]:
            conn.execute(stmt)
        conn.execute("INSERT INTO schema_version VALUES (?, 'x')", (version + 1,))
    for name in ("Alice@example.org", "Bob@example.org", "bob@example.org"):
        conn.execute("INSERT INTO accounts (name, created, updated) VALUES (?, ?, ?)",
                     (name, T, T))
    conn.execute("INSERT INTO credentials VALUES ('Alice@example.org', ?, 'hash', ?)",
                 (ARGON2ID, T))
    conn.execute("INSERT INTO aliases VALUES ('Info@example.org', 'Alice@example.org', ?)", (T,))
    conn.execute("INSERT INTO app_passwords (account, name, salt, digest, created) "
                 "VALUES ('Alice@example.org', 'phone', 's', 'd', ?)", (T,))
    conn.commit()
    conn.close()


def test_upgrade_lowers_names_and_what_names_them_follows(tmp_path: Path) -> None:
    db = tmp_path / "accounts.sqlite"
    _v6_file(db)
    store = SqliteAccountStore(db, FAST)
    try:
        names = sorted(a.name for a in store.list_accounts())
        # A pair `user add` made before 2026-12-01: both kept.
        assert names == ["Bob@example.org", "alice@example.org", "bob@example.org"]
        for typed in ("alice@example.org", "Alice@example.org", "ALICE@EXAMPLE.ORG"):
            a = store.get_account(typed)
            assert a is not None and a.name == "alice@example.org"
        assert store.get_credential("Alice@example.org", ARGON2ID) == "hash"
        assert store.aliases("alice@example.org") == ["info@example.org"]
        assert [p.name for p in store.app_passwords("ALICE@example.org")] == ["phone"]
    finally:
        store.close()


def test_upgrade_names_each_pair_it_could_not_merge(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """Before: the upgrade said only 'upgrading the schema from v6 to v7', and
    Bob@example.org (its own account beside bob@example.org, as `user add` of
    versions before 2026-12-01 made it) silently stopped logging in. Now the
    upgrade names it and the alias left behind, with what to do."""
    db = tmp_path / "accounts.sqlite"
    _v6_file(db)
    conn = sqlite3.connect(db)
    conn.execute("INSERT INTO aliases VALUES ('info@example.org', 'bob@example.org', ?)", (T,))
    conn.commit()
    conn.close()
    with caplog.at_level(logging.WARNING):
        SqliteAccountStore(db, FAST).close()
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("upgrading the schema from v6 to v7" in m for m in lines)
    assert any(f"{db}: account 'Bob@example.org' was not renamed to 'bob@example.org', "
               "which is another account: no login reaches 'Bob@example.org'" in m
               for m in lines)
    assert any(f"{db}: alias 'Info@example.org' of 'alice@example.org' was not renamed to "
               "'info@example.org', an alias of 'bob@example.org'" in m for m in lines)
    assert sum("not renamed" in m for m in lines) == 2  # Alice was renamed: not named
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # opened again: no upgrade, nothing to say
        SqliteAccountStore(db, FAST).close()
    assert not caplog.records
