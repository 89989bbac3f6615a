"""Parse MAIL/RCPT arguments: paths, mailboxes and ESMTP parameters (RFC 5321 §4.1.2).

Hand-written because no maintained library parses the SMTP *envelope* grammar
(email.headerregistry parses RFC 5322 headers, which differ: comments, groups,
obsolete forms). The grammar is small and every rule cites its source.
"""

from __future__ import annotations

import ipaddress
import re

# RFC 5321 §4.1.2: atext characters of a dot-atom.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_DOT_ATOM = re.compile(rf"{_ATEXT}+(?:\.{_ATEXT}+)*")
# RFC 5321 §4.1.2: qtextSMTP = %d32-33 / %d35-91 / %d93-126, quoted-pairSMTP = "\" %d32-126.
_QUOTED = re.compile(r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*"')
# RFC 5321 §4.1.2 Domain: sub-domain *("." sub-domain), Let-dig [Ldh-str].
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DOMAIN = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
# RFC 5321 §4.1.3 address literals: IPv4 (four Snum of 0-255), IPv6 (the "IPv6:" tag,
# case-insensitive as every ABNF string, then an address: ``_address_literal``), or a
# General-address-literal (Standardized-tag ":" 1*dcontent; the tag is an Ldh-str).
_IPV4_LITERAL = re.compile(r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[0-9]{1,2}|0[0-9]{2})"
                           r"(?:\.(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[0-9]{1,2}|0[0-9]{2})){3}")
_GENERAL_LITERAL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?:[\x21-\x5a\x5e-\x7e]+")
# RFC 6531 §3.3: with SMTPUTF8, atext and sub-domains may also hold UTF-8 (UTF8-non-ascii).
_U_ATEXT = r"(?:[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]|[^\x00-\x7f])"
_U_DOT_ATOM = re.compile(rf"{_U_ATEXT}+(?:\.{_U_ATEXT}+)*")
_U_LABEL = r"(?:[A-Za-z0-9]|[^\x00-\x7f])(?:(?:[A-Za-z0-9-]|[^\x00-\x7f]){0,61}(?:[A-Za-z0-9]|[^\x00-\x7f]))?"
_U_DOMAIN = re.compile(rf"{_U_LABEL}(?:\.{_U_LABEL})*")
# RFC 6531 §3.3: qtextSMTP =/ UTF8-non-ascii (a quoted local part may hold UTF-8 too).
_U_QUOTED = re.compile(r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|[^\x00-\x7f]|\\[\x20-\x7e])*"')
# RFC 5321 §4.1.2 A-d-l (source route), which §3.6.1 says to accept and ignore.
_ROUTE = re.compile(rf"@{_LABEL}(?:\.{_LABEL})*(?:,@{_LABEL}(?:\.{_LABEL})*)*:")

# What a UTF-8 address may not hold although RFC 6531's UTF8-non-ascii allows any
# non-ASCII character: C1 controls, the line and paragraph separators, the bidi
# controls (embeddings, overrides, isolates, the marks) and the BOM. IDNA2008 (RFC
# 5892) disallows every one of them in a domain, and no mailbox is named with them;
# they reach the server's log, the web admin, delivery reports and the next hop,
# where a line separator may end a line and U+202E shows the rest of it reversed.
_NOT_IN_UTF8_ADDRESS = re.compile(
    "[\x80-\x9f\u2028\u2029\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\ufeff]"
)



def has_character_barred_from_addresses(text: str) -> bool:
    """``text`` holds a character no UTF-8 address may (a C1 control, a line or
    paragraph separator, a bidi control, the BOM): the rule of `parse_mailbox`, for
    an address written another way (an ORCPT of RFC 6533's ``utf-8`` type)."""
    return _NOT_IN_UTF8_ADDRESS.search(text) is not None


# RFC 5321 §4.5.3.1.1 and .2: local part 64 octets, domain 255 octets.
MAX_LOCAL_PART = 64
MAX_DOMAIN = 255


class AddressError(ValueError):
    """The path or mailbox is not valid RFC 5321 (or RFC 6531) syntax."""


class ParameterError(AddressError):
    """A MAIL or RCPT parameter (RFC 5321 §4.1.2 esmtp-param) is malformed: the
    path is fine, so the reply must not point at it."""


class DuplicateParameter(ParameterError):
    """A MAIL or RCPT parameter given twice with different values (``AUTH=<> AUTH=x``)."""


class NonAsciiWithoutSmtputf8(AddressError):
    """RFC 6531 §3.4: a UTF-8 address needs the SMTPUTF8 parameter."""


def split_path_argument(arg: str, keyword: str) -> tuple[str, str]:
    """Split ``FROM:<x> rest`` into (path-with-brackets, rest); ``FROM:x rest``
    too (`_bare_path`). Raises AddressError."""
    head, colon, tail = arg.partition(":")
    if not colon or head.strip().upper() != keyword:
        raise AddressError("missing keyword")
    # Leniency: "MAIL FROM: <a@b>" (space after the colon) is sent by many
    # clients (old Outlook, some printers); Postfix accepts it too.
    tail = tail.lstrip(" ")
    if not tail.startswith("<"):
        return _bare_path(tail)
    end = _closing_bracket(tail)
    rest = tail[end + 1 :]
    # RFC 5321 §4.1.1.2: "MAIL FROM:" Reverse-path [SP Mail-parameters] (§4.1.1.3
    # alike for RCPT): ``<a@b>SIZE=1`` is no path followed by a parameter, and
    # Postfix refuses it too (501).
    if rest and not rest.startswith(" "):
        raise AddressError("no space between the path and its parameters")
    return tail[: end + 1], rest


#: What a path written without its angle brackets may not hold: brackets and quotes
#: (a display name, ``John <a@b>``, or a bracket left out on one side, ``a@b>``),
#: the separators of a list of addresses (``a@b,c@d``) and a TAB, which there is
#: the client's separator (``a@b<TAB>NOTIFY=NEVER``, a syntax error as after
#: ``<a@b>``, not an address holding a TAB): what the client meant is a guess.
_NOT_IN_BARE_PATH = frozenset('<>"(),;\t')


def _bare_path(tail: str) -> tuple[str, str]:
    """``FROM:a@b rest``: a path without its angle brackets, as Postfix takes it
    (``strict_rfc821_envelopes = no``, its default) from the printers, scanners
    and old appliances that send it. Unambiguous only: the address is the first
    word, bracket- and quote-free, and every word after it a parameter (a second
    address or a comment, ``a@b c@d``, ``a@b <c@d>``, ``a@b (Bob)``, is refused,
    not read as a parameter).
    Returned with the brackets put back, so the address is parsed, and the sender
    policy applied to it, exactly as the bracketed form's. Raises AddressError."""
    word, space, rest = tail.partition(" ")
    if not word or not _NOT_IN_BARE_PATH.isdisjoint(word):
        raise AddressError("path must be in angle brackets")
    for item in rest.split(" "):
        if item.startswith(("<", '"', "(")) or "@" in item.partition("=")[0]:
            raise AddressError("a second address after a path without angle brackets")
    return f"<{word}>", space + rest


def _closing_bracket(s: str) -> int:
    in_quote = False
    escaped = False
    for i, ch in enumerate(s):
        if escaped:
            escaped = False
        elif ch == "\\" and in_quote:
            escaped = True
        elif ch == '"':
            in_quote = not in_quote
        elif ch == ">" and not in_quote:
            return i
    raise AddressError("unterminated path")


def parse_path(path: str, *, allow_null: bool, utf8: bool, postmaster: bool = False) -> str:
    """Return the mailbox of ``<[route:]mailbox>``; "" for ``<>`` when allowed;
    ``postmaster``: the bare ``<Postmaster>`` of a RCPT (see `parse_mailbox`)."""
    if not (path.startswith("<") and path.endswith(">")):
        raise AddressError("path must be in angle brackets")
    inner = path[1:-1]
    if inner == "":
        if allow_null:
            return ""
        raise AddressError("null path not allowed here")
    m = _ROUTE.match(inner)
    if m:
        # RFC 5321 §4.1.1.3 / Appendix C: source routes are accepted and ignored.
        inner = inner[m.end() :]
    return parse_mailbox(inner, utf8=utf8, postmaster=postmaster)


def parse_mailbox(mailbox: str, *, utf8: bool, postmaster: bool = False) -> str:
    """Validate ``local@domain``; return it with the domain lower-cased (ASCII only).
    With ``postmaster`` (a forward-path) the bare ``Postmaster`` is one too."""
    if not mailbox.isascii():
        if not utf8:
            raise NonAsciiWithoutSmtputf8("non-ASCII address without SMTPUTF8")
        if _NOT_IN_UTF8_ADDRESS.search(mailbox):
            raise AddressError("control, line separator, bidi control or BOM in the address")
    local, at, domain = mailbox.rpartition("@")
    if not at:
        # RFC 5321 §4.1.1.3: "postmaster" without a domain is a valid recipient,
        # and only that: a reverse-path is a Mailbox, domain and all (§4.1.2).
        if postmaster and mailbox.lower() == "postmaster":
            return "postmaster"
        raise AddressError("address must have a domain")
    if local.startswith('"'):
        if not (_U_QUOTED if utf8 else _QUOTED).fullmatch(local):
            raise AddressError("bad quoted local part")
    elif not (_U_DOT_ATOM if utf8 else _DOT_ATOM).fullmatch(local):
        raise AddressError("bad local part")
    if len(local.encode()) > MAX_LOCAL_PART:
        raise AddressError("local part too long")
    if len(domain.encode()) > MAX_DOMAIN:
        raise AddressError("domain too long")
    if domain.startswith("["):
        if not _address_literal(domain):
            raise AddressError("bad address literal")
    elif not (_U_DOMAIN if utf8 else _DOMAIN).fullmatch(domain):
        raise AddressError("bad domain")
    return f"{local}@{domain.lower()}"


# RFC 5321 §4.1.2 quoted-pairSMTP: a backslash and the character it stands for.
_QUOTED_PAIR = re.compile(r"\\(.)")


def without_needless_quotes(address: str) -> str:
    """``address`` with its local part in the form with the least quoting (RFC 5321
    §4.1.2: "all quoted forms MUST be treated as equivalent, and the sending system
    SHOULD transmit the form that uses the minimum quoting possible"): a quoted
    local part that is a dot-string is written as one (``"mallory"@x``,
    ``"mal\\lory"@x`` are ``mallory@x``); one that needs its quotes (``"a@b"@x``,
    ``"a b"@x``, ``".a"@x``) is another mailbox and stays quoted, so that it
    matches no unquoted address, with a backslash only before ``"`` and ``\\``
    (``"a\\ b"@x`` is ``"a b"@x``). Anything else is returned unchanged. UTF-8 is
    allowed in both forms (RFC 6531 §3.3)."""
    local, at, domain = address.rpartition("@")
    if not at or not local.startswith('"') or not _U_QUOTED.fullmatch(local):
        return address
    inner = _QUOTED_PAIR.sub(r"\1", local[1:-1])
    if _U_DOT_ATOM.fullmatch(inner):
        return f"{inner}@{domain}"
    return '"' + _NEEDS_QUOTED_PAIR.sub(r"\\\g<0>", inner) + f'"@{domain}'


#: What a quoted string must still write as a quoted pair (RFC 5321 qtextSMTP).
_NEEDS_QUOTED_PAIR = re.compile(r'["\\]')


def _address_literal(domain: str) -> bool:
    """``[...]`` is an RFC 5321 §4.1.3 address literal: ``[192.0.2.1]`` but not
    ``[300.1.1.1]``, ``[IPv6:2001:db8::1]`` but not ``[IPv6:zzz]`` (nor a zone
    index: ``%eth0`` is no part of IPv6-addr)."""
    if not domain.endswith("]"):
        return False
    inner = domain[1:-1]
    if inner[:5].upper() == "IPV6:":
        addr = inner[5:]
        if not addr or "%" in addr:
            return False
        try:
            ipaddress.IPv6Address(addr)
        except ValueError:
            return False
        return True
    return bool(_IPV4_LITERAL.fullmatch(inner) or _GENERAL_LITERAL.fullmatch(inner))


# RFC 5321 §4.1.2: esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-"),
# esmtp-value = 1*(%d33-60 / %d62-126) (RFC 6531 widens it to UTF-8).
_PARAM_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")
_PARAM_VALUE = re.compile(r"[\x21-\x3c\x3e-\x7e\u0080-\U0010ffff]+")


def parse_params(rest: str) -> dict[str, str | None]:
    """Parse ``KEY[=VALUE]`` parameters; keys upper-cased. A keyword given twice
    with the same value is taken once: Python's smtplib ``send_message`` adds
    ``SMTPUTF8`` (and ``BODY=8BITMIME``) to the caller's own for a UTF-8 address, so
    ``SMTPUTF8 SMTPUTF8`` is a real client's, and Postfix takes it. Two different
    values (``AUTH=<> AUTH=x``, ``BODY=7BIT BODY=8BITMIME``) are a contradiction
    and raise `DuplicateParameter`: which one the client meant is a guess."""
    out: dict[str, str | None] = {}
    for item in rest.split(" "):
        if not item:
            continue
        key, eq, value = item.partition("=")
        if not _PARAM_KEY.fullmatch(key):
            raise ParameterError(f"bad parameter {key!r}")
        if eq and not _PARAM_VALUE.fullmatch(value):
            raise ParameterError(f"bad value for {key}")
        ukey = key.upper()
        given = value if eq else None
        if ukey in out and out[ukey] != given:
            raise DuplicateParameter(f"parameter {ukey} given twice with different values")
        out[ukey] = given
    return out


_XTEXT_HEX = re.compile(r"\+([0-9A-Fa-f]{2})")


def decode_xtext(value: str) -> str:
    """RFC 3461 §4 xtext, as used by AUTH= (RFC 4954 §5). Refuses control characters
    after decoding (Exim CVE-2020-28021: an encoded CR LF must not reach a header)."""
    if any(c in value for c in "= ") or not value.isascii():
        raise AddressError("bad xtext")
    stripped = _XTEXT_HEX.sub("", value)
    if "+" in stripped:
        raise AddressError("bad xtext escape")
    decoded = _XTEXT_HEX.sub(lambda m: chr(int(m.group(1), 16)), value)
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in decoded):
        raise AddressError("control character in xtext")
    return decoded
