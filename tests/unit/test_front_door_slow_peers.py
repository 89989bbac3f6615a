"""The front doors against slow and many connections. Before: a line begun and
never finished (bytes without a newline) held its connection for as long as the
peer liked, and no door capped its connections. Now a line (for the policy door,
a request) unfinished after ``UNFINISHED_TIMEOUT`` closes the connection with a
WARNING, silence between whole requests is still never timed (Postfix and Exim
keep their connections for hours), and each door holds at most
``max_connections`` (server/front_doors.py).

The real doors on real sockets (``bind_auth_sockets``, ``start_front_doors``),
with the deadline shortened; nothing sent here reaches a login or a decision
(the Dovecot handshake, and policy requests without ``sasl_username``, which are
DUNNO), so the doors get no runtime."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast

import pytest

from smtpgate.config import Config
from smtpgate.server import auth_http_door, front_doors
from smtpgate.server.front_doors import bind_auth_sockets, close_auth_sockets, start_front_doors
from smtpgate.server.runtime import ServerRuntime
from tests.unit.slow_clients import closed_within

Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]
DEADLINE = 1.0
DUNNO_REQUEST = b"request=smtpd_access_policy\nprotocol_state=RCPT\ninstance=a1\n\n"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def _door(tmp_path: Path, protocol: str, **keys: object) -> AsyncIterator[str]:
    """A running door of ``protocol``; yields its address (unix:PATH or HOST:PORT)."""
    address = (f"unix:{tmp_path / 'door.sock'}" if protocol == "dovecot"
               else f"127.0.0.1:{_port()}")
    table: dict[str, object] = {"protocol": protocol, "address": address, **keys}
    if protocol == "auth_http":
        table["upstream"] = "127.0.0.1:2587"
    cfg = Config.model_validate({
        "listeners": [{"name": "s", "address": "127.0.0.1:2587", "tls": "starttls"}],
        "auth_listeners": [table], "base_dir": tmp_path})
    socks = bind_auth_sockets(cfg)
    _, servers = await start_front_doors(cfg, socks, cast(ServerRuntime, None), b"k" * 32)
    try:
        yield address
    finally:
        for server in servers:
            server.close()
        close_auth_sockets(cfg, socks)
        # The policy door answers what a half-closed peer asked before it closes
        # (eof_received): let it see the clients' last closes before the loop ends.
        await asyncio.sleep(0.2)


async def _connect(address: str) -> Stream:
    if address.startswith("unix:"):
        return await asyncio.open_unix_connection(address[5:])
    host, port = address.rsplit(":", 1)
    return await asyncio.open_connection(host, int(port))


def _warnings(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno >= logging.WARNING and text in r.getMessage()]


@pytest.fixture(autouse=True)
def _short_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(front_doors, "UNFINISHED_TIMEOUT", DEADLINE)


async def test_the_dovecot_door_closes_an_unfinished_line_never_silence(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async with _door(tmp_path, "dovecot") as address:
        reader, writer = await _connect(address)
        assert b"DONE\n" in await reader.readuntil(b"DONE\n")
        writer.write(b"VERSION\t1\t2\n")
        # Silent between whole lines for longer than the deadline: kept.
        assert not await closed_within(reader, DEADLINE * 2)
        # A line sent a byte at a time and never finished: closed at the deadline.
        with contextlib.suppress(OSError):
            for b in b"CPID\t12345":
                writer.write(bytes([b]))
                await asyncio.sleep(0.1)
        assert await closed_within(reader, DEADLINE + 1.0), "an unfinished line stayed open"
        writer.close()
    assert _warnings(caplog, "still unfinished"), caplog.text


async def test_the_policy_door_closes_an_unfinished_request_never_silence(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async with _door(tmp_path, "postfix_policy") as address:
        reader, writer = await _connect(address)
        writer.write(DUNNO_REQUEST)
        assert await reader.readuntil(b"\n\n") == b"action=DUNNO\n\n"
        assert not await closed_within(reader, DEADLINE * 2)
        writer.write(DUNNO_REQUEST)  # after the silence, still answered
        assert await reader.readuntil(b"\n\n") == b"action=DUNNO\n\n"
        # Whole lines, but the request's empty line never comes.
        writer.write(b"request=smtpd_access_policy\nprotocol_state=RCPT\n")
        assert await closed_within(reader, DEADLINE + 1.0), "an unfinished request stayed"
        writer.close()
    assert _warnings(caplog, "still unfinished"), caplog.text


async def test_the_auth_http_door_logs_a_request_left_unfinished(
        tmp_path: Path, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auth_http_door, "REQUEST_TIMEOUT", DEADLINE)
    async with _door(tmp_path, "auth_http") as address:
        reader, writer = await _connect(address)
        writer.write(b"GET /auth HTTP/1.0\r\nHost: localhost\r\nAuth-Method: plain\r\n")
        assert await closed_within(reader, DEADLINE + 1.0)
        writer.close()
    assert _warnings(caplog, "still unfinished"), caplog.text


@pytest.mark.parametrize("protocol", ["dovecot", "postfix_policy"])
async def test_a_door_refuses_connections_over_max_connections(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, protocol: str) -> None:
    async with _door(tmp_path, protocol, max_connections=3) as address:
        held = [await _connect(address) for _ in range(3)]
        try:
            if protocol == "dovecot":  # each admitted one gets the handshake
                for reader, _ in held:
                    await reader.readuntil(b"DONE\n")
            reader, writer = await _connect(address)
            assert await closed_within(reader, 2.0), "a 4th connection stayed"
            writer.close()
            refused = _warnings(caplog, "refused")
            assert len(refused) == 1 and "3 connections open" in refused[0], refused
            assert "max_connections" in refused[0]
            # One ends: the next is served.
            held.pop()[1].close()
            await asyncio.sleep(0.2)
            held.append(await _connect(address))
            reader, writer = held[-1]
            if protocol == "dovecot":
                assert b"DONE\n" in await reader.readuntil(b"DONE\n")
            else:
                writer.write(DUNNO_REQUEST)
                assert await reader.readuntil(b"\n\n") == b"action=DUNNO\n\n"
        finally:
            for _, w in held:
                w.close()
