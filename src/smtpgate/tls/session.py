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

from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from OpenSSL import SSL

from smtpgate.sasl.base import ChannelBinding
from smtpgate.tls.bio import BioConnection, TlsError, describe, end_point_hash

__all__ = [
    "ServerTlsContext",
    "TlsConfigError",
    "TlsError",
    "TlsServerSession",
    "make_server_context",
]

#: Modern ciphers only; TLS 1.3 suites are configured separately by OpenSSL.
_TLS12_CIPHERS = (
    b"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    b"ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    b"ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
)


@dataclass(frozen=True)
class ServerTlsContext:
    """A configured OpenSSL context plus what every connection needs from the cert."""

    context: SSL.Context
    #: RFC 5929 §4.1 tls-server-end-point: hash of our own certificate.
    end_point_hash: bytes
    #: The certificate in one phrase, for start-up and reload logs.
    description: str = ""


class TlsConfigError(TlsError):
    """The configured certificate or key cannot be used; ``key`` names the setting
    (``tls.cert`` or ``tls.key``) so start-up and reload can say which one."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key


def _read(key: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise TlsConfigError(key, f"cannot read {path}: {e.strerror or e}") from None


def make_server_context(cert: Path, key: Path, min_version: str = "1.2") -> ServerTlsContext:
    """Build the server context from PEM files.

    Raises:
        TlsConfigError: naming ``tls.cert`` or ``tls.key``: unreadable, not PEM,
            or a key that does not belong to the certificate.
    """
    cert_pem = _read("tls.cert", cert)
    _read("tls.key", key)
    try:
        leaf = x509.load_pem_x509_certificate(cert_pem)  # the first in the chain
    except ValueError:
        raise TlsConfigError("tls.cert", f"{cert} holds no PEM certificate") from None
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_3_VERSION if min_version == "1.3" else SSL.TLS1_2_VERSION)
    ctx.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE)
    ctx.set_cipher_list(_TLS12_CIPHERS)
    try:
        ctx.use_certificate_chain_file(str(cert))
    except SSL.Error as e:
        raise TlsConfigError("tls.cert", f"cannot load {cert}: {describe(e)}") from None
    mismatch = TlsConfigError("tls.key", f"{key} does not belong to the certificate {cert}")
    try:
        ctx.use_privatekey_file(str(key))
    except SSL.Error as e:
        if "mismatch" in describe(e):
            raise mismatch from None
        raise TlsConfigError("tls.key", f"{key} holds no usable PEM private key: {describe(e)}") from None
    try:
        ctx.check_privatekey()
    except SSL.Error:
        raise mismatch from None
    # Session resumption changes which Finished message tls-unique uses, and a
    # per-process cache is of little use with several workers: no resumption.
    ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    ctx.set_options(SSL.OP_NO_TICKET)
    return ServerTlsContext(ctx, end_point_hash(leaf), _describe_cert(leaf))


def _describe_cert(cert: x509.Certificate) -> str:
    return (
        f"{cert.subject.rfc4514_string() or '(no subject)'}, serial {cert.serial_number:x}, "
        f"valid until {cert.not_valid_after_utc.isoformat()}"
    )


class TlsServerSession(BioConnection):
    """One server-side TLS connection: ciphertext in/out, plaintext in/out."""

    __slots__ = ("_ctx",)

    def __init__(self, ctx: ServerTlsContext):
        conn = SSL.Connection(ctx.context, None)
        conn.set_accept_state()
        super().__init__(conn)
        self._ctx = ctx

    def receive(self, data: bytes) -> tuple[bytes, bytes]:
        """Feed ciphertext; return (plaintext received, ciphertext to send).

        Raises TlsError on a handshake or record failure, and EOFError when the
        peer sent close_notify.
        """
        self._conn.bio_write(data)
        if not self.handshake_done:
            try:
                self._conn.do_handshake()
                self.handshake_done = True
            except SSL.WantReadError:
                return b"", self.outgoing()
            except SSL.Error as e:
                raise TlsError(f"handshake failed: {describe(e)}") from None
        return self.read_plaintext(), self.outgoing()

    def channel_binding(self) -> ChannelBinding:
        """Every binding type computable on this connection (RFC 5929, RFC 9266).

        tls-unique uses the client's Finished: with the session cache and tickets
        off there is no resumption, so the client's is the first (RFC 5929 §3.1).
        """
        data = {"tls-server-end-point": self._ctx.end_point_hash}
        data.update(self.session_bindings(self._conn.get_peer_finished()))
        return ChannelBinding(data)
