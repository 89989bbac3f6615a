"""Sender ownership: own address, aliases, granted domains; From header parsing."""

from __future__ import annotations

from typing import Any

import pytest

from smtpgate.auth.sender_profile import SenderProfile
from smtpgate.policy.sender import header_from_addresses

P = SenderProfile(
    "alice@example.org", aliases=frozenset({"info@example.org"}), domains=frozenset({"example.net"})
)


@pytest.mark.parametrize(
    ("address", "owned"),
    [
        ("alice@example.org", True),
        ("alice@EXAMPLE.ORG", True),  # RFC 5321 §2.4: the domain is case-insensitive
        ("Alice@example.org", True),  # ... and login names have none (auth/names.py)
        ("alicia@example.org", False),
        ("info@example.org", True),
        ("anyone@example.net", True),
        ("anyone@Example.NET", True),
        ("anyone@sub.example.net", False),  # a grant is for the domain itself
        ("bob@example.org", False),
        # A subaddress is another address (docs/policy.md): owned only as an alias.
        ("alice+news@example.org", False),
        ("info+news@example.org", False),
        ("not an address", False),
        ("", False),
    ],
)
def test_owns(address: str, owned: bool) -> None:
    assert P.owns(address) is owned


IDN = SenderProfile(
    "user@b\u00fccher.example",  # U-label
    aliases=frozenset({"info@xn--caf-dma.example"}),  # A-label of café.example
    domains=frozenset({"xn--mnchen-3ya.example"}),  # münchen.example
)


@pytest.mark.parametrize(
    ("address", "owned"),
    [
        ("user@b\u00fccher.example", True),
        ("user@xn--bcher-kva.example", True),  # RFC 5890 §2.3.2.1: the same domain
        ("user@XN--BCHER-KVA.example", True),
        ("User@xn--bcher-kva.example", True),  # no letter case in the local part either
        ("usr@xn--bcher-kva.example", False),
        ("info@caf\u00e9.example", True),
        ("info@xn--caf-dma.example", True),
        ("anyone@m\u00fcnchen.example", True),
        ("anyone@xn--mnchen-3ya.example", True),
        ("anyone@sub.m\u00fcnchen.example", False),
        ("user@bucher.example", False),
        ("user@xn--bcher-kvb.example", False),  # another domain
        ("user@xn--bcher-kva-.example", False),  # not Punycode of anything
        ("user@xn--.example", False),
    ],
)
def test_rfc5890_a_label_and_u_label_of_an_owned_domain_are_owned(address: str, owned: bool) -> None:
    """A client without SMTPUTF8 can send an internationalised domain only as its
    A-label (RFC 6531 §3.2): 'MAIL FROM:<user@xn--bcher-kva.example>' from the
    account user@bücher.example got 553 5.7.1 until audit P."""
    assert IDN.owns(address) is owned


@pytest.mark.parametrize(
    ("message", "addresses"),
    [
        (b"From: Alice <alice@example.org>\r\nTo: x@y\r\n\r\nFrom: bob@example.org\r\n", ["alice@example.org"]),
        (b"Subject: none\r\n\r\nbody", None),
        (b"From: a@x.org, \"B, C\" <b@x.org>\r\n\r\n", ["a@x.org", "b@x.org"]),
        (b"From: a@x.org\r\nFrom: b@x.org\r\n\r\n", ["a@x.org", "b@x.org"]),
        (b"FROM:\r\n  folded@x.org\r\n\r\n", ["folded@x.org"]),
        (b"From: =?utf-8?q?Bob?= <bob@x.org>\r\n\r\n", ["bob@x.org"]),
    ],
)
def test_header_from_addresses(message: bytes, addresses: list[str] | None) -> None:
    assert header_from_addresses(message) == addresses


def test_an_unreadable_from_owns_nothing() -> None:
    got = header_from_addresses(b"From: <<<\r\n\r\n")
    assert got is not None and not any(P.owns(a) for a in got)


def test_a_repeated_from_value_is_parsed_once_and_read_the_same(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 13: the stdlib parser ran on every message; a value seen before is
    answered from the per-process cache, with the same addresses, and a caller
    that changes the list it got does not change what the next caller gets."""
    import email.policy

    from smtpgate.policy import sender

    calls: list[str] = []
    real = email.policy.default.header_factory

    def counting(name: str, value: str) -> Any:
        calls.append(value)
        return real(name, value)

    monkeypatch.setattr(email.policy, "default",
                        email.policy.default.clone(header_factory=counting))
    sender._parsed_addresses.cache_clear()
    value = '"ceo@bank.example" <alice@example.org>'
    first = sender.field_addresses(value)
    first.append("mutated@x.org")
    second = sender.field_addresses(value)
    assert second == ["alice@example.org", "ceo@bank.example"]
    assert calls == [value]  # parsed once
    assert sender.field_addresses("Bob <bob@x.org>") == ["bob@x.org"]
    assert calls == [value, "Bob <bob@x.org>"]
    # Unreadable stays unreadable when remembered: still owns nothing.
    unreadable = sender.field_addresses("<<<")
    assert "" in unreadable and sender.field_addresses("<<<") == unreadable


def _violations(field: str, action: str) -> float:
    from smtpgate import metrics

    return metrics._m.sender_policy.labels(field, action)._value.get()


@pytest.mark.parametrize("mode", ["enforce", "log"])
def test_every_sender_not_owned_is_counted_by_field_and_action(mode: str) -> None:
    from smtpgate.config import PolicyConfig
    from smtpgate.policy.sender import envelope_sender_refusal, from_header_refusal

    action = "refused" if mode == "enforce" else "logged"
    policy = PolicyConfig(sender_ownership=mode, from_header=mode)
    alice = SenderProfile("alice@example.org")
    fields = ("mail_from", "from", "sender", "resent_from", "resent_sender", "no_from")
    before = {f: _violations(f, action) for f in fields}
    other = {f: _violations(f, "logged" if mode == "enforce" else "refused") for f in fields}
    envelope_sender_refusal(alice, "alice@example.org", policy, where="s1")  # owned
    envelope_sender_refusal(alice, "bob@example.org", policy, where="s1")
    from_header_refusal(alice, b"From: alice@example.org\r\n\r\nx", policy, where="s1")  # owned
    from_header_refusal(alice, b"Sender: bob@example.org\r\nFrom: <alice@example.org>\r\n\r\nx",
                        policy, where="s1")
    from_header_refusal(alice, b"From: bob@example.org\r\n\r\nx", policy, where="s1")
    from_header_refusal(alice, b"Subject: none\r\n\r\nx", policy, where="s1")
    from_header_refusal(alice, b"Resent-From: bob@example.org\r\nFrom: alice@example.org\r\n"
                        b"\r\nx", policy, where="s1")
    from_header_refusal(alice, b"Resent-Sender: bob@example.org\r\nResent-From: "
                        b"alice@example.org\r\nFrom: alice@example.org\r\n\r\nx",
                        policy, where="s1")
    assert {f: _violations(f, action) - before[f] for f in fields} == dict.fromkeys(fields, 1)
    assert {f: _violations(f, a) for f in fields
            for a in ["logged" if mode == "enforce" else "refused"]} == other
