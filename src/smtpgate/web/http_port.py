"""The listening side of an HTTP endpoint (the web admin, /metrics): it accepts
each connection itself, caps how many are open, bounds how long one may take
before its request, and on the web admin's HTTPS port answers plain HTTP with a
400 saying to use ``https://`` instead of closing the connection without a word.

What aiohttp already does, and is used: its ``keepalive_timeout`` closes a
connection whose waiting for a request lasts longer, and that clock runs from the
connection's start and from each answer, whatever arrives meanwhile: a request
head sent a byte every few seconds (slowloris) is closed when it ends, as an idle
keep-alive connection is (``REQUEST_HEAD_TIMEOUT``, passed to the ``AppRunner``
by each endpoint). Its ``max_line_size``, ``max_field_size`` and ``max_headers``
bound the head's size (the last lowered here: ``MAX_REQUEST_HEADERS``). What
it lacks, and is here: a cap on the connections open at once
(``web/conn_cap.py``: in total and per client address; the excess is closed at
once, logged within a budget), and a bound on the TLS handshake of a connection
that is not yet HTTP, which aiohttp never sees. So each
connection is accepted here and handed to the aiohttp server with
``loop.connect_accepted_socket`` (public asyncio API: no private ``ssl`` or
aiohttp state is touched), behind ``CappedProtocol``, which releases its count
when the connection ends.

Plain HTTP on the HTTPS port: a browser sent to ``http://host:9480/`` (a bookmark,
a typed address, a link from the docs) reaches a TLS server with a plain HTTP
request; ``ssl`` takes it for a broken handshake and the connection closes, so
the browser shows "connection reset" or "empty response" and the admin looks for
a firewall. As nginx does on its SSL ports, the first byte decides: a TLS
handshake record (0x16) goes on to the handshake, anything else (a letter of
``GET``) gets a short plain-text 400 naming the fix, and the connection closes.
The byte is read with ``MSG_PEEK``, so a TLS connection starts with its whole
ClientHello intact. The first byte and the whole handshake get
``HANDSHAKE_TIMEOUT`` together, from the accept.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import ssl
from collections.abc import Callable

from smtpgate.web.conn_cap import CappedProtocol, ConnectionCap
from smtpgate.web.http_socket import bind_tcp
from smtpgate.web.log_budget import LogBudget

log = logging.getLogger("smtpgate.web")

#: A TLS record of type handshake (RFC 8446 §5.1): every ClientHello starts with it.
TLS_HANDSHAKE = 0x16
#: Seconds from the accept to the end of the TLS handshake, its first byte
#: included (asyncio's default for the handshake alone is 60 s). A browser on a
#: slow mobile link needs well under a second or two.
HANDSHAKE_TIMEOUT = 10.0
#: Seconds a connection may wait for its next complete request head: from its
#: start (after the TLS handshake), and from each answer (the idle keep-alive
#: limit). Apache's RequestReadTimeout allows 20-40 s for a head and nginx's
#: client_header_timeout 60 s; a browser sends its head at once, and closing an
#: idle keep-alive connection costs it only a new one (it resends a GET itself).
REQUEST_HEAD_TIMEOUT = 15.0
#: Header lines a request head may carry, each up to aiohttp's 8190 bytes; one
#: more is a 400 at once. aiohttp's default, 128, let a head be 1 MiB, which its
#: parser keeps twice (bytes and text) until the head ends or its 15 s are up: a
#: stranger's 128 connections made the process that also delivers mail grow by
#: 250 MiB, which its allocator kept afterwards. A browser's request has about 20
#: (Chromium's form POST: 21), a reverse proxy adds a few, Prometheus sends 6; 32
#: bounds a held head at 256 KiB. Passed to the ``AppRunner`` by each endpoint.
MAX_REQUEST_HEADERS = 32
#: Seconds a stop gives the requests being answered before it ends them (passed to
#: the ``AppRunner`` by each endpoint). An admin's change or a scrape takes
#: milliseconds; aiohttp's default, 60 s, let a stranger's logins, queued one at a
#: time per address behind the guard's penalties (up to 4 s each), hold the stop
#: of the process that delivers mail, and with it the server's, for a minute.
SHUTDOWN_TIMEOUT = 3.0
#: Bytes a connection may send while its request is answered (``CappedProtocol``
#: holds them, unparsed, and pauses the transport); more abort the connection.
#: A browser, Prometheus or curl sends none (each waits for the answer); a client
#: that pipelines a few small requests fits.
HOLD_LIMIT = 64 * 1024
#: Read of a plain request before the answer (a close with unread data is a reset,
#: which the browser shows instead of the answer); a request line and headers fit.
PLAIN_READ_LIMIT = 16 * 1024
#: Refused connections logged one by one per listener in each window of this many
#: seconds; the rest are counted in one line (``web/log_budget.py``).
REFUSALS_LOGGED = 10
REFUSAL_WINDOW = 60.0

_BODY = (b"This is the HTTPS port of the smtpgate web admin, and plain HTTP was sent "
         b"to it.\nUse https:// instead of http:// in the address.\n")
PLAIN_HTTP_ANSWER = (
    b"HTTP/1.1 400 Bad Request\r\nServer: smtpgate\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\nCache-Control: no-store\r\n"
    b"Connection: close\r\nContent-Length: " + str(len(_BODY)).encode() + b"\r\n\r\n" + _BODY)


class HttpPort:
    """Accepts on ``sock`` and hands each connection under ``cap`` to ``factory``
    (aiohttp's ``runner.server``), over TLS when ``ctx`` is set (see the module
    docstring). ``what`` names the endpoint in log lines."""

    def __init__(self, sock: socket.socket, factory: Callable[[], asyncio.BaseProtocol],
                 ctx: ssl.SSLContext | None, cap: ConnectionCap, what: str) -> None:
        self._sock = sock
        self._factory = factory
        self._ctx = ctx
        self._cap = cap
        self._what = what
        self._accepting: asyncio.Task[None] | None = None
        self._sorting: set[asyncio.Task[None]] = set()
        self._refusals = LogBudget(REFUSALS_LOGGED, REFUSAL_WINDOW, self._report_refusals)

    async def bind_for_move(self, endpoint: tuple[str, int]) -> socket.socket:
        """A socket for a reload that moves this endpoint to ``endpoint``, bound
        while this one still listens, so that a failure leaves it where it was.

        On the same port, an address that overlaps this one cannot be bound beside
        it (``EADDRINUSE``): from ``127.0.0.1:9480`` to ``0.0.0.0:9480``, the move
        that opens the web admin to the network, or back, or to ``localhost:9480``.
        Until 2026-12 such a move failed (logged) and the endpoint stayed where it
        was while ``smtpgate status`` showed the new address. So this one stops
        first, and listens again where it was if ``endpoint`` cannot be bound
        either (another program holds it): the caller still stops it after a
        success.

        Raises: OSError (``endpoint`` cannot be bound; this one listens)."""
        try:
            return bind_tcp(*endpoint)
        except OSError as e:
            old = self.address
            if e.errno != errno.EADDRINUSE or old is None or old[1] != endpoint[1]:
                raise
        await self.stop()
        try:
            return bind_tcp(*endpoint)
        except OSError:
            self._sock = bind_tcp(*old)  # the port was this one's a moment ago
            self.start()
            raise

    @property
    def address(self) -> tuple[str, int] | None:
        """The (host, port) it listens on; None once stopped."""
        try:
            host, port = self._sock.getsockname()[:2]
        except OSError:
            return None
        return str(host), int(port)

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
        self._refusals.flush()

    def _refused(self, peer: str, why: str) -> None:
        if self._refusals.take():
            log.warning("%s: connection from %s refused: %s", self._what, peer or "?", why)

    def _report_refusals(self, count: int) -> None:
        log.warning("%s: %d more connections refused over the connection caps (more "
                    "than %d in %g s are not logged one by one)", self._what, count,
                    REFUSALS_LOGGED, REFUSAL_WINDOW)

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, addr = await loop.sock_accept(self._sock)
            except OSError as e:  # EMFILE and the like: not the end of the listener
                log.warning("%s: accept failed: %s", self._what, e.strerror or e)
                await asyncio.sleep(0.1)
                continue
            peer = str(addr[0]) if isinstance(addr, tuple) and addr else ""
            why = self._cap.admit(peer)
            if why is not None:
                conn.close()  # at once: nothing read, nothing written
                self._refused(peer, why)
                continue
            conn.setblocking(False)
            task = loop.create_task(self._hand(conn, peer))
            self._sorting.add(task)
            task.add_done_callback(self._sorting.discard)

    async def _hand(self, conn: socket.socket, peer: str) -> None:
        loop = asyncio.get_running_loop()
        protocol = CappedProtocol(self._factory, self._cap, self._refused, admitted=peer,
                                  hold_limit=HOLD_LIMIT)
        handed = False
        try:
            if self._ctx is None:
                await loop.connect_accepted_socket(lambda: protocol, conn)
                handed = True
                return
            deadline = loop.time() + HANDSHAKE_TIMEOUT
            async with asyncio.timeout_at(deadline):
                first = await _peek(conn)
            if first and first[0] == TLS_HANDSHAKE:
                await loop.connect_accepted_socket(
                    lambda: protocol, conn, ssl=self._ctx,
                    ssl_handshake_timeout=max(0.1, deadline - loop.time()))
                handed = True
            elif first:
                await _answer_plain(conn)
        except (OSError, TimeoutError, ssl.SSLError) as e:
            log.debug("%s: connection from %s dropped before HTTP: %s", self._what, peer,
                      e or type(e).__name__)
        finally:
            if not handed:
                conn.close()
            if not protocol.made:  # never reached the HTTP server: counted here
                self._cap.release(peer)


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
