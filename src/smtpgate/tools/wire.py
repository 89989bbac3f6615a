"""One client TCP connection for the tools, with TLS layered on by hand.

Theory of operation
-------------------
`Wire` is the tools' byte mover for the one client shell,
``smtpgate.queue.smtp_io.SmtpClientConnection`` (a `ByteStream`): the shell, the
SMTP engine and the SASL driver are the relay's; only how bytes move differs.
The tools need things asyncio's own TLS cannot give: the RFC 9266 exporter
(SCRAM-*-PLUS on TLS 1.3), a handshake that finishes even when the certificate
does not verify (so it can be reported), and exact knowledge of which bytes came
before and after the STARTTLS switch (the injection probe). So the socket is
driven with ``loop.sock_*`` calls (no Protocol, no StreamReader buffer) and TLS
is a sans-IO object: `smtpgate.tls.client.TlsClientSession` for normal use, or
a stdlib ``ssl.SSLObject`` over memory BIOs for the auditor's legacy-version
probe (`LegacyTls`), which needs ``@SECLEVEL=0``.

Every method that waits takes a timeout; nothing here retries or sleeps.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import warnings
from typing import Protocol

from smtpgate.queue.connect_each import connect_each
from smtpgate.tls.client import TlsClientSession
from smtpgate.tls.session import TlsError

_RECV_SIZE = 65536


class WireClosed(ConnectionError):
    """The server closed the connection."""


class ClearTextAnswer(TlsError):
    """The server answered our ClientHello with text, not TLS: it speaks plain SMTP
    on this port (a STARTTLS port taken for implicit TLS)."""

    def __init__(self, line: str) -> None:
        super().__init__(f"the server answered in clear, not with TLS: {line!r}")
        self.line = line


def _clear_text_line(raw: bytes) -> str | None:
    """The first line of ``raw`` if it is an SMTP-like text line (not a TLS record)."""
    if not raw[:3].isdigit():  # a TLS record starts with 0x14-0x17
        return None
    return raw.split(b"\n", 1)[0].rstrip(b"\r")[:200].decode("utf-8", "replace")


class _SansIoTls(Protocol):
    handshake_done: bool

    def start(self) -> bytes: ...

    def receive(self, data: bytes) -> tuple[bytes, bytes]: ...

    def send(self, plaintext: bytes) -> bytes: ...

    def close(self) -> bytes: ...


class LegacyTls:
    """A stdlib ``ssl`` client session over memory BIOs, for version probes only.

    OpenSSL 3 refuses TLS 1.0/1.1 at its default security level even when the
    minimum version allows them (SHA-1 in the handshake), so the probe lowers
    the level to 0. Nothing is verified: the probe only asks "does the server
    complete a handshake at this version?".
    """

    def __init__(self, version: ssl.TLSVersion, server_hostname: str | None) -> None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        with warnings.catch_warnings():  # asking for TLS 1.0/1.1 is this probe's purpose
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx.minimum_version = version
            ctx.maximum_version = version
        ctx.set_ciphers("ALL:@SECLEVEL=0")
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._obj = ctx.wrap_bio(self._in, self._out, server_hostname=server_hostname)
        self.handshake_done = False

    @property
    def version(self) -> str:
        return self._obj.version() or ""

    def _step(self) -> None:
        try:
            self._obj.do_handshake()
            self.handshake_done = True
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLError as e:
            raise TlsError(f"handshake failed: {e.reason or e}") from None

    def start(self) -> bytes:
        self._step()
        return self._out.read()

    def receive(self, data: bytes) -> tuple[bytes, bytes]:
        if data:
            self._in.write(data)
        if not self.handshake_done:
            self._step()
            return b"", self._out.read()
        chunks = []
        while True:
            try:
                chunk = self._obj.read(_RECV_SIZE)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                raise EOFError from None
            except ssl.SSLError as e:
                raise TlsError(f"TLS error: {e.reason or e}") from None
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks), self._out.read()

    def send(self, plaintext: bytes) -> bytes:
        self._obj.write(plaintext)
        return self._out.read()

    def close(self) -> bytes:
        try:
            self._obj.unwrap()
        except ssl.SSLError:
            pass
        return self._out.read()


TlsSetup = TlsClientSession | LegacyTls


class Wire:
    """A TCP connection; after `start_tls` every send/recv goes through TLS."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._loop = asyncio.get_running_loop()
        self._tls: _SansIoTls | None = None
        self._pending = b""  # plaintext that arrived together with the handshake
        self._eof = False

    @classmethod
    async def connect(cls, host: str, port: int, timeout: float) -> Wire:
        """Resolve and connect.

        Raises:
            OSError: name resolution or connection failure.
            TimeoutError: no connection within ``timeout``.
        """
        loop = asyncio.get_running_loop()

        async def attempt(family: int, address: tuple[object, ...]) -> Wire:
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                await loop.sock_connect(sock, address)
            except BaseException:
                sock.close()
                raise
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return cls(sock)

        # Each address in turn with ``timeout`` of its own (queue/connect_each.py).
        return await connect_each(host, port, timeout, attempt)

    @property
    def tls(self) -> bool:
        return self._tls is not None

    @property
    def peer(self) -> str:
        try:
            host, port = self._sock.getpeername()[:2]
        except OSError:
            return "?"
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    async def send(self, data: bytes, timeout: float) -> None:
        """Write ``data`` (encrypted once TLS is on) within ``timeout``.

        Raises:
            TimeoutError, OSError.
        """
        if self._tls is not None:
            data = self._tls.send(data)
        async with asyncio.timeout(timeout):
            await self._loop.sock_sendall(self._sock, data)

    async def _recv_raw(self) -> bytes:
        try:
            return await self._loop.sock_recv(self._sock, _RECV_SIZE)
        except ConnectionResetError:
            return b""

    def _held(self) -> bytes | None:
        """What a read returns without the socket: bytes already decrypted and kept,
        ``b""`` once the server has closed; None when the socket must be read."""
        if self._pending:
            data, self._pending = self._pending, b""
            return data
        return b"" if self._eof else None

    async def recv(self, timeout: float) -> bytes:
        """The next plaintext bytes; ``b""`` once the server has closed.

        Raises:
            TimeoutError: nothing within ``timeout``.
            TlsError: a TLS record failed.
        """
        held = self._held()
        if held is not None:
            return held
        async with asyncio.timeout(timeout):
            while True:
                raw = await self._recv_raw()
                if self._tls is None:
                    if not raw:
                        self._eof = True
                    return raw
                if not raw:
                    self._eof = True
                    return b""
                try:
                    plain, out = self._tls.receive(raw)
                except EOFError:
                    self._eof = True
                    return b""
                if out:
                    await self._loop.sock_sendall(self._sock, out)
                if plain:
                    return plain
                # Only handshake records (TLS 1.3 session tickets): read on.

    async def recv_available(self, max_bytes: int = _RECV_SIZE) -> bytes | None:
        """The plaintext the server has already sent, without waiting for more: None
        when nothing is there, ``b""`` once the server has closed. What is read
        from the socket stops at about ``max_bytes``: a server that writes without
        pause would otherwise keep this loop reading, and the memory growing, for
        ever; the rest stays on the socket.

        Raises:
            TlsError: a TLS record failed.
        """
        held = self._held()
        if held is not None:
            return held
        chunks: list[bytes] = []
        size = 0
        while size < max_bytes:
            try:
                # The socket does not block.
                raw = self._sock.recv(min(_RECV_SIZE, max_bytes - size))
            except (BlockingIOError, InterruptedError):
                break
            except ConnectionResetError:
                raw = b""
            if not raw:
                self._eof = True
                break
            if self._tls is None:
                chunks.append(raw)
                size += len(raw)
                continue
            try:
                plain, out = self._tls.receive(raw)
            except EOFError:
                self._eof = True
                break
            if out:
                await self._loop.sock_sendall(self._sock, out)
            chunks.append(plain)
            size += len(raw)  # raw: records that decrypt to nothing count too
        data = b"".join(chunks)
        if data:
            return data  # a close that came with it is b"" at the next read
        return b"" if self._eof else None

    async def start_tls(self, session: TlsSetup, timeout: float) -> int:
        """Run the handshake on this connection; returns 0: bytes the server sent in
        clear are in the engine's buffer (which the shell discards) or, unread, fail
        the handshake.

        Raises:
            TlsError: the handshake failed (an alert has been sent when there was one).
            WireClosed: the server closed the connection during the handshake.
            TimeoutError: no handshake within ``timeout``.
        """
        async with asyncio.timeout(timeout):
            await self._loop.sock_sendall(self._sock, session.start())
            first = True
            while not session.handshake_done:
                raw = await self._recv_raw()
                if not raw:
                    self._eof = True
                    raise WireClosed("server closed the connection during the TLS handshake")
                if first and (line := _clear_text_line(raw)) is not None:
                    # OpenSSL would say "wrong version number"; say what came.
                    raise ClearTextAnswer(line)
                first = False
                try:
                    plain, out = session.receive(raw)
                except TlsError:
                    alert = getattr(session, "alert", b"")
                    if alert:
                        try:
                            await self._loop.sock_sendall(self._sock, alert)
                        except OSError:
                            pass
                    raise
                except EOFError:
                    raise WireClosed("server closed TLS during the handshake") from None
                if out:
                    await self._loop.sock_sendall(self._sock, out)
                self._pending += plain
        self._tls = session
        return 0

    async def close(self, timeout: float = 1.0) -> None:
        """Send close_notify when TLS is on (within ``timeout``), then close the socket."""
        try:
            if self._tls is not None and self._tls.handshake_done:
                out = self._tls.close()
                if out:
                    async with asyncio.timeout(timeout):
                        await self._loop.sock_sendall(self._sock, out)
        except (OSError, TimeoutError):
            pass
        finally:
            self._sock.close()

    def abort(self) -> None:
        self._sock.close()
