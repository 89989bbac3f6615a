"""Giving the guard database's free pages back to the file system.

The guard's file (``guard_store.py``, with the sending counters of
``policy/sqlite_counters.py``) holds one row per failing address, penalty and
block. A password flood from many addresses fills it; the prune deletes those
rows once every window is over, but SQLite only marks their pages free, and a
file that grew to hundreds of megabytes during one flood stayed that size for
good. So the file is kept with ``auto_vacuum = INCREMENTAL``, and after a prune
that left much of it free, ``incremental_vacuum`` moves the free pages to the end
and cuts them off (at the next checkpoint, which the prune then runs, passive).

``auto_vacuum`` can only be chosen before the first table is made, or by a
``VACUUM`` (which rewrites the file). A new file gets it from the connection's
settings here; a file written by an older smtpgate is converted once when the
guard opens it (``use_incremental_vacuum``). The write-ahead log (WAL) is reset
to at most ``WAL_SIZE_LIMIT`` bytes after a checkpoint, instead of keeping the
size the busiest minute gave it.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

log = logging.getLogger("smtpgate.db")

#: ``PRAGMA auto_vacuum``'s value for INCREMENTAL.
INCREMENTAL = 2
#: Bytes the WAL file is cut back to after a checkpoint: about what SQLite's
#: automatic checkpoint (1000 pages) lets it reach, so a busy server does not
#: shrink and regrow it every few seconds.
WAL_SIZE_LIMIT = 4 * 1024 * 1024
#: Most pages one prune gives back (8 MiB with 4 KiB pages), so that the first
#: prune after a flood that grew the file to gigabytes does not hold the write
#: lock, and the logins waiting on it, for seconds; the rest goes at the next.
MAX_PAGES_AT_ONCE = 2048
#: Free pages below which nothing is reclaimed (256 KiB with 4 KiB pages): a few
#: free pages are the next failures' room, not waste.
MIN_FREE_PAGES = 64


def configure(conn: sqlite3.Connection) -> None:
    """Per connection, before anything else: a new (empty) file is made with
    incremental auto-vacuum, and the WAL is cut back after a checkpoint.

    Setting ``auto_vacuum`` takes the write lock even when the file already has
    that value, so it is set only while the file has no page yet: a worker's new
    connection must read while another process (a backup, an ``sqlite3`` shell)
    holds the write lock, as WAL readers do. An existing file is converted by
    ``use_incremental_vacuum``."""
    if conn.execute("PRAGMA page_count").fetchone()[0] == 0:
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
    conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")


def use_incremental_vacuum(conn: sqlite3.Connection, label: str, path: Path) -> None:
    """Convert a file written without incremental auto-vacuum (an older smtpgate's),
    with one ``VACUUM``, which also gives back what it has free now.

    Several processes open the file at start: one converts it, and one that finds
    the file locked meanwhile leaves it (the next start looks again) rather than
    failing to start over housekeeping.

    Raises:
        sqlite3.Error: other than the file being locked.
    """
    if conn.execute("PRAGMA auto_vacuum").fetchone()[0] == INCREMENTAL:
        return
    before = path.stat().st_size if path.exists() else 0
    conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
    try:
        conn.execute("VACUUM")
    except sqlite3.OperationalError as e:
        if "locked" not in str(e) and "busy" not in str(e):
            raise
        log.info("%s %s: left for the next start to convert to incremental vacuum: %s",
                 label, path, e)
        return
    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    log.info("%s %s: converted to incremental vacuum (%d KiB before, %d KiB now)",
             label, path, before // 1024, path.stat().st_size // 1024)


def reclaim(conn: sqlite3.Connection) -> int:
    """After a prune (outside its transaction): if at least ``MIN_FREE_PAGES`` and a
    quarter of the file are free, give back up to ``MAX_PAGES_AT_ONCE`` of them;
    how many pages went.

    ``incremental_vacuum`` frees one page per step of its statement, and
    ``execute`` steps once: ``executescript`` runs it to the end, in a
    transaction of its own."""
    free = conn.execute("PRAGMA freelist_count").fetchone()[0]
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    if free < MIN_FREE_PAGES or free * 4 < pages:
        return 0
    conn.executescript(f"PRAGMA incremental_vacuum({MAX_PAGES_AT_ONCE})")
    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    return int(free - conn.execute("PRAGMA freelist_count").fetchone()[0])
