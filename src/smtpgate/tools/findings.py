"""What the auditor can find: one catalogue entry per finding, with its severity,
a one-line title and a one-line fix, and the grade a set of findings earns.

The catalogue is data (like the reply table of ``smtp/replies.py``): the probes
only say *which* finding they saw and give the evidence; the wording and the
severity live here, once. docs/audit.md is written from this table.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum


class Severity(IntEnum):
    """Ordered: a higher value is worse. ADVICE does not lower the grade."""

    ADVICE = 0
    LOW = 1
    MEDIUM = 2
    HIGH = 3
    CRITICAL = 4

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True, slots=True)
class Kind:
    id: str
    severity: Severity
    title: str
    fix: str


#: Exim's way to offer (and, since Exim refuses what it did not offer, accept) AUTH
#: only once TLS is up.
_EXIM_AUTH_AFTER_TLS = "auth_advertise_hosts = ${if eq{$tls_in_cipher}{}{}{*}}"


def _k(id: str, severity: Severity, title: str, fix: str) -> Kind:
    return Kind(id, severity, title, fix)


CATALOGUE: dict[str, Kind] = {
    k.id: k
    for k in (
        _k(
            "starttls-injection", Severity.CRITICAL,
            "Commands sent in clear behind STARTTLS are executed inside TLS",
            "Upgrade the server; it must discard buffered input at STARTTLS (RFC 3207 §4.2, "
            "CVE-2011-0411 class).",
        ),
        _k(
            "starttls-response-injection", Severity.HIGH,
            "Bytes came in clear after the 220 to STARTTLS, before the handshake: a "
            "STARTTLS response injection (a client that keeps them takes them as the "
            "server's answers inside TLS)",
            "A server must send nothing after its 220 until the TLS handshake (RFC 3207 "
            "§4.2): upgrade it; if it does not send them, something on the path injects "
            "them (a firewall's SMTP inspection, a man in the middle): find it.",
        ),
        _k(
            "open-relay", Severity.CRITICAL,
            "Relays mail to outside domains without authentication",
            "Permit relaying only to authenticated clients (Postfix: drop permit_mynetworks "
            "or narrow mynetworks; keep reject_unauth_destination; Exim: empty "
            "relay_from_hosts, relay in acl_smtp_rcpt only on authenticated = *).",
        ),
        _k(
            "auth-accepts-anything", Severity.CRITICAL,
            "A made-up user name and a random password were accepted: anyone can log in",
            "Make the authentication back end check the password (no passdb or "
            "authenticator that accepts every login, no test set-up left on).",
        ),
        _k(
            "auth-accepted-in-clear", Severity.HIGH,
            "AUTH is accepted before TLS: passwords can cross the network in clear",
            "Refuse AUTH until TLS is up (Postfix: smtpd_tls_auth_only = yes; Dovecot: "
            "disable_plaintext_auth = yes; Exim: " + _EXIM_AUTH_AFTER_TLS + ").",
        ),
        _k(
            "auth-accepted-in-clear-guessable", Severity.MEDIUM,
            "AUTH is accepted before TLS with a challenge-response mechanism only: the "
            "password does not cross, but what does lets an eavesdropper test guesses "
            "offline",
            "Refuse AUTH until TLS is up (Postfix: smtpd_tls_auth_only = yes; Dovecot: "
            "disable_plaintext_auth = yes; Exim: " + _EXIM_AUTH_AFTER_TLS + ").",
        ),
        _k(
            "auth-accepted-in-clear-no-password", Severity.LOW,
            "AUTH is accepted before TLS with a mechanism that sends no password "
            "(GSSAPI, EXTERNAL): the login name and the mail after it cross in clear",
            "Refuse AUTH until TLS is up (Postfix: smtpd_tls_auth_only = yes; Exim: "
            + _EXIM_AUTH_AFTER_TLS + "), so the mail after the login is encrypted too.",
        ),
        _k(
            "no-tls", Severity.HIGH,
            "No TLS: neither STARTTLS nor implicit TLS is available",
            "Configure a certificate and offer STARTTLS on 587 and implicit TLS on 465 "
            "(RFC 8314).",
        ),
        _k(
            "tls-mode-mismatch", Severity.MEDIUM,
            "The port speaks the other TLS mode than its number promises: clients set "
            "up for it cannot connect",
            "Serve implicit TLS on 465 and STARTTLS on 587 (RFC 8314 §3.3, RFC 6409), or "
            "tell clients the port and mode it really speaks.",
        ),
        _k(
            "cert-untrusted", Severity.HIGH,
            "The certificate chain does not verify",
            "Install a certificate from a CA the clients trust, with the full chain "
            "(intermediates) configured.",
        ),
        _k(
            "cert-hostname", Severity.HIGH,
            "The certificate does not name the host",
            "Get a certificate whose subjectAltName lists the name clients connect to.",
        ),
        _k(
            "cert-expired", Severity.HIGH,
            "The certificate has expired (or is not valid yet)",
            "Renew the certificate now, and automate renewal (e.g. ACME).",
        ),
        _k(
            "auth-offered-in-clear", Severity.MEDIUM,
            "AUTH is advertised before TLS",
            "Advertise AUTH only after STARTTLS (Postfix: smtpd_tls_auth_only = yes; Exim: "
            + _EXIM_AUTH_AFTER_TLS + ").",
        ),
        _k(
            "tls-legacy-versions", Severity.MEDIUM,
            "TLS 1.0 or 1.1 is accepted",
            "Accept TLS 1.2 and newer only (RFC 8996; Postfix: smtpd_tls_protocols = "
            ">=TLSv1.2 and smtpd_tls_mandatory_protocols = >=TLSv1.2; Exim built with "
            "GnuTLS, as Debian's: tls_require_ciphers = NORMAL:-VERS-TLS1.0:-VERS-TLS1.1; "
            "with OpenSSL: openssl_options = +no_tlsv1 +no_tlsv1_1).",
        ),
        _k(
            "cert-expiring", Severity.MEDIUM,
            "The certificate expires soon",
            "Renew the certificate, and automate renewal (e.g. ACME).",
        ),
        _k(
            "weak-mechanisms", Severity.MEDIUM,
            "CRAM-MD5 or DIGEST-MD5 is offered: the server stores plaintext-equivalent secrets",
            "Disable CRAM-MD5/DIGEST-MD5 and offer SCRAM-SHA-256 instead (RFC 6331, RFC 7677).",
        ),
        _k(
            "user-enumeration", Severity.LOW,
            "SCRAM tells existing accounts from unknown names: an existing one gets its "
            "salt, an unknown one a refusal before any password is checked",
            "Answer an unknown name's SCRAM with a made-up salt and count, stable per name, "
            "as for an account (RFC 5802 §9; smtpgate does); where the server cannot "
            "(Dovecot 2.3), keep its auth penalty and a fail2ban jail on, so names cannot "
            "be probed in bulk.",
        ),
        _k(
            "scram-iterations-low", Severity.LOW,
            "SCRAM keys are stored with fewer than 4096 PBKDF2 iterations: a stolen "
            "account database is that much cheaper to crack",
            "Store SCRAM keys with at least 4096 iterations, 10000 or more where clients "
            "allow (RFC 7677 §4, RFC 5802 §5.1; smtpgate: accounts.scram_iterations; "
            "Dovecot: doveadm pw -s SCRAM-SHA-256 -r 10000); the new count applies to "
            "each password as it is next set.",
        ),
        _k(
            "credentials-refused", Severity.LOW,
            "The credentials given were refused by every mechanism tried",
            "Check the user name and password, and the mechanisms allowed for the account.",
        ),
        _k(
            "no-scram", Severity.ADVICE,
            "Only PLAIN/LOGIN after TLS: no SCRAM, so the server sees every password",
            "Offer SCRAM-SHA-256 (and -PLUS) so clients can log in without revealing the "
            "password (RFC 7677).",
        ),
    )
}


@dataclass(frozen=True, slots=True)
class Finding:
    """One finding on one target: the catalogue entry plus the evidence."""

    kind: Kind
    detail: str

    @property
    def id(self) -> str:
        return self.kind.id

    @property
    def severity(self) -> Severity:
        return self.kind.severity

    def to_json(self) -> dict[str, str]:
        return {
            "id": self.kind.id,
            "severity": self.kind.severity.label,
            "title": self.kind.title,
            "detail": self.detail,
            "fix": self.kind.fix,
        }


def finding(id: str, detail: str) -> Finding:
    """Build a finding from the catalogue; KeyError for an unknown id (a bug)."""
    return Finding(CATALOGUE[id], detail)


#: Grade by worst severity; A when nothing but advice was found.
GRADES = {
    None: "A",
    Severity.ADVICE: "A",
    Severity.LOW: "B",
    Severity.MEDIUM: "C",
    Severity.HIGH: "D",
    Severity.CRITICAL: "F",
}


def worst(findings: Iterable[Finding]) -> Severity | None:
    return max((f.severity for f in findings), default=None)


def grade(findings: Iterable[Finding]) -> str:
    return GRADES[worst(findings)]
