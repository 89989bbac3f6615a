"""TCP keepalives on smtpgate's PostgreSQL connections (``postgres_schema.KEEPALIVES``),
read back with ``getsockopt`` from real connections to the real PostgreSQL the tests
start: libpq turns keepalives on but leaves their timing to the kernel (two hours
before the first probe), so a pooled connection to a host that vanished without a
reset was found dead only hours later. A DSN that sets its own keeps them."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest

from smtpgate.auth import postgres_schema
from smtpgate.auth.postgres_store import PostgresAccountStore
from smtpgate.config import AccountsConfig, PostgresConfig
from tests.postgres_server import PostgresCluster, shared_cluster


@pytest.fixture(scope="module")
def cluster() -> PostgresCluster:
    return shared_cluster()


def options(c: psycopg.Connection[object]) -> dict[str, int]:
    """The connection's keepalive settings as the kernel holds them."""
    sock = socket.socket(fileno=c.pgconn.socket)
    try:
        return {
            "keepalives": sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
            "keepalives_idle": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
            "keepalives_interval": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
            "keepalives_count": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
            "tcp_user_timeout": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT),
        }
    finally:
        sock.detach()  # the descriptor stays libpq's


def config(cluster: PostgresCluster, tmp_path: Path, extra: str = "") -> PostgresConfig:
    dsn = cluster.create_database() + extra
    pg = PostgresConfig(dsn=dsn, password_file=cluster.write_password_file(tmp_path), timeout=2)
    postgres_schema.migrate(pg)
    return pg


@contextmanager
def pooled(pg: PostgresConfig) -> Iterator[psycopg.Connection[object]]:
    """A connection from the pool the server's logins use."""
    store = PostgresAccountStore(pg, AccountsConfig())
    try:
        with store._conn() as c:  # the connection a login's look-up takes
            yield c
    finally:
        store.close()


def test_every_connection_has_keepalives_timed_for_a_vanished_host(
    cluster: PostgresCluster, tmp_path: Path
) -> None:
    pg = config(cluster, tmp_path)
    with postgres_schema.connect(pg) as c:  # the CLI's and the schema check's
        assert options(c) == postgres_schema.KEEPALIVES
    with pooled(pg) as c:
        assert options(c) == postgres_schema.KEEPALIVES


def test_a_dsn_that_sets_its_own_keepalives_keeps_them(
    cluster: PostgresCluster, tmp_path: Path
) -> None:
    pg = config(cluster, tmp_path, "?keepalives_idle=20&tcp_user_timeout=9000")
    with pooled(pg) as c:
        got = options(c)
    assert got["keepalives_idle"] == 20 and got["tcp_user_timeout"] == 9000
    assert got["keepalives_interval"] == 10 and got["keepalives_count"] == 5
