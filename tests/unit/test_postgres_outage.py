"""A PostgreSQL server that cannot be reached at start-up is an outage (serve starts
and answers 454 4.7.0 until it answers), told apart from a configuration that can
never work (a refused login, no such database: serve refuses to start) by what
the server reported, never by libpq's localised message text. No server is
needed: psycopg's connect and libpq's ping are replaced."""

from __future__ import annotations

import logging
import socket
import struct
import threading
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import psycopg
import pytest
from psycopg import errors, pq

from smtpgate.auth import postgres_probe, postgres_schema, postgres_store
from smtpgate.auth.directory import StoreUnavailable
from smtpgate.auth.postgres_schema import (
    SCHEMA_VERSION,
    PostgresSchemaTooNew,
    PostgresUnreachable,
    SchemaNotMigrated,
    outage_state,
)
from smtpgate.config import AccountsConfig, PostgresConfig

#: Nothing listens here (the pool's background attempts are refused at once).
PG = PostgresConfig(dsn="postgresql://smtpgate@127.0.0.1:26987/accounts", timeout=1)


@pytest.mark.parametrize(("sqlstate", "outage"), [
    (None, True),        # no answer from the server: the connection broke
    ("08006", True),     # connection_failure
    ("57P01", True),     # admin_shutdown
    ("57P03", True),     # cannot_connect_now: starting up
    ("53300", True),     # too_many_connections
    ("28P01", False),    # invalid_password
    ("28000", False),    # invalid_authorization_specification (no such role, pg_hba)
    ("3D000", False),    # invalid_catalog_name: no such database
    ("42501", False),    # insufficient_privilege
])
def test_sqlstate_classes_tell_an_outage_from_a_configuration_that_cannot_work(
    sqlstate: str | None, outage: bool,
) -> None:
    assert outage_state(sqlstate) is outage


class _Connects:
    """psycopg.connect replaced: raises each of ``errors`` in turn, then connects."""

    def __init__(self, *errs: psycopg.Error) -> None:
        self.errors = list(errs)
        self.calls = 0

    def __call__(self, *args: Any, **kwargs: Any) -> object:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "a connection"


@pytest.fixture
def pings(monkeypatch: pytest.MonkeyPatch) -> list[pq.Ping]:
    """What libpq's PQping answers, in turn (the last one again when used up)."""
    answers: list[pq.Ping] = []
    seen: list[str] = []

    def ping(conninfo: str) -> pq.Ping:
        seen.append(conninfo)
        assert "password" not in conninfo
        return answers.pop(0) if len(answers) > 1 else answers[0]

    monkeypatch.setattr(postgres_schema, "ping", ping)
    return answers


def _failed() -> psycopg.OperationalError:
    # What psycopg raises for any failed connection: no SQLSTATE, whoever refused.
    return psycopg.OperationalError("connection failed: (localised text, never read)")


def test_a_server_that_does_not_answer_is_an_outage(
    monkeypatch: pytest.MonkeyPatch, pings: list[pq.Ping],
) -> None:
    for answer in (pq.Ping.NO_RESPONSE, pq.Ping.REJECT):  # down; starting up
        pings[:] = [answer]
        connects = _Connects(_failed())
        monkeypatch.setattr(postgres_schema.psycopg, "connect", connects)
        with pytest.raises(PostgresUnreachable, match=r"127\.0\.0\.1:26987"):
            postgres_schema.connect(PG)
        assert connects.calls == 1


def test_a_server_that_answers_and_refuses_the_login_is_no_outage(
    monkeypatch: pytest.MonkeyPatch, pings: list[pq.Ping],
) -> None:
    pings[:] = [pq.Ping.OK]
    connects = _Connects(_failed(), _failed())
    monkeypatch.setattr(postgres_schema.psycopg, "connect", connects)
    with pytest.raises(StoreUnavailable) as e:
        postgres_schema.connect(PG)
    assert not isinstance(e.value, PostgresUnreachable)
    assert connects.calls == 2  # asked again: it may have come up just then


def test_a_server_that_came_up_between_the_attempt_and_the_ping_is_connected_to(
    monkeypatch: pytest.MonkeyPatch, pings: list[pq.Ping],
) -> None:
    pings[:] = [pq.Ping.OK]
    monkeypatch.setattr(postgres_schema.psycopg, "connect", _Connects(_failed()))
    assert postgres_schema.connect(PG) == "a connection"


def test_an_error_with_a_sqlstate_is_classified_by_it_without_a_ping(
    monkeypatch: pytest.MonkeyPatch, pings: list[pq.Ping],
) -> None:
    pings[:] = []  # a ping would fail the test (IndexError)
    monkeypatch.setattr(postgres_schema.psycopg, "connect",
                        _Connects(errors.InvalidPassword("refused")))
    with pytest.raises(StoreUnavailable) as e:
        postgres_schema.connect(PG)
    assert not isinstance(e.value, PostgresUnreachable)
    monkeypatch.setattr(postgres_schema.psycopg, "connect",
                        _Connects(errors.CannotConnectNow("starting up")))
    with pytest.raises(PostgresUnreachable):
        postgres_schema.connect(PG)


# --- the store opened while the server is down ---------------------------------------------


@pytest.fixture
def down(monkeypatch: pytest.MonkeyPatch) -> None:
    def unreachable(pg: PostgresConfig) -> int:
        raise PostgresUnreachable(f"{postgres_schema.where(pg)}: connection refused")

    monkeypatch.setattr(postgres_store, "schema_version", unreachable)


@pytest.fixture
def store(down: None) -> Iterator[postgres_store.PostgresAccountStore]:
    s = postgres_store.PostgresAccountStore(PG, AccountsConfig(), outage_ok=True)
    yield s
    s.close()


def test_the_store_opens_in_an_outage_only_when_serve_asks(down: None) -> None:
    with pytest.raises(PostgresUnreachable):
        postgres_store.PostgresAccountStore(PG, AccountsConfig())


def test_the_store_opened_in_an_outage_says_why_and_answers_unavailable(
    store: postgres_store.PostgresAccountStore,
) -> None:
    assert store.outage is not None and "26987" in store.outage
    with pytest.raises(StoreUnavailable):  # 454 4.7.0, never a wrong password
        store.get_account("alice@example.org")


class _FakeConnection:
    def __init__(self) -> None:
        self.statements: list[str] = []
        self.closed = False

    def execute(self, statement: object, *args: object) -> None:
        self.statements.append(str(statement))

    def close(self) -> None:
        self.closed = True


def test_the_schema_is_checked_on_the_first_connection_after_an_outage(
    store: postgres_store.PostgresAccountStore, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    version = [0]
    monkeypatch.setattr(postgres_store, "current_version", lambda c: version[0])
    caplog.set_level(logging.INFO, logger="smtpgate.auth.postgres")
    for _ in range(2):  # the pool tries again: logged once
        c = _FakeConnection()
        with pytest.raises(SchemaNotMigrated):
            store._configure(c)  # type: ignore[arg-type]
        assert c.closed
    errors_logged = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors_logged) == 1
    assert "accounts.postgresql.dsn" in errors_logged[0].getMessage()
    assert "smtpgate db migrate" in errors_logged[0].getMessage()
    with pytest.raises(StoreUnavailable, match="smtpgate db migrate"):
        store.get_account("alice@example.org")  # the 454's cause names the fix

    version[0] = SCHEMA_VERSION + 1
    with pytest.raises(PostgresSchemaTooNew):
        store._configure(_FakeConnection())  # type: ignore[arg-type]

    version[0] = SCHEMA_VERSION
    c = _FakeConnection()
    store._configure(c)  # type: ignore[arg-type]
    assert not c.closed and any("statement_timeout" in s for s in c.statements)
    assert any("logins are served" in r.getMessage() for r in caplog.records)
    version[0] = 0  # checked once: later connections are not asked again
    store._configure(_FakeConnection())  # type: ignore[arg-type]


# --- config check and serve's start-up log ---------------------------------------------------


def test_config_check_warns_of_an_outage_and_serve_logs_it_as_an_error(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    from smtpgate import preflight
    from smtpgate.auth import accounts
    from smtpgate.server.app import log_warnings

    cfg: Any = SimpleNamespace(accounts=SimpleNamespace(backend="postgresql"))

    def raising(e: Exception) -> Any:
        def open_store(cfg: object, **kwargs: object) -> None:
            raise e
        return open_store

    monkeypatch.setattr(accounts, "open_account_store",
                        raising(PostgresUnreachable("PostgreSQL database x: refused")))
    [p] = preflight.check_postgres(cfg)
    assert (p.severity, p.key, p.outage) == ("warning", "accounts.postgresql.dsn", True)
    assert "refused" in p.message and "454 4.7.0" in p.message
    with caplog.at_level(logging.WARNING, logger="smtpgate"):
        log_warnings([p])
    assert [r.levelno for r in caplog.records] == [logging.ERROR]

    monkeypatch.setattr(accounts, "open_account_store",
                        raising(StoreUnavailable("PostgreSQL database x: auth failed")))
    [p] = preflight.check_postgres(cfg)
    assert (p.severity, p.outage) == ("error", False)


def _answering(answer: bytes) -> tuple[socket.socket, threading.Thread, list[bytes]]:
    """A one-connection listener that reads the startup packet and sends ``answer``."""
    listener = socket.create_server(("127.0.0.1", 0))
    got: list[bytes] = []

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            got.append(conn.recv(4096))
            conn.sendall(answer)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return listener, t, got


def _error_response(sqlstate: str) -> bytes:
    fields = b"SFATAL\0VFATAL\0C" + sqlstate.encode() + b"\0Msorry, too many clients already\0\0"
    return b"E" + struct.pack("!I", len(fields) + 4) + fields


@pytest.mark.parametrize(("answer", "sqlstate"), [
    (_error_response("53300"), "53300"),           # full: before any login
    (b"R" + struct.pack("!II", 12, 10) + b"SCRAM-SHA-256\0\0", None),  # asks to log in
    (b"", None),                                    # hung up
    (b"E\0\0", None),                               # garbage
])
def test_the_probe_reads_the_sqlstate_a_server_refuses_a_connection_with(
    answer: bytes, sqlstate: str | None
) -> None:
    listener, t, got = _answering(answer)
    with listener:
        port = listener.getsockname()[1]
        dsn = f"postgresql://smtpgate@127.0.0.1:{port}/accounts"
        assert postgres_probe.refusal_sqlstate(dsn, 2) == sqlstate
        t.join(5)
    assert got == [postgres_probe.startup_packet("smtpgate", "accounts")]
    assert b"user\0smtpgate\0database\0accounts\0" in got[0]


def test_the_probe_of_nothing_listening_is_none() -> None:
    assert postgres_probe.refusal_sqlstate(PG.dsn, 1) is None
    assert postgres_probe.refusal_sqlstate("not a dsn ===", 1) is None
