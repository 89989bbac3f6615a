"""The web admin and /metrics against slow and many connections. Before: a
request head sent a byte at a time held its connection for aiohttp's default
keep-alive of an hour, a TLS handshake left unfinished for 40 s, and nothing
capped how many such connections the delivery process kept. Now the head and the
handshake have deadlines, and each endpoint caps its connections in total and
per address (web/http_port.py, web/conn_cap.py). Real servers on loopback
sockets; the deadlines and caps are shortened for the test."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from pathlib import Path

import pytest

from smtpgate.config import AdminConfig, Config, ListenerConfig, MetricsConfig
from smtpgate.server import metrics_http
from smtpgate.server.metrics_http import MetricsServer, fresh_dir
from smtpgate.tls.certs import write_self_signed
from smtpgate.web import http_port, http_socket
from smtpgate.web import server as admin_server
from smtpgate.web.server import AdminServer
from tests.unit.slow_clients import closed_within

pytestmark = pytest.mark.filterwarnings("ignore::aiohttp.web_exceptions.NotAppKeyWarning")

Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


def _listening() -> tuple[socket.socket, int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    return sock, int(sock.getsockname()[1])


async def _admin_on_loopback(tmp_path: Path) -> tuple[AdminServer, int]:
    """The web admin alone on a free loopback port: (the server, its port)."""
    sock, port = _listening()
    return await AdminServer.start(_cfg(tmp_path, admin=f"127.0.0.1:{port}"), sock, None), port


def _cfg(tmp_path: Path, admin: str = "", metrics: str = "") -> Config:
    return Config(listeners=[ListenerConfig(name="s", address="127.0.0.1:2587", tls="starttls")],
                  admin=AdminConfig(listen=admin), metrics=MetricsConfig(listen=metrics),
                  base_dir=tmp_path)


async def _connect(port: int, source: str = "127.0.0.1") -> Stream:
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))


async def _trickle(writer: asyncio.StreamWriter, data: bytes, every: float) -> None:
    """Send ``data`` a byte every ``every`` seconds (slowloris), until closed."""
    with contextlib.suppress(OSError):
        for b in data:
            writer.write(bytes([b]))
            await writer.drain()
            await asyncio.sleep(every)


async def _get(port: int, source: str = "127.0.0.1", path: str = "/login") -> bytes:
    reader, writer = await _connect(port, source)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return answer


async def test_a_request_head_sent_a_byte_at_a_time_is_closed_at_the_deadline(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(admin_server, "REQUEST_HEAD_TIMEOUT", 1.5)
    server, port = await _admin_on_loopback(tmp_path)
    try:
        reader, writer = await _connect(port)
        head = b"GET /login HTTP/1.1\r\nHost: localhost\r\n" + b"X-A: b\r\n" * 100
        sending = asyncio.create_task(_trickle(writer, head, 0.2))
        # Closed at the 1.5 s deadline, not when the 20 s head would have ended.
        assert await closed_within(reader, 5.0), "a slowloris head kept its connection"
        sending.cancel()
        writer.close()
        # An idle keep-alive connection ends the same way, after its answer.
        reader, writer = await _connect(port)
        writer.write(b"GET /login HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert (await reader.readline()).startswith(b"HTTP/1.1 200 ")
        assert await closed_within(reader, 4.0), "an idle keep-alive connection stayed"
        writer.close()
        # A browser's request is answered as before.
        assert (await _get(port)).startswith(b"HTTP/1.1 200 ")
    finally:
        await server.stop()


async def test_a_tls_handshake_left_unfinished_is_closed_at_the_deadline(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http_port, "HANDSHAKE_TIMEOUT", 1.0)
    (tmp_path / "tls").mkdir()
    write_self_signed(tmp_path / "tls/cert.pem", tmp_path / "tls/key.pem", "localhost")
    sock, port = _listening()
    # Off loopback in the config (so HTTPS), on a loopback socket for the test.
    server = await AdminServer.start(_cfg(tmp_path, admin=f"0.0.0.0:{port}"), sock, None)
    try:
        silent = await _connect(port)  # never sends a byte
        # The start of a ClientHello record, the rest never sent.
        partial = await _connect(port)
        partial[1].write(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
        for reader, writer in (silent, partial):
            assert await closed_within(reader, 3.0), "an unfinished handshake stayed open"
            writer.close()
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
        writer.write(b"GET /login HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        assert (await asyncio.wait_for(reader.read(), 10)).startswith(b"HTTP/1.1 200 ")
        writer.close()
    finally:
        await server.stop()


async def test_the_admins_connections_are_capped_in_total_and_per_address(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(admin_server, "MAX_CONNECTIONS", 5)
    monkeypatch.setattr(admin_server, "MAX_CONNECTIONS_PER_ADDRESS", 3)
    server, port = await _admin_on_loopback(tmp_path)
    held: list[Stream] = []
    try:
        with caplog.at_level(logging.WARNING, "smtpgate.web"):
            held += [await _connect(port) for _ in range(3)]
            reader, writer = await _connect(port)
            assert await closed_within(reader, 2.0), "a 4th connection from one address stayed"
            writer.close()
            # Someone else is served while one address holds its share.
            assert (await _get(port, "127.0.0.2")).startswith(b"HTTP/1.1 200 ")
            held += [await _connect(port, "127.0.0.3") for _ in range(2)]
            reader, writer = await _connect(port, "127.0.0.4")
            assert await closed_within(reader, 2.0), "a connection over the total stayed"
            writer.close()
            # A connection that ends leaves room for the next.
            held.pop()[1].close()
            await asyncio.sleep(0.2)
            assert (await _get(port, "127.0.0.4")).startswith(b"HTTP/1.1 200 ")
        refusals = [r.getMessage() for r in caplog.records if "refused:" in r.getMessage()]
        assert len(refusals) == 2, refusals
        assert "per-address" in refusals[0] and "127.0.0.1" in refusals[0]
        assert "5 connections open" in refusals[1]
        for reader, _ in held:  # the held ones are still served
            assert not await closed_within(reader, 0.1)
    finally:
        for _, w in held:
            w.close()
        await server.stop()


async def test_metrics_close_a_slow_head_and_cap_their_connections(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics_http, "REQUEST_HEAD_TIMEOUT", 1.5)
    monkeypatch.setattr(metrics_http, "MAX_CONNECTIONS", 4)
    monkeypatch.setattr(metrics_http, "MAX_CONNECTIONS_PER_ADDRESS", 2)
    sock, port = _listening()
    cfg = _cfg(tmp_path, metrics=f"127.0.0.1:{port}")
    fresh_dir(cfg)
    server = await MetricsServer.start(cfg, sock)
    held: list[Stream] = []
    try:
        reader, writer = await _connect(port)
        sending = asyncio.create_task(_trickle(writer, b"GET /metrics HTTP/1.1\r\n" * 4, 0.2))
        assert await closed_within(reader, 4.0), "a slowloris head kept its connection"
        sending.cancel()
        writer.close()
        held += [await _connect(port) for _ in range(2)]
        reader, writer = await _connect(port)
        assert await closed_within(reader, 2.0), "a 3rd connection from one address stayed"
        writer.close()
        assert (await _get(port, "127.0.0.2", "/metrics")).startswith(b"HTTP/1.1 200 ")
        held += [await _connect(port, "127.0.0.3") for _ in range(2)]
        reader, writer = await _connect(port, "127.0.0.4")
        assert await closed_within(reader, 2.0), "a connection over the total stayed"
        writer.close()
    finally:
        for _, w in held:
            w.close()
        await server.stop()


async def test_a_form_body_sent_a_byte_at_a_time_gets_408_at_the_deadline(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: aiohttp's keep-alive clock stops while a handler runs, so a login
    POST whose body trickled in held its connection as long as the client liked."""
    monkeypatch.setattr(http_socket, "BODY_TIMEOUT", 1.5)
    server, port = await _admin_on_loopback(tmp_path)
    try:
        reader, writer = await _connect(port)
        writer.write(b"POST /login HTTP/1.1\r\nHost: localhost\r\nOrigin: http://localhost\r\n"
                     b"Content-Type: application/x-www-form-urlencoded\r\n"
                     b"Content-Length: 200\r\n\r\n")
        sending = asyncio.create_task(_trickle(writer, b"x" * 200, 0.2))
        async with asyncio.timeout(4.0):
            status = await reader.readline()
        assert status.startswith(b"HTTP/1.1 408 "), status
        # Then closed, after aiohttp's lingering read of what still comes (10 s),
        # which lets the client read the 408 before the close.
        assert await closed_within(reader, 12.0)
        sending.cancel()
        writer.close()
        # A form sent whole is read as before (a stale token: the form again, 403).
        reader, writer = await _connect(port)
        writer.write(b"POST /login HTTP/1.1\r\nHost: localhost\r\nOrigin: http://localhost\r\n"
                     b"Content-Type: application/x-www-form-urlencoded\r\n"
                     b"Connection: close\r\nContent-Length: 14\r\n\r\nlogin_token=ab")
        assert not (await asyncio.wait_for(reader.read(), 10)).startswith(b"HTTP/1.1 408")
        writer.close()
    finally:
        await server.stop()


def _chunked(body: bytes, size: int = 16384) -> bytes:
    chunks = [body[i:i + size] for i in range(0, len(body), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"


@pytest.mark.parametrize("size", [100 * 1024, 2 * 1024 * 1024])
async def test_a_chunked_form_body_over_the_limit_is_a_413_at_once_not_a_408_later(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        size: int) -> None:
    """Before: a chunked body, which has no Content-Length to judge, was waited for to
    its end; one over aiohttp's buffer (128 KiB) never ended there, aiohttp having
    stopped reading, and got "408: the request body did not arrive in time" after
    BODY_TIMEOUT (15 s; 6 here)."""
    monkeypatch.setattr(http_socket, "BODY_TIMEOUT", 6.0)
    server, port = await _admin_on_loopback(tmp_path)
    try:
        reader, writer = await _connect(port)
        writer.write(b"POST /login HTTP/1.1\r\nHost: localhost\r\nOrigin: http://localhost\r\n"
                     b"Content-Type: application/x-www-form-urlencoded\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n" + _chunked(b"name=" + b"x" * size))
        sending = asyncio.create_task(writer.drain())
        start = time.monotonic()
        with caplog.at_level(logging.INFO, "smtpgate.web"):
            async with asyncio.timeout(10.0):
                status = await reader.readline()
        assert status.startswith(b"HTTP/1.1 413 "), status
        assert time.monotonic() - start < 3.0
        if size > 128 * 1024:  # below, aiohttp may have it whole first, and refuse it itself
            assert "sent a chunked body of over 65536 bytes, the most taken: 413" in caplog.text
        sending.cancel()
        writer.close()
        # A chunked form within the limit is read as before (a stale token: 403).
        reader, writer = await _connect(port)
        writer.write(b"POST /login HTTP/1.1\r\nHost: localhost\r\nOrigin: http://localhost\r\n"
                     b"Content-Type: application/x-www-form-urlencoded\r\nConnection: close\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n" + _chunked(b"login_token=ab", 5))
        answer = await asyncio.wait_for(reader.read(), 10)
        assert answer.startswith(b"HTTP/1.1 403 "), answer[:100]
        writer.close()
    finally:
        await server.stop()
