"""One SQLite file shared by threads and processes: what the account store and the
guard store have in common.

Each thread gets its own connection (``sqlite3`` objects are not thread-safe);
``check_same_thread=False`` only so that ``close()`` can close every thread's
connection. The file is created with mode 0600 because both stores hold data an
attacker would like to read. Errors from sqlite3 and the OS are mapped, at this
boundary, to the store's own exception type.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar

#: Seconds a writer waits for another process's write lock before giving up.
BUSY_TIMEOUT = 5.0


class ThreadLocalSqlite:
    """Base of a store on one SQLite file; subclasses set the class attributes and
    may extend ``_configure`` for per-connection pragmas."""

    #: How the file is named in error messages ("account database").
    _label: ClassVar[str]
    #: The exception every sqlite3/OS error becomes.
    _error: ClassVar[type[Exception]]

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
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        with self._lock:
            if self._closed:
                raise self._error(f"{self._label} {self._path}: store is closed")
            conn = sqlite3.connect(
                self._path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
            )
            self._all.append(conn)
        self._configure(conn)
        self._local.conn = conn
        return conn

    @contextmanager
    def _transaction(self, conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
        """One write transaction; BEGIN IMMEDIATE takes the write lock up front so a
        read-then-write cannot fail half-way with SQLITE_BUSY."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def close(self) -> None:
        """Close every thread's connection. Call when no thread uses the store."""
        with self._lock:
            self._closed = True
            conns, self._all = self._all, []
        for conn in conns:
            conn.close()
        self._local = threading.local()
