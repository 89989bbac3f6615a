"""TLS as a sans-IO object over memory BIOs (pyOpenSSL), for the server side.

Why not asyncio's own TLS: Python's ``ssl`` module has no keying-material
exporter (CPython issue 82133), so RFC 9266 ``tls-exporter`` channel binding,
which every TLS 1.3 SCRAM-PLUS client uses, cannot be computed with it. Driving
OpenSSL through pyOpenSSL memory BIOs gives us the exporter, the Finished
messages (``tls-unique``) and full control over the STARTTLS switch (no
plaintext buffer can leak into the TLS session because there is none), at the
cost of moving records by hand, which is a few lines.

Client certificates (SASL EXTERNAL): a listener with ``client_certificates`` gets
a context of its own, the server's certificate plus a CertificateRequest naming
the CAs of its ``client_ca``. OpenSSL verifies the chain against those CAs and
the validity dates of each certificate (no CRL or OCSP: a certificate is revoked
by removing its fingerprint, docs/mechanisms.md). ``required``: a missing or
untrusted certificate fails the handshake. ``optional``: the handshake goes on
and the session simply has no ``client_certificate``, so a client with a stray
certificate from another CA can still log in with a password.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from OpenSSL import SSL, crypto

from smtpgate.sasl.base import ChannelBinding, ClientCertificate
from smtpgate.tls import alpn, tickets
from smtpgate.tls.bio import BioConnection, TlsError, describe, end_point_hash
from smtpgate.tls.client_certs import certificate_emails, certificate_fingerprint
from smtpgate.tls.exporter import available as native_exporter_available
from smtpgate.tls.exporter import disable_session_cache
from smtpgate.tls.native_session import NativeServerSession

__all__ = [
    "ClientAuth",
    "ServerTlsContext",
    "TlsConfigError",
    "TlsError",
    "TlsServerSession",
    "make_server_context",
    "open_server_session",
]

#: Modern ciphers only; TLS 1.3 suites are configured separately by OpenSSL.
_TLS12_CIPHERS = (
    b"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    b"ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    b"ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
)

#: The private keys pyOpenSSL can hand to OpenSSL (``PKey.from_cryptography_key``).
_SIGNING_KEYS = (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey,
                 ed448.Ed448PrivateKey, dsa.DSAPrivateKey)


@dataclass(frozen=True, slots=True)
class ClientAuth:
    """One listener's client-certificate settings (``[[listeners]]`` keys)."""

    #: PEM file of the CAs a client certificate must chain to.
    ca: Path
    #: Fail the handshake without a trusted certificate (else: no EXTERNAL only).
    required: bool = False
    #: ``client_cert_san_login``: a SAN email may name the account.
    trust_emails: bool = False
    #: The config key of ``ca``, for errors.
    key: str = "listeners.client_ca"


@dataclass(frozen=True)
class _ListenerTls:
    context: SSL.Context
    auth: ClientAuth


@dataclass(frozen=True)
class ServerTlsContext:
    """A configured OpenSSL context plus what every connection needs from the cert."""

    context: SSL.Context
    #: RFC 5929 §4.1 tls-server-end-point: hash of our own certificate.
    end_point_hash: bytes
    #: The certificate in one phrase, for start-up and reload logs.
    description: str = ""
    #: Listeners that ask for client certificates, by name: their own context.
    listeners: Mapping[str, _ListenerTls] = field(default_factory=dict)
    #: The same settings on the stdlib ``ssl`` module, for every other listener
    #: (``native_session.py``); None where its exporter failed the self-test.
    native: ssl.SSLContext | None = None


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


def make_server_context(
    cert: Path,
    key: Path,
    min_version: str = "1.2",
    client_auth: Mapping[str, ClientAuth] | None = None,
    *,
    session_tickets: bool = True,
) -> ServerTlsContext:
    """Build the server context from PEM files, and one more per listener named in
    ``client_auth`` (the same certificate, asking for a client certificate).

    Raises:
        TlsConfigError: naming ``tls.cert`` or ``tls.key``: unreadable, not PEM,
            or a key that does not belong to the certificate; or naming a
            listener's ``client_ca``: unreadable or holding no CA certificate.
    """
    cert_pem = _read("tls.cert", cert)
    _read("tls.key", key)
    try:
        leaf = x509.load_pem_x509_certificate(cert_pem)  # the first in the chain
    except ValueError:
        raise TlsConfigError("tls.cert", f"{cert} holds no PEM certificate") from None
    # pyOpenSSL's context first: it says what is wrong with the files, where the
    # stdlib's (None on any failure) would only prompt or give up.
    server = _context(cert, key, min_version)
    listeners = {
        name: _ListenerTls(_client_auth_context(_context(cert, key, min_version), auth), auth)
        for name, auth in (client_auth or {}).items()
    }
    end_point = end_point_hash(leaf)
    native = (_native_context(cert, key, min_version, end_point if session_tickets else None)
              if native_exporter_available() else None)
    return ServerTlsContext(server, end_point, _describe_cert(leaf), listeners, native)


def _private_key(key: Path) -> crypto.PKey:
    """The key in ``key``, read by ``cryptography``. Never OpenSSL's own PEM
    reader: given a key protected by a passphrase, that one asks for it on the
    terminal, and a server reloaded under a terminal (``smtpgate serve`` in the
    foreground) waited there for ever, deaf to SIGTERM."""
    data = _read("tls.key", key)
    try:
        private = serialization.load_pem_private_key(data, password=None)
    except TypeError:  # encrypted, and no password given
        raise TlsConfigError(
            "tls.key", f"{key} is protected by a passphrase, which smtpgate cannot ask for; "
            f"store it without one (openssl pkey -in {key} -out NEWFILE), readable only by "
            "the server's user") from None
    except (ValueError, UnsupportedAlgorithm) as e:
        raise TlsConfigError("tls.key", f"{key} holds no usable PEM private key: {e}") from None
    if not isinstance(private, _SIGNING_KEYS):
        raise TlsConfigError("tls.key", f"{key} holds a {type(private).__name__}, which cannot "
                             "sign a TLS handshake; use an RSA or ECDSA key")
    return crypto.PKey.from_cryptography_key(private)


def _native_context(
    cert: Path, key: Path, min_version: str, tickets_for: bytes | None
) -> ssl.SSLContext | None:
    """The settings of ``_context`` on the stdlib module, and TLS 1.3 session
    tickets sealed for the certificate with hash ``tickets_for`` (none if None:
    ``tls.session_tickets = false``). The files were just
    loaded by pyOpenSSL, so a failure here is the module's, not the admin's: the
    listeners then stay on pyOpenSSL."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = (ssl.TLSVersion.TLSv1_3 if min_version == "1.3"
                           else ssl.TLSVersion.TLSv1_2)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_TICKET
    # No session cache (a client could fill it); TLS 1.3 tickets only, stateless
    # (tickets.py). The stdlib already sets SSL_MODE_RELEASE_BUFFERS (workload D).
    ctx.num_tickets = 0
    if not disable_session_cache(ctx):
        return None  # keep pyOpenSSL rather than a cache we cannot switch off
    if not alpn.strict_native(ctx):
        return None  # keep pyOpenSSL rather than accept any ALPN (ALPACA)
    if tickets_for is not None and not tickets.enable(ctx, tickets_for):
        return None
    try:
        ctx.set_ciphers(_TLS12_CIPHERS.decode())
        # A password, so that OpenSSL never prompts for one on the terminal.
        ctx.load_cert_chain(cert, key, password=b"")
    except (ssl.SSLError, OSError):
        return None
    return ctx


def open_server_session(
    ctx: ServerTlsContext, listener: str = ""
) -> TlsServerSession | NativeServerSession:
    """A new server-side session for ``listener``: the stdlib's unless the listener
    asks for client certificates or the stdlib context is unavailable."""
    if ctx.native is not None and listener not in ctx.listeners:
        tickets.rotate(ctx.native)  # the hour's ticket key, once an hour
        return NativeServerSession(ctx.native, ctx.end_point_hash)
    return TlsServerSession(ctx, listener)


def _context(cert: Path, key: Path, min_version: str) -> SSL.Context:
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_3_VERSION if min_version == "1.3" else SSL.TLS1_2_VERSION)
    ctx.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE)
    ctx.set_cipher_list(_TLS12_CIPHERS)
    try:
        ctx.use_certificate_chain_file(str(cert))
    except SSL.Error as e:
        raise TlsConfigError("tls.cert", f"cannot load {cert}: {describe(e)}") from None
    mismatch = TlsConfigError("tls.key", f"{key} does not belong to the certificate {cert}")
    private = _private_key(key)
    try:
        ctx.use_privatekey(private)
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
    # An idle session must not hold OpenSSL's read and write buffers (about 34 KiB
    # a connection): they are freed while empty and taken again on the next record
    # (bench/README.md, workload D).
    ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)
    # A client offering ALPN without "smtp" (a browser sent here) is refused.
    alpn.strict_pyopenssl(ctx)
    return ctx


#: Why OpenSSL refused a client certificate, for the session log (X509_V_ERR_*).
_VERIFY_ERRORS = {
    2: "issuer certificate not found",
    7: "bad signature",
    9: "not yet valid",
    10: "expired",
    18: "self-signed and not in client_ca",
    19: "self-signed CA not in client_ca",
    20: "issuer not in client_ca",
    21: "unable to verify the first certificate",
    24: "issuer is not a CA",
    26: "not meant for TLS client authentication",
}


def _client_auth_context(ctx: SSL.Context, auth: ClientAuth) -> SSL.Context:
    """``ctx`` asking for a client certificate that chains to ``auth.ca``."""
    pem = _read(auth.key, auth.ca)
    try:
        x509.load_pem_x509_certificates(pem)
        ctx.load_verify_locations(str(auth.ca))
        # The CertificateRequest names these CAs, so a client with several
        # certificates (msmtp, Thunderbird) picks the one that will verify.
        ctx.load_client_ca(str(auth.ca).encode())
    except (ValueError, SSL.Error):
        raise TlsConfigError(auth.key, f"{auth.ca} holds no PEM CA certificate") from None

    def record(conn: SSL.Connection, cert: crypto.X509, errno: int, depth: int, ok: int) -> bool:
        if not ok:
            problems = conn.get_app_data()
            if isinstance(problems, list):
                problems.append(f"{_VERIFY_ERRORS.get(errno, f'X509 error {errno}')}"
                                f" (depth {depth})")
        # ``optional``: never fail the handshake here; the session reads the problems.
        return bool(ok) or not auth.required

    mode = SSL.VERIFY_PEER | (SSL.VERIFY_FAIL_IF_NO_PEER_CERT if auth.required else 0)
    ctx.set_verify(mode, record)
    return ctx


def _describe_cert(cert: x509.Certificate) -> str:
    return (
        f"{cert.subject.rfc4514_string() or '(no subject)'}, serial {cert.serial_number:x}, "
        f"valid until {cert.not_valid_after_utc.isoformat()}"
    )


class TlsServerSession(BioConnection):
    """One server-side TLS connection: ciphertext in/out, plaintext in/out.

    ``listener`` picks that listener's context when it asks for client certificates.
    """

    __slots__ = ("_auth", "_ctx", "_problems")

    #: A client's last commands and its close_notify in one read are answered.
    _EOF_AFTER_DATA = True

    def __init__(self, ctx: ServerTlsContext, listener: str = ""):
        own = ctx.listeners.get(listener)
        conn = SSL.Connection(own.context if own else ctx.context, None)
        conn.set_accept_state()
        super().__init__(conn)
        self._ctx = ctx
        self._auth = own.auth if own else None
        #: What the verify callback found wrong with the client's certificate.
        self._problems: list[str] = []
        conn.set_app_data(self._problems)

    def channel_binding(self) -> ChannelBinding:
        """Every binding type computable on this connection (RFC 5929, RFC 9266).

        tls-unique uses the client's Finished: with the session cache and tickets
        off there is no resumption, so the client's is the first (RFC 5929 §3.1).
        """
        data = {"tls-server-end-point": self._ctx.end_point_hash}
        data.update(self.session_bindings(self._conn.get_peer_finished()))
        return ChannelBinding(data)

    def client_certificate(self) -> tuple[ClientCertificate | None, str]:
        """After the handshake: the client's certificate if it verified against the
        listener's ``client_ca``, else None and why (for the log; "" if none was
        asked for or sent)."""
        if self._auth is None:
            return None, ""
        peer = self._conn.get_peer_certificate()
        if peer is None:
            return None, ""
        cert = peer.to_cryptography()
        subject = cert.subject.rfc4514_string()
        if self._problems:
            return None, f"client certificate {subject!r} not trusted: {self._problems[0]}"
        return ClientCertificate(
            fingerprint=certificate_fingerprint(cert),
            subject=subject,
            emails=certificate_emails(cert),
            trust_emails=self._auth.trust_emails,
        ), ""
