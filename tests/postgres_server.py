"""A private PostgreSQL server for the tests: a cluster in a temp dir, loopback only.

Debian's ``postgresql`` package provides ``initdb`` and ``pg_ctl`` (under
/usr/lib/postgresql/VERSION/bin); the system service is never used. The server
listens on 127.0.0.1 on a free port, its unix socket in the temp dir. Run as
root, the cluster belongs to the ``postgres`` user and every server command
runs through ``runuser`` (PostgreSQL refuses to run as root).

The superuser logs in through the socket only (trust, the socket is in a 0700
directory); TCP logins need a password (scram-sha-256), so the tests go the
way a deployment does: the role ``smtpgate`` with a password file.

``shared_cluster()`` starts one server on first use and stops it when the test
process exits, so the contract suite and the integration tests share it; each
test gets its own database (``create_database``).
"""

from __future__ import annotations

import atexit
import glob
import itertools
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import psycopg
import pytest

from tests.ports import free_port as _free_port

ROLE = "smtpgate"
ROLE_PASSWORD = "pg-test-Secret-42"
IN_CI = bool(os.environ.get("SMTPGATE_CI") or os.environ.get("CI"))


def _bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    return Path(found[-1]).parent if found else None


def require_postgres() -> Path:
    """The PostgreSQL programs' directory; missing under CI is a failure, not a skip."""
    bindir = _bindir()
    if bindir is None:
        if IN_CI:
            pytest.fail("PostgreSQL is not installed (make test installs the postgresql package)")
        pytest.skip("PostgreSQL (initdb, pg_ctl) not installed")
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        pytest.fail("runuser is needed to run PostgreSQL as the postgres user")
    return bindir


class PostgresCluster:
    """One running PostgreSQL server (see the module docstring)."""

    def __init__(self, bindir: Path) -> None:
        self._bin = bindir
        self.root = Path(tempfile.mkdtemp(prefix="smtpgate-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self._names = itertools.count(1)
        self._lock = threading.Lock()
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            shutil.chown(self.root, "postgres", "postgres")
        pwfile = self.root / "initdb.pw"
        pwfile.write_text("unused\n")
        if self._as_postgres:
            shutil.chown(pwfile, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth-local=trust",
                  "--auth-host=scram-sha-256", "--no-sync", "-E", "UTF8", "--locale=C.UTF-8",
                  f"--pwfile={pwfile}")
        self.start()
        with self.admin() as c:
            c.execute(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{ROLE_PASSWORD}'")

    def _run(self, prog: str, *args: str) -> None:
        cmd = [str(self._bin / prog), *args]
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=self.root,
                             check=False)
        if out.returncode != 0:
            raise RuntimeError(f"{prog} failed ({out.returncode}):\n{out.stdout}{out.stderr}")

    def start(self) -> None:
        options = (f"-c listen_addresses=127.0.0.1 -p {self.port} "
                   f"-c unix_socket_directories={self.root} -c fsync=off "
                   "-c max_connections=200 -c shared_buffers=16MB")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"),
                  "-o", options, "-w", "-t", "60", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")

    def admin(self, dbname: str = "postgres") -> psycopg.Connection[tuple[object, ...]]:
        """A superuser connection through the socket, autocommit."""
        return psycopg.connect(host=str(self.root), port=self.port, user="postgres",
                               dbname=dbname, autocommit=True)

    def create_database(self) -> str:
        """A new empty database owned by the role ``smtpgate``; its DSN (no password)."""
        with self._lock:
            name = f"accounts_{os.getpid()}_{next(self._names)}"
        with self.admin() as c:
            c.execute(f"CREATE DATABASE {name} OWNER {ROLE}")
        return self.dsn(name)

    def dsn(self, dbname: str) -> str:
        return f"postgresql://{ROLE}@127.0.0.1:{self.port}/{dbname}"

    def write_password_file(self, directory: Path) -> Path:
        path = directory / "pg.password"
        path.write_text(ROLE_PASSWORD + "\n")
        path.chmod(0o600)
        return path

    def destroy(self) -> None:
        try:
            self.stop()
        except (RuntimeError, OSError, subprocess.TimeoutExpired):
            pass
        shutil.rmtree(self.root, ignore_errors=True)


_shared: PostgresCluster | None = None
_shared_lock = threading.Lock()


def shared_cluster() -> PostgresCluster:
    """The test process's PostgreSQL server, started on first use, stopped at exit."""
    global _shared
    bindir = require_postgres()
    with _shared_lock:
        if _shared is None:
            _shared = PostgresCluster(bindir)
            atexit.register(_shared.destroy)
        return _shared
