"""One SQLite file shared by threads and processes: what the account store and the
guard store have in common.

Each thread gets its own connection (``sqlite3`` objects are not thread-safe);
``check_same_thread=False`` only so that ``close()`` can close every thread's
connection. The file is created with mode 0600 because both stores hold data an
attacker would like to read, and, made by root (an administrator's ``sudo smtpgate
...``), is given to the owner of its directory, the user the server runs as. Errors from
sqlite3 and the OS are mapped, at this boundary, to the store's own exception type.

Schema upgrades
---------------
Each store lists its migrations (lists of statements; version = index + 1) and
calls ``_upgrade_schema`` when it opens the file. The version is kept in a
``schema_version`` table. An upgrade of a file that already holds data is never
silent: the file is first copied (SQLite's online backup API, so the copy is
consistent) to ``NAME.bak-vN-TIMESTAMP`` next to it, and a warning names the
versions and the copy. The copy and the upgrade happen under the write lock, so
no other process writes in between, and of several processes opening an old
file at once exactly one upgrades it. A file from a newer smtpgate is refused
with an error that says so (``NewerSchema``), and is left untouched.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import ClassVar

log = logging.getLogger("smtpgate.db")

#: Seconds a writer waits for another process's write lock before giving up.
BUSY_TIMEOUT = 5.0


class NewerSchema(Exception):
    """Mixed into a store's error type: the file was written by a newer smtpgate,
    whose schema this version does not know. Nothing was changed."""

    hint = (
        "upgrade smtpgate to the version that wrote it, or restore the copy made before "
        "that upgrade (docs/accounts.md, \"Upgrades and backups\")"
    )


def take_directory_owner(fd: int, directory: Path) -> None:
    """Run as root, give the file just created at ``fd`` to the owner of the directory
    it is in.

    The server runs as its own user (``server.user``, systemd's ``User=``), which owns
    the state directory; a database an administrator created with ``sudo smtpgate db
    migrate`` or ``user add``, or a copy ``db backup`` made beside it, would otherwise
    be root's, and the server could not open it (or SQLite could not write its journal).
    SQLite itself gives a ``-wal``, ``-shm`` or ``-journal`` file its database's owner
    when run as root, so the database file is the one to get right. Not root: the file
    is ours, as it should be.

    Raises:
        OSError: the directory cannot be looked at, or the change was refused.
    """
    if os.geteuid() != 0:
        return
    st = os.stat(directory)
    if (st.st_uid, st.st_gid) != (0, 0):
        os.fchown(fd, st.st_uid, st.st_gid)


def _timestamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")


def backup_database(source: Path, dest: Path) -> None:
    """Copy the SQLite file ``source`` to ``dest`` with the online backup API.

    The copy is consistent even while other processes write (in WAL mode it
    reads one snapshot and never blocks them). ``dest`` is created with mode
    0600, since the stores hold secrets, and is never overwritten; run as root, it
    is given to the owner of its directory (``take_directory_owner``).

    Raises:
        FileNotFoundError: ``source`` does not exist (it is not created).
        FileExistsError: ``dest`` exists.
        sqlite3.Error, OSError: the copy failed; a partial ``dest`` is removed.
    """
    if not source.is_file():
        raise FileNotFoundError(2, "No such file", str(source))
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        take_directory_owner(fd, dest.parent)
    except BaseException:
        os.close(fd)
        dest.unlink(missing_ok=True)
        raise
    os.close(fd)
    try:
        # mode=rw: never create the source by accident.
        src = sqlite3.connect(
            source.resolve().as_uri() + "?mode=rw", uri=True, timeout=BUSY_TIMEOUT
        )
        try:
            dst = sqlite3.connect(dest)
            try:
                src.backup(dst)
            finally:
                dst.close()
        finally:
            src.close()
    except BaseException:
        dest.unlink(missing_ok=True)
        raise


def schema_version_of(path: Path) -> int:
    """The schema version recorded in the SQLite file ``path`` (0: none), read-only.

    Raises:
        sqlite3.Error: it cannot be read as an SQLite database.
    """
    conn = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True, timeout=BUSY_TIMEOUT)
    try:
        if conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
        ).fetchone() is None:
            return 0
        return int(conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()[0])
    finally:
        conn.close()


class ThreadLocalSqlite:
    """Base of a store on one SQLite file; subclasses set the class attributes and
    may extend ``_configure`` for per-connection pragmas."""

    #: How the file is named in error messages ("account database").
    _label: ClassVar[str]
    #: The exception every sqlite3/OS error becomes.
    _error: ClassVar[type[Exception]]
    #: Raised for a schema newer than this version knows; a subclass of both
    #: ``_error`` and ``NewerSchema``.
    _too_new: ClassVar[type[Exception]]

    def _open_file(self, path: Path) -> None:
        self._path = path
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._closed = False
        with self._errors():
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                pass
            else:
                try:
                    take_directory_owner(fd, path.parent)
                finally:
                    os.close(fd)

    @property
    def path(self) -> Path:
        return self._path

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """Map sqlite3 and OS errors to the store's exception at the boundary."""
        try:
            yield
        except (sqlite3.Error, OSError) as e:
            raise self._error(f"{self._label} {self._path}: {e}") from e

    def _configure(self, conn: sqlite3.Connection) -> None:
        """Per-connection settings (pragmas, row factory)."""

    def _conn(self) -> sqlite3.Connection:
        local = self._local
        slot = "no_wait_conn" if getattr(local, "no_wait", False) else "conn"
        conn: sqlite3.Connection | None = getattr(local, slot, None)
        if conn is not None:
            return conn
        with self._lock:
            if self._closed:
                raise self._error(f"{self._label} {self._path}: store is closed")
            conn = sqlite3.connect(
                self._path, timeout=0 if slot == "no_wait_conn" else BUSY_TIMEOUT,
                isolation_level=None, check_same_thread=False,
            )
            self._all.append(conn)
        self._configure(conn)
        setattr(local, slot, conn)
        return conn

    @contextmanager
    def without_waiting(self) -> Iterator[None]:
        """Calls made inside, on this thread, use a connection of its own that
        never waits for a lock (busy timeout 0): the event loop's reads
        (``loop_reads``). Other calls on the same thread keep the waiting one."""
        local = self._local
        local.no_wait = True
        try:
            yield
        finally:
            local.no_wait = False

    @contextmanager
    def _transaction(self, conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
        """One write transaction; BEGIN IMMEDIATE takes the write lock up front so a
        read-then-write cannot fail half-way with SQLITE_BUSY."""
        if getattr(self._local, "no_wait", False):
            raise self._error(f"{self._label} {self._path}: a write among the loop's reads")
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _open_upgraded(
        self, path: Path, migrations: Sequence[Sequence[str]], now: str
    ) -> None:
        """Open the file and bring its schema up to date; a failure closes what was
        opened (the constructor of every store on this base)."""
        self._open_file(path)
        try:
            with self._errors():
                self._upgrade_schema(migrations, now)
        except BaseException:
            self.close()
            raise

    def _upgrade_schema(self, migrations: Sequence[Sequence[str]], now: str) -> None:
        """Bring the file's schema up to ``len(migrations)``; see "Schema upgrades".
        ``now`` is recorded as the time each version was applied."""
        latest = len(migrations)
        conn = self._conn()
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            log.warning(
                "%s %s: journal_mode is %s, not WAL; concurrency will suffer",
                self._label, self._path, mode,
            )
        if self._schema_version(conn) == latest:
            # Read without the write lock first: a file already up to date needs no
            # write, and a WAL reader does not wait for a writer. Taking the lock
            # for every open made `user list`, `report` and `status` fail with
            # "database is locked" while a server held a long write.
            return
        with self._transaction(conn) as c:
            tables = {
                r[0]
                for r in c.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table' "
                    "AND name NOT LIKE 'sqlite_%'"
                )
            }
            current = 0
            if "schema_version" in tables:
                current = c.execute(
                    "SELECT COALESCE(MAX(version), 0) FROM schema_version"
                ).fetchone()[0]
            if current > latest:
                raise self._too_new(
                    f"{self._label} {self._path}: this database was written by a newer "
                    f"smtpgate (schema v{current}, this version knows up to v{latest})"
                )
            if current == latest:
                return
            upgrading = bool(tables - {"schema_version"})
            if upgrading:
                copy = self._path.with_name(f"{self._path.name}.bak-v{current}-{_timestamp()}")
                # A second connection reads the last committed state while this one
                # holds the write lock (WAL readers do not wait for writers).
                backup_database(self._path, copy)
                log.warning(
                    "%s %s: upgrading the schema from v%d to v%d; the old file is saved as %s",
                    self._label, self._path, current, latest, copy,
                )
            else:
                log.info("%s %s: created (schema v%d)", self._label, self._path, latest)
            c.execute(
                "CREATE TABLE IF NOT EXISTS schema_version ("
                "version INTEGER PRIMARY KEY NOT NULL, applied TEXT NOT NULL)"
            )
            for version in range(current + 1, latest + 1):
                for statement in migrations[version - 1]:
                    c.execute(statement)
                c.execute(
                    "INSERT INTO schema_version (version, applied) VALUES (?, ?)",
                    (version, now),
                )
            if upgrading:
                self._after_upgrade(c, current)

    @staticmethod
    def _schema_version(conn: sqlite3.Connection) -> int:
        """The file's schema version, read outside any transaction (0: none)."""
        if conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
        ).fetchone() is None:
            return 0
        return int(conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()[0])

    def _after_upgrade(self, c: sqlite3.Connection, old_version: int) -> None:
        """Called in the upgrade's transaction once the file holds data of schema
        ``old_version`` brought up to date: a store reports here what its
        migrations could not do by themselves. Nothing by default."""

    def close(self) -> None:
        """Close every thread's connection. Call when no thread uses the store."""
        with self._lock:
            self._closed = True
            conns, self._all = self._all, []
        for conn in conns:
            conn.close()
        self._local = threading.local()
