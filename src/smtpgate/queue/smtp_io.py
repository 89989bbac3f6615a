"""A thin asyncio driver for the sans-IO `ClientEngine`: it only moves bytes.

A plain `asyncio.Protocol` rather than streams, because STARTTLS needs to know
exactly which bytes arrived before the handshake (RFC 3207 §4.2 says to discard
them) and a StreamReader's internal buffer gives no public way to do that.

Works with uvloop: only ``loop.create_connection`` and ``loop.start_tls``. uvloop's
transports are not subclasses of ``asyncio.Transport``, so the transport is checked
for the methods this module calls, never for its class. Every wait (connect, a
reply, the peer taking our bytes) has a timeout: a peer that stalls cannot hold a
delivery forever.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import cast

from smtpgate.client.engine import CLOSED, ClientEngine
from smtpgate.client.errors import RemoteProtocolError
from smtpgate.client.replies import ServerReply

#: What this module calls on a transport. asyncio's and uvloop's both have them.
_TRANSPORT_METHODS = ("write", "is_closing", "close", "abort", "get_extra_info")
#: The message is written in blocks of this size, each waiting for the peer to take
#: the previous ones, so a send timeout measures a stall, not the message's size.
_BLOCK = 64 * 1024


class ConnectionClosed(RemoteProtocolError):
    """The server closed the connection while we waited for a reply."""


class UnusableTransport(OSError):
    """The event loop gave us a transport without the methods we need."""


def missing_methods(transport: object) -> list[str]:
    """The methods this module calls that ``transport`` lacks (duck typing: uvloop's
    transports do not inherit from ``asyncio.Transport``)."""
    return [m for m in _TRANSPORT_METHODS if not callable(getattr(transport, m, None))]


class _Protocol(asyncio.Protocol):
    def __init__(self, engine: ClientEngine) -> None:
        self.engine = engine
        self.transport: asyncio.Transport | None = None
        self.unusable: str | None = None  # why the transport was refused
        self.closed = asyncio.get_running_loop().create_future()
        self._data_waiter: asyncio.Future[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._paused = False
        self._eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Never raise here: an exception in connection_made is only logged by the
        # loop, and the connection then stays open with nothing reading it.
        missing = missing_methods(transport)
        if missing:
            self.unusable = f"{type(transport).__name__} has no {', '.join(missing)}"
            close = getattr(transport, "close", None)
            if callable(close):
                close()
            return
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.engine.receive_data(data)
        self._wake()

    def eof_received(self) -> bool:
        self._end()
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._end()
        if not self.closed.done():
            self.closed.set_result(None)
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_exception(ConnectionClosed("connection lost while writing"))

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)

    async def wait_data(self) -> None:
        if self._eof:
            return
        self._data_waiter = asyncio.get_running_loop().create_future()
        try:
            await self._data_waiter
        finally:
            self._data_waiter = None

    async def drain(self) -> None:
        """Wait until the transport's buffer is below its low-water mark."""
        if self._paused and not self.closed.done():
            self._drain_waiter = asyncio.get_running_loop().create_future()
            try:
                await self._drain_waiter
            finally:
                self._drain_waiter = None

    def _end(self) -> None:
        if not self._eof:
            self._eof = True
            self.engine.receive_data(b"")
        self._wake()

    def _wake(self) -> None:
        if self._data_waiter is not None and not self._data_waiter.done():
            self._data_waiter.set_result(None)


class SmtpClientConnection:
    """One client connection: `open`, then `command`/`send`/`read_reply`, `close`."""

    def __init__(self, transport: asyncio.Transport, protocol: _Protocol) -> None:
        self._transport = transport
        self._protocol = protocol

    @classmethod
    async def open(cls, host: str, port: int, *, timeout: float) -> SmtpClientConnection:
        """Connect (the greeting is then the first `read_reply`).

        Raises:
            OSError (UnusableTransport among them), TimeoutError: no connection.
        """
        loop = asyncio.get_running_loop()
        engine = ClientEngine()
        async with asyncio.timeout(timeout):
            _, protocol = await loop.create_connection(lambda: _Protocol(engine), host, port)
        if protocol.transport is None:
            raise UnusableTransport(f"unusable event loop transport: {protocol.unusable}")
        return cls(protocol.transport, protocol)

    @property
    def engine(self) -> ClientEngine:
        return self._protocol.engine

    @property
    def tls(self) -> bool:
        return self._transport.get_extra_info("sslcontext") is not None

    async def send(self, data: bytes, timeout: float) -> None:
        """Write ``data`` in blocks, honouring flow control; ``timeout`` bounds each
        wait for the peer to take more (RFC 5321 §4.5.3.2.5 times each send).

        Raises:
            TimeoutError, ConnectionClosed.
        """
        for start in range(0, max(len(data), 1), _BLOCK):
            if self._transport.is_closing():
                raise ConnectionClosed("connection is closed")
            self._transport.write(data[start : start + _BLOCK])
            async with asyncio.timeout(timeout):
                await self._protocol.drain()

    async def read_reply(self, timeout: float) -> ServerReply:
        """The next reply.

        Raises:
            TimeoutError, ConnectionClosed, RemoteProtocolError.
        """
        async with asyncio.timeout(timeout):
            while True:
                event = self.engine.next_event()
                if isinstance(event, ServerReply):
                    return event
                if event is CLOSED:
                    raise ConnectionClosed("server closed the connection")
                await self._protocol.wait_data()

    async def command(self, data: bytes, timeout: float) -> ServerReply:
        """`send` then `read_reply`, each bounded by ``timeout``."""
        await self.send(data, timeout)
        return await self.read_reply(timeout)

    async def start_tls(
        self, context: ssl.SSLContext, server_hostname: str, timeout: float
    ) -> None:
        """Handshake on the open connection, after a 220 to STARTTLS.

        Raises:
            ssl.SSLError (e.g. a certificate that does not verify), OSError,
            TimeoutError.
        """
        loop = asyncio.get_running_loop()
        # Our own timeout, so a stalled handshake is a TimeoutError like every other
        # wait; the loop's (a little later) is only a backstop.
        async with asyncio.timeout(timeout):
            new_transport = await loop.start_tls(
                self._transport,
                self._protocol,
                context,
                server_hostname=server_hostname,
                ssl_handshake_timeout=timeout + 1.0,
            )
        if new_transport is None:  # pragma: no cover - only if the loop lost it
            raise ConnectionClosed("connection closed during the TLS handshake")
        self._transport = new_transport
        # RFC 3207 §4.2: whatever arrived in clear after the 220 is discarded.
        self.engine.tls_established()

    async def close(self, timeout: float = 5.0) -> None:
        """Close and wait until the transport is really gone (no ResourceWarning);
        a peer that does not take our last bytes within ``timeout`` is cut off."""
        self._transport.close()
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(self._protocol.closed)
        except TimeoutError:
            self._transport.abort()

    def abort(self) -> None:
        """Drop the connection now, unsent bytes and all (used when cancelled)."""
        self._transport.abort()
