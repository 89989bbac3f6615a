"""A blocking SMTP client for the SASL wire tests, with TLS through pyOpenSSL.

Why not smtplib: the tests need the *client's* view of the channel bindings
(RFC 9266 tls-exporter needs a keying-material exporter, which Python's ``ssl``
lacks), need to send exactly the bytes a test chooses (a 'y' flag, a tampered
nonce, another connection's binding data), and need every reply verbatim. The
client's bindings are computed here, on the client side of OpenSSL, independently
of the server's ``tls/session.py``:

- tls-exporter (RFC 9266): 32 bytes of ``EXPORTER-Channel-Binding``, empty context;
- tls-unique (RFC 5929 §3, TLS 1.2 only): the first Finished message of the
  handshake, which on a full handshake is the client's own;
- tls-server-end-point (RFC 5929 §4): hash of the server certificate with its
  signature hash (SHA-256 for MD5/SHA-1).
"""

from __future__ import annotations

import base64
import hashlib
import socket
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import SSL

from smtpgate.sasl.base import ChannelBinding, ClientAuthError, ClientMechanism


@dataclass
class Reply:
    code: int
    lines: list[str]

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    @property
    def last(self) -> str:
        return self.lines[-1]


@dataclass
class AuthResult:
    """What happened in one AUTH exchange: every server line and what we sent."""

    final: Reply
    challenges: list[bytes] = field(default_factory=list)
    sent: list[bytes] = field(default_factory=list)
    client_error: str = ""


class WireSmtp:
    """One SMTP connection. ``tls``: "implicit", "starttls" or "none";
    ``tls_version``: "1.2" or "1.3" pins the version, None lets them negotiate."""

    def __init__(
        self,
        port: int,
        ca: Path,
        *,
        tls: str = "starttls",
        tls_version: str | None = None,
        timeout: float = 20.0,
    ) -> None:
        self._ca = ca
        self._tls_version = tls_version
        self._sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        # OpenSSL reads the descriptor itself, so the bound on every read and write
        # is the kernel's (a Python-level timeout would make the socket non-blocking).
        self._sock.settimeout(None)
        limit = struct.pack("ll", int(timeout), 0)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, limit)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, limit)
        self._conn: SSL.Connection | None = None
        self._buf = b""
        if tls == "implicit":
            self._wrap()
        self.greeting = self.reply()
        assert self.greeting.code == 220, self.greeting
        self.ehlo_reply = self.ehlo()
        if tls == "starttls":
            r = self.command("STARTTLS")
            assert r.code == 220, r
            self._wrap()
            self.ehlo_reply = self.ehlo()

    # -- TLS -----------------------------------------------------------------------------

    def _wrap(self) -> None:
        ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
        ctx.load_verify_locations(str(self._ca))
        ctx.set_verify(SSL.VERIFY_PEER, lambda conn, cert, errno, depth, ok: bool(ok))
        if self._tls_version == "1.2":
            ctx.set_max_proto_version(SSL.TLS1_2_VERSION)
        elif self._tls_version == "1.3":
            ctx.set_min_proto_version(SSL.TLS1_3_VERSION)
        conn = SSL.Connection(ctx, self._sock)
        conn.set_tlsext_host_name(b"localhost")
        conn.set_connect_state()
        conn.do_handshake()
        self._conn = conn

    @property
    def tls_version(self) -> str:
        assert self._conn is not None
        return str(self._conn.get_protocol_version_name())

    def channel_binding(self) -> ChannelBinding:
        """The client's own computation of every binding type of this connection."""
        conn = self._conn
        assert conn is not None
        data: dict[str, bytes] = {}
        peer = conn.get_peer_certificate()
        assert peer is not None
        cert = x509.load_der_x509_certificate(peer.to_cryptography().public_bytes(Encoding.DER))
        algo = cert.signature_hash_algorithm
        name = (
            "sha256" if algo is None or isinstance(algo, (hashes.MD5, hashes.SHA1)) else algo.name
        )
        data["tls-server-end-point"] = hashlib.new(name, cert.public_bytes(Encoding.DER)).digest()
        if self.tls_version == "TLSv1.3":
            data["tls-exporter"] = conn.export_keying_material(b"EXPORTER-Channel-Binding", 32, b"")
        else:
            finished = conn.get_finished()  # the client's Finished: first on a full handshake
            assert finished
            data["tls-unique"] = finished
        return ChannelBinding(data)

    # -- lines -----------------------------------------------------------------------------

    def send_line(self, line: bytes) -> None:
        data = line + b"\r\n"
        if self._conn is not None:
            self._conn.sendall(data)
        else:
            self._sock.sendall(data)

    def _recv(self) -> bytes:
        if self._conn is not None:
            try:
                return bytes(self._conn.recv(65536))
            except SSL.ZeroReturnError:
                return b""
        return self._sock.recv(65536)

    def _line(self) -> str:
        while b"\r\n" not in self._buf:
            chunk = self._recv()
            if not chunk:
                raise EOFError(f"connection closed; pending {self._buf!r}")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\r\n", 1)
        return line.decode("utf-8", "replace")

    def reply(self) -> Reply:
        lines = []
        while True:
            line = self._line()
            lines.append(line)
            if len(line) < 4 or line[3] != "-":
                return Reply(int(line[:3]), lines)

    def command(self, line: str) -> Reply:
        self.send_line(line.encode("utf-8"))
        return self.reply()

    def ehlo(self) -> Reply:
        r = self.command("EHLO client.test")
        assert r.code == 250, r
        return r

    @property
    def mechanisms(self) -> list[str]:
        for line in self.ehlo_reply.lines[1:]:
            if line[4:].upper().startswith("AUTH "):
                return line[9:].split()
        return []

    # -- AUTH ------------------------------------------------------------------------------

    def auth(
        self,
        mech: ClientMechanism,
        *,
        name: str | None = None,
        tamper: dict[int, bytes] | None = None,
    ) -> AuthResult:
        """Run ``mech`` to the end. ``tamper`` maps the index of a client message
        (0 = initial response) to bytes sent instead of what the mechanism made.
        A client-side error (a server ``e=`` or a bad signature) is answered with an
        empty response, as RFC 4954 asks after additional data; the server decides."""
        tamper = tamper or {}
        result = AuthResult(final=Reply(0, []))
        initial = mech.start()
        index = 0
        if initial is not None:
            initial = tamper.get(0, initial)
            result.sent.append(initial)
            wire = base64.b64encode(initial).decode("ascii") or "="
            self.send_line(f"AUTH {name or mech.name} {wire}".encode())
        else:
            self.send_line(f"AUTH {name or mech.name}".encode())
        while True:
            r = self.reply()
            if r.code != 334:
                result.final = r
                return result
            challenge = base64.b64decode(r.last[4:])
            result.challenges.append(challenge)
            index += 1
            if result.client_error:
                response = b""
            else:
                try:
                    response = mech.step(challenge)
                except ClientAuthError as e:
                    result.client_error = str(e)
                    response = b""
            response = tamper.get(index, response)
            result.sent.append(response)
            self.send_line(base64.b64encode(response))

    def close(self) -> None:
        try:
            self.command("QUIT")
        except (OSError, EOFError, SSL.Error):
            pass
        try:
            if self._conn is not None:
                self._conn.shutdown()
        except SSL.Error:
            pass
        self._sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
