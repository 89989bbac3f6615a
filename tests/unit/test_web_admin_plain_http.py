"""Plain HTTP sent to the web admin's HTTPS port: the connection was closed with
no answer (the browser showed "empty response"); it now gets a 400 that says to
use https://, as nginx answers on its SSL ports, while TLS clients are served as
before (web/http_port.py). The real AdminServer, over a loopback socket."""

from __future__ import annotations

import asyncio
import socket
import ssl
from pathlib import Path

import pytest

from smtpgate.config import AdminConfig, Config, ListenerConfig
from smtpgate.tls.certs import write_self_signed
from smtpgate.web.server import AdminServer


async def _exchange(port: int, raw: bytes, ctx: ssl.SSLContext | None = None) -> bytes:
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=ctx, server_hostname="localhost" if ctx else None)
    writer.write(raw)
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return answer


@pytest.mark.filterwarnings("ignore::aiohttp.web_exceptions.NotAppKeyWarning")
async def test_plain_http_on_the_https_port_gets_a_400_naming_https(tmp_path: Path) -> None:
    (tmp_path / "tls").mkdir()
    write_self_signed(tmp_path / "tls/cert.pem", tmp_path / "tls/key.pem", "localhost")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    port = sock.getsockname()[1]
    # Off loopback in the config (so HTTPS), on a loopback socket for the test.
    cfg = Config(listeners=[ListenerConfig(name="s", address="127.0.0.1:2587", tls="starttls")],
                 admin=AdminConfig(listen=f"0.0.0.0:{port}"), base_dir=tmp_path)
    server = await AdminServer.start(cfg, sock, None)
    try:
        plain = await _exchange(port, b"GET /login HTTP/1.1\r\nHost: localhost\r\n\r\n")
        head, _, body = plain.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400 "), plain
        assert b"\r\nServer: smtpgate\r\n" in head and b"Connection: close" in head
        assert b"https://" in body and b"plain HTTP" in body
        ctx = ssl.create_default_context(cafile=str(tmp_path / "tls/cert.pem"))
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        tls = await _exchange(port, b"GET /login HTTP/1.1\r\nHost: localhost\r\n"
                              b"Connection: close\r\n\r\n", ctx)
        assert tls.startswith(b"HTTP/1.1 200 "), tls[:200]
        assert b"Server: smtpgate" in tls
        # A client that connects and goes away, or sends garbage, does not stop it.
        _, w = await asyncio.open_connection("127.0.0.1", port)
        w.close()
        again = await _exchange(port, b"\x00\x01junk\r\n\r\n")
        assert again.startswith(b"HTTP/1.1 400 ")
        assert (await _exchange(port, b"GET /login HTTP/1.1\r\nHost: localhost\r\n"
                                b"Connection: close\r\n\r\n", ctx)).startswith(b"HTTP/1.1 200 ")
    finally:
        await server.stop()
