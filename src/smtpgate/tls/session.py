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

__all__ = ["ServerTlsContext", "TlsError", "TlsServerSession", "make_server_context"]

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
    leaf = x509.load_pem_x509_certificate(cert.read_bytes())  # the first in the chain
    return ServerTlsContext(ctx, end_point_hash(leaf))


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
