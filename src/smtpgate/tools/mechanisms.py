"""Which SASL mechanism the tools use, and what each needs."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from smtpgate import mechanism_facts as facts
from smtpgate.sasl.base import ChannelBinding, ClientMechanism
from smtpgate.sasl.registry import MECHANISMS, create_client_mechanism

#: Bearer-token mechanisms (RFC 7628, Google's XOAUTH2): they need a token, not a password.
TOKEN_MECHANISMS = facts.OAUTH
#: Mechanisms whose server side must store a plaintext-equivalent secret: the
#: stored value logs in by itself (RFC 2195 §3 on CRAM-MD5). DIGEST-MD5 is one too
#: (RFC 6331 §1); smtpgate does not implement it, but the auditor meets it elsewhere.
PLAINTEXT_EQUIVALENT = facts.PLAINTEXT_EQUIVALENT | {"DIGEST-MD5"}
#: Mechanisms that put the reusable password itself on the wire.
CLEARTEXT = facts.CLEARTEXT
#: Challenge-response mechanisms: the password does not cross, but what does (a
#: CRAM-MD5 digest, a SCRAM proof with its salt and count, an NTLM response) lets
#: whoever read it test password guesses offline.
GUESSABLE = frozenset({"CRAM-MD5", "DIGEST-MD5", "NTLM", "GSS-SPNEGO"})
#: Mechanisms that send no password nor anything to test guesses against:
#: Kerberos (a ticket sealed with the service's key, RFC 4752), a certificate or
#: identity established outside SASL (RFC 4422 Appendix A), no identity at all.
NO_PASSWORD = frozenset({"GSSAPI", "GS2-KRB5", "EXTERNAL", "ANONYMOUS"})

Exposure = Literal["secret", "guessable", "none"]


def clear_exposure(name: str) -> Exposure:
    """What an AUTH exchange with ``name`` gives whoever reads the connection in
    clear: the secret itself (PLAIN, LOGIN, a bearer token, and any mechanism not
    known here, to be safe), material to test guesses against, or nothing of the
    password."""
    upper = name.upper()
    if upper in NO_PASSWORD:
        return "none"
    if upper in GUESSABLE or upper.startswith("SCRAM-"):
        return "guessable"
    return "secret"


#: The order in which the auditor's AUTH-in-clear probe picks among the offered
#: mechanisms: the one that would expose most first, so the finding is the worst.
_EXPOSURE_ORDER: dict[Exposure, int] = {"secret": 0, "guessable": 1, "none": 2}


def most_exposing(offered: Iterable[str]) -> str | None:
    """The offered mechanism that gives most away in clear (PLAIN, then LOGIN, in
    a tie), or None when none is offered."""
    ranked = sorted(offered, key=lambda m: (_EXPOSURE_ORDER[clear_exposure(m)],
                                            m.upper() != "PLAIN", m.upper() != "LOGIN"))
    return ranked[0] if ranked else None


def implemented() -> list[str]:
    """Every mechanism the tools can speak, strongest first (the registry's order)."""
    return list(MECHANISMS)


def usable(name: str, *, password: bool, token: bool, channel_binding: bool) -> bool:
    """Whether we have what ``name`` needs."""
    mech = MECHANISMS.get(name.upper())
    if mech is None:
        return False
    if mech.facts.channel_binding and not channel_binding:
        return False
    if mech.facts.client_certificate:
        return False  # the tools present no client certificate
    return token if mech.facts.oauth else password


def choose(
    offered: Iterable[str], *, password: bool, token: bool, channel_binding: bool
) -> str | None:
    """``--auth auto``: the strongest offered mechanism we can run, or None."""
    offered_set = {m.upper() for m in offered}
    for name in implemented():
        if name in offered_set and usable(
            name, password=password, token=token, channel_binding=channel_binding
        ):
            return name
    return None


#: RFC 9266 §3 makes tls-exporter the default binding on TLS 1.3; RFC 5802 §6 makes
#: tls-unique the default (and mandatory to implement) before it. The tools bind to
#: the default of the connection's version, as gsasl does, so that a -PLUS test
#: shows what a typical client does; tls-server-end-point only as a last resort.
DEFAULT_BINDINGS = ("tls-exporter", "tls-unique", "tls-server-end-point")


def default_binding(cb: ChannelBinding) -> ChannelBinding:
    """Only the default binding type of ``cb`` (see `DEFAULT_BINDINGS`)."""
    for cb_type in DEFAULT_BINDINGS:
        if cb_type in cb.data:
            return ChannelBinding({cb_type: cb.data[cb_type]})
    return cb


def build(
    name: str,
    *,
    username: str,
    password: str,
    token: str,
    channel_binding: ChannelBinding,
    offered: Iterable[str] = (),
) -> ClientMechanism:
    """A fresh client mechanism.

    A non-PLUS SCRAM run where the server offered the -PLUS variant gets no
    binding data, so it sends the gs2 flag "n" ("this client does not bind"):
    with the data it would send "y" ("I could bind, but you offered no -PLUS"),
    which such a server must refuse as a downgrade (RFC 5802 §6). The tools use
    non-PLUS on purpose there (the user asked for it, or the auditor tries each
    mechanism), so "n" is the truthful flag.

    Raises:
        KeyError: not implemented.
        ValueError: the credentials cannot be expressed in this mechanism, or a
            -PLUS mechanism without channel-binding data.
    """
    upper = name.upper()
    channel_binding = default_binding(channel_binding)
    plain_scram = upper.startswith("SCRAM-") and not upper.endswith("-PLUS")
    if plain_scram and f"{upper}-PLUS" in {m.upper() for m in offered}:
        channel_binding = ChannelBinding()
    return create_client_mechanism(
        name,
        username=username,
        password=password,
        token=token,
        channel_binding=channel_binding,
    )
