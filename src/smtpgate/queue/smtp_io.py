"""A thin asyncio driver for the sans-IO `ClientEngine`: it only moves bytes.

A plain `asyncio.Protocol` rather than streams, because STARTTLS needs to know
exactly which bytes arrived before the handshake (RFC 3207 §4.2 says to discard
them) and a StreamReader's internal buffer gives no public way to do that.
Works with uvloop: only ``loop.create_connection`` and ``loop.start_tls``.
"""

from __future__ import annotations

import asyncio
import ssl

from smtpgate.client.engine import CLOSED, ClientEngine
from smtpgate.client.errors import RemoteProtocolError
from smtpgate.client.replies import ServerReply


class ConnectionClosed(RemoteProtocolError):
    """The server closed the connection while we waited for a reply."""


class _Protocol(asyncio.Protocol):
    def __init__(self, engine: ClientEngine) -> None:
        self.engine = engine
        self.transport: asyncio.Transport | None = None
        self.closed = asyncio.get_running_loop().create_future()
        self._data_waiter: asyncio.Future[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._paused = False
        self._eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

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
            OSError, TimeoutError: no connection.
        """
        loop = asyncio.get_running_loop()
        engine = ClientEngine()
        async with asyncio.timeout(timeout):
            transport, protocol = await loop.create_connection(
                lambda: _Protocol(engine), host, port
            )
        return cls(transport, protocol)

    @property
    def engine(self) -> ClientEngine:
        return self._protocol.engine

    @property
    def tls(self) -> bool:
        return self._transport.get_extra_info("sslcontext") is not None

    async def send(self, data: bytes) -> None:
        """Write ``data`` (honouring flow control for large messages)."""
        if self._transport.is_closing():
            raise ConnectionClosed("connection is closed")
        self._transport.write(data)
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
        """`send` then `read_reply`."""
        await self.send(data)
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
        new_transport = await loop.start_tls(
            self._transport,
            self._protocol,
            context,
            server_hostname=server_hostname,
            ssl_handshake_timeout=timeout,
        )
        if new_transport is None:  # pragma: no cover - only if the loop lost it
            raise ConnectionClosed("connection closed during the TLS handshake")
        self._transport = new_transport
        # RFC 3207 §4.2: whatever arrived in clear after the 220 is discarded.
        self.engine.tls_established()

    async def close(self, timeout: float = 5.0) -> None:
        """Close and wait until the transport is really gone (no ResourceWarning)."""
        self._transport.close()
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(self._protocol.closed)
        except TimeoutError:
            self._transport.abort()
