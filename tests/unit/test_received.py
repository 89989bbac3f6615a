"""The Received header (RFC 5321 §4.4, RFC 3848, RFC 6531 §3.7.3)."""

from __future__ import annotations

import email
import email.header
import email.policy
import email.utils
import re

import pytest

from smtpgate.smtp.received import protocol_keyword, received_header


@pytest.mark.parametrize(
    ("esmtp", "tls", "auth", "utf8", "expected"),
    [
        (True, True, True, False, "ESMTPSA"),
        (True, False, True, False, "ESMTPA"),
        (True, True, False, False, "ESMTPS"),
        (True, False, False, False, "ESMTP"),
        (False, True, True, False, "SMTP"),
        (True, True, True, True, "UTF8SMTPSA"),
    ],
)
def test_rfc3848_with_keyword(esmtp: bool, tls: bool, auth: bool, utf8: bool, expected: str) -> None:
    assert protocol_keyword(esmtp, tls, auth, utf8) == expected


def test_received_header_parses_and_names_login() -> None:
    raw = received_header(
        helo="client.example\r\nX-Injected: yes",
        client_ip="192.0.2.1",
        hostname="mx.example.org",
        esmtp=True,
        tls_version="TLSv1.3",
        cipher="TLS_AES_128_GCM_SHA256",
        identity="alice@example.org",
        queue_hint="abc",
        timestamp=0,
    )
    msg = email.message_from_bytes(raw + b"Subject: x\r\n\r\nbody\r\n")
    assert msg["X-Injected"] is None  # the HELO cannot break the header
    value = " ".join(msg["Received"].split())
    assert "with ESMTPSA" in value and "Authenticated sender: alice@example.org" in value
    assert value.endswith("Thu, 01 Jan 1970 00:00:00 +0000")
    assert all(line.startswith((b"Received:", b"\t")) for line in raw.split(b"\r\n")[:-1])


def test_the_date_is_the_timestamps_own_second_also_when_remembered() -> None:
    import email.utils

    # The date string is cached per second (received.py); each stamp must still be
    # its own second's, whatever came before it.
    for ts in (1_764_590_400.999, 1_764_590_401.0, 1_764_590_400.2, 86_399.5, 1_764_590_401.7):
        raw = received_header(helo="c", client_ip="192.0.2.1", hostname="mx", esmtp=True,
                              tls_version=None, cipher=None, identity="", queue_hint="Q",
                              timestamp=ts)
        expected = email.utils.formatdate(int(ts)).replace("-0000", "+0000")
        assert raw.decode().rstrip("\r\n").endswith("\t" + expected)
        assert expected == email.utils.formatdate(ts).replace("-0000", "+0000")


@pytest.mark.parametrize("smtputf8", [True, False])
def test_a_utf8_account_is_named_not_replaced_by_question_marks(smtputf8: bool) -> None:
    """Found with AUTH PLAIN as jörg@localhost: the header said "Authenticated
    sender: j?rg@localhost", which names no one (jürg? jårg?). In an SMTPUTF8
    message the name is UTF-8 (RFC 6532); otherwise RFC 2047 encoded words."""
    raw = received_header(helo="c", client_ip="192.0.2.1", hostname="mx", esmtp=True,
                          tls_version=None, cipher=None, identity="j\u00f6rg@example.org",
                          queue_hint="Q", timestamp=0, smtputf8=smtputf8)
    assert raw.isascii() is not smtputf8
    value = raw.decode()
    if not smtputf8:
        value = str(email.header.make_header(email.header.decode_header(value)))
    assert "(Authenticated sender: j\u00f6rg@example.org)" in " ".join(value.split())


def test_the_helo_cannot_pose_as_the_servers_own_comment() -> None:
    raw = received_header(
        helo="x)(Authenticated?sender:?ceo@example.org);by?mx", client_ip="192.0.2.1",
        hostname="mx.example.org", esmtp=True, tls_version=None, cipher=None,
        identity="mallory@example.org", queue_hint="abc", timestamp=0,
    ).decode()
    assert raw.startswith("Received: from x??Authenticated?sender:?ceo@example.org??by?mx "
                          "([192.0.2.1])\r\n")
    assert raw.count("(") == raw.count(")") == 3  # the address, the login, "(smtpgate)"
    assert "[192.0.2.1]" in received_header(
        helo="[192.0.2.1]", client_ip="192.0.2.1", hostname="mx", esmtp=True,
        tls_version=None, cipher=None, identity="", queue_hint="q", timestamp=0).decode()


def test_a_quote_in_the_helo_cannot_swallow_the_servers_own_words() -> None:
    """``EHLO x"`` opened a quoted string (RFC 5322 §3.2.4) that ran through the
    ``by`` clause and the ";" before the date: no longer a Received field (§3.6.7)."""
    raw = received_header(
        helo='x"', client_ip="192.0.2.1", hostname="mx.example.org", esmtp=True,
        tls_version=None, cipher=None, identity="", queue_hint="abc", timestamp=0,
    ).decode()
    assert raw.startswith("Received: from x? ([192.0.2.1])\r\n")
    assert '"' not in raw


@pytest.mark.parametrize(
    ("client_ip", "literal"),
    [
        ("192.0.2.1", "[192.0.2.1]"),
        ("2001:db8::1", "[IPv6:2001:db8::1]"),
        ("::ffff:192.0.2.1", "[IPv6:::ffff:192.0.2.1]"),  # a dual-stack listener's IPv4 client
    ],
)
def test_the_client_address_is_an_rfc5321_address_literal(client_ip: str, literal: str) -> None:
    # RFC 5321 §4.4 TCP-info is an address-literal (§4.1.3): IPv6 needs its "IPv6:" tag.
    raw = received_header(helo="client.example", client_ip=client_ip, hostname="mx",
                          esmtp=True, tls_version=None, cipher=None, identity="",
                          queue_hint="Q", timestamp=0)
    assert raw.startswith(f"Received: from client.example ({literal})\r\n".encode())


def test_the_date_is_in_rfc5322_syntax_not_its_obsolete_zone() -> None:
    """Found on a default install (smtp15): the stamp ended "... 13:42:50 GMT". RFC
    5322 lists "GMT" only among the obsolete zones (§4.3), which must not be
    generated (§4); the Date field smtpgate adds said "+0000" for the same time.
    UTC is "+0000" ("-0000" would mean the zone is unknown, §3.3)."""
    raw = received_header(helo="c", client_ip="192.0.2.1", hostname="mx", esmtp=True,
                          tls_version=None, cipher=None, identity="", queue_hint="Q",
                          timestamp=1_796_218_970).decode()
    stamp = raw.rstrip("\r\n").rpartition("\t")[2]
    assert stamp == "Wed, 02 Dec 2026 13:42:50 +0000"
    assert email.utils.parsedate_to_datetime(stamp).timestamp() == 1_796_218_970


@pytest.mark.parametrize("smtputf8", [True, False])
def test_an_account_name_with_parentheses_stays_inside_its_comment(smtputf8: bool) -> None:
    """Found on a default install (smtp15): ``smtpgate user add`` takes the name
    a)b(c\\d@localhost, and its Received comment read "(Authenticated sender:
    a)b(c\\d@localhost)": the ")" ended the comment, the rest stood as the
    header's own words, and the backslash quoted the final ")". RFC 5322 §3.2.2
    writes these three as quoted-pairs inside a comment."""
    raw = received_header(helo="c", client_ip="192.0.2.1", hostname="mx", esmtp=True,
                          tls_version=None, cipher=None, identity="a)b(c\\d@example.org",
                          queue_hint="Q", timestamp=0, smtputf8=smtputf8).decode()
    assert "\t(Authenticated sender: a\\)b\\(c\\\\d@example.org)\r\n" in raw
    # An RFC 5322 parser's view: the comment is one, and holds the name as it is.
    msg = email.message_from_string(raw + "Subject: x\r\n\r\nbody\r\n",
                                    policy=email.policy.default)
    comments = [t for t in msg["Received"].split("\t") if t.startswith("(Authenticated")]
    assert len(comments) == 1
    unescaped = re.sub(r"\\(.)", r"\1", comments[0].strip()[1:-1])
    assert unescaped == "Authenticated sender: a)b(c\\d@example.org"


@pytest.mark.parametrize(("helo", "shown"), [
    ("münchen.example", "xn--mnchen-3ya.example"),
    ("MÜNCHEN.example", "xn--mnchen-3ya.example"),
    ("mu\u0308nchen.example", "xn--mnchen-3ya.example"),  # NFD: one name
    ("mail.bücher.example", "mail.xn--bcher-kva.example"),
    ("xn--mnchen-3ya.example", "xn--mnchen-3ya.example"),
    ("mü\u202enchen.example", "m??nchen.example"),  # a bidi override is no label
])
def test_an_internationalised_helo_is_written_with_a_labels(helo: str, shown: str) -> None:
    """``EHLO münchen.example`` was written ``from m?nchen.example``, a name of no
    host (found by the h29i18n review with a real server and smtplib); its A-label
    spelling names the same domain in any message, SMTPUTF8 or not."""
    for smtputf8 in (False, True):
        raw = received_header(
            helo=helo, client_ip="192.0.2.1", hostname="mx.example.org", esmtp=True,
            tls_version=None, cipher=None, identity="", queue_hint="abc", timestamp=0,
            smtputf8=smtputf8,
        ).decode()
        assert raw.startswith(f"Received: from {shown} ([192.0.2.1])\r\n")
