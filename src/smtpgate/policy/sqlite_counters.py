"""``RateCounters`` in the guard's SQLite file, for one node.

The counters share the file (and its schema, ``auth.guard_store.MIGRATIONS``)
with the guard state: both are disposable, per-node state with the same write
pattern, and one file is one thing to back up, delete or move. The table is
``usage (key, bucket, messages, recipients)``; an add is one upsert per key in
one transaction, so adds from several processes all count.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

from smtpgate.auth import sqlite_space
from smtpgate.auth.guard_store import MIGRATIONS
from smtpgate.auth.sqlite_file import NewerSchema, ThreadLocalSqlite
from smtpgate.policy.rate_counters import KEEP_BUCKETS, RateCountersError, over_limit


class CountersSchemaTooNew(RateCountersError, NewerSchema):
    """The guard database was written by a newer smtpgate; it is left untouched."""


class SqliteRateCounters(ThreadLocalSqlite):
    """``RateCounters`` on the guard's SQLite file, one connection per thread.

    Old buckets are pruned from the write path, at most once per new bucket per
    instance (one statement a minute).

    Raises (constructor):
        RateCountersError: the file cannot be opened or is not a database.
        CountersSchemaTooNew: the file has a schema newer than this version knows.
    """

    _label = "guard database"
    _error = RateCountersError
    _too_new = CountersSchemaTooNew

    def __init__(self, path: Path) -> None:
        self._pruned_below = 0
        self._open_upgraded(
            path, MIGRATIONS, datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        )

    def _configure(self, conn: sqlite3.Connection) -> None:
        # The file's settings as the guard store makes them, should this open a
        # new file first; the guard's prune gives back the pages freed here.
        sqlite_space.configure(conn)
        conn.execute("PRAGMA synchronous = NORMAL")

    def add_usage(self, keys: Sequence[str], bucket: int, messages: int, recipients: int) -> None:
        forget_below = bucket - KEEP_BUCKETS
        with self._errors(), self._transaction(self._conn()) as c:
            c.executemany(
                "INSERT INTO usage (key, bucket, messages, recipients) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (key, bucket) DO UPDATE SET messages = messages + excluded.messages, "
                "recipients = recipients + excluded.recipients",
                [(k, bucket, messages, recipients) for k in keys],
            )
            if forget_below > self._pruned_below:
                c.execute("DELETE FROM usage WHERE bucket < ?", (forget_below,))
        self._pruned_below = max(self._pruned_below, forget_below)

    def usage(self, keys: Sequence[str], since_bucket: int) -> dict[str, tuple[int, int]]:
        with self._errors():
            return _sums(self._conn(), keys, since_bucket)

    def add_within(
        self, limits: Mapping[str, tuple[int, int]], bucket: int, since_bucket: int,
        messages: int, recipients: int,
    ) -> dict[str, tuple[int, int]] | None:
        keys = list(limits)
        # BEGIN IMMEDIATE: the write lock before the read, so no other process
        # adds between this check and this add.
        with self._errors(), self._transaction(self._conn()) as c:
            used = _sums(c, keys, since_bucket)
            if over_limit(limits, used, messages, recipients):
                return used
            c.executemany(
                "INSERT INTO usage (key, bucket, messages, recipients) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (key, bucket) DO UPDATE SET messages = messages + excluded.messages, "
                "recipients = recipients + excluded.recipients",
                [(k, bucket, messages, recipients) for k in keys],
            )
        return None


def _sums(c: sqlite3.Connection, keys: Sequence[str], since_bucket: int
          ) -> dict[str, tuple[int, int]]:
    out = {k: (0, 0) for k in keys}
    if not keys:
        return out
    marks = ",".join("?" * len(keys))
    rows = c.execute(
        f"SELECT key, SUM(messages), SUM(recipients) FROM usage "
        f"WHERE key IN ({marks}) AND bucket >= ? GROUP BY key",
        (*keys, since_bucket),
    ).fetchall()
    for key, messages, recipients in rows:
        out[key] = (int(messages or 0), int(recipients or 0))
    return out
