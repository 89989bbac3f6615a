"""nginx auth_http request parsing and answer formatting (sans-IO)."""

from __future__ import annotations

import pytest

from smtpgate.frontdoor.auth_http import (
    MAX_REQUEST_BYTES,
    AuthHttpAnswer,
    AuthHttpError,
    AuthHttpParser,
    format_answer,
    parse_request,
    percent_decode,
    split_salt,
)
from smtpgate.smtp.xclient import decode_xtext_utf8

# What nginx 1.22 sends for SMTP AUTH LOGIN (it reports LOGIN as "plain").
NGINX_REQUEST = (
    b"GET /auth HTTP/1.0\r\n"
    b"Host: 127.0.0.1\r\n"
    b"Auth-Method: plain\r\n"
    b"Auth-User: alice@example.org\r\n"
    b"Auth-Pass: correct%20horse%25battery\r\n"
    b"Auth-Protocol: smtp\r\n"
    b"Auth-Login-Attempt: 2\r\n"
    b"Client-IP: 192.0.2.9\r\n"
    b"Client-Host: [UNAVAILABLE]\r\n"
    b"Auth-SMTP-Helo: client.test\r\n"
    b"Auth-SMTP-From: MAIL FROM:<alice@example.org>\r\n"
    b"Auth-SMTP-To: \r\n"
    b"\r\n"
)


@pytest.mark.parametrize("bytewise", [False, True])
def test_nginx_request_parsed_whole_or_byte_by_byte(bytewise: bool) -> None:
    p = AuthHttpParser()
    chunks = [NGINX_REQUEST[i : i + 1] for i in range(len(NGINX_REQUEST))] if bytewise else [NGINX_REQUEST]
    results = [p.receive_data(c) for c in chunks]
    assert all(r is None for r in results[:-1])
    req = results[-1]
    assert req is not None
    assert (req.method, req.user, req.password) == ("plain", "alice@example.org", "correct horse%battery")
    assert (req.protocol, req.attempt, req.client_ip) == ("smtp", 2, "192.0.2.9")
    assert req.tls_version is None
    assert req.smtp_from == "MAIL FROM:<alice@example.org>"


def test_percent_encoded_crlf_in_auth_user_is_decoded_not_obeyed() -> None:
    """nginx escapes a client's CR LF; decoded, it is part of the name (which the
    SASL exchange then refuses), never a header of its own."""
    req = parse_request(NGINX_REQUEST.replace(
        b"Auth-User: alice@example.org", b"Auth-User: x%0D%0AAuth-Status:%20OK")[:-4])
    assert req.user == "x\r\nAuth-Status: OK"


@pytest.mark.parametrize("mutate", [
    lambda r: r.replace(b"GET /auth", b"POST /auth"),
    lambda r: r.replace(b"Client-IP: 192.0.2.9\r\n", b""),
    lambda r: r.replace(b"Client-IP: 192.0.2.9", b"Client-IP: evil"),
    lambda r: r.replace(b"Auth-Method: plain\r\n", b"Auth-Method: plain\r\nAuth-Method: none\r\n"),
    lambda r: r.replace(b"Auth-User: alice@example.org", b"Auth-User: a\rb"),  # raw CR
    lambda r: r.replace(b"Auth-User: alice@example.org", b"Auth-User: a\x00b"),
    lambda r: r.replace(b"Auth-User: alice@example.org", b"Auth-User: a%zzb"),
    lambda r: r.replace(b"Auth-Method: plain", b"Auth-\x7fMethod: plain"),  # DEL in a name
    # The auth log's unquoted tls= field, written as sent: fields forged after it.
    lambda r: r.replace(b"Auth-Protocol: smtp", b'Auth-Protocol: smtp\r\nAuth-SSL: on\r\n'
                        b'Auth-SSL-Protocol: TLSv1.3 user="root@example.org"'),
    lambda r: r.replace(b"Host: 127.0.0.1", b" folded"),
    lambda r: r.replace(b"Auth-Login-Attempt: 2", b"Auth-Login-Attempt: -1"),
    lambda r: r + b"body",
])
def test_requests_nginx_never_sends_are_refused(mutate: object) -> None:
    with pytest.raises(AuthHttpError):
        AuthHttpParser().receive_data(mutate(NGINX_REQUEST))  # type: ignore[operator]


@pytest.mark.parametrize("header, sent, unreadable, user, password", [
    # nginx escapes only space, % and 0x00-0x1F: a client's Latin-1 password or
    # name and a DEL arrive raw. Each was an HTTP 400, which nginx turns into
    # "451 4.3.2 Internal server error" for the client, retried for ever.
    (b"Auth-Pass", b"p\xe4ss", "Auth-Pass", "alice@example.org", ""),
    (b"Auth-Pass", b"p%E4ss", "Auth-Pass", "alice@example.org", ""),
    (b"Auth-User", b"\xe4lice@example.org", "Auth-User", "", "correct horse%battery"),
    (b"Auth-Pass", b"bad\x7fpass", "", "alice@example.org", "bad\x7fpass"),
])
def test_what_a_client_typed_in_another_charset_is_its_login_not_a_bad_request(
        header: bytes, sent: bytes, unreadable: str, user: str, password: str) -> None:
    default = b"alice@example.org" if header == b"Auth-User" else b"correct%20horse%25battery"
    req = AuthHttpParser().receive_data(
        NGINX_REQUEST.replace(header + b": " + default, header + b": " + sent))
    assert req is not None
    assert (req.unreadable, req.user, req.password) == (unreadable, user, password)


@pytest.mark.parametrize("name", [b"TLSv1.3", b"TLSv1", b"SSLv3", b"DTLSv1.2", b"unknown"])
def test_openssls_protocol_names_are_taken(name: bytes) -> None:
    req = parse_request(NGINX_REQUEST.replace(
        b"Auth-Protocol: smtp", b"Auth-Protocol: smtp\r\nAuth-SSL: on\r\nAuth-SSL-Protocol: " + name
    )[:-4])
    assert req.tls_version == name.decode()


def test_oversize_request_is_refused_before_its_end() -> None:
    p = AuthHttpParser()
    with pytest.raises(AuthHttpError):
        p.receive_data(b"GET /auth HTTP/1.0\r\nX: " + b"a" * MAX_REQUEST_BYTES)


def test_answers() -> None:
    ok = format_answer(AuthHttpAnswer(True, server="127.0.0.1", port=2587))
    assert b"\r\nAuth-Status: OK\r\nAuth-Server: 127.0.0.1\r\nAuth-Port: 2587\r\n" in ok
    assert ok.endswith(b"\r\n\r\n")
    bad = format_answer(AuthHttpAnswer(False, text="Authentication credentials invalid",
                                       error_code="535 5.7.8", wait=3))
    assert b"Auth-Status: Authentication credentials invalid\r\n" in bad
    assert b"Auth-Error-Code: 535 5.7.8\r\nAuth-Wait: 3\r\n" in bad
    with pytest.raises(ValueError):
        format_answer(AuthHttpAnswer(False, text="a\r\nAuth-Status: OK"))


@pytest.mark.parametrize("account, sent", [
    ("alice@example.org", b"alice@example.org"),
    ("ann+sales@example.org", b"ann+2Bsales@example.org"),
    ("j\u00f6rg@example.org", b"j+C3+B6rg@example.org"),
    ("John Smith", b"John+20Smith"),
])
def test_the_account_goes_back_as_xtext(account: str, sent: bytes) -> None:
    """nginx writes ``Auth-User`` unescaped into ``XCLIENT LOGIN=``, whose values
    are xtext: the answer carries it encoded, and XCLIENT's decoding gives it back."""
    ok = format_answer(AuthHttpAnswer(True, server="127.0.0.1", port=2587, account=account))
    assert header_line(ok, b"Auth-User") == sent
    assert decode_xtext_utf8(sent.decode()) == account


def header_line(answer: bytes, name: bytes) -> bytes:
    (value,) = [ln.split(b": ", 1)[1] for ln in answer.split(b"\r\n")
                if ln.startswith(name + b": ")]
    return value


def test_percent_decode_and_salt() -> None:
    assert percent_decode("a%20b%0d") == b"a b\r"
    assert split_salt("<4711.1234@mx.test>\r\n") == ("4711.1234", "mx.test")
    assert split_salt("nonsense") is None


def test_an_ipv4_client_in_ipv6_form_is_its_ipv4_address() -> None:
    """nginx on a dual-stack socket (listen [::]:587 ipv6only=off) reports IPv4
    clients as ::ffff:a.b.c.d; the auth log names the address the guard counts
    and a firewall can ban."""
    head = NGINX_REQUEST[:-2].replace(b"Client-IP: 192.0.2.9", b"Client-IP: ::ffff:192.0.2.9")
    assert parse_request(head.removesuffix(b"\r\n")).client_ip == "192.0.2.9"


@pytest.mark.parametrize(("sent", "seen"), [
    (b'fe80::1%eth0 user="root@example.org" reason="" door=smtp', "fe80::1"),
    (b"fe80::1%\xc2\x85", "fe80::1"),
    (b"::ffff:192.0.2.9%eth0", "192.0.2.9"),
    (b"192.0.2.9%eth0", None),
    (b"fe80::1%", "fe80::1"),
])
def test_a_client_ip_zone_is_dropped_never_logged(sent: bytes, seen: str | None) -> None:
    """Python's ipaddress takes any text after an IPv6 zone's ``%``: a Client-IP
    with spaces and quotes there forged fields of the session's log line
    (``client=fe80::1%eth0 user="root@example.org" ...``), the auth log's and the
    web admin's. The address is what the guard counts; the zone goes."""
    head = NGINX_REQUEST[:-2].replace(b"Client-IP: 192.0.2.9", b"Client-IP: " + sent)
    head = head.removesuffix(b"\r\n")
    if seen is None:
        with pytest.raises(AuthHttpError, match="Client-IP"):
            parse_request(head)
    else:
        assert parse_request(head).client_ip == seen
