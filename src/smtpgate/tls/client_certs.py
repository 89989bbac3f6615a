"""Client certificates as accounts name them: a SHA-256 fingerprint of the DER bytes.

Used by the TLS session (the certificate a client presented), and by the admin
service (``smtpgate user cert add USER FILE`` reads a PEM or DER file;
``user cert remove`` takes a fingerprint as people paste it).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

_HEX64 = re.compile(r"[0-9a-f]{64}")


class CertificateFileError(ValueError):
    """The bytes hold no X.509 certificate, or a fingerprint is not SHA-256 hex."""


@dataclass(frozen=True, slots=True)
class CertificateFacts:
    """What an account's listing shows of a certificate."""

    fingerprint: str
    subject: str
    not_after: datetime
    emails: tuple[str, ...]


def certificate_fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the DER certificate, lower-case hex: how accounts name certificates
    (what ``openssl x509 -noout -fingerprint -sha256`` prints, without colons)."""
    return hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()


def certificate_emails(cert: x509.Certificate) -> tuple[str, ...]:
    """The subjectAltName rfc822Name values (none if it has no SAN)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except (x509.ExtensionNotFound, ValueError):
        return ()
    return tuple(san.value.get_values_for_type(x509.RFC822Name))


def read_certificate(data: bytes) -> CertificateFacts:
    """The first certificate of a PEM file, or a DER certificate.

    Raises:
        CertificateFileError: neither.
    """
    try:
        if b"-----BEGIN" in data:
            cert = x509.load_pem_x509_certificate(data)
        else:
            cert = x509.load_der_x509_certificate(data)
    except ValueError:
        raise CertificateFileError("no PEM or DER X.509 certificate in the file") from None
    return CertificateFacts(
        certificate_fingerprint(cert),
        cert.subject.rfc4514_string(),
        cert.not_valid_after_utc,
        certificate_emails(cert),
    )


def normalise_fingerprint(text: str) -> str:
    """``AB:CD:...``, ``sha256:abcd...``, bare hex, or the whole line of ``openssl x509
    -noout -fingerprint -sha256`` (``sha256 Fingerprint=AB:CD:...``), to lower-case hex.

    Raises:
        CertificateFileError: not 64 hex digits once colons and spaces are gone.
    """
    plain = re.sub(r"^sha256\s+fingerprint=", "", text.strip().lower())
    hexed = re.sub(r"[\s:]", "", plain.removeprefix("sha256:").removeprefix("sha256="))
    if not _HEX64.fullmatch(hexed):
        raise CertificateFileError(f"{text!r} is not a SHA-256 fingerprint (64 hex digits)")
    return hexed
