"""TLS as a sans-IO object over memory BIOs (pyOpenSSL), for the server side.

Why not asyncio's own TLS: Python's ``ssl`` module has no keying-material
exporter (CPython issue 82133), so RFC 9266 ``tls-exporter`` channel binding,
which every TLS 1.3 SCRAM-PLUS client uses, cannot be computed with it. Driving
OpenSSL through pyOpenSSL memory BIOs gives us the exporter, the Finished
messages (``tls-unique``) and full control over the STARTTLS switch (no
plaintext buffer can leak into the TLS session because there is none), at the
cost of moving records by hand, which is a few lines.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import SSL

from smtpgate.sasl.base import ChannelBinding

_READ_SIZE = 16384

#: Modern ciphers only; TLS 1.3 suites are configured separately by OpenSSL.
_TLS12_CIPHERS = (
    b"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    b"ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    b"ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
)


class TlsError(Exception):
    """The handshake or a record failed; the connection must be closed."""


@dataclass(frozen=True)
class ServerTlsContext:
    """A configured OpenSSL context plus what every connection needs from the cert."""

    context: SSL.Context
    #: RFC 5929 §4.1 tls-server-end-point: hash of our own certificate.
    end_point_hash: bytes


def _end_point_hash(cert_pem: bytes) -> bytes:
    cert = x509.load_pem_x509_certificate(cert_pem)
    algo = cert.signature_hash_algorithm
    # RFC 5929 §4.1: MD5 and SHA-1 are replaced by SHA-256.
    name = "sha256" if algo is None or isinstance(algo, (hashes.MD5, hashes.SHA1)) else algo.name
    return hashlib.new(name, cert.public_bytes(Encoding.DER)).digest()


def make_server_context(cert: Path, key: Path, min_version: str = "1.2") -> ServerTlsContext:
    """Build the server context. Raises TlsError naming the file on failure."""
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_3_VERSION if min_version == "1.3" else SSL.TLS1_2_VERSION)
    ctx.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE)
    ctx.set_cipher_list(_TLS12_CIPHERS)
    try:
        ctx.use_certificate_chain_file(str(cert))
        ctx.use_privatekey_file(str(key))
        ctx.check_privatekey()
    except SSL.Error as e:
        raise TlsError(f"cannot load certificate {cert} / key {key}: {e}") from None
    # Session resumption changes which Finished message tls-unique uses, and a
    # per-process cache is of little use with several workers: no resumption.
    ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    ctx.set_options(SSL.OP_NO_TICKET)
    first_cert = cert.read_bytes().split(b"-----END CERTIFICATE-----")[0]
    return ServerTlsContext(ctx, _end_point_hash(first_cert + b"-----END CERTIFICATE-----\n"))


class TlsServerSession:
    """One server-side TLS connection: ciphertext in/out, plaintext in/out."""

    __slots__ = ("_conn", "_ctx", "handshake_done")

    def __init__(self, ctx: ServerTlsContext):
        self._ctx = ctx
        self._conn = SSL.Connection(ctx.context, None)
        self._conn.set_accept_state()
        self.handshake_done = False

    def receive(self, data: bytes) -> tuple[bytes, bytes]:
        """Feed ciphertext; return (plaintext received, ciphertext to send).

        Raises TlsError on a handshake or record failure, and EOFError when the
        peer sent close_notify.
        """
        conn = self._conn
        conn.bio_write(data)
        if not self.handshake_done:
            try:
                conn.do_handshake()
                self.handshake_done = True
            except SSL.WantReadError:
                return b"", self._outgoing()
            except SSL.Error as e:
                raise TlsError(f"handshake failed: {_describe(e)}") from None
        chunks = []
        while True:
            try:
                chunks.append(conn.recv(_READ_SIZE))
            except SSL.WantReadError:
                break
            except SSL.ZeroReturnError:
                raise EOFError from None
            except SSL.Error as e:
                raise TlsError(f"TLS error: {_describe(e)}") from None
        return b"".join(chunks), self._outgoing()

    def send(self, plaintext: bytes) -> bytes:
        """Encrypt ``plaintext``; return the records to write."""
        conn = self._conn
        view = memoryview(plaintext)
        while view:
            n = conn.send(view[:_READ_SIZE].tobytes())
            view = view[n:]
        return self._outgoing()

    def close(self) -> bytes:
        try:
            self._conn.shutdown()
        except SSL.Error:
            pass
        return self._outgoing()

    def _outgoing(self) -> bytes:
        conn = self._conn
        out = []
        while True:
            try:
                chunk = conn.bio_read(65536)
            except SSL.WantReadError:
                break
            if not chunk:
                break
            out.append(chunk)
        return b"".join(out)

    @property
    def version(self) -> str:
        return str(self._conn.get_protocol_version_name())

    @property
    def cipher(self) -> str:
        return str(self._conn.get_cipher_name() or "")

    def channel_binding(self) -> ChannelBinding:
        """Every binding type computable on this connection (RFC 5929, RFC 9266)."""
        conn = self._conn
        data: dict[str, bytes] = {"tls-server-end-point": self._ctx.end_point_hash}
        version = self.version
        if version == "TLSv1.3":
            # RFC 9266 §2: 32 bytes from the exporter, empty context.
            data["tls-exporter"] = conn.export_keying_material(
                b"EXPORTER-Channel-Binding", 32, b""
            )
        elif version == "TLSv1.2":
            # RFC 5929 §3: the first Finished message of the handshake; with the
            # session cache off and no resumption, that is the client's.
            finished = conn.get_peer_finished()
            if finished:
                data["tls-unique"] = finished
        return ChannelBinding(data)


def _describe(e: SSL.Error) -> str:
    try:
        return "; ".join(str(x[2]) for x in e.args[0]) or "unknown"
    except (IndexError, TypeError):
        return str(e)
