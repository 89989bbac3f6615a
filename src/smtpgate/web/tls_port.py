"""The web admin's HTTPS listener, which answers plain HTTP with a 400 saying to
use ``https://`` instead of closing the connection without a word.

A browser sent to ``http://host:9480/`` (a bookmark, a typed address, a link from
the docs) reaches a TLS server with a plain HTTP request; ``ssl`` takes it for a
broken handshake and the connection closes, so the browser shows "connection
reset" or "empty response" and the admin looks for a firewall. As nginx does on
its SSL ports, the first byte decides: a TLS handshake record (0x16) goes to the
TLS server as before, anything else (a letter of ``GET``) gets a short plain-text
400 naming the fix, and the connection closes.

The byte is read with ``MSG_PEEK``, so a TLS connection starts with its whole
ClientHello intact; each connection is accepted here and handed to the aiohttp
server with ``loop.connect_accepted_socket`` (public asyncio API: no private
``ssl`` or aiohttp state is touched). A client that sends nothing is closed after
``FIRST_BYTE_TIMEOUT``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Callable

log = logging.getLogger("smtpgate.web")

#: A TLS record of type handshake (RFC 8446 §5.1): every ClientHello starts with it.
TLS_HANDSHAKE = 0x16
#: How long an accepted connection may send nothing: a browser sends at once.
FIRST_BYTE_TIMEOUT = 10.0
#: The TLS handshake's own limit once started (asyncio's default is 60 s).
HANDSHAKE_TIMEOUT = 30.0
#: Read of a plain request before the answer (a close with unread data is a reset,
#: which the browser shows instead of the answer); a request line and headers fit.
PLAIN_READ_LIMIT = 16 * 1024

_BODY = (b"This is the HTTPS port of the smtpgate web admin, and plain HTTP was sent "
         b"to it.\nUse https:// instead of http:// in the address.\n")
PLAIN_HTTP_ANSWER = (
    b"HTTP/1.1 400 Bad Request\r\nServer: smtpgate\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\nCache-Control: no-store\r\n"
    b"Connection: close\r\nContent-Length: " + str(len(_BODY)).encode() + b"\r\n\r\n" + _BODY)


class TlsPort:
    """Accepts on ``sock`` and sorts each connection (see the module docstring);
    ``factory`` makes the HTTP protocol (aiohttp's ``runner.server``)."""

    def __init__(self, sock: socket.socket, factory: Callable[[], asyncio.BaseProtocol],
                 ctx: ssl.SSLContext) -> None:
        self._sock = sock
        self._factory = factory
        self._ctx = ctx
        self._accepting: asyncio.Task[None] | None = None
        self._sorting: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._sock.setblocking(False)
        self._accepting = asyncio.get_running_loop().create_task(self._accept())

    async def stop(self) -> None:
        """Stop accepting and close the socket; connections handed to the HTTP server
        are its to end (``runner.cleanup``)."""
        tasks = [t for t in (self._accepting, *self._sorting) if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._sock.close()

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(self._sock)
            except OSError as e:  # EMFILE and the like: not the end of the listener
                log.warning("web admin: accept failed: %s", e.strerror or e)
                await asyncio.sleep(0.1)
                continue
            conn.setblocking(False)
            task = loop.create_task(self._sort(conn))
            self._sorting.add(task)
            task.add_done_callback(self._sorting.discard)

    async def _sort(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        handed = False
        try:
            first = await asyncio.wait_for(_peek(conn), FIRST_BYTE_TIMEOUT)
            if first and first[0] == TLS_HANDSHAKE:
                await loop.connect_accepted_socket(
                    self._factory, conn, ssl=self._ctx, ssl_handshake_timeout=HANDSHAKE_TIMEOUT)
                handed = True
            elif first:
                await _answer_plain(conn)
        except (OSError, TimeoutError, ssl.SSLError) as e:
            log.debug("web admin: connection dropped before HTTP: %s", e)
        finally:
            if not handed:
                conn.close()


async def _peek(conn: socket.socket) -> bytes:
    """The connection's first byte, left in the socket ("" when closed)."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(conn.fileno(), readable)
    try:
        await ready
    finally:
        loop.remove_reader(conn.fileno())
    return conn.recv(1, socket.MSG_PEEK)


async def _answer_plain(conn: socket.socket) -> None:
    """Read the request's head (bounded), answer 400, end the connection cleanly."""
    loop = asyncio.get_running_loop()
    seen = b""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(2.0):
            while b"\r\n\r\n" not in seen and len(seen) < PLAIN_READ_LIMIT:
                chunk = await loop.sock_recv(conn, 4096)
                if not chunk:
                    break
                seen += chunk
    log.info("web admin: plain HTTP on the HTTPS port from %s: answered 400 (use https://)",
             _peer(conn))
    await loop.sock_sendall(conn, PLAIN_HTTP_ANSWER)
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_WR)


def _peer(conn: socket.socket) -> str:
    try:
        return str(conn.getpeername()[0])
    except OSError:
        return "?"
