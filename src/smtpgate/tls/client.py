"""TLS as a sans-IO object over memory BIOs (pyOpenSSL), for the client side.

Theory of operation
-------------------
The mirror of ``tls/session.py``, for ``smtpgate test`` and ``smtpgate audit``.
Python's ``ssl`` cannot export keying material, so a client built on it cannot
compute the RFC 9266 ``tls-exporter`` binding that SCRAM-*-PLUS needs on TLS 1.3;
pyOpenSSL can. The caller moves bytes: `TlsClientSession.start` gives the
ClientHello, `receive` takes what the server sent and returns (plaintext,
records to write), `send` encrypts.

Verification is *recorded*, not enforced, during the handshake: a tester and an
auditor must be able to say "the chain does not verify, and here is the
certificate" rather than only fail. OpenSSL's own chain verification runs (with
the CA file, or the system store), its first error is kept, and the handshake
is allowed to finish; the caller decides what a failure means (``smtpgate
test`` aborts unless ``--no-tls-verify``). The host name is checked here
against the certificate's subjectAltName (RFC 6125 §6.4: DNS-ID, with a
wildcard only as the whole left-most label; IP addresses against iPAddress
entries; no fall-back to the Common Name, as browsers and Python's ``ssl`` do).

Channel bindings (for SCRAM-*-PLUS):

* ``tls-exporter`` (RFC 9266 §2) on TLS 1.3: 32 bytes, label
  "EXPORTER-Channel-Binding", empty context;
* ``tls-unique`` (RFC 5929 §3) on TLS 1.2: the first Finished message of the
  handshake. We never resume sessions (each session has a fresh context state
  and no ticket is offered back), so that is always our own Finished;
* ``tls-server-end-point`` (RFC 5929 §4): hash of the server's certificate.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from OpenSSL import SSL, crypto

from smtpgate.sasl.base import ChannelBinding
from smtpgate.tls.bio import BioConnection, TlsError, end_point_hash
from smtpgate.tls.bio import describe as _describe

__all__ = ["TlsClientSession", "TlsError", "end_point_hash"]

_VERSIONS = {"1.2": SSL.TLS1_2_VERSION, "1.3": SSL.TLS1_3_VERSION}


def make_client_context(
    ca_file: Path | None = None, *, version: str | None = None
) -> SSL.Context:
    """A client context: TLS 1.2 or newer, peer verification recorded.

    Args:
        ca_file: PEM bundle to trust; None uses the system store.
        version: "1.2" or "1.3" pins that version; None allows both.

    Raises:
        TlsError: the CA file cannot be loaded, or an unknown version.
    """
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    if version is not None:
        if version not in _VERSIONS:
            raise TlsError(f"unknown TLS version {version!r}; use 1.2 or 1.3")
        ctx.set_min_proto_version(_VERSIONS[version])
        ctx.set_max_proto_version(_VERSIONS[version])
    else:
        # RFC 8996: TLS 1.0 and 1.1 are deprecated; the tester never offers them.
        ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    ctx.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_NO_TICKET)
    ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    try:
        if ca_file is not None:
            ctx.load_verify_locations(str(ca_file))
        else:
            ctx.set_default_verify_paths()
    except SSL.Error as e:
        raise TlsError(f"cannot load CA file {ca_file}: {_describe(e)}") from None
    return ctx


@dataclass(frozen=True, slots=True)
class CertificateInfo:
    """What a person checks in a certificate."""

    subject: str
    issuer: str
    not_before: dt.datetime
    not_after: dt.datetime
    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...]
    sha256: str

    @property
    def self_signed(self) -> bool:
        return self.subject == self.issuer

    def days_left(self, now: dt.datetime) -> float:
        return (self.not_after - now).total_seconds() / 86400.0

    def to_json(self, now: dt.datetime) -> dict[str, object]:
        return {
            "subject": self.subject,
            "issuer": self.issuer,
            "not_before": self.not_before.isoformat(),
            "not_after": self.not_after.isoformat(),
            "days_left": round(self.days_left(now), 1),
            "dns_names": list(self.dns_names),
            "ip_addresses": list(self.ip_addresses),
            "sha256": self.sha256,
        }


def certificate_info(cert: x509.Certificate) -> CertificateInfo:
    dns: tuple[str, ...] = ()
    ips: tuple[str, ...] = ()
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        pass
    else:
        dns = tuple(san.get_values_for_type(x509.DNSName))
        ips = tuple(str(a) for a in san.get_values_for_type(x509.IPAddress))
    return CertificateInfo(
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        dns_names=dns,
        ip_addresses=ips,
        sha256=cert.fingerprint(hashes.SHA256()).hex(":"),
    )


def _label_matches(pattern: str, label: str) -> bool:
    return pattern == "*" or pattern == label


def hostname_matches(info: CertificateInfo, name: str) -> bool:
    """RFC 6125 §6.4 matching of ``name`` against the subjectAltName entries."""
    try:
        addr = ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        addr = None
    if addr is not None:
        # RFC 6125 §6.4 does not cover IPs; RFC 5280 §4.2.1.6 iPAddress is the rule.
        return any(ipaddress.ip_address(ip) == addr for ip in info.ip_addresses)
    wanted = name.rstrip(".").lower().split(".")
    for pattern in info.dns_names:
        labels = pattern.rstrip(".").lower().split(".")
        if len(labels) != len(wanted):
            continue
        # RFC 6125 §6.4.3: a wildcard only as the complete left-most label, and
        # never matching more than one label; the rest must match exactly.
        if labels[0] == "*" and len(labels) < 3:
            continue  # "*.com" is too broad to honour
        if _label_matches(labels[0], wanted[0]) and labels[1:] == wanted[1:]:
            return True
    return False


@dataclass(frozen=True, slots=True)
class Verification:
    """The outcome of checking the server's certificate."""

    chain_ok: bool
    chain_error: str
    hostname: str
    hostname_ok: bool
    #: OpenSSL's X509_V_ERR code of ``chain_error`` (0 when the chain verified).
    chain_error_code: int = 0

    @property
    def only_validity_period(self) -> bool:
        """The chain fails only because of the dates (expired or not yet valid)."""
        return not self.chain_ok and self.chain_error_code in (X509_V_ERR_NOT_YET_VALID,
                                                               X509_V_ERR_EXPIRED)

    @property
    def ok(self) -> bool:
        return self.chain_ok and self.hostname_ok

    def problems(self) -> list[str]:
        out = []
        if not self.chain_ok:
            out.append(f"certificate chain does not verify: {self.chain_error}")
        if not self.hostname_ok:
            out.append(f"certificate does not match the name {self.hostname!r}")
        return out


class TlsClientSession(BioConnection):
    """One client-side TLS connection: ciphertext in/out, plaintext in/out."""

    __slots__ = ("_chain_error", "_chain_error_code", "_hostname", "alert")

    #: The server's last reply and its close_notify often come in one read.
    _EOF_AFTER_DATA = True

    def __init__(self, ctx: SSL.Context, server_hostname: str) -> None:
        super().__init__(SSL.Connection(ctx, None))
        self._conn.set_connect_state()
        self._hostname = server_hostname
        try:
            ipaddress.ip_address(server_hostname.strip("[]"))
        except ValueError:
            # RFC 6066 §3: SNI carries host names only, never an IP literal.
            self._conn.set_tlsext_host_name(server_hostname.encode("idna"))
        self._chain_error = ""
        self._chain_error_code = 0
        self._conn.set_verify(SSL.VERIFY_PEER, self._on_verify)
        #: Records OpenSSL produced when the handshake failed (an alert to send).
        self.alert = b""

    def _on_verify(
        self, conn: SSL.Connection, cert: crypto.X509, errno: int, depth: int, ok: int
    ) -> bool:
        if not ok and not self._chain_error:
            self._chain_error = f"{_verify_message(errno)} (depth {depth})"
            self._chain_error_code = errno
        return True  # record, never abort: the caller decides (see module docstring)

    def start(self) -> bytes:
        """Begin the handshake; returns the ClientHello to write."""
        try:
            self._conn.do_handshake()
        except SSL.WantReadError:
            pass
        except SSL.Error as e:
            raise TlsError(f"handshake failed: {_describe(e)}") from None
        return self.outgoing()

    def _handshake_failed(self) -> None:
        self.alert = self.outgoing()  # OpenSSL's alert, for the caller to send

    # --- what the handshake established ----------------------------------------

    @property
    def cipher_bits(self) -> int:
        return int(self._conn.get_cipher_bits() or 0)

    def peer_chain(self) -> list[x509.Certificate]:
        """The certificates the server sent, leaf first."""
        chain = self._conn.get_peer_cert_chain(as_cryptography=True)
        if chain:
            return list(chain)
        leaf = self._conn.get_peer_certificate(as_cryptography=True)
        return [leaf] if leaf is not None else []

    def verification(self) -> Verification:
        chain = self.peer_chain()
        if not chain:
            return Verification(False, "no certificate", self._hostname, False)
        leaf = certificate_info(chain[0])
        return Verification(
            chain_ok=not self._chain_error,
            chain_error=self._chain_error,
            hostname=self._hostname,
            hostname_ok=hostname_matches(leaf, self._hostname),
            chain_error_code=self._chain_error_code,
        )

    def channel_binding(self) -> ChannelBinding:
        """Every binding type computable on this connection (RFC 5929, RFC 9266)."""
        data: dict[str, bytes] = {}
        chain = self.peer_chain()
        if chain:
            data["tls-server-end-point"] = end_point_hash(chain[0])
        # Our own Finished was the first of a full handshake (RFC 5929 §3.1).
        data.update(self.session_bindings(self._conn.get_finished()))
        return ChannelBinding(data)


X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT = 2
X509_V_ERR_NOT_YET_VALID = 9
X509_V_ERR_EXPIRED = 10
X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY = 20
X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE = 21
#: The codes of a chain whose issuer of the leaf could not be found.
ISSUER_NOT_FOUND = frozenset({X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT,
                              X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY,
                              X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE})

# The few X509_V_ERR codes a person meets; others are shown by number.
_VERIFY_MESSAGES = {
    X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT: "unable to get issuer certificate",
    X509_V_ERR_NOT_YET_VALID: "certificate is not yet valid",
    X509_V_ERR_EXPIRED: "certificate has expired",
    18: "self-signed certificate",
    19: "self-signed certificate in certificate chain",
    X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY: "unable to get local issuer certificate",
    X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE: "unable to verify the first certificate",
    24: "invalid CA certificate",
    26: "unsupported certificate purpose",
}


def _verify_message(errno: int) -> str:
    return _VERIFY_MESSAGES.get(errno, f"verify error {errno}")


