"""What is true of each SASL mechanism smtpgate knows, defined once.

One `MechanismFacts` record per mechanism, in `MECHANISMS`, strongest first: that
position is the strength order, the order of advertisement in EHLO and of
``--auth auto``'s preference. Everything that asks "is this a legacy mechanism?",
"which mechanisms need an OAuth issuer?", "which are on by default?" derives its
answer from these records: the config schema (which names are valid, the default
``[auth].mechanisms``), the SASL registry (`smtpgate.sasl.registry` joins each
record to its server class and client factory), the auth service, the reports and
the tools.

Why a module of its own at the bottom: the intended import direction is
``cli → server → (auth, policy, queue, tools) → (smtp, sasl, client, tls) → config``,
so ``config`` cannot import ``sasl`` to validate mechanism names, and the facts
must not live in ``config`` either (they are about SASL, not about the file).
This module imports nothing of the project; both sides import it. A new
mechanism gets a record here and an implementation in ``sasl/registry.py``; a
unit test fails until both exist and agree.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

Family = Literal["external", "scram", "oauth", "plain", "login", "cram-md5"]


@dataclass(frozen=True, slots=True)
class MechanismFacts:
    """The facts of one mechanism (not its code: that is in ``sasl/``)."""

    #: Upper case, as RFC 4422 §3.1 spells it; AUTH matches it case-insensitively.
    name: str
    family: Family
    #: hashlib name of the hash it is built on ("" for none): SCRAM's H(), CRAM-MD5's MD5.
    hash: str = ""
    #: A ``-PLUS`` variant: binds the exchange to the TLS channel (RFC 5802 §6).
    channel_binding: bool = False
    #: The client sends the reusable password itself (PLAIN, LOGIN): redacted by
    #: the transport, never offered before TLS, and the only kind an app password
    #: (verified against a hash) can be used with.
    cleartext: bool = False
    #: An account must opt in to it (`smtpgate user mechanisms`, reports flag its
    #: use): it sends the password or a proof made from a plaintext-equivalent secret.
    legacy: bool = False
    #: The server must store a secret that logs in by itself (RFC 2195 §3).
    plaintext_equivalent: bool = False
    #: Takes a bearer token, not a password; needs ``[[auth.oauth_issuers]]``.
    oauth: bool = False
    #: In the default ``[auth].mechanisms``.
    default_enabled: bool = False
    #: Proves the identity with the TLS client certificate (RFC 4422 Appendix A):
    #: usable only on a TLS session whose client certificate verified, and offered
    #: on a listener with ``client_certificates`` set (docs/mechanisms.md).
    client_certificate: bool = False


EXTERNAL = MechanismFacts("EXTERNAL", "external", client_certificate=True)
SCRAM_SHA_256_PLUS = MechanismFacts(
    "SCRAM-SHA-256-PLUS", "scram", "sha256", channel_binding=True, default_enabled=True
)
SCRAM_SHA_256 = MechanismFacts("SCRAM-SHA-256", "scram", "sha256", default_enabled=True)
SCRAM_SHA_1_PLUS = MechanismFacts(
    "SCRAM-SHA-1-PLUS", "scram", "sha1", channel_binding=True, default_enabled=True
)
SCRAM_SHA_1 = MechanismFacts("SCRAM-SHA-1", "scram", "sha1", default_enabled=True)
OAUTHBEARER = MechanismFacts("OAUTHBEARER", "oauth", oauth=True)
XOAUTH2 = MechanismFacts("XOAUTH2", "oauth", oauth=True)
PLAIN = MechanismFacts("PLAIN", "plain", cleartext=True, legacy=True, default_enabled=True)
LOGIN = MechanismFacts("LOGIN", "login", cleartext=True, legacy=True, default_enabled=True)
CRAM_MD5 = MechanismFacts("CRAM-MD5", "cram-md5", "md5", legacy=True, plaintext_equivalent=True)

#: Every mechanism smtpgate implements, strongest first.
MECHANISMS: tuple[MechanismFacts, ...] = (
    EXTERNAL,
    SCRAM_SHA_256_PLUS,
    SCRAM_SHA_256,
    SCRAM_SHA_1_PLUS,
    SCRAM_SHA_1,
    OAUTHBEARER,
    XOAUTH2,
    PLAIN,
    LOGIN,
    CRAM_MD5,
)

BY_NAME: dict[str, MechanismFacts] = {m.name: m for m in MECHANISMS}

#: Every known name, strongest first.
KNOWN: tuple[str, ...] = tuple(BY_NAME)
#: The default ``[auth].mechanisms``.
DEFAULT_ENABLED: tuple[str, ...] = tuple(m.name for m in MECHANISMS if m.default_enabled)
LEGACY: frozenset[str] = frozenset(m.name for m in MECHANISMS if m.legacy)
OAUTH: frozenset[str] = frozenset(m.name for m in MECHANISMS if m.oauth)
CLEARTEXT: frozenset[str] = frozenset(m.name for m in MECHANISMS if m.cleartext)
CLIENT_CERTIFICATE: frozenset[str] = frozenset(m.name for m in MECHANISMS if m.client_certificate)
#: The SCRAM family: they need keys stored per account (``[accounts.ldap] scram``).
SCRAM: frozenset[str] = frozenset(m.name for m in MECHANISMS if m.family == "scram")
PLAINTEXT_EQUIVALENT: frozenset[str] = frozenset(
    m.name for m in MECHANISMS if m.plaintext_equivalent
)


def facts(name: str) -> MechanismFacts | None:
    """The record of ``name`` (any case), or None for a name smtpgate does not know."""
    return BY_NAME.get(name.upper())


def in_strength_order(names: Iterable[str]) -> list[str]:
    """The known names among ``names`` (any case), strongest first, each once."""
    wanted = {n.upper() for n in names}
    return [n for n in KNOWN if n in wanted]
