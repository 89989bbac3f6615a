"""Envelope address syntax (RFC 5321 §4.1.2, §4.1.3) as MAIL and RCPT see it."""

from __future__ import annotations

import pytest

from smtpgate.smtp import replies as R
from smtpgate.smtp.address import AddressError, parse_mailbox, without_needless_quotes

from .test_smtp_engine import authed, codes


@pytest.mark.parametrize("domain", [
    "[192.0.2.1]", "[0.0.0.0]", "[255.255.255.255]", "[010.1.1.1]",
    "[IPv6:2001:db8::1]", "[ipv6:2001:DB8::1]", "[IPv6:::1]", "[IPv6:::ffff:192.0.2.1]",
    "[IPv6:2001:db8:0:0:0:0:0:1]", "[x-tag:anything]",
])
def test_rfc5321_s4_1_3_address_literals_accepted(domain: str) -> None:
    assert parse_mailbox(f"bob@{domain}", utf8=False) == f"bob@{domain.lower()}"


@pytest.mark.parametrize("domain", [
    "[300.1.1.1]", "[1.2.3]", "[1.2.3.4.5]", "[1.2.3.1000]", "[1..2.3]",
    "[IPv6:zzz]", "[IPv6:]", "[IPv6:2001:db8::1::2]", "[IPv6:1:2:3:4:5:6:7:8:9]",
    "[IPv6:fe80::1%eth0]", "[IPv6:12345::1]", "[]", "[:x]",
])
def test_rfc5321_s4_1_3_malformed_address_literals_refused(domain: str) -> None:
    with pytest.raises(AddressError):
        parse_mailbox(f"bob@{domain}", utf8=False)


def test_a_malformed_address_literal_in_rcpt_is_553_5_1_3() -> None:
    d = authed()
    out = d.feed(b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@[300.1.1.1]>\r\n"
                 b"RCPT TO:<bob@[IPv6:zzz]>\r\nRCPT TO:<bob@[IPv6:2001:db8::1]>\r\n")
    assert codes(out)[1:] == [str(R.BAD_ADDRESS), str(R.BAD_ADDRESS), str(R.RECIPIENT_OK)]


def test_rfc6531_s3_3_a_quoted_local_part_may_hold_utf8_with_smtputf8() -> None:
    assert parse_mailbox('"jörg müller"@example.org', utf8=True) == '"jörg müller"@example.org'
    d = authed()
    out = d.feed('MAIL FROM:<alice@example.org> SMTPUTF8\r\n'
                 'RCPT TO:<"jörg müller"@example.org>\r\n'.encode())
    assert codes(out)[1:] == [str(R.RECIPIENT_OK)]


def test_without_smtputf8_a_quoted_utf8_local_part_is_still_553_5_6_7() -> None:
    d = authed()
    out = d.feed('MAIL FROM:<alice@example.org>\r\nRCPT TO:<"jörg"@example.org>\r\n'.encode())
    assert codes(out)[1:] == [str(R.UTF8_NOT_DECLARED)]


def test_rfc5321_s4_1_1_3_bare_postmaster_is_a_recipient_never_a_sender() -> None:
    # A reverse-path is a Mailbox with a domain (RFC 5321 §4.1.2); a submission
    # server must not pass on an envelope domain that is not qualified (RFC 6409 §4.2).
    d = authed()
    out = d.feed(b"MAIL FROM:<postmaster>\r\nMAIL FROM:<alice@example.org>\r\n"
                 b"RCPT TO:<Postmaster>\r\n")
    assert codes(out) == [str(R.BAD_SENDER_ADDRESS), str(R.SENDER_OK), str(R.RECIPIENT_OK)]
    # Qualified with the server's name: passed on bare, a relay refused it or took
    # it for its own domain's postmaster.
    assert d.events[-1].recipient == f"postmaster@{d.engine.settings.hostname}"  # type: ignore[attr-defined]


@pytest.mark.parametrize("address", [
    "a\u0085b@example.org",  # NEL, a C1 control: a line end to str.splitlines()
    "a\u2028b@example.org", "a\u2029b@example.org",  # line and paragraph separators
    "a\u202eb@example.org", "a\u2066b@example.org", "a\u200fb@example.org",  # bidi controls
    "\ufeffa@example.org",  # BOM
    "a@ex\u0085ample.org", "a@b\u00fccher\u202e.example",  # and in a domain (IDNA2008: DISALLOWED)
    '"a\u2028b"@example.org',  # quoted or not
])
def test_a_utf8_address_holds_no_control_separator_or_bidi_control(address: str) -> None:
    """RFC 6531's UTF8-non-ascii took any non-ASCII character, so RCPT TO:<a<NEL>b@x>
    reached the log, reports and the next hop as it came (audit h19)."""
    with pytest.raises(AddressError):
        parse_mailbox(address, utf8=True)
    d = authed()
    out = d.feed(f"MAIL FROM:<alice@example.org> SMTPUTF8\r\nRCPT TO:<{address}>\r\n".encode())
    assert codes(out)[1:] == [str(R.BAD_ADDRESS)]
    assert codes(authed().feed(f"MAIL FROM:<{address}> SMTPUTF8\r\n".encode())) == [
        str(R.BAD_SENDER_ADDRESS)]


@pytest.mark.parametrize("address", [
    "j\u00f6rg@b\u00fccher.example", "\u0645\u062d\u0645\u062f@example.org",
    "\u0915\u094d\u200d\u0937@example.org",  # a zero-width joiner stays (IDNA2008 CONTEXTJ)
    "\u4e2d\u6587@\u4f8b\u5b50.\u5e7f\u544a",
])
def test_utf8_addresses_of_real_scripts_are_accepted(address: str) -> None:
    assert parse_mailbox(address, utf8=True) == address


@pytest.mark.parametrize(("given", "least_quoted"), [
    ('"bob"@x.example', "bob@x.example"),
    ('"b\\ob"@x.example', "bob@x.example"),
    ('"b.o.b"@x.example', "b.o.b@x.example"),
    ('"a\\ b"@x.example', '"a b"@x.example'),
    ('"a b"@x.example', '"a b"@x.example'),
    ('"a\\\\b"@x.example', '"a\\\\b"@x.example'),
    ('"a\\"b"@x.example', '"a\\"b"@x.example'),
    ('".a"@x.example', '".a"@x.example'),
    ('"a@b"@x.example', '"a@b"@x.example'),
    ('""@x.example', '""@x.example'),
    ("bob@x.example", "bob@x.example"),
])
def test_rfc5321_s4_1_2_quoted_forms_are_written_with_the_least_quoting(
        given: str, least_quoted: str) -> None:
    assert without_needless_quotes(given) == least_quoted
