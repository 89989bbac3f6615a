"""The login path's snapshot of blocks written by hand with sqlite3.

``guard list`` was made to name such rows (commit 2c9f199); the check every login
makes first still took them as stored: a time that is text ('tomorrow', which
SQLite orders after every number, so the row is "in force") or a blob raised
TypeError, and a block "for ever" (until 1e300, inf) OverflowError, so every login
the row matched failed (454 and a traceback). Now a row whose end is no time is
skipped, one whose start alone is none is enforced as begun now, a time past 9999
is held until 9999-12-31, each damaged row is one warning in the server log,
and the other, valid blocks still refuse.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from smtpgate.auth.guard import Guard
from smtpgate.auth.guard_store import SqliteGuardStore
from smtpgate.config import GuardConfig

NOW = 1_800_000_000.0
ADDRESS = "192.0.2.9"
ALICE = "alice@example.org"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteGuardStore]:
    s = SqliteGuardStore(tmp_path / "guard.sqlite")
    yield s
    s.close()


def _rows(store: SqliteGuardStore, *rows: tuple[str, str, object, object, object]) -> None:
    with sqlite3.connect(store.path) as db:
        db.execute("DELETE FROM blocks")
        db.executemany("INSERT INTO blocks (kind, key, since, until, reason) "
                       "VALUES (?, ?, ?, ?, ?)", rows)
    db.close()


async def _refusal(store: SqliteGuardStore, address: str = ADDRESS,
                   account: str = ALICE) -> str | None:
    guard = Guard(store, GuardConfig(), clock=lambda: NOW, reads_on_loop=False)
    check = await guard.check(address, account)
    return None if check.refusal is None else check.refusal.reason


async def test_a_damaged_row_is_skipped_and_the_valid_blocks_still_refuse(
        store: SqliteGuardStore, caplog: pytest.LogCaptureFixture) -> None:
    _rows(store,
          ("account", ALICE, NOW - 10, "tomorrow", "by hand"),  # no end: skipped
          ("address", ADDRESS, NOW - 10, NOW + 3600, "spraying"))
    with caplog.at_level(logging.WARNING, "smtpgate.guard"):
        assert await _refusal(store) == "address blocked until 2027-01-15T09:00:00Z: spraying"
        assert await _refusal(store, "192.0.2.10") is None  # the account's row is not enforced
        assert await _refusal(store, "192.0.2.11") is None
    warnings = [r.getMessage() for r in caplog.records if r.name == "smtpgate.guard"]
    assert warnings == [(  # once, not once per login
        f"guard database {store.path}: the block of account '{ALICE}' holds a time that is "
        f"no number (since {NOW - 10!r}, until 'tomorrow'): not enforced; lift it with "
        "'smtpgate guard unblock' or correct the row with sqlite3 (since and until are "
        "seconds since 1970)")]


@pytest.mark.parametrize("since", ["yesterday", b"\x00"])
async def test_a_block_whose_start_is_no_time_is_enforced_until_its_end(
        store: SqliteGuardStore, since: object, caplog: pytest.LogCaptureFixture) -> None:
    _rows(store, ("address", ADDRESS, since, NOW + 60, "by hand"))
    with caplog.at_level(logging.WARNING, "smtpgate.guard"):
        assert await _refusal(store) == "address blocked until 2027-01-15T08:01:00Z: by hand"
    assert "enforced as begun now" in caplog.text


@pytest.mark.parametrize("until", [1e300, float("inf")])
async def test_a_block_for_ever_refuses_until_9999(store: SqliteGuardStore, until: float) -> None:
    _rows(store, ("account", ALICE, NOW - 10, until, "for ever"))
    assert await _refusal(store) == "account locked until 9999-12-31T23:59:59Z: for ever"


async def test_a_reason_that_is_no_text_is_shown_as_text(store: SqliteGuardStore) -> None:
    _rows(store, ("address", ADDRESS, NOW - 10, NOW + 60, b"bytes"))
    assert await _refusal(store) == "address blocked until 2027-01-15T08:01:00Z: bytes"
