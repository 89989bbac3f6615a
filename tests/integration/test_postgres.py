"""The PostgreSQL account backend against a real PostgreSQL server started by the
tests (``tests/postgres_server.py``): ``smtpgate db migrate``, start-up refusals,
every ``smtpgate user ...`` command compared with SQLite, and the server going
down mid-test (454, then recovery without a restart).

The protection suite runs on PostgreSQL too (``test_protection.py``, parametrised
over ``backends.BACKENDS``).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from smtpgate.auth.postgres_schema import SCHEMA_VERSION
from smtpgate.smtp import replies as R
from tests.peers.freezing_relay import FreezingRelay
from tests.postgres_server import PostgresCluster, require_postgres, shared_cluster

from .backends import BACKENDS, PostgresSetup, set_accounts
from .conftest import PASSWORD, SMTPGATE, USER, Server, make_server
from .test_protection import login


@pytest.fixture(scope="module")
def cluster() -> PostgresCluster:
    return shared_cluster()


@pytest.fixture
def pg_server(tmp_path: Path, cluster: PostgresCluster) -> Iterator[Server]:
    """A configured (not started) server on a fresh, unmigrated database."""
    srv = make_server(tmp_path / "srv")
    cluster.write_password_file(srv.root)
    set_accounts(srv, "postgresql", (
        "[accounts.postgresql]\n"
        f'dsn = "{cluster.create_database()}"\n'
        'password_file = "pg.password"\n'
    ))
    yield srv
    if srv.proc is not None:
        srv.stop()


def serve_once(srv: Server) -> subprocess.CompletedProcess[str]:
    """``smtpgate serve`` expected to refuse to start."""
    return subprocess.run(
        [SMTPGATE, "serve", "--config", str(srv.config)],
        capture_output=True, text=True, env=srv.env, timeout=60, check=False,
    )


# --- migrations and start-up --------------------------------------------------------------


def test_serve_and_user_commands_refuse_an_unmigrated_database_until_db_migrate(
    pg_server: Server,
) -> None:
    out = serve_once(pg_server)
    assert out.returncode != 0
    assert "accounts.postgresql.dsn" in out.stderr
    assert "run `smtpgate db migrate`" in out.stderr and "schema is v0" in out.stderr
    add = pg_server.cli("user", "add", USER, "--password-stdin", stdin=PASSWORD + "\n",
                        check=False)
    assert add.returncode == 1 and "smtpgate db migrate" in add.stderr

    first = pg_server.cli("db", "migrate")
    assert re.search(r"account database: PostgreSQL database \S+ on 127\.0\.0\.1:\d+: "
                     rf"schema v0 -> v{SCHEMA_VERSION}, migrated", first.stdout)
    again = pg_server.cli("db", "migrate")
    assert f"schema v{SCHEMA_VERSION}, up to date" in again.stdout

    pg_server.add_user(USER, PASSWORD)
    pg_server.start()
    assert login(pg_server, "127.0.0.2", USER, PASSWORD).startswith("235")


def test_concurrent_migrations_apply_each_version_once(pg_server: Server) -> None:
    procs = [
        subprocess.Popen([SMTPGATE, "db", "migrate", "--config", str(pg_server.config)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=pg_server.env)
        for _ in range(3)
    ]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outs
    accounts = [o.splitlines()[0] for o, _ in outs]
    assert sum(line.endswith(f"schema v0 -> v{SCHEMA_VERSION}, migrated") for line in accounts) == 1
    assert sum(line.endswith(f"schema v{SCHEMA_VERSION}, up to date") for line in accounts) == 2


def test_a_dsn_with_a_password_is_refused_naming_the_key(tmp_path: Path) -> None:
    srv = make_server(tmp_path / "srv")
    for dsn in ("postgresql://smtpgate:hunter2@127.0.0.1:5432/smtpgate",
                "host=127.0.0.1 user=smtpgate password=hunter2 dbname=smtpgate"):
        text = srv.config.read_text().split("\n[accounts.postgresql]")[0]
        srv.config.write_text(text)
        set_accounts(srv, "postgresql", f"[accounts.postgresql]\ndsn = '{dsn}'\n")
        out = serve_once(srv)
        assert out.returncode != 0
        assert "accounts.postgresql.dsn: holds a password" in out.stderr
        assert "hunter2" not in out.stderr
        srv.config.write_text(srv.config.read_text().replace(
            'backend = "postgresql"\n', ""))


def test_wrong_or_missing_password_file_is_a_clear_start_up_error(pg_server: Server) -> None:
    pg_server.cli("db", "migrate")
    (pg_server.root / "pg.password").write_text("not the password\n")
    out = serve_once(pg_server)
    assert out.returncode != 0
    assert "accounts.postgresql.dsn" in out.stderr
    assert "password authentication failed" in out.stderr
    (pg_server.root / "pg.password").unlink()
    out = serve_once(pg_server)
    assert out.returncode != 0
    assert "accounts.postgresql.password_file" in out.stderr and "cannot read" in out.stderr


def test_config_check_names_what_serve_would_refuse_on_postgresql(
    pg_server: Server, cluster: PostgresCluster,
) -> None:
    """`config check` said OK for a database serve then refused to start on: not
    migrated, a wrong password (errors); a server that does not answer is a warning,
    as serve starts then and answers logins 454 until it does."""
    def check() -> tuple[int, str]:
        out = pg_server.cli("config", "check", check=False)
        return out.returncode, out.stdout + out.stderr

    code, text = check()
    assert code == 1 and "accounts.postgresql.dsn" in text and "db migrate" in text, text
    pg_server.cli("db", "migrate")
    assert check()[0] == 0
    (pg_server.root / "pg.password").write_text("not the password\n")
    code, text = check()
    assert code == 1 and "password authentication failed" in text, text
    cluster.write_password_file(pg_server.root)
    cluster.stop()
    try:
        # Down now is no config error: serve starts and answers 454 until it is back.
        code, text = check()
        assert code == 0 and "warning: accounts.postgresql.dsn" in text, text
        assert "Connection refused" in text and "454 4.7.0" in text, text
    finally:
        cluster.start()


def test_config_check_warns_of_account_names_that_are_no_mailbox_on_postgresql(
    pg_server: Server, cluster: PostgresCluster,
) -> None:
    """Made before ``user add`` refused them, such accounts log in but can send only
    from their aliases: `config check` named them on SQLite, and said nothing on
    PostgreSQL."""
    import tomllib

    from smtpgate.auth.admin_store import AuditActor
    from smtpgate.auth.postgres_store import PostgresAccountStore
    from smtpgate.config import AccountsConfig, PostgresConfig

    pg_server.cli("db", "migrate")
    dsn = tomllib.loads(pg_server.config.read_text())["accounts"]["postgresql"]["dsn"]
    store = PostgresAccountStore(
        PostgresConfig(dsn=dsn, password_file=pg_server.root / "pg.password"), AccountsConfig())
    try:
        with store.transaction(AuditActor("ops", "pytest")) as w:
            for name in ("ok@example.org", "a)b@example.org"):
                w.create_account(name, {})
    finally:
        store.close()
    out = pg_server.cli("config", "check", check=False)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    assert "warning: accounts.postgresql.dsn: 1 account whose name is not a mailbox" in text, text
    assert "'a)b@example.org'" in text and "'ok@example.org'" not in text, text


# --- every `smtpgate user ...` command, the same as on SQLite -------------------------------

ALIAS = "sales@example.org"
SCRIPT: list[tuple[tuple[str, ...], str | None]] = [
    (("user", "add", USER, "--password-stdin"), PASSWORD + "\n"),
    (("user", "add", USER, "--password-stdin"), PASSWORD + "\n"),  # exists: refused
    (("user", "add", "bob@example.org", "--password-stdin"), "staple battery horse correct\n"),
    (("user", "passwd", USER, "--password-stdin"), "a brand new long passphrase\n"),
    (("user", "alias", "add", USER, ALIAS), None),
    (("user", "alias", "add", "bob@example.org", ALIAS), None),  # taken: refused
    # No letter case in names: SALES@ is sales@, Bob@ is bob@ (refused, already taken).
    (("user", "alias", "add", "bob@example.org", ALIAS.upper()), None),
    (("user", "add", "Bob@example.org", "--password-stdin"), "staple battery horse right\n"),
    (("user", "alias", "list", USER), None),
    (("user", "alias", "del", USER, ALIAS), None),
    (("user", "domain", "grant", USER, "example.net"), None),
    (("user", "domain", "revoke", USER, "example.net"), None),
    (("user", "access", USER, "--network", "10.0.0.0/8", "--listener", "submission"), None),
    (("user", "access", USER, "--any-network", "--any-listener"), None),
    (("user", "limits", USER, "--messages-per-hour", "5", "--recipients-per-hour", "0"), None),
    (("user", "mechanisms", USER, "--allow", "SCRAM-SHA-256"), None),
    (("user", "mechanisms", USER), None),
    (("user", "mechanisms", USER, "--all"), None),
    (("user", "cram-md5", USER, "--enable", "--password-stdin"), "a brand new long passphrase\n"),
    (("user", "cram-md5", USER), None),
    (("user", "cram-md5", USER, "--disable"), None),
    (("user", "max-age", USER, "90d"), None),
    (("user", "lock", USER), None),
    (("user", "unlock", USER), None),
    (("user", "rotate", USER, "--grace", "1d"), None),
    (("app-password", "add", USER, "phone"), None),
    (("app-password", "list", USER), None),
    (("app-password", "revoke", USER, "phone"), None),
    (("user", "show", USER), None),
    (("user", "list",), None),
    (("user", "remove", "bob@example.org"), None),
    (("user", "remove", "nobody@example.org"), None),  # no such account
    (("user", "list",), None),
]
#: What legitimately differs between two runs: times, generated secrets, paths.
_VOLATILE = [
    re.compile(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d(:\d\d(\.\d+)?)?(Z|[+-]\d\d:?\d\d| UTC)?"),
    re.compile(r"\b(?:[a-z2-9]{4}-){4}[a-z2-9]{4}\b"),
    re.compile(r"rotated-\S+"),
    re.compile(r"\b\d+(\.\d+)?[smhd]\b"),  # ages ("password age: 15s")
    re.compile(r"/\S+"),
]


def _normalise(text: str) -> str:
    for pattern in _VOLATILE:
        text = pattern.sub("<x>", text)
    # A table's column widths follow its longest cell, so an age of "9s" in one run
    # and "10s" in the other moves every border: compare the cells, not the padding.
    return re.sub(r"[━─]+", "─", re.sub(r" +", " ", text))


def _run_script(srv: Server) -> list[tuple[int, str, str]]:
    out = []
    for args, stdin in SCRIPT:
        r = srv.cli(*args, stdin=stdin, check=False)
        out.append((r.returncode, _normalise(r.stdout), _normalise(r.stderr)))
    return out


@pytest.mark.slow
def test_every_user_command_behaves_the_same_on_postgresql_as_on_sqlite(tmp_path: Path) -> None:
    lite = make_server(tmp_path / "lite")
    pg = make_server(tmp_path / "pg")
    BACKENDS["postgresql"].configure(pg)
    assert isinstance(BACKENDS["postgresql"], PostgresSetup)
    want, got = _run_script(lite), _run_script(pg)
    for (args, _), w, g in zip(SCRIPT, want, got, strict=True):
        assert g == w, f"smtpgate {' '.join(args)}: sqlite {w!r} != postgresql {g!r}"
    # The script did what it says (not two identical failures).
    failed = [(" ".join(args), err) for (args, _), (rc, _, err) in zip(SCRIPT, got, strict=True) if rc]
    assert len(failed) == 5, failed
    assert sum("already" in err for _, err in failed) == 4, failed
    assert "alice@example.org" in got[-1][1] and "bob@example.org" not in got[-1][1]
    log = pg.cli("admin-log", "--json").stdout
    assert '"account removed"' in log and '"app password added"' in log


# --- the database going away ------------------------------------------------------------------


def _logged_in_then_database_stopped(pg_server: Server, cluster: PostgresCluster) -> None:
    """A server on a migrated database with one account that has logged in once
    (235); then PostgreSQL is stopped under it."""
    pg_server.cli("db", "migrate")
    pg_server.add_user(USER, PASSWORD)
    pg_server.start()
    assert login(pg_server, "127.0.0.2", USER, PASSWORD).startswith("235")
    cluster.stop()


def test_postgresql_stopped_mid_test_gives_454_then_logins_recover_without_restart(
    pg_server: Server, cluster: PostgresCluster,
) -> None:
    _logged_in_then_database_stopped(pg_server, cluster)
    try:
        # The right password and a wrong one: neither may be called wrong (535).
        assert login(pg_server, "127.0.0.2", USER, PASSWORD) == str(R.AUTH_TEMPFAIL)
        assert login(pg_server, "127.0.0.3", USER, "a wrong guess") == str(R.AUTH_TEMPFAIL)
        log = pg_server.log_text()
        assert "PostgreSQL database" in log and "Connection refused" in log
    finally:
        cluster.start()
    reply = _until_235(pg_server, 60)
    assert reply.startswith("235"), reply
    assert pg_server.proc is not None and pg_server.proc.poll() is None  # never restarted


def test_a_refused_connection_fails_each_login_fast_not_after_the_timeout(
    pg_server: Server, cluster: PostgresCluster,
) -> None:
    """While the database refused connections (stopped: nothing listens), each login
    waited the whole ``timeout`` (5 s) for a pool that could not connect, then got
    its 454: clients and the auth service's read threads were held for nothing.
    A login now learns from the pool's failed attempts (or the outage under way)
    and makes one attempt itself, answered 454 as soon as it is refused; the
    timeout stays the bound for a server that does not answer, and each process
    still logs the outage once."""
    _logged_in_then_database_stopped(pg_server, cluster)
    try:
        for peer in ("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"):
            started = time.monotonic()
            assert login(pg_server, peer, USER, PASSWORD) == str(R.AUTH_TEMPFAIL)
            assert time.monotonic() - started < 2.5, peer  # not the 5 s timeout
        starts = re.findall(r"\[(\d+)\]: PostgreSQL database \S+ on \S+ unavailable:",
                            pg_server.log_text())
        assert starts and len(starts) == len(set(starts)), pg_server.log_text()
    finally:
        cluster.start()
    reply = _until_235(pg_server, 60)
    assert reply.startswith("235"), reply


def _short_timeout(srv: Server) -> None:
    srv.config.write_text(srv.config.read_text().replace(
        'password_file = "pg.password"\n', 'password_file = "pg.password"\ntimeout = 1\n'))


def _until_235(srv: Server, seconds: float, source: str = "127.0.0.2") -> str:
    """Logins from ``source`` until one succeeds (each other one a 454) within
    ``seconds``; the last reply."""
    deadline = time.monotonic() + seconds
    reply = ""
    while time.monotonic() < deadline:
        reply = login(srv, source, USER, PASSWORD)
        if reply.startswith("235"):
            break
        assert reply == str(R.AUTH_TEMPFAIL), reply
        time.sleep(0.5)
    return reply


def test_serve_started_while_the_database_is_down_answers_454_then_serves_when_it_is_back(
    pg_server: Server, cluster: PostgresCluster,
) -> None:
    """A host that boots before its database (or restarts while the database does)
    refused to start, exit 2, and stayed down: now it starts, logs the outage once as
    an ERROR naming the key and libpq's reason, answers logins 454 4.7.0 (neither the
    right password nor a wrong one is called wrong), and serves them once the
    database answers, without a restart."""
    _short_timeout(pg_server)
    pg_server.cli("db", "migrate")
    pg_server.add_user(USER, PASSWORD)
    cluster.stop()
    try:
        pg_server.start()
        assert login(pg_server, "127.0.0.2", USER, PASSWORD) == str(R.AUTH_TEMPFAIL)
        assert login(pg_server, "127.0.0.3", USER, "a wrong guess") == str(R.AUTH_TEMPFAIL)
        errors = [line for line in pg_server.log_text().splitlines()
                  if "ERROR" in line and "accounts.postgresql.dsn" in line]
        assert len(errors) == 1, pg_server.log_text()
        assert "Connection refused" in errors[0] and "454 4.7.0" in errors[0]
        assert "cannot start" not in pg_server.log_text()
    finally:
        cluster.start()
    reply = _until_235(pg_server, 60)
    assert reply.startswith("235"), reply
    assert pg_server.proc is not None and pg_server.proc.poll() is None  # never restarted
    # Not counted: the wrong guess's 454 left 127.0.0.3 free to log in. Each worker
    # leaves its fail-fast window (accounts.postgresql.retry_max) on its own, so the
    # other worker may still answer 454 for a few seconds.
    assert _until_235(pg_server, 30, "127.0.0.3").startswith("235")


def test_a_schema_found_unmigrated_when_the_database_comes_back_is_logged_and_454(
    pg_server: Server, cluster: PostgresCluster,
) -> None:
    """The schema could not be checked at start (the database was down); when the
    database answers, it is checked: an unmigrated one is an ERROR naming `smtpgate
    db migrate`, logins keep getting 454 (the workers keep running), and after the
    migration logins are served without a restart."""
    _short_timeout(pg_server)
    cluster.stop()
    try:
        pg_server.start()
    finally:
        cluster.start()
    deadline = time.monotonic() + 60
    while "smtpgate db migrate" not in pg_server.log_text() and time.monotonic() < deadline:
        assert login(pg_server, "127.0.0.2", USER, PASSWORD) == str(R.AUTH_TEMPFAIL)
        time.sleep(0.5)
    assert any("ERROR" in line and "schema is v0" in line and "smtpgate db migrate" in line
               for line in pg_server.log_text().splitlines()), pg_server.log_text()
    assert login(pg_server, "127.0.0.2", USER, PASSWORD) == str(R.AUTH_TEMPFAIL)
    pg_server.cli("db", "migrate")
    pg_server.add_user(USER, PASSWORD)
    reply = _until_235(pg_server, 60)
    assert reply.startswith("235"), reply
    assert pg_server.proc is not None and pg_server.proc.poll() is None


def test_a_table_locked_on_the_database_gives_454_within_the_timeout_not_a_hang(
    pg_server: Server, cluster: PostgresCluster,
) -> None:
    """Another host's `db migrate` (or a VACUUM FULL) holds an exclusive lock: each
    read waits for it. Bounded by `timeout`, logins get 454 meanwhile, not a wait
    without end that also holds every other login behind the two read threads."""
    text = pg_server.config.read_text().replace(
        'password_file = "pg.password"\n', 'password_file = "pg.password"\ntimeout = 1\n')
    pg_server.config.write_text(text)
    found = re.search(r'dsn = "[^"]*/(\w+)"', text)
    assert found is not None
    pg_server.cli("db", "migrate")
    pg_server.add_user(USER, PASSWORD)
    pg_server.start()
    assert login(pg_server, "127.0.0.2", USER, PASSWORD).startswith("235")
    with cluster.admin(found.group(1)) as locker:
        locker.autocommit = False
        locker.execute("LOCK TABLE accounts IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        assert login(pg_server, "127.0.0.2", USER, PASSWORD) == str(R.AUTH_TEMPFAIL)
        assert login(pg_server, "127.0.0.3", USER, "a wrong guess") == str(R.AUTH_TEMPFAIL)
        assert time.monotonic() - started < 8  # two logins of ~1 s each, not a hang
        locker.rollback()
    assert login(pg_server, "127.0.0.2", USER, PASSWORD).startswith("235")
    assert "statement timeout" in pg_server.log_text() + (pg_server.root / "auth.log").read_text()


def _server_processes(cluster: PostgresCluster) -> list[int]:
    """The postmaster of ``cluster`` and its children (the backends)."""
    postmaster = int((cluster.data / "postmaster.pid").read_text().split()[0])
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == postmaster:
            children.append(int(stat.parent.name))
    return [postmaster, *children]


def test_a_database_that_stops_answering_gives_454_within_a_bound_not_a_hang(
    pg_server: Server, cluster: PostgresCluster,
) -> None:
    """A frozen server (its host paused, a network cut that drops packets): the
    pooled connection's check, or a query, waits on a socket that never answers.
    The login gets 454 within twice `timeout` and a second, and logins after it
    too; once the server answers again, logins succeed."""
    text = pg_server.config.read_text().replace(
        'password_file = "pg.password"\n', 'password_file = "pg.password"\ntimeout = 1\n')
    pg_server.config.write_text(text)
    pg_server.cli("db", "migrate")
    pg_server.add_user(USER, PASSWORD)
    pg_server.start()
    assert login(pg_server, "127.0.0.2", USER, PASSWORD).startswith("235")
    frozen = _server_processes(cluster)
    for pid in frozen:
        os.kill(pid, signal.SIGSTOP)
    try:
        for source in ("127.0.0.2", "127.0.0.3", "127.0.0.4"):
            started = time.monotonic()
            assert login(pg_server, source, USER, PASSWORD) == str(R.AUTH_TEMPFAIL)
            assert time.monotonic() - started < 8
    finally:
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
    deadline = time.monotonic() + 30
    reply = ""
    while time.monotonic() < deadline and not reply.startswith("235"):
        reply = login(pg_server, "127.0.0.2", USER, PASSWORD)
    assert reply.startswith("235"), reply


def test_a_rotated_database_password_is_used_without_a_restart(
    tmp_path: Path, cluster: PostgresCluster,
) -> None:
    """The DBA changes the role's password and the admin writes the new one to the
    password file: the pool's next connection (after a database restart, or its
    hourly renewal) logs in with it, instead of 454 for every login until a restart."""
    role = f"rotating_{os.getpid()}"
    with cluster.admin() as c:
        c.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'first-Secret-1'")
        c.execute(f"CREATE DATABASE {role} OWNER {role}")
    srv = make_server(tmp_path / "srv")
    (srv.root / "pg.password").write_text("first-Secret-1\n")
    set_accounts(srv, "postgresql", (
        "[accounts.postgresql]\n"
        f'dsn = "postgresql://{role}@127.0.0.1:{cluster.port}/{role}"\n'
        'password_file = "pg.password"\ntimeout = 2\n'
    ))
    try:
        srv.cli("db", "migrate")
        srv.add_user(USER, PASSWORD)
        srv.start()
        assert login(srv, "127.0.0.2", USER, PASSWORD).startswith("235")
        with cluster.admin() as c:
            c.execute(f"ALTER ROLE {role} PASSWORD 'second-Secret-2'")
            (srv.root / "pg.password").write_text("second-Secret-2\n")
            c.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      "WHERE usename = %s", (role,))
        reply = _until_235(srv, 30)
        assert reply.startswith("235"), srv.log_text()[-1500:]
    finally:
        if srv.proc is not None:
            srv.stop()


def test_db_backup_copies_the_guard_database_and_points_to_pg_dump(pg_server: Server) -> None:
    pg_server.cli("db", "migrate")  # also creates the guard database
    out = pg_server.cli("db", "backup", check=False)
    assert out.returncode == 0, out.stderr
    assert "account database: on the PostgreSQL server" in out.stdout and "pg_dump" in out.stdout
    assert len(list(pg_server.root.glob("guard.sqlite.bak-*"))) == 1
    assert not list(pg_server.root.glob("accounts.sqlite.bak-*"))


@contextlib.contextmanager
def _schema_as_left_by(pg_server: Server, version: int) -> Iterator[Any]:
    """A connection to the server's database with the schema as ``version`` left
    it (its migrations applied by hand, no data): for ``db migrate`` to take on."""
    from smtpgate.auth.postgres_schema import MIGRATIONS
    from tests.postgres_server import ROLE_PASSWORD

    dsn = re.search(r'dsn = "([^"]+)"', pg_server.config.read_text())
    assert dsn is not None
    with psycopg.connect(dsn.group(1), password=ROLE_PASSWORD) as c:
        c.execute("CREATE TABLE schema_version (version integer PRIMARY KEY, "
                  "applied timestamptz NOT NULL)")
        for v in range(version):
            for statement in MIGRATIONS[v]:
                c.execute(statement)
            c.execute("INSERT INTO schema_version VALUES (%s, now())", (v + 1,))
        yield c


def test_db_migrate_lowers_the_letter_case_of_names(
    pg_server: Server, cluster: PostgresCluster
) -> None:
    """v6 (auth/names.py): login names have no letter case; an account and an alias
    stored with capitals are renamed to lower case, the rows naming them following."""
    with _schema_as_left_by(pg_server, 5) as c:
        c.execute("INSERT INTO accounts (name, created, updated) "
                  "VALUES ('Carol@example.org', now(), now())")
        c.execute("INSERT INTO aliases VALUES ('Sales@example.org', 'Carol@example.org', now())")
        # A pair `user add` made before 2026-12-01: both stay, and the migration says so.
        for name in ("Dave@example.org", "dave@example.org"):
            c.execute("INSERT INTO accounts (name, created, updated) VALUES (%s, now(), now())",
                      (name,))
    migrated = pg_server.cli("db", "migrate")
    assert "migrated" in migrated.stdout
    assert ("account 'Dave@example.org' was not renamed to 'dave@example.org', which is "
            "another account: no login or command reaches 'Dave@example.org'") in migrated.stderr
    assert "'Carol@example.org' was not renamed" not in migrated.stderr
    listed = pg_server.cli("user", "list").stdout
    assert "carol@example.org" in listed and "Carol@" not in listed
    shown = pg_server.cli("user", "show", "CAROL@example.org").stdout
    assert "sales@example.org" in shown


def test_db_migrate_lowers_non_ascii_capitals_in_a_database_with_c_ctype(
    pg_server: Server, cluster: PostgresCluster
) -> None:
    """v6 in a database created with LC_CTYPE 'C' (a common choice for speed):
    PostgreSQL's lower() lowers ASCII only there, so the migration, which read the
    rows lower() would change, left 'Émile@example.org' as it was, without a word,
    and no login reached it (a login looks up 'émile@example.org'); the SQLite
    file's migration renamed it. Every row with a non-ASCII character is read now."""
    with cluster.admin() as c:
        name = f"ctype_c_{os.getpid()}_{time.monotonic_ns()}"
        c.execute(f"CREATE DATABASE {name} OWNER smtpgate TEMPLATE template0 "
                  "LC_COLLATE 'C' LC_CTYPE 'C'")
    text = pg_server.config.read_text()
    dsn = re.search(r'dsn = "([^"]+)"', text)
    assert dsn is not None
    pg_server.config.write_text(text.replace(
        dsn.group(1), dsn.group(1).rsplit("/", 1)[0] + "/" + name))
    with _schema_as_left_by(pg_server, 5) as c:
        assert c.execute("SELECT lower('É') = 'É'").fetchone() == (True,)
        c.execute("INSERT INTO accounts (name, created, updated) "
                  "VALUES ('Émile@example.org', now(), now())")
        c.execute("INSERT INTO aliases VALUES ('Ventes@Société.example', "
                  "'Émile@example.org', now())")
    migrated = pg_server.cli("db", "migrate")
    assert "migrated" in migrated.stdout
    assert "not renamed" not in migrated.stderr
    listed = pg_server.cli("user", "list").stdout
    assert "émile@example.org" in listed and "Émile@" not in listed
    shown = pg_server.cli("user", "show", "ÉMILE@example.org").stdout
    assert "ventes@société.example" in shown


def test_a_database_that_refuses_writes_is_named_so_and_db_migrate_reads_only(
    pg_server: Server, cluster: PostgresCluster
) -> None:
    """A database that refuses writes (a standby a failover left the DSN on;
    default_transaction_read_only stands in for one): a user command said "check
    accounts.postgresql.dsn and password_file, and that the database server is
    running and reachable", all of which were fine; and `db migrate` on a schema
    already up to date failed ("cannot execute CREATE TABLE in a read-only
    transaction") where it has nothing to write."""
    pg_server.cli("db", "migrate")
    pg_server.add_user(USER, PASSWORD)
    dsn = re.search(r'dsn = "([^"]+)"', pg_server.config.read_text())
    assert dsn is not None
    name = dsn.group(1).rsplit("/", 1)[1]
    with cluster.admin() as c:
        c.execute(f"ALTER DATABASE {name} SET default_transaction_read_only = on")
    try:
        up_to_date = pg_server.cli("db", "migrate", check=False)
        assert up_to_date.returncode == 0, up_to_date.stderr
        assert f"schema v{SCHEMA_VERSION}, up to date" in up_to_date.stdout
        locked = pg_server.cli("user", "lock", USER, check=False)
        assert locked.returncode == 1
        assert "read-only transaction" in locked.stderr
        assert "the database refuses writes: a standby" in locked.stderr, locked.stderr
        assert "target_session_attrs=read-write" in locked.stderr
        assert "running and reachable" not in locked.stderr
    finally:
        with cluster.admin() as c:
            c.execute(f"ALTER DATABASE {name} RESET default_transaction_read_only")


def test_db_migrate_renames_a_labels_to_the_one_spelling(
    pg_server: Server, cluster: PostgresCluster
) -> None:
    """v4 (auth/names.py): an account, alias and granted domain stored with A-labels
    get their U-label spelling, the rows naming the account following; where both
    spellings were two accounts, both stay."""
    with _schema_as_left_by(pg_server, 3) as c:
        for name in ("user@xn--bcher-kva.example", "twin@xn--bcher-kva.example",
                     "twin@bücher.example"):
            c.execute("INSERT INTO accounts (name, created, updated) VALUES (%s, now(), now())",
                      (name,))
        c.execute("INSERT INTO aliases VALUES ('info@xn--bcher-kva.example', "
                  "'user@xn--bcher-kva.example', now())")
        c.execute("INSERT INTO granted_domains VALUES ('user@xn--bcher-kva.example', "
                  "'xn--mnchen-3ya.example', now())")
    assert "migrated" in pg_server.cli("db", "migrate").stdout
    listed = pg_server.cli("user", "list").stdout
    assert "user@bücher.example" in listed and "user@xn--" not in listed
    assert "twin@bücher.example" in listed and "twin@xn--bcher-kva.example" in listed
    shown = pg_server.cli("user", "show", "user@xn--bcher-kva.example").stdout
    assert "info@bücher.example" in shown and "münchen.example" in shown
def _connection_limit(cluster: PostgresCluster, srv: Server, limit: int) -> None:
    """``CONNECTION LIMIT`` of the server's database (0: every new connection is
    refused with 53300 too_many_connections, "too many connections for database"),
    and, for 0, its open connections ended, so the pool has to connect anew."""
    dsn = next(line for line in srv.config.read_text().splitlines() if line.startswith("dsn"))
    name = dsn.rsplit("/", 1)[1].rstrip('"')
    with cluster.admin() as c:
        c.execute(f"ALTER DATABASE {name} CONNECTION LIMIT {limit}")
        if limit == 0:
            c.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      "WHERE datname = %s AND pid <> pg_backend_pid()", (name,))


def test_too_many_connections_at_a_login_is_454_never_535(
    pg_server: Server, cluster: PostgresCluster,
) -> None:
    """A database refusing new connections with "too many connections" (53300)
    while the server runs: the right password and a wrong one both get 454 4.7.0,
    and logins recover once it accepts connections again."""
    _short_timeout(pg_server)
    pg_server.cli("db", "migrate")
    pg_server.add_user(USER, PASSWORD)
    pg_server.start()
    try:
        assert login(pg_server, "127.0.0.2", USER, PASSWORD).startswith("235")
        _connection_limit(cluster, pg_server, 0)
        assert login(pg_server, "127.0.0.2", USER, PASSWORD) == str(R.AUTH_TEMPFAIL)
        assert login(pg_server, "127.0.0.3", USER, "a wrong guess") == str(R.AUTH_TEMPFAIL)
        assert "too many connections" in pg_server.log_text()
    finally:
        _connection_limit(cluster, pg_server, -1)
    reply = _until_235(pg_server, 60)
    assert reply.startswith("235"), reply


class FullCluster(PostgresCluster):
    """A private server of three connection slots, none reserved for superusers:
    three held connections fill it, and the next one is refused with "sorry, too
    many clients already" (53300) before any login."""

    def start(self) -> None:
        options = (f"-c listen_addresses=127.0.0.1 -p {self.port} "
                   f"-c unix_socket_directories={self.root} -c fsync=off "
                   "-c max_connections=3 -c superuser_reserved_connections=0 "
                   "-c shared_buffers=16MB")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"),
                  "-o", options, "-w", "-t", "60", "start")


def test_a_server_full_at_start_up_is_an_outage_not_a_configuration_error(
    tmp_path: Path,
) -> None:
    """serve started while PostgreSQL has no connection slot left used to stop
    ("cannot start", exit 2) as if the password were wrong: psycopg gives no
    SQLSTATE for a failed connection and PQping calls a full server up. Now it
    starts, answers 454 4.7.0, and serves once a slot is free, without a restart."""
    full = FullCluster(require_postgres())
    held: list[psycopg.Connection[tuple[object, ...]]] = []
    try:
        srv = make_server(tmp_path / "srv")
        full.write_password_file(srv.root)
        set_accounts(srv, "postgresql", (
            "[accounts.postgresql]\n"
            f'dsn = "{full.create_database()}"\n'
            'password_file = "pg.password"\n'
        ))
        _short_timeout(srv)
        srv.cli("db", "migrate")
        srv.add_user(USER, PASSWORD)
        held = [full.admin() for _ in range(3)]
        srv.start()
        try:
            assert login(srv, "127.0.0.2", USER, PASSWORD) == str(R.AUTH_TEMPFAIL)
            assert login(srv, "127.0.0.3", USER, "a wrong guess") == str(R.AUTH_TEMPFAIL)
            assert "cannot start" not in srv.log_text()
            for c in held:
                c.close()
            reply = _until_235(srv, 60)
            assert reply.startswith("235"), reply
        finally:
            srv.stop()
    finally:
        for c in held:
            c.close()
        full.destroy()


def test_a_database_that_accepts_and_never_answers_costs_one_login_its_timeout_not_each(
    pg_server: Server, cluster: PostgresCluster,
) -> None:
    """A database host that accepts TCP and then says nothing (frozen, blackholed)
    cost every login the whole connect or query timeout, one after another on the
    worker's read threads, so logins piled up behind each other. Now the first
    login gets 454 after its bound, the next ones 454 at once (a probe, not a
    login, asks the server meanwhile), and logins are served again once the
    server answers."""
    proxy = FreezingRelay(cluster.port)
    try:
        text = pg_server.config.read_text()
        text = text.replace(f"127.0.0.1:{cluster.port}/", f"127.0.0.1:{proxy.port}/").replace(
            'password_file = "pg.password"\n', 'password_file = "pg.password"\ntimeout = 2\n')
        pg_server.config.write_text(text + "\n[server]\nworkers = 1\n")
        pg_server.cli("db", "migrate")
        pg_server.add_user(USER, PASSWORD)
        pg_server.start()
        assert login(pg_server, "127.0.0.2", USER, PASSWORD).startswith("235")
        proxy.freeze()
        started = time.monotonic()
        assert login(pg_server, "127.0.0.2", USER, PASSWORD) == str(R.AUTH_TEMPFAIL)
        assert time.monotonic() - started < 8  # the bound: twice timeout and a second
        for peer in ("127.0.0.3", "127.0.0.4", "127.0.0.5", "127.0.0.6", "127.0.0.3"):
            started = time.monotonic()
            assert login(pg_server, peer, USER, "a wrong guess") == str(R.AUTH_TEMPFAIL)
            assert time.monotonic() - started < 1.0, peer  # not another timeout
            time.sleep(0.3)
        proxy.thaw()
        reply = _until_235(pg_server, 30)
        assert reply.startswith("235"), reply
        assert pg_server.proc is not None and pg_server.proc.poll() is None
    finally:
        proxy.close()


# --- TLS to the database --------------------------------------------------------------------


def _set_dsn(srv: Server, dsn: str) -> None:
    text = srv.config.read_text()
    srv.config.write_text(re.sub(r'(?m)^dsn = ".*"$', lambda _: f'dsn = "{dsn}"', text))


def _refused_at_start_naming_the_dsn(srv: Server, reason: str) -> None:
    """serve stops at start-up and config check says error, both with libpq's reason."""
    out = serve_once(srv)
    assert out.returncode == 2, out.stderr
    assert "cannot start: accounts.postgresql.dsn" in out.stderr and reason in out.stderr
    check = srv.cli("config", "check", check=False)
    text = check.stdout + check.stderr
    assert check.returncode == 1 and "error: accounts.postgresql.dsn" in text, text
    assert reason in text and "454" not in text, text


def test_sslmode_require_against_a_server_without_tls_stops_serve_not_454_for_good(
    pg_server: Server,
) -> None:
    """libpq's "server does not support SSL, but SSL was required" made PQping
    report no response, so it was taken for an outage: serve started and answered
    every login 454 4.7.0 for good, config check said OK. The server answers a bare
    startup packet, so the configuration is what is wrong."""
    pg_server.cli("db", "migrate")
    dsn = re.search(r'(?m)^dsn = "(.*)"$', pg_server.config.read_text())
    assert dsn is not None
    _set_dsn(pg_server, dsn.group(1) + "?sslmode=require")
    _refused_at_start_naming_the_dsn(pg_server, "server does not support SSL")


class TLSCluster(PostgresCluster):
    """A private server with TLS on, its certificate self-signed for 127.0.0.1."""

    def start(self) -> None:
        crt, key = self.data / "server.crt", self.data / "server.key"
        if not crt.exists():
            self.ca = self.root / "db-ca.pem"
            _self_signed(crt, key, "127.0.0.1", "IP:127.0.0.1")
            self.ca.write_bytes(crt.read_bytes())
            if os.geteuid() == 0:
                for path in (crt, key):
                    os.chown(path, *_postgres_ids())
        options = (f"-c listen_addresses=127.0.0.1 -p {self.port} "
                   f"-c unix_socket_directories={self.root} -c fsync=off "
                   "-c max_connections=20 -c shared_buffers=16MB -c ssl=on")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"),
                  "-o", options, "-w", "-t", "60", "start")


def _postgres_ids() -> tuple[int, int]:
    import pwd
    entry = pwd.getpwnam("postgres")
    return entry.pw_uid, entry.pw_gid


def _self_signed(crt: Path, key: Path, name: str, san: str) -> None:
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-keyout", str(key), "-out", str(crt), "-days", "2", "-subj", f"/CN={name}",
         "-addext", f"subjectAltName={san}"],
        check=True, capture_output=True, timeout=60)
    key.chmod(0o600)


def test_a_database_certificate_that_fails_verification_stops_serve_not_454_for_good(
    tmp_path: Path,
) -> None:
    """sslmode=verify-full with sslrootcert naming another CA, or a file that is not
    there: PQping failed the handshake as it would a silent server, so serve started
    and answered 454 4.7.0 for good. Now both stop it at start-up naming the key; the
    right CA still serves."""
    tls = TLSCluster(require_postgres())
    try:
        srv = make_server(tmp_path / "srv")
        tls.write_password_file(srv.root)
        base = tls.create_database()
        set_accounts(srv, "postgresql", (
            "[accounts.postgresql]\n"
            f'dsn = "{base}?sslmode=verify-full&sslrootcert={tls.ca}"\n'
            'password_file = "pg.password"\n'
        ))
        srv.cli("db", "migrate")
        srv.add_user(USER, PASSWORD)
        other = tmp_path / "other-ca.pem"
        _self_signed(other, tmp_path / "other-ca.key", "another CA", "DNS:ca.example.org")
        _set_dsn(srv, f"{base}?sslmode=verify-full&sslrootcert={other}")
        _refused_at_start_naming_the_dsn(srv, "certificate verify failed")
        _set_dsn(srv, f"{base}?sslmode=verify-full&sslrootcert={tmp_path / 'missing.pem'}")
        _refused_at_start_naming_the_dsn(srv, "missing.pem")
        _set_dsn(srv, f"{base}?sslmode=verify-full&sslrootcert={tls.ca}")
        srv.start()
        try:
            assert login(srv, "127.0.0.2", USER, PASSWORD).startswith("235")
        finally:
            srv.stop()
    finally:
        tls.destroy()


def test_db_migrate_without_the_right_to_create_says_so_on_one_line_with_what_to_do(
    tmp_path: Path, cluster: PostgresCluster,
) -> None:
    """A database owned by another role (no CREATE in ``public`` since PostgreSQL
    15): db migrate printed the server's three lines with ``\\x0a`` between them and
    the hint "check [accounts] in the config". Now one line, and a hint that names
    what the role lacks and the two ways to give it; with a schema named as the
    role (first in the default search_path) it migrates."""
    name = f"other_owner_{os.getpid()}"
    with cluster.admin() as c:
        c.execute(f"CREATE DATABASE {name} OWNER postgres")
    with cluster.admin(name) as c:
        c.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
    srv = make_server(tmp_path / "srv")
    cluster.write_password_file(srv.root)
    set_accounts(srv, "postgresql", (
        "[accounts.postgresql]\n"
        f'dsn = "{cluster.dsn(name)}"\n'
        'password_file = "pg.password"\n'
    ))
    out = srv.cli("db", "migrate", check=False)
    assert out.returncode != 0
    error = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "permission denied for schema public" in error[0], out.stderr
    assert "\\x0a" not in out.stderr, out.stderr
    assert "hint: the role in accounts.postgresql.dsn may not create tables" in out.stderr
    assert "CREATE SCHEMA smtpgate AUTHORIZATION smtpgate" in out.stderr
    assert "run db migrate with the DSN of their owner" in out.stderr
    with cluster.admin(name) as c:
        c.execute("CREATE SCHEMA smtpgate AUTHORIZATION smtpgate")
    assert f"schema v0 -> v{SCHEMA_VERSION}, migrated" in srv.cli("db", "migrate").stdout


def test_a_user_command_cancelled_on_a_lock_names_the_lock_not_the_dsn(
    pg_server: Server, cluster: PostgresCluster,
) -> None:
    """`smtpgate user add` while another session holds a lock on the accounts (a
    LOCK TABLE left open in psql, a VACUUM FULL): the server cancels it after
    `timeout`, and the hint said to check the DSN, the password file and whether
    the server runs, all fine. It now names the lock and where to see it."""
    _short_timeout(pg_server)
    found = re.search(r'dsn = "[^"]*/(\w+)"', pg_server.config.read_text())
    assert found is not None
    pg_server.cli("db", "migrate")
    with cluster.admin(found.group(1)) as locker:
        locker.autocommit = False
        locker.execute("LOCK TABLE accounts IN ACCESS EXCLUSIVE MODE")
        out = pg_server.cli("user", "add", USER, "--password-stdin", stdin=PASSWORD + "\n",
                            check=False)
        locker.rollback()
    assert out.returncode != 0
    assert "canceling statement due to statement timeout" in out.stderr, out.stderr
    assert "hint: a statement ran longer than accounts.postgresql.timeout" in out.stderr
    assert "pg_locks" in out.stderr and "password_file" not in out.stderr, out.stderr
    pg_server.add_user(USER, PASSWORD)
