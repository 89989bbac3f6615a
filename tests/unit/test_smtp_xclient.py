"""XCLIENT (Postfix's XCLIENT_README) in the sans-IO engine: advertised and
accepted only from a proxy the listener trusts, refused with 550 5.7.0 from
anyone else; LOGIN= logs the session in without AUTH."""

from __future__ import annotations

import pytest

from smtpgate.smtp import replies as R
from smtpgate.smtp.engine import ServerEngine
from smtpgate.smtp.events import NEED_DATA, PAUSED, MailFrom
from smtpgate.smtp.xclient import Xclient, XclientSyntaxError, decode_xtext_utf8, parse_xclient

from .engine_driver import settings

NGINX = b"XCLIENT ADDR=192.0.2.7 LOGIN=alice@example.org NAME=[UNAVAILABLE]\r\n"


def engine(trusted: bool) -> ServerEngine:
    e = ServerEngine(settings())
    e.xclient_trusted = trusted
    e.greeting()
    e.data_to_send()
    return e


def run(e: ServerEngine, data: bytes) -> tuple[bytes, list[object]]:
    e.receive_data(data)
    events: list[object] = []
    while (ev := e.next_event()) not in (NEED_DATA, PAUSED):
        events.append(ev)
    return e.data_to_send(), events


def test_untrusted_client_is_not_offered_xclient_and_is_refused_550() -> None:
    e = engine(trusted=False)
    out, _ = run(e, b"EHLO proxy.test\r\n")
    assert b"XCLIENT" not in out
    out, events = run(e, NGINX)
    assert out == R.XCLIENT_DENIED.format()
    assert out.startswith(b"550 5.7.0")
    assert events == [] and e.identity == ""
    out, _ = run(e, b"MAIL FROM:<alice@example.org>\r\n")
    assert out.startswith(b"530")  # still not logged in


def test_trusted_proxy_logs_the_session_in_with_a_new_greeting() -> None:
    e = engine(trusted=True)
    out, _ = run(e, b"EHLO proxy.test\r\n")
    assert b"250 XCLIENT NAME ADDR PORT PROTO HELO LOGIN DESTADDR DESTPORT" in out
    out, events = run(e, NGINX)
    assert out == b""
    assert events == [Xclient(addr="192.0.2.7", login="alice@example.org")]
    e.xclient_answer("alice@example.org")
    assert e.data_to_send().startswith(b"220 mx.test")
    assert e.identity == "alice@example.org"
    out, _ = run(e, b"EHLO client.test\r\n")
    assert out.startswith(b"250-mx.test")
    # No TLS on the proxy's hop and no AUTH: the proxy vouched for the login.
    out, _ = run(e, b"AUTH PLAIN AGFsaWNlAHg=\r\n")
    assert out == R.AUTH_ALREADY.format()
    out, events = run(e, b"MAIL FROM:<alice@example.org>\r\n")
    assert isinstance(events[0], MailFrom)


def test_xclient_without_login_starts_a_session_that_is_not_logged_in() -> None:
    """Postfix's XCLIENT makes the session a new connection's: an earlier login
    (here the proxy's own, by XCLIENT LOGIN=; AUTH is the same) is not the client's
    that ADDR now names, so MAIL needs a login again."""
    e = engine(trusted=True)
    run(e, b"EHLO proxy.test\r\n")
    run(e, NGINX)
    e.xclient_answer("alice@example.org")
    e.data_to_send()
    out, events = run(e, b"XCLIENT ADDR=192.0.2.9\r\n")
    assert events == [Xclient(addr="192.0.2.9")]
    e.xclient_answer(None)
    assert e.data_to_send().startswith(b"220 mx.test")
    assert e.identity == ""
    run(e, b"EHLO client.test\r\n")
    out, events = run(e, b"MAIL FROM:<alice@example.org>\r\n")
    assert out.startswith(b"530 5.7.0") and events == []


def test_xclient_refused_answer_keeps_the_session() -> None:
    e = engine(trusted=True)
    run(e, b"EHLO proxy.test\r\n")
    run(e, NGINX)
    e.xclient_answer(None, R.INTERNAL_ERROR)
    assert e.data_to_send() == R.INTERNAL_ERROR.format()
    assert e.identity == ""


def test_xclient_inside_a_transaction_is_out_of_sequence() -> None:
    e = engine(trusted=True)
    run(e, b"EHLO proxy.test\r\n")
    run(e, NGINX)
    e.xclient_answer("alice@example.org")
    e.data_to_send()
    run(e, b"EHLO c\r\n")
    _, events = run(e, b"MAIL FROM:<alice@example.org>\r\n")
    e.respond(None)
    e.data_to_send()
    out, events = run(e, NGINX)
    assert out.startswith(b"503 5.5.1") and events == []


@pytest.mark.parametrize("line", [
    b"XCLIENT\r\n",
    b"XCLIENT ADDR\r\n",
    b"XCLIENT FOO=bar\r\n",
    b"XCLIENT ADDR=not-an-ip\r\n",
    b"XCLIENT ADDR=192.0.2.1 ADDR=192.0.2.2\r\n",
    b"XCLIENT LOGIN=a+0D+0Ab\r\n",  # an encoded CR LF must not reach logs or Received
    b"XCLIENT PORT=99999\r\n",
    b"XCLIENT PROTO=HTTP\r\n",
])
def test_malformed_xclient_is_501(line: bytes) -> None:
    e = engine(trusted=True)
    run(e, b"EHLO proxy.test\r\n")
    out, events = run(e, line)
    assert out == R.XCLIENT_SYNTAX.format() and events == []


def test_parse_xclient_attributes() -> None:
    x = parse_xclient("ADDR=IPV6:2001:db8::1 PORT=4711 PROTO=esmtp HELO=c.test "
                      "LOGIN=j+C3+B6rg@example.org NAME=[TEMPUNAVAIL] DESTADDR=127.0.0.1 DESTPORT=587")
    assert x == Xclient(addr="2001:db8::1", port=4711, proto="ESMTP", helo="c.test",
                        name=None, login="jörg@example.org", destaddr="127.0.0.1", destport=587)
    assert parse_xclient("LOGIN=[UNAVAILABLE]").login == ""


def test_xtext_is_decoded_bytewise() -> None:
    assert decode_xtext_utf8("a+2Bb+3Dc") == "a+b=c"
    with pytest.raises(XclientSyntaxError):
        decode_xtext_utf8("a+zz")
    with pytest.raises(XclientSyntaxError):
        decode_xtext_utf8("+FF")  # not UTF-8


def test_an_ipv4_client_in_ipv6_form_is_its_ipv4_address() -> None:
    """nginx on a dual-stack socket: ADDR=IPV6:::ffff:192.0.2.7 is the IPv4 client."""
    assert parse_xclient("ADDR=IPV6:::ffff:192.0.2.7").addr == "192.0.2.7"
    assert parse_xclient("ADDR=IPV6:2001:DB8::1").addr == "2001:db8::1"


def test_a_zone_is_dropped_from_addr() -> None:
    """What follows an IPv6 zone's ``%`` is any text to ipaddress; the address is
    the client's, the zone goes (an IPv4 address with one is no address)."""
    assert parse_xclient('ADDR=IPV6:fe80::1%eth0"x').addr == "fe80::1"
    with pytest.raises(XclientSyntaxError):
        parse_xclient("ADDR=192.0.2.7%eth0")
