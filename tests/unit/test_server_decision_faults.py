"""A decision that raises is answered, logged with its traceback, and the session goes on.

Issue 9: when a task the connection spawned for a decision raised (seen with a
sender-profile look-up that raised), MAIL got no reply, the idle timer kept being
postponed, and the only trace was "Task exception was never retrieved". Now an
unexpected exception in a decision answers 451 4.3.0 (454 4.7.0 during AUTH), is
logged with its traceback, and the session continues.

These run the real connection on a real event loop and a loopback socket, with
fakes for the account directory and the spool.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from smtpgate.auth.sender_profile import SenderProfile
from smtpgate.auth.service import AuthContext, Resolution
from smtpgate.config import LimitsConfig
from smtpgate.sasl import base as sasl
from smtpgate.server.connection import ListenerRuntime, ServerRuntime, SmtpConnection
from smtpgate.server.limits import ConnectionLimiter

from .engine_driver import settings

USER = "alice@example.org"
#: Longer than any wait here; the test fails (does not hang) if a reply never comes.
NO_REPLY = 10.0


@dataclass
class FakeAuth:
    """The auth service's surface the session uses; each call can be made to raise."""

    resolve_raises: int = 0
    profile_raises: bool = False
    records: list[tuple[str, str, str]] = field(default_factory=list)

    async def resolve_detailed(self, query: sasl.CredentialQuery, ctx: AuthContext) -> Resolution:
        if self.resolve_raises:
            self.resolve_raises -= 1
            raise RuntimeError("directory bug")
        return Resolution(sasl.Verdict(ok=True, identity=USER))

    def record(self, ctx: AuthContext, mechanism: str, username: str, result: str, reason: str) -> None:
        self.records.append((username, str(result), reason))

    async def sender_profile(self, identity: str) -> SenderProfile:
        if self.profile_raises:
            raise RuntimeError("profile look-up bug")
        return SenderProfile(identity)


@dataclass
class FakeIncoming:
    """What `Spool.receive` hands out, kept in memory."""

    data: bytearray = field(default_factory=bytearray)
    backlog: int = 0
    discarded: bool = False
    on_flushed: Any = None

    @property
    def size(self) -> int:
        return len(self.data)

    def write(self, data: bytes) -> None:
        self.data += data

    def discard(self) -> None:
        self.discarded = True


@dataclass
class FakeSpool:
    stored: list[bytes] = field(default_factory=list)

    async def store(self, envelope: object, data: bytes, qid: str | None = None) -> str:
        self.stored.append(data)
        return f"Q{len(self.stored)}"

    def receive(
        self, envelope: object, prefix: bytes = b"", qid: str | None = None
    ) -> FakeIncoming:
        return FakeIncoming(bytearray(prefix))

    async def publish(self, incoming: FakeIncoming) -> str:
        return await self.store(None, bytes(incoming.data))


class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def reply(self) -> str:
        lines = []
        while True:
            line = (await asyncio.wait_for(self.reader.readline(), NO_REPLY)).decode()
            assert line, "connection closed"
            lines.append(line.rstrip("\r\n"))
            if line[3:4] != "-":
                return "\n".join(lines)

    async def cmd(self, line: str) -> str:
        self.writer.write(line.encode() + b"\r\n")
        await self.writer.drain()
        return await self.reply()


def fake_runtime(auth: FakeAuth, spool: FakeSpool) -> ServerRuntime:
    """A cleartext runtime on the fakes (its TLS context is never used)."""
    return ServerRuntime(
        hostname="mx.test",
        auth=auth,  # type: ignore[arg-type]
        spool=spool,  # type: ignore[arg-type]
        tls=None,  # type: ignore[arg-type]
        limits=LimitsConfig(),
        limiter=ConnectionLimiter(10, 10),
        on_stored=lambda: None,
        failure_floor=0.0,
    )


@pytest.fixture
async def session() -> AsyncIterator[tuple[Client, FakeAuth, FakeSpool]]:
    auth, spool = FakeAuth(), FakeSpool()
    runtime = fake_runtime(auth, spool)
    listener = ListenerRuntime("test", False, settings(auth_in_clear=True, starttls=False))
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SmtpConnection(runtime, listener), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    client = Client(reader, writer)
    assert (await client.reply()).startswith("220")
    assert (await client.cmd("EHLO client.test")).startswith("250")
    yield client, auth, spool
    writer.close()
    server.close()
    await server.wait_closed()
    for conn in list(runtime.connections):
        conn.shutdown(force=True)


def plain(user: str = USER, password: str = "secret") -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


def tracebacks(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [
        r for r in caplog.records
        if r.exc_info is not None and text in str(r.exc_info[1]) and r.name == "smtpgate.session"
    ]


async def test_mail_decision_that_raises_answers_451_and_the_session_goes_on(
    session: tuple[Client, FakeAuth, FakeSpool], caplog: pytest.LogCaptureFixture
) -> None:
    client, auth, spool = session
    assert (await client.cmd(f"AUTH PLAIN {plain()}")).startswith("235")
    auth.profile_raises = True
    assert (await client.cmd("MAIL FROM:<alice@example.org>")).startswith("451 4.3.0")
    assert tracebacks(caplog, "profile look-up bug"), caplog.text
    # The session goes on: the same transaction works once the fault is gone.
    auth.profile_raises = False
    assert (await client.cmd("NOOP")).startswith("250")
    assert (await client.cmd("MAIL FROM:<alice@example.org>")).startswith("250")
    assert (await client.cmd("RCPT TO:<bob@example.net>")).startswith("250")
    assert (await client.cmd("DATA")).startswith("354")
    assert (await client.cmd("From: alice@example.org\r\n\r\nhi\r\n.")).startswith("250")
    assert len(spool.stored) == 1
    assert (await client.cmd("QUIT")).startswith("221")


async def test_auth_decision_that_raises_answers_454_and_is_logged_once(
    session: tuple[Client, FakeAuth, FakeSpool], caplog: pytest.LogCaptureFixture
) -> None:
    client, auth, _ = session
    auth.resolve_raises = 1
    assert (await client.cmd(f"AUTH PLAIN {plain()}")).startswith("454 4.7.0")
    assert tracebacks(caplog, "directory bug"), caplog.text
    # The attempt still has its one auth-log record, as a temporary failure.
    assert [r[1] for r in auth.records] == ["tempfail"]
    # ... and the client may try again in the same session.
    assert (await client.cmd(f"AUTH PLAIN {plain()}")).startswith("235")
    assert [r[1] for r in auth.records] == ["tempfail", "success"]
    assert (await client.cmd("QUIT")).startswith("221")


async def test_message_decision_that_raises_answers_451(
    session: tuple[Client, FakeAuth, FakeSpool],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client, _, spool = session

    def broken(*args: Any, **kw: Any) -> None:
        raise RuntimeError("from header bug")

    assert (await client.cmd(f"AUTH PLAIN {plain()}")).startswith("235")
    monkeypatch.setattr("smtpgate.policy.sender.header_from_addresses", broken)
    assert (await client.cmd("MAIL FROM:<alice@example.org>")).startswith("250")
    assert (await client.cmd("RCPT TO:<bob@example.net>")).startswith("250")
    assert (await client.cmd("DATA")).startswith("354")
    assert (await client.cmd("From: alice@example.org\r\n\r\nhi\r\n.")).startswith("451 4.3.0")
    assert tracebacks(caplog, "from header bug"), caplog.text
    assert spool.stored == []
    assert (await client.cmd("RSET")).startswith("250")
    assert (await client.cmd("QUIT")).startswith("221")


async def test_decisions_answered_without_a_task_are_covered_too(
    session: tuple[Client, FakeAuth, FakeSpool],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """RCPT and the end of AUTH are decided inline (no task): a fault there is
    answered the same way."""
    client, _, _ = session

    def broken(*args: Any, **kw: Any) -> None:
        raise RuntimeError("inline bug")

    with monkeypatch.context() as m:
        m.setattr(FakeAuth, "record", broken)
        assert (await client.cmd(f"AUTH PLAIN {plain()}")).startswith("454 4.7.0")
    assert (await client.cmd(f"AUTH PLAIN {plain()}")).startswith("235")
    assert (await client.cmd("MAIL FROM:<alice@example.org>")).startswith("250")
    with monkeypatch.context() as m:
        m.setattr("smtpgate.policy.submission.Sending.rcpt", broken)
        assert (await client.cmd("RCPT TO:<bob@example.net>")).startswith("451 4.3.0")
    assert (await client.cmd("RCPT TO:<bob@example.net>")).startswith("250")
    assert len(tracebacks(caplog, "inline bug")) == 2, caplog.text
    assert (await client.cmd("QUIT")).startswith("221")
