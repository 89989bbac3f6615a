"""What a finished TLS handshake established, as the tester and the auditor report it."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from smtpgate.plural import count
from smtpgate.tls.client import (
    ISSUER_NOT_FOUND,
    CertificateInfo,
    TlsClientSession,
    Verification,
    certificate_info,
)


@dataclass(frozen=True, slots=True)
class TlsReport:
    version: str
    cipher: str
    bits: int
    chain: tuple[CertificateInfo, ...]
    verification: Verification
    channel_bindings: tuple[str, ...]
    checked_at: dt.datetime

    @classmethod
    def from_session(cls, session: TlsClientSession, now: dt.datetime) -> TlsReport:
        return cls(
            version=session.version,
            cipher=session.cipher,
            bits=session.cipher_bits,
            chain=tuple(certificate_info(c) for c in session.peer_chain()),
            verification=session.verification(),
            channel_bindings=tuple(sorted(session.channel_binding().data)),
            checked_at=now,
        )

    @property
    def leaf(self) -> CertificateInfo | None:
        return self.chain[0] if self.chain else None

    @property
    def missing_issuer(self) -> str | None:
        """The issuer of a leaf the server sent alone, when that issuer is what the
        chain lacks: the most common set-up error (the certificate file without
        the intermediate CA's), which "unable to get local issuer certificate"
        does not name. None otherwise."""
        v = self.verification
        leaf = self.leaf
        if (v.chain_ok or v.chain_error_code not in ISSUER_NOT_FOUND or len(self.chain) != 1
                or leaf is None or leaf.self_signed):
            return None
        return leaf.issuer

    def chain_hint(self) -> str:
        """What to do about `missing_issuer` ("" when there is nothing to say)."""
        issuer = self.missing_issuer
        if issuer is None:
            return ""
        return (f"the server sent its certificate alone, without the certificate of its "
                f"issuer {issuer}: if that is an intermediate CA, the server must send it "
                "too (configure the full chain)")

    def days_left(self) -> float | None:
        leaf = self.leaf
        return None if leaf is None else leaf.days_left(self.checked_at)

    def lines(self) -> list[str]:
        """Human lines for a transcript (the ``==`` lines)."""
        out = [f"TLS started: {self.version}, cipher {self.cipher} ({self.bits} bits)"]
        leaf = self.leaf
        if leaf is not None:
            days = leaf.days_left(self.checked_at)
            when = leaf.not_after.strftime("%Y-%m-%d %H:%M UTC")
            state = f"expired {count(round(-days), 'day')} ago" if days < 0 else f"{count(round(days), 'day')} left"
            out.append(f"certificate subject: {leaf.subject}")
            out.append(f"certificate issuer:  {leaf.issuer}")
            out.append(f"certificate expires: {when} ({state})")
            names = [*leaf.dns_names, *leaf.ip_addresses]
            out.append(f"certificate names:   {', '.join(names) or '(no subjectAltName)'}")
            for i, cert in enumerate(self.chain[1:], start=1):
                out.append(f"chain[{i}]: subject {cert.subject}; issuer {cert.issuer}")
        v = self.verification
        out.append(
            "chain verified: yes" if v.chain_ok else f"chain verified: NO ({v.chain_error})"
        )
        if hint := self.chain_hint():
            out.append(hint)
        out.append(
            f"hostname {v.hostname!r} verified: " + ("yes" if v.hostname_ok else "NO (no match)")
        )
        out.append(f"channel bindings: {', '.join(self.channel_bindings) or '(none)'}")
        return out

    def to_json(self) -> dict[str, object]:
        v = self.verification
        return {
            "version": self.version,
            "cipher": self.cipher,
            "bits": self.bits,
            "certificate": self.leaf.to_json(self.checked_at) if self.leaf else None,
            "chain": [
                {"subject": c.subject, "issuer": c.issuer} for c in self.chain
            ],
            "chain_verified": v.chain_ok,
            "chain_error": v.chain_error or None,
            "hostname": v.hostname,
            "hostname_verified": v.hostname_ok,
            "channel_bindings": list(self.channel_bindings),
        }
