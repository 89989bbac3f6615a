"""A MAIL refused because the account database cannot be read says so, on every
backend: ``451 4.4.3 Account database unavailable, try again later`` (RFC 3463
X.4.3, directory server failure), not ``451 4.3.0 Internal error``, which reads
like a software fault to the user and to whoever reads the client's log.

A session logged in while the database answered reads its sender profile at its
first MAIL; the database is then made unreadable its own way: the PostgreSQL
server stopped, slapd stopped. SQLite goes through the same read
(``policy/submission.py``, tests/unit/test_policy_submission.py); its WAL file
gives a running server's readers no fault an outside process can cause on cue.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import pytest

from smtpgate.smtp import replies as R

from .backends import BACKENDS
from .conftest import PASSWORD, USER, Server
from .test_protection import connect, make_backend_server, plain


@contextmanager
def _postgres_down(srv: Server) -> Iterator[None]:
    from tests.postgres_server import shared_cluster

    cluster = shared_cluster()
    cluster.stop()
    try:
        yield
    finally:
        cluster.start()


@contextmanager
def _slapd_down(srv: Server) -> Iterator[None]:
    from tests.peers.slapd import shared_slapd

    slapd = shared_slapd()
    slapd.stop()
    try:
        yield
    finally:
        slapd.start()


OUTAGES: dict[str, Callable[[Server], AbstractContextManager[None]]] = {
    "postgresql": _postgres_down, "ldap": _slapd_down,
}


@pytest.mark.parametrize("backend", sorted(OUTAGES))
def test_mail_while_the_account_database_is_unavailable_says_so(
    tmp_path: Path, backend: str,
) -> None:
    srv = make_backend_server(tmp_path / "srv", BACKENDS[backend], "", [(USER, PASSWORD)])
    try:
        r = connect(srv, "127.0.0.2")
        try:
            assert r.cmd(f"AUTH PLAIN {plain(USER, PASSWORD)}").startswith("235")
            with OUTAGES[backend](srv):
                reply = r.cmd(f"MAIL FROM:<{USER}>")
            assert reply == str(R.ACCOUNTS_UNAVAILABLE), reply
            assert reply.startswith("451 4.4.3 Account database unavailable"), reply
        finally:
            r.close()
        assert "sending policy unavailable" in srv.log_text()
    finally:
        srv.stop()
