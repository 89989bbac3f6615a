"""RFC 6533 §3: the ``utf-8`` address type, the form an internationalized address
takes in an ORCPT parameter and in the fields of a delivery report.

An address is written with ``\\x{HEX}`` escapes for the characters that cannot
appear as they are: controls, space, ``\\``, ``+`` and ``=`` always, and every
non-ASCII character too in the 7-bit form (utf-8-addr-xtext, for an SMTP session
or a report that is not internationalized). The 8-bit form (utf-8-addr-unitext)
keeps non-ASCII characters as UTF-8.

Why by hand: no library we use knows this encoding (the stdlib's ``email``
package knows neither xtext nor RFC 6533); it is two short functions.
"""

from __future__ import annotations

import re

from smtpgate.smtp.address import AddressError

#: The address type of RFC 6533 (case-insensitive, like every addr-type).
UTF8_TYPE = "utf-8"
#: EmbeddedUnicodeChar: ``\x{`` one to six hex digits ``}`` (two at least in practice).
_EMBEDDED = re.compile(r"\\x\{([0-9A-Fa-f]{1,6})\}")
#: ASCII that is never written as itself (QCHAR leaves out "+", "=" and "\").
_ESCAPED_ASCII = frozenset("+=\\")


def is_utf8_type(addr_type: str) -> bool:
    """Whether an ORCPT or report address type is RFC 6533's ``utf-8``."""
    return addr_type.lower() == UTF8_TYPE


def decode(value: str, *, unitext: bool) -> str:
    """The address written in ``value``: utf-8-addr-xtext, or with ``unitext``
    (an SMTPUTF8 transaction) also utf-8-addr-unitext.

    Raises:
        AddressError: a character that must be escaped appears as itself, a
            non-ASCII character without ``unitext``, an escape of no character,
            or a control character once decoded (it would reach a header).
    """
    out: list[str] = []
    pos = 0
    for m in _EMBEDDED.finditer(value):
        out.append(_literal(value[pos:m.start()], unitext))
        point = int(m.group(1), 16)
        if point > 0x10FFFF or 0xD800 <= point <= 0xDFFF:
            raise AddressError("escape of no character")
        out.append(chr(point))
        pos = m.end()
    out.append(_literal(value[pos:], unitext))
    address = "".join(out)
    if not address or any(_is_control(c) for c in address):
        raise AddressError("empty address or control character")
    return address


def encode(address: str, *, unitext: bool) -> str:
    """``address`` in the 7-bit form, or with ``unitext`` the 8-bit one."""
    out = []
    for c in address:
        if c.isascii():
            keep = 0x21 <= ord(c) <= 0x7E and c not in _ESCAPED_ASCII
        else:
            keep = unitext and not _is_control(c)
        out.append(c if keep else f"\\x{{{ord(c):02X}}}")
    return "".join(out)


def _literal(text: str, unitext: bool) -> str:
    for c in text:
        if c.isascii():
            if not 0x21 <= ord(c) <= 0x7E or c in _ESCAPED_ASCII:
                raise AddressError(f"{c!r} must be written as an escape")
        elif not unitext:
            raise AddressError("a non-ASCII character outside an SMTPUTF8 transaction")
    return text


def _is_control(c: str) -> bool:
    point = ord(c)
    return point < 0x20 or 0x7F <= point <= 0x9F
