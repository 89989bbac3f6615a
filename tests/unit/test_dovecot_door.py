"""The Dovecot auth protocol's asyncio shell (server/dovecot_door.py) with a fake
transport and a fake login path: what it hands the login path (the MTA's ``rip``,
the front door, the session id), how it answers, and that a request the peer
leaves waiting is concluded after ``REQUEST_TIMEOUT``."""

from __future__ import annotations

import asyncio
import base64
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, cast

import pytest

from smtpgate.auth.login import Conclusion, LoginResult
from smtpgate.auth.principal import Principal
from smtpgate.auth.service import AuthContext
from smtpgate.sasl import base as sasl
from smtpgate.sasl.exchange import AuthResult
from smtpgate.server import dovecot_door
from smtpgate.server.front_doors import FrontDoor

USER, PASSWORD = "alice@example.org", "right"


@dataclass
class FakeAttempt:
    source: AuthContext
    concluded: list[tuple[Any, bool]]

    async def resolve(self, query: sasl.CredentialQuery) -> sasl.CredentialAnswer:
        assert isinstance(query, sasl.VerifyPassword)
        if query.password == "backend down":
            return sasl.Verdict(ok=False, reason="directory down", temporary=True)
        ok = (query.username, query.password) == (USER, PASSWORD)
        return sasl.Verdict(ok=ok, identity=USER if ok else "", reason="" if ok else "bad")

    def conclude(self, outcome: Any, *, answered: bool = True) -> Conclusion:
        self.concluded.append((outcome, answered))
        principal = Principal(account=outcome.identity, mechanism=outcome.mechanism) \
            if outcome.result is AuthResult.SUCCESS else None
        return Conclusion(LoginResult(outcome.result, principal))


@dataclass
class FakeLogin:
    contexts: list[AuthContext] = field(default_factory=list)
    concluded: list[tuple[Any, bool]] = field(default_factory=list)

    def begin(self, source: AuthContext, alive: Any = None) -> FakeAttempt:
        self.contexts.append(source)
        return FakeAttempt(source, self.concluded)


class FakeTransport:
    def __init__(self) -> None:
        self.out = b""
        self.closed = False

    def write(self, data: bytes) -> None:
        self.out += data

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str) -> object:
        return ("127.0.0.1", 40000) if name == "peername" else None


def door(login: FakeLogin) -> FrontDoor:
    cfg = SimpleNamespace(
        auth=SimpleNamespace(mechanisms=["PLAIN", "LOGIN", "SCRAM-SHA-256-PLUS"], oauth_scope="",
                            oauth_issuers=[], oauth_openid_configuration="auto"),
        accounts=SimpleNamespace(scram_iterations=4096, withheld_mechanisms=frozenset()),
        hostname="mx.test")
    listener = SimpleNamespace(label="postfix")
    runtime = SimpleNamespace(login=login, background=set())
    return cast(FrontDoor, SimpleNamespace(listener=listener, runtime=runtime, cfg=cfg,
                                           secret=b"s" * 32))


HELLO = b"VERSION\t1\t0\nCPID\t7\n"


def plain(password: str) -> bytes:
    return base64.b64encode(f"\0{USER}\0{password}".encode())


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_answers_ok_and_fail_with_the_mta_client_address_and_session() -> None:
    async def go() -> tuple[FakeTransport, FakeLogin]:
        login = FakeLogin()
        conn = dovecot_door.DovecotConnection(door(login))
        t = FakeTransport()
        conn.connection_made(cast(asyncio.Transport, t))
        assert b"MECH\tPLAIN\tplaintext\n" in t.out and b"-PLUS" not in t.out
        t.out = b""
        conn.data_received(HELLO + b"AUTH\t1\tPLAIN\tservice=smtp\trip=192.0.2.7\trport=5555"
                           b"\tsecured\tsession=abc123\tresp=" + plain(PASSWORD) + b"\n")
        await settle()
        conn.data_received(b"AUTH\t2\tPLAIN\tservice=smtp\trip=192.0.2.8\tsecured\tresp="
                           + plain("wrong") + b"\n")
        await settle()
        return t, login

    t, login = asyncio.run(go())
    assert t.out == f"OK\t1\tuser={USER}\nFAIL\t2\tuser={USER}\n".encode()
    first, second = login.contexts
    assert (first.client_ip, first.client_port, first.session_id, first.front_door,
            first.listener, first.tls_version) == (
        "192.0.2.7", 5555, "abc123", "dovecot", "postfix", "TLS")
    assert second.client_ip == "192.0.2.8" and len(second.session_id) == 12  # made up
    assert [(o.result, answered) for o, answered in login.concluded] == [
        (AuthResult.SUCCESS, True), (AuthResult.FAILURE, True)]


def test_a_mechanism_a_reload_takes_away_is_refused_on_an_open_connection() -> None:
    """The MECH lines are the handshake's (Dovecot sends them only then, and
    Postfix reads them once per connection), but a reload that removes LOGIN
    turns it off on the connections already open too: Postfix keeps its
    connection for hours, and they kept answering LOGIN. One a reload adds is
    for new connections (their handshake lists it)."""
    async def go() -> tuple[FakeTransport, FakeTransport]:
        the_door = door(FakeLogin())
        conn = dovecot_door.DovecotConnection(the_door)
        t = FakeTransport()
        conn.connection_made(cast(asyncio.Transport, t))
        assert b"MECH\tLOGIN\tplaintext\n" in t.out
        t.out = b""
        the_door.cfg.auth.mechanisms = ["PLAIN", "CRAM-MD5"]  # the reload
        conn.data_received(HELLO + b"AUTH\t1\tLOGIN\tservice=smtp\trip=192.0.2.7\tsecured\n"
                           b"AUTH\t2\tCRAM-MD5\tservice=smtp\trip=192.0.2.7\tsecured\n"
                           b"AUTH\t3\tPLAIN\tservice=smtp\trip=192.0.2.7\tsecured\tresp="
                           + plain(PASSWORD) + b"\n")
        await settle()
        new = FakeTransport()
        dovecot_door.DovecotConnection(the_door).connection_made(cast(asyncio.Transport, new))
        return t, new

    t, new = asyncio.run(go())
    assert t.out == (b"FAIL\t1\treason=Unsupported authentication mechanism\n"
                     b"FAIL\t2\treason=Unsupported authentication mechanism\n"
                     + f"OK\t3\tuser={USER}\n".encode())
    assert b"MECH\tCRAM-MD5" in new.out and b"MECH\tLOGIN" not in new.out


def test_a_backend_fault_closes_the_connection_without_a_fail_line() -> None:
    async def go() -> tuple[FakeTransport, FakeLogin]:
        login = FakeLogin()
        conn = dovecot_door.DovecotConnection(door(login))
        t = FakeTransport()
        conn.connection_made(cast(asyncio.Transport, t))
        t.out = b""
        conn.data_received(HELLO + b"AUTH\t1\tPLAIN\tservice=smtp\trip=192.0.2.7\tsecured\tresp="
                           + plain("backend down") + b"\n")
        await settle()
        return t, login

    t, login = asyncio.run(go())
    assert t.out == b"" and t.closed
    assert [(o.result, answered) for o, answered in login.concluded] == [
        (AuthResult.TEMPFAIL, True)]


def test_a_request_the_peer_leaves_waiting_is_concluded_after_the_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(dovecot_door, "REQUEST_TIMEOUT", 0.01)

    async def go() -> tuple[FakeTransport, FakeLogin]:
        login = FakeLogin()
        conn = dovecot_door.DovecotConnection(door(login))
        t = FakeTransport()
        conn.connection_made(cast(asyncio.Transport, t))
        t.out = b""
        # Postfix after its client's "*": nothing more for request 1.
        conn.data_received(HELLO + b"AUTH\t1\tLOGIN\tservice=smtp\trip=192.0.2.7\tsecured\n")
        for _ in range(100):
            await asyncio.sleep(0.01)
            if login.concluded:
                break
        return t, login

    t, login = asyncio.run(go())
    assert t.out == b"CONT\t1\tVXNlcm5hbWU6\n" and not t.closed
    [(outcome, answered)] = login.concluded
    assert (outcome.result, outcome.reason, answered) == (
        AuthResult.CANCELLED, "no answer from the peer in time", False)


def test_refused_requests_do_not_flood_the_log(caplog: pytest.LogCaptureFixture) -> None:
    """A CONT for an unknown id is 9 bytes; a log line for each one let a peer write
    ten times what it sent into the server log. The first few are logged, the rest
    counted, and the count is logged when the window ends or the connection closes."""
    caplog.set_level("INFO", logger="smtpgate.frontdoor")

    async def go() -> FakeTransport:
        conn = dovecot_door.DovecotConnection(door(FakeLogin()))
        t = FakeTransport()
        conn.connection_made(cast(asyncio.Transport, t))
        conn.data_received(HELLO + b"CONT\t7\tx\n" * 5000)
        await settle()
        conn.connection_lost(None)
        return t

    t = asyncio.run(go())
    assert t.out.count(b"FAIL\t7\t") == 5000  # each one is still answered
    lines = [r.getMessage() for r in caplog.records]
    refused = [x for x in lines if "request 7 refused" in x]
    assert 0 < len(refused) <= dovecot_door.REFUSALS_LOGGED
    assert any(f"{5000 - len(refused)} more requests refused" in x for x in lines), lines[-3:]


@dataclass
class FakeAuth:
    records: list[tuple[AuthContext, str, str, str, str]] = field(default_factory=list)

    def record(self, ctx: AuthContext, mechanism: str, username: str, result: str,
               reason: str) -> None:
        self.records.append((ctx, mechanism, username, result, reason))


def test_a_client_request_refused_for_its_session_is_in_the_auth_log(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A plaintext mechanism without ``secured`` and a request without a usable
    ``rip`` were answered FAIL with a server-log line only: no auth-log record (no
    trace of a password sent in clear, nothing for fail2ban) and no metric. They are
    now auth-log failures; the guard counts none (no credential was checked), and
    the peer's protocol faults stay server-log lines."""
    from smtpgate import metrics

    counted: list[tuple[str, str, str]] = []

    async def go() -> tuple[FakeTransport, FakeLogin, FakeAuth]:
        login, auth = FakeLogin(), FakeAuth()
        cast(Any, login).auth = auth
        conn = dovecot_door.DovecotConnection(door(login))
        t = FakeTransport()
        conn.connection_made(cast(asyncio.Transport, t))
        t.out = b""
        conn.data_received(HELLO + b"AUTH\t1\tPLAIN\tservice=smtp\trip=192.0.2.7\trport=5555"
                           b"\tsession=abc123\tresp=" + plain(PASSWORD) + b"\n")
        conn.data_received(b"AUTH\t2\tLOGIN\tservice=smtp\trip=bogus\tsecured\n")
        conn.data_received(b"CONT\t9\tx\n")  # the peer's fault: not a client's attempt
        await settle()
        return t, login, auth

    monkeypatch.setattr(metrics, "auth_attempt", lambda m, d, r, s: counted.append((m, d, r)))
    t, login, auth = asyncio.run(go())
    assert b"FAIL\t1\treason=Plaintext authentication needs a TLS session\n" in t.out
    assert b"FAIL\t2\treason=Missing or invalid client address (rip)\n" in t.out
    assert login.contexts == [] and login.concluded == []  # no login attempt: no guard
    (c1, *r1), (c2, *r2) = auth.records
    assert r1 == ["PLAIN", "", "failure", "Plaintext authentication needs a TLS session"]
    assert (c1.client_ip, c1.client_port, c1.session_id, c1.front_door, c1.listener,
            c1.tls_version) == ("192.0.2.7", 5555, "abc123", "dovecot", "postfix", None)
    assert r2 == ["LOGIN", "", "failure", "Missing or invalid client address (rip)"]
    assert (c2.client_ip, c2.tls_version) == ("", "TLS")
    assert counted == [("PLAIN", "dovecot", "refused_policy"),
                       ("LOGIN", "dovecot", "refused_policy")]
