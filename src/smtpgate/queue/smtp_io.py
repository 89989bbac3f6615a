"""The asyncio shell of the SMTP client: one for relay delivery and the tools.

Theory of operation
-------------------
`SmtpClientConnection` feeds a `ClientEngine` (``smtpgate.client``) with bytes
from a `ByteStream` and writes what the engine formats: read a reply, send,
command, STARTTLS, and AUTH, which runs the one sans-IO SASL loop
(`smtpgate.client.auth.ClientAuthExchange`). It parses nothing and decides no
reply's meaning. The relay delivery (``queue/relay.py``) and the tools
(``tools/session.py``: ``smtpgate test`` and ``smtpgate audit``) both use it;
what differs between them is only how bytes move:

* `TransportStream` (here, for the relay): a plain `asyncio.Protocol` rather
  than streams, because STARTTLS needs to know exactly which bytes arrived before
  the handshake (RFC 3207 §4.2 says to discard them) and a StreamReader's buffer
  gives no public way to do that. TLS is the loop's ``start_tls``;
* ``tools/wire.py``'s `Wire`: a raw socket with TLS as a sans-IO object, for what
  asyncio's TLS cannot give the tools (the RFC 9266 exporter, a handshake that
  completes on a certificate that does not verify, legacy-version probes).

A `SessionObserver` sees every byte and every SASL step; the tools' transcript is
one, the relay passes none.

Works with uvloop: only ``loop.create_connection`` and ``loop.start_tls``. uvloop's
transports are not subclasses of ``asyncio.Transport``, so the transport is checked
for the methods this module calls, never for its class. Every wait (connect, a
reply, the peer taking our bytes) has a timeout: a peer that stalls cannot hold a
delivery forever.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar, cast

from cryptography import x509

from smtpgate.client.auth import AuthSend, ClientAuthExchange, ClientAuthResult
from smtpgate.client.engine import CLOSED, ClientEngine
from smtpgate.client.replies import ServerReply
from smtpgate.queue.connect_each import connect_each
from smtpgate.sasl.base import ChannelBinding, ClientMechanism
from smtpgate.tls.bio import end_point_hash

#: What this module calls on a transport. asyncio's and uvloop's both have them.
_TRANSPORT_METHODS = ("write", "is_closing", "close", "abort", "get_extra_info")
#: The message is written in blocks of this size, each waiting for the peer to take
#: the previous ones, so a send timeout measures a stall, not the message's size.
_BLOCK = 64 * 1024

TlsSetup = TypeVar("TlsSetup")
TlsSetup_contra = TypeVar("TlsSetup_contra", contravariant=True)


class ConnectionClosed(ConnectionError):
    """The server closed the connection while we waited for a reply or wrote."""


class UnusableTransport(OSError):
    """The event loop gave us a transport without the methods we need."""


class ByteStream(Protocol[TlsSetup_contra]):
    """What the shell needs from a connection; ``TlsSetup_contra`` is what its
    `start_tls` takes (an ``ssl.SSLContext`` and name, a sans-IO TLS session)."""

    @property
    def tls(self) -> bool: ...

    async def send(self, data: bytes, timeout: float) -> None:
        """Write all of ``data``; ``timeout`` bounds each wait for the peer."""

    async def recv(self, timeout: float) -> bytes:
        """The next bytes received, ``b""`` once the peer has closed."""
        ...

    async def start_tls(self, setup: TlsSetup_contra, timeout: float) -> int:
        """Handshake; returns how many bytes received in clear were dropped."""
        ...

    async def close(self, timeout: float) -> None: ...

    def abort(self) -> None: ...


class SessionObserver:
    """Sees a session go by (the tools' transcript); every method does nothing here."""

    def sent(self, data: bytes, display: str | None, tls: bool) -> None:
        """``data`` is about to be written; ``display`` is what to show instead."""

    def received(self, data: bytes, tls: bool) -> None:
        """``data`` arrived (``b""``: the peer closed)."""

    def tls_started(self, dropped: int) -> None:
        """The handshake is done; ``dropped`` bytes received in clear were discarded."""

    def auth_step(self, mechanism: str, step: AuthSend, tls: bool) -> None:
        """``step.data`` is about to be written (instead of a `sent` call)."""

    def auth_done(self, result: ClientAuthResult, tls: bool) -> None:
        """The exchange is over."""


_QUIET = SessionObserver()


class SmtpClientConnection(Generic[TlsSetup]):
    """One client connection over ``stream``; see the module docstring."""

    def __init__(
        self,
        stream: ByteStream[TlsSetup],
        *,
        observer: SessionObserver | None = None,
        expect_greeting: bool = True,
    ) -> None:
        self.stream = stream
        self.engine = ClientEngine(expect_greeting=expect_greeting)
        self._observer = observer or _QUIET

    @staticmethod
    async def open(
        host: str, port: int, *, timeout: float
    ) -> SmtpClientConnection[TransportTls]:
        """Connect over a `TransportStream` (the greeting is the first `read_reply`).

        Raises:
            OSError (UnusableTransport among them), TimeoutError: no connection.
        """
        return SmtpClientConnection(await TransportStream.connect(host, port, timeout))

    @staticmethod
    async def open_unix(path: str, *, timeout: float) -> SmtpClientConnection[TransportTls]:
        """`open` on a unix socket (an LMTP server such as Dovecot's).

        Raises:
            OSError (UnusableTransport among them), TimeoutError: no connection.
        """
        return SmtpClientConnection(await TransportStream.connect_unix(path, timeout))

    @property
    def tls(self) -> bool:
        return self.stream.tls

    async def send(self, data: bytes, timeout: float, display: str | None = None) -> None:
        """Write ``data``; ``timeout`` bounds each wait for the peer to take more
        (RFC 5321 §4.5.3.2.5 times each send).

        Raises:
            TimeoutError, ConnectionClosed, OSError.
        """
        self._observer.sent(data, display, self.tls)
        await self.stream.send(data, timeout)

    async def read_reply(self, timeout: float) -> ServerReply:
        """The next reply, within ``timeout``.

        Raises:
            TimeoutError, ConnectionClosed, RemoteProtocolError (not SMTP), and
            whatever the stream raises (OSError, a TLS error).
        """
        async with asyncio.timeout(timeout):
            while True:
                event = self.engine.next_event()
                if isinstance(event, ServerReply):
                    return event
                if event is CLOSED:
                    raise ConnectionClosed("server closed the connection")
                data = await self.stream.recv(timeout)
                self._observer.received(data, self.tls)
                self.engine.receive_data(data)

    async def command(
        self, data: bytes, timeout: float, display: str | None = None
    ) -> ServerReply:
        """`send` then `read_reply`, each bounded by ``timeout``."""
        await self.send(data, timeout, display)
        return await self.read_reply(timeout)

    async def start_tls(self, setup: TlsSetup, timeout: float) -> int:
        """Handshake now (after a 220 to STARTTLS, or at once for implicit TLS);
        returns the bytes discarded.

        RFC 3207 §4.2: whatever arrived in clear after the 220 is discarded and the
        EHLO knowledge forgotten; send EHLO again.
        """
        dropped = await self.stream.start_tls(setup, timeout)
        dropped += self.engine.tls_established()
        self._observer.tls_started(dropped)
        return dropped

    async def authenticate(
        self, mech: ClientMechanism, timeout: float, *, initial_response: bool = True
    ) -> ClientAuthResult:
        """One AUTH exchange (RFC 4954 §4) with ``mech``; ``timeout`` bounds each
        step. What the result means is decided by `ClientAuthExchange`.

        Raises:
            TimeoutError, ConnectionClosed, RemoteProtocolError, OSError: the
            conversation broke.
        """
        exchange = ClientAuthExchange(self.engine, mech, initial_response=initial_response)
        step: AuthSend | ClientAuthResult = exchange.start()
        while isinstance(step, AuthSend):
            self._observer.auth_step(exchange.mechanism, step, self.tls)
            await self.stream.send(step.data, timeout)
            step = exchange.receive(await self.read_reply(timeout))
        self._observer.auth_done(step, self.tls)
        return step

    async def close(self, timeout: float = 5.0) -> None:
        """Close and wait until the connection is really gone; a peer that does not
        take our last bytes within ``timeout`` is cut off."""
        await self.stream.close(timeout)

    def abort(self) -> None:
        """Drop the connection now, unsent bytes and all (used when cancelled)."""
        self.stream.abort()


# --- the relay's byte mover: an asyncio Protocol --------------------------------------


@dataclass(frozen=True, slots=True)
class TransportTls:
    """How `TransportStream.start_tls` does TLS: the context and the name to verify."""

    context: ssl.SSLContext
    server_hostname: str


def missing_methods(transport: object) -> list[str]:
    """The methods this module calls that ``transport`` lacks (duck typing: uvloop's
    transports do not inherit from ``asyncio.Transport``)."""
    return [m for m in _TRANSPORT_METHODS if not callable(getattr(transport, m, None))]


class _Sink(Protocol):
    def receive_data(self, data: bytes) -> None:
        """Bytes received; ``b""`` at end of stream."""


class _Inbox:
    """Received bytes waiting for `TransportStream.recv`."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._eof = False

    def receive_data(self, data: bytes) -> None:
        if data:
            self._buf += data
        else:
            self._eof = True

    def take(self) -> bytes | None:
        """Everything buffered, ``b""`` after the end, None if nothing yet."""
        if self._buf:
            data = bytes(self._buf)
            self._buf.clear()
            return data
        return b"" if self._eof else None

    def discard(self) -> int:
        n = len(self._buf)
        self._buf.clear()
        return n


class _Protocol(asyncio.Protocol):
    """Passes received bytes to ``sink`` and wakes whoever waits for them."""

    def __init__(self, sink: _Sink) -> None:
        self.sink = sink
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
        self.sink.receive_data(data)
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
            self.sink.receive_data(b"")
        self._wake()

    def _wake(self) -> None:
        if self._data_waiter is not None and not self._data_waiter.done():
            self._data_waiter.set_result(None)


class TransportStream:
    """A `ByteStream` over an asyncio (or uvloop) transport; TLS by ``loop.start_tls``."""

    def __init__(self, transport: asyncio.Transport, protocol: _Protocol, inbox: _Inbox) -> None:
        self._transport = transport
        self._protocol = protocol
        self._inbox = inbox

    @classmethod
    async def connect(cls, host: str, port: int, timeout: float) -> TransportStream:
        """Each of the host's addresses in turn, ``timeout`` each (`connect_each`).

        Raises: OSError (UnusableTransport among them), TimeoutError."""
        loop = asyncio.get_running_loop()
        inbox = _Inbox()

        async def attempt(family: int, address: tuple[object, ...]) -> _Protocol:
            _, made = await loop.create_connection(
                lambda: _Protocol(inbox), str(address[0]), port, family=family)
            return made

        protocol = await connect_each(host, port, timeout, attempt)
        if protocol.transport is None:
            raise UnusableTransport(f"unusable event loop transport: {protocol.unusable}")
        return cls(protocol.transport, protocol, inbox)

    @classmethod
    async def connect_unix(cls, path: str, timeout: float) -> TransportStream:
        """`connect` to a unix socket. Raises: OSError, TimeoutError."""
        loop = asyncio.get_running_loop()
        inbox = _Inbox()
        async with asyncio.timeout(timeout):
            _, protocol = await loop.create_unix_connection(lambda: _Protocol(inbox), path)
        if protocol.transport is None:
            raise UnusableTransport(f"unusable event loop transport: {protocol.unusable}")
        return cls(protocol.transport, protocol, inbox)

    @property
    def tls(self) -> bool:
        return self._transport.get_extra_info("sslcontext") is not None

    def peer_fingerprint(self) -> str | None:
        """SHA-256 of the peer's DER certificate, lower-case hex (None in clear)."""
        ssl_object = self._transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        return hashlib.sha256(der).hexdigest() if der else None

    def channel_binding(self) -> ChannelBinding:
        """RFC 5929 binding data of the TLS link (empty in clear): tls-server-end-point
        from the peer's certificate, and tls-unique when the protocol has it."""
        ssl_object = self._transport.get_extra_info("ssl_object")
        if ssl_object is None:
            return ChannelBinding()
        data: dict[str, bytes] = {}
        der = ssl_object.getpeercert(binary_form=True)
        if der:
            data["tls-server-end-point"] = end_point_hash(x509.load_der_x509_certificate(der))
        if ssl_object.version() != "TLSv1.3":  # RFC 9266: no tls-unique in TLS 1.3
            unique = ssl_object.get_channel_binding("tls-unique")
            if unique:
                data["tls-unique"] = unique
        return ChannelBinding(data)

    async def send(self, data: bytes, timeout: float) -> None:
        """Write ``data`` in blocks, honouring flow control; ``timeout`` bounds each
        wait for the peer to take more.

        Raises:
            TimeoutError, ConnectionClosed.
        """
        for start in range(0, max(len(data), 1), _BLOCK):
            if self._transport.is_closing():
                raise ConnectionClosed("connection is closed")
            self._transport.write(data[start : start + _BLOCK])
            async with asyncio.timeout(timeout):
                await self._protocol.drain()

    async def recv(self, timeout: float) -> bytes:
        async with asyncio.timeout(timeout):
            while True:
                data = self._inbox.take()
                if data is not None:
                    return data
                await self._protocol.wait_data()

    async def start_tls(self, setup: TransportTls, timeout: float) -> int:
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
                setup.context,
                server_hostname=setup.server_hostname,
                ssl_handshake_timeout=timeout + 1.0,
            )
        if new_transport is None:  # pragma: no cover - only if the loop lost it
            raise ConnectionClosed("connection closed during the TLS handshake")
        self._transport = new_transport
        return self._inbox.discard()

    async def close(self, timeout: float) -> None:
        """Close and wait until the transport is really gone (no ResourceWarning);
        a peer that does not take our last bytes within ``timeout`` is cut off."""
        self._transport.close()
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(self._protocol.closed)
        except TimeoutError:
            self._transport.abort()

    def abort(self) -> None:
        self._transport.abort()
