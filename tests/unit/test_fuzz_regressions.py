"""Inputs the fuzz targets of fuzz/ (or writing them) turned up, kept as regression
tests (docs/security.md, "Fuzzing": what was found)."""

from __future__ import annotations

import base64

import pytest

from smtpgate.client.extensions import Extensions
from smtpgate.smtp import replies as R

from .engine_driver import Driver


def _authenticated() -> Driver:
    d = Driver.new(tls=True)
    d.feed(b"EHLO client.test\r\n")
    plain = base64.b64encode(b"\0alice@example.org\0correct horse")
    assert d.feed(b"AUTH PLAIN " + plain + b"\r\n").startswith(b"235 ")
    return d


def test_mail_size_of_a_non_ascii_digit_is_a_syntax_error() -> None:
    """SIZE=² passed str.isdigit() and int() raised ValueError: a traceback in the
    engine instead of a reply (RFC 1870 §3: size-value is ASCII digits)."""
    d = _authenticated()
    for value in ("²", "١٢٣", "1²"):
        out = d.feed(f"MAIL FROM:<alice@example.org> SIZE={value}\r\n".encode())
        assert out == R.SYNTAX_ERROR.format()
    assert d.feed(b"MAIL FROM:<alice@example.org> SIZE=100\r\n").startswith(b"250 ")


def test_ehlo_size_of_a_non_ascii_digit_reads_as_no_limit() -> None:
    """A server's "SIZE ²" made Extensions.size raise ValueError in the client (the
    relay, the tester); an unreadable SIZE is "no fixed limit", as a bad one was."""
    assert Extensions.from_ehlo_lines(["SIZE ²"]).size == 0
    assert Extensions.from_ehlo_lines(["SIZE ١٢٣"]).size == 0
    assert Extensions.from_ehlo_lines(["SIZE 35000000"]).size == 35_000_000


def test_xclient_port_of_a_non_ascii_digit_is_a_syntax_error() -> None:
    """XCLIENT PORT=+C2+B2 (xtext for "²") raised ValueError from a trusted proxy's
    command instead of 501."""
    d = Driver.new(tls=True)
    d.engine.xclient_trusted = True
    d.feed(b"EHLO proxy.test\r\n")
    assert d.feed(b"XCLIENT PORT=+C2+B2\r\n") == R.XCLIENT_SYNTAX.format()
    d.feed(b"XCLIENT PORT=+31+32\r\n")  # "12": the proxy's attributes, for the I/O layer
    assert getattr(d.events[-1], "port", None) == 12


def test_policy_recipient_count_of_a_non_ascii_digit_reads_as_zero() -> None:
    """recipient_count=² made PolicyRequest.recipient_count raise ValueError."""
    from smtpgate.frontdoor.policy import PolicyParser

    (req,) = PolicyParser().receive_data(
        "request=smtpd_access_policy\nrecipient_count=²\n\n".encode()
    )
    assert req.recipient_count == 0


@pytest.mark.parametrize(("value", "port"), [
    ("²", 0), ("١٢", 0), ("-1", 0), ("65536", 0), ("9" * 30, 0), ("", 0), ("65535", 65535),
    ("40123", 40123),
])
def test_policy_client_port_is_ascii_digits_of_a_port(value: str, port: int) -> None:
    """client_port=² made the policy door's decision raise ValueError (an
    'Internal error' deferral)."""
    from smtpgate.frontdoor.policy import PolicyParser

    (req,) = PolicyParser().receive_data(
        f"request=smtpd_access_policy\nclient_port={value}\n\n".encode())
    assert req.client_port == port


def test_auth_http_login_attempt_of_a_non_ascii_digit_is_refused() -> None:
    """Auth-Login-Attempt: ² (0xB2 in the Latin-1 header) raised ValueError instead
    of AuthHttpError (answered 400)."""
    from smtpgate.frontdoor.auth_http import AuthHttpError, parse_request

    head = (b"GET /auth HTTP/1.0\r\nAuth-Method: plain\r\nAuth-Protocol: smtp\r\n"
            b"Client-IP: 192.0.2.1\r\nAuth-Login-Attempt: ")
    with pytest.raises(AuthHttpError, match="Auth-Login-Attempt"):
        parse_request(head + b"\xb2")
    assert parse_request(head + b"2").attempt == 2


def test_from_header_display_name_starting_with_a_dot_is_unreadable_not_a_crash() -> None:
    """`From:  .x <a@b.c>` (white space, then an obsolete phrase starting with ".")
    made Python's header parser raise TypeError out of the From check, so the
    message got 451 and the client retried for ever. It is unreadable: refused."""
    from smtpgate.auth.sender_profile import SenderProfile
    from smtpgate.config import PolicyConfig
    from smtpgate.policy.sender import field_addresses, from_header_refusal

    assert "" in field_addresses(" .x <alice@example.org>")
    header = b"From: (c).x <alice@example.org>\r\n"
    refusal = from_header_refusal(
        SenderProfile("alice@example.org"), header, PolicyConfig(), where="test"
    )
    assert refusal == R.FROM_NOT_OWNED


@pytest.mark.timeout(120)
def test_from_header_long_address_like_run_is_read_in_linear_time() -> None:
    """A From value of one long run of address characters not followed by a dotted
    domain made the address-like search quadratic (16,000 characters: seconds;
    the 256 KiB a header section may hold: most of an hour of CPU per message, from
    any authenticated user). Found by the from_header target (a timeout). The
    test's bound is the hang guard: before the fix it runs for far longer."""
    from smtpgate.policy.sender import field_addresses

    value = " " + "a" * 200_000 + "b@example x.org"
    assert "" in field_addresses(value)  # no readable mailbox: owns nothing
    # Addresses are still found next to long runs and right after another one.
    found = field_addresses("Alice <alice@example.org> " + "x" * 100 + "ceo@bank.example")
    assert "alice@example.org" in found
    assert any(a.endswith("ceo@bank.example") for a in found)
    found = field_addresses("x alice@example.org!ceo@bank.example")
    assert any(a.endswith("ceo@bank.example") for a in found)


def test_from_header_check_bounds_what_the_stdlib_parser_reads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import email.header
    import email.policy
    from types import SimpleNamespace

    from smtpgate.auth.sender_profile import SenderProfile
    from smtpgate.config import PolicyConfig
    from smtpgate.policy import sender

    given: list[int] = []

    def factory(name: str, value: str) -> object:
        given.append(len(value))
        if sum(given) > 16 * 1024:
            raise ValueError("stand-in: too long to parse here")  # keeps the test fast
        return email.policy.default.header_factory(name, value)

    fake = SimpleNamespace(
        policy=SimpleNamespace(default=SimpleNamespace(header_factory=factory)),
        header=email.header,
    )
    monkeypatch.setattr(sender, "email", fake)
    header = b"From: " + b"." * 200_000 + b"\r\nSender: " + b"." * 50_000 + b"\r\n"
    refusal = sender.from_header_refusal(
        SenderProfile("alice@example.org"), header, PolicyConfig(), where="test"
    )
    assert refusal is not None  # refused either way
    assert sum(given) <= 16 * 1024, f"the stdlib parser was given {sum(given)} characters"


def test_proxy_v1_line_with_a_bare_lf_is_refused_however_it_arrives() -> None:
    """`PROXY UNKNOWN ...<LF>...<CR><LF>` was accepted when it arrived in one read
    (the line up to the CRLF parsed as UNKNOWN) and refused when the LF arrived
    before the CRLF: the same bytes, two verdicts (found by the proxy_header target).
    A v1 header is one line ended by CRLF; a bare LF in it is refused."""
    from smtpgate.frontdoor.proxy_header import ProxyHeaderError, ProxyHeaderParser

    data = b"PROXY UNKNOWN ffff::0 ffff::2\n!\x11\x00\r\n"
    with pytest.raises(ProxyHeaderError):
        ProxyHeaderParser().feed(data)
    parser = ProxyHeaderParser()
    with pytest.raises(ProxyHeaderError):
        for i in range(len(data)):
            parser.feed(data[i : i + 1])
    info = ProxyHeaderParser().feed(b"PROXY UNKNOWN ffff::0 ffff::2\r\n")
    assert info is not None and info.source is None
