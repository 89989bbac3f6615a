"""XCLIENT (Postfix's XCLIENT_README): a trusted proxy tells the server who its
client really is.

``XCLIENT SP attribute=value *(SP attribute=value)``, attributes NAME, ADDR,
PORT, PROTO, HELO, LOGIN, DESTADDR, DESTPORT, values in xtext (RFC 3461 §4).
nginx writes its LOGIN unescaped, which is why smtpgate's auth_http answer gives
it the account xtext-encoded (``Auth-User``). ``[UNAVAILABLE]`` and ``[TEMPUNAVAIL]`` mean
"not known". An IPv6 ADDR carries the ``IPV6:`` prefix. The engine accepts the
command only from addresses the listener trusts (``xclient_trusted``); this
module only parses.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from smtpgate.smtp.peer_address import reported_address

#: What EHLO advertises to a trusted proxy, and all this parser knows.
ATTRIBUTES = ("NAME", "ADDR", "PORT", "PROTO", "HELO", "LOGIN", "DESTADDR", "DESTPORT")
_UNKNOWN = ("[UNAVAILABLE]", "[TEMPUNAVAIL]")
_XCHAR = re.compile(r"[\x21-\x2a\x2c-\x3c\x3e-\x7e]|\+[0-9A-F]{2}")
#: A login name, a host name: no more than an SMTP line allows anyway.
MAX_VALUE = 255


class XclientSyntaxError(ValueError):
    """The XCLIENT arguments do not parse (501 5.5.4)."""


@dataclass(frozen=True, slots=True)
class Xclient:
    """The attributes given, decoded; None: not given or unknown. The engine's
    decision event: the I/O layer checks LOGIN and answers with ``xclient_answer``."""

    addr: str | None = None
    port: int | None = None
    proto: str | None = None
    helo: str | None = None
    name: str | None = None
    #: The SASL login the proxy vouches for; "" when it said [UNAVAILABLE] (log out).
    login: str | None = None
    destaddr: str | None = None
    destport: int | None = None


def decode_xtext_utf8(value: str) -> str:
    """xtext to text: ``+XX`` are bytes, so a UTF-8 name escaped byte by byte
    comes back whole. Control characters are refused (they would reach logs and
    the Received header).

    Raises:
        XclientSyntaxError: not xtext, not UTF-8, or a control character.
    """
    pos, out = 0, bytearray()
    for m in _XCHAR.finditer(value):
        if m.start() != pos:
            raise XclientSyntaxError("bad xtext")
        tok = m.group()
        out += bytes([int(tok[1:], 16)]) if tok[0] == "+" and len(tok) == 3 else tok.encode()
        pos = m.end()
    if pos != len(value):
        raise XclientSyntaxError("bad xtext")
    try:
        text = out.decode("utf-8")
    except UnicodeDecodeError:
        raise XclientSyntaxError("xtext is not UTF-8") from None
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise XclientSyntaxError("control character in xtext")
    return text


def _address(value: str) -> str:
    """ADDR's address in its one spelling. An IPv4 client a dual-stack proxy
    (nginx on ``[::]`` with ``ipv6only=off``) reports as ``IPV6:::ffff:a.b.c.d`` is
    its IPv4 address: the one the guard and the front door's auth log name."""
    text = value[5:] if value.upper().startswith("IPV6:") else value
    address = reported_address(text)
    if address is None:
        raise XclientSyntaxError("ADDR is not an address")
    return address


def _port(value: str) -> int:
    # ASCII digits only: "²" passes str.isdigit() but not int().
    if not (value.isascii() and value.isdigit()) or not 0 <= int(value) <= 65535:
        raise XclientSyntaxError("PORT is not a port number")
    return int(value)


def parse_xclient(arg: str) -> Xclient:
    """The arguments of an XCLIENT command.

    Raises:
        XclientSyntaxError: no attribute, an unknown or repeated one, a bad value.
    """
    if not arg:
        raise XclientSyntaxError("no attributes")
    seen: dict[str, str | None] = {}
    for item in arg.split(" "):
        key, sep, raw = item.partition("=")
        key = key.upper()
        if not sep or key not in ATTRIBUTES or key in seen:
            raise XclientSyntaxError(f"bad attribute {key!r}")
        value = decode_xtext_utf8(raw)
        if len(value) > MAX_VALUE:
            raise XclientSyntaxError(f"{key} too long")
        seen[key] = None if value.upper() in _UNKNOWN else value
    addr, dest = seen.get("ADDR"), seen.get("DESTADDR")
    port, dport = seen.get("PORT"), seen.get("DESTPORT")
    proto = seen.get("PROTO")
    if proto is not None and proto.upper() not in ("SMTP", "ESMTP"):
        raise XclientSyntaxError("PROTO is not SMTP or ESMTP")
    login = seen.get("LOGIN")
    if "LOGIN" in seen and login is None:
        login = ""  # [UNAVAILABLE]: the client is not logged in
    return Xclient(
        addr=_address(addr) if addr is not None else None,
        port=_port(port) if port is not None else None,
        proto=proto.upper() if proto is not None else None,
        helo=seen.get("HELO"),
        name=seen.get("NAME"),
        login=login,
        destaddr=_address(dest) if dest is not None else None,
        destport=_port(dport) if dport is not None else None,
    )
