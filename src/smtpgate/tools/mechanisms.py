"""Which SASL mechanism the tools use, and what each needs."""

from __future__ import annotations

from collections.abc import Iterable

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
