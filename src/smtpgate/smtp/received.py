"""The Received trace header (RFC 5321 §4.4, RFC 3848 ``with`` types, RFC 8314 §4.3)."""

from __future__ import annotations

import email.header
import email.utils
import re
import unicodedata
from datetime import UTC, datetime
from functools import lru_cache

_UNSAFE = re.compile(r"[^\x21-\x7e]")
#: In the client's HELO also what would end the "from" clause or open or close a
#: comment (RFC 5322 §3.2.2), so ``EHLO x)(Authenticated...`` cannot pose as the
#: server's own words, and a double quote: it opens a quoted string (§3.2.4) that
#: runs on through the server's own words and the ";" before the date, so the
#: field no longer parses as a Received (§3.6.7); square brackets stay for an
#: address literal.
_HELO_UNSAFE = re.compile(r'[^\x21-\x7e]|[();\\"]')


def _helo_shown(helo: str) -> str:
    """The client's HELO as the "from" clause writes it: an internationalised
    name (``EHLO münchen.example``, which smtpgate takes) with each non-ASCII
    label as its A-label (``xn--mnchen-3ya.example``, RFC 5890 §2.3.2.1), the
    spelling of that domain every message may carry, with SMTPUTF8 or without;
    until the h29i18n review it was ``m?nchen.example``, a name of no host. A
    label that is not letters, digits and hyphens (a bidi control, a symbol)
    is no domain label: it stays, and loses what ``_HELO_UNSAFE`` strips."""
    if helo.isascii():
        return helo
    labels = helo.split(".")
    for i, label in enumerate(labels):
        name = unicodedata.normalize("NFC", label.lower())
        if not label.isascii() and all(c == "-" or c.isalnum() for c in name):
            labels[i] = "xn--" + name.encode("punycode").decode("ascii")
    return ".".join(labels)


@lru_cache(maxsize=4)
def _date(second: int) -> str:
    """RFC 5322 date of a whole second: the header names no fraction, and a busy
    server stamps many messages in the same second (email.utils takes ~4 µs).
    UTC is written ``+0000``: the zone ``GMT`` (email.utils's ``usegmt``, meant for
    HTTP) is RFC 5322 §4.3 obsolete syntax, which §4 says must not be generated,
    and ``-0000`` would say the zone is unknown (§3.3)."""
    return email.utils.format_datetime(datetime.fromtimestamp(second, UTC))


def utc_date(timestamp: float) -> str:
    """RFC 5322 §3.3 date-time of ``timestamp``'s whole second in UTC (``+0000``):
    what smtpgate writes in the header fields it makes (Received, a report's Date
    and Arrival-Date), never the obsolete zone ``GMT``."""
    return _date(int(timestamp))


def _account(identity: str, smtputf8: bool) -> str:
    """The account name as the Received comment shows it: printable ASCII as it
    is; a UTF-8 name (``jörg@example.org``) as UTF-8 in an SMTPUTF8 message (RFC
    6532 §3.2), else as RFC 2047 encoded words (§5 (2): allowed in a comment),
    never as ``j?rg``, which names no one."""
    if identity.isascii():
        return _in_comment(_UNSAFE.sub("?", identity))
    if smtputf8:
        return _in_comment("".join(c if c.isprintable() and not c.isspace() else "?"
                                   for c in identity))
    return email.header.Header(identity, "utf-8").encode(linesep=" ")


#: What a comment's text cannot hold as it is (RFC 5322 §3.2.2 ctext).
_COMMENT_SPECIALS = re.compile(r"[()\\]")


def _in_comment(text: str) -> str:
    """``text`` as comment content: ``(``, ``)`` and ``\\`` as quoted-pairs (RFC
    5322 §3.2.2). An account named ``a)b@x`` (the account store takes it) would
    otherwise end the comment early, leaving ``b@x)`` as the header's own words;
    escaped, a reader shows the name as it is."""
    return _COMMENT_SPECIALS.sub(lambda m: "\\" + m[0], text)


def _address_literal(client_ip: str) -> str:
    """RFC 5321 §4.1.3 address-literal: an IPv6 address is tagged ``IPv6:``
    (``[IPv6:2001:db8::1]``; a bare ``[2001:db8::1]`` is no literal at all)."""
    return f"[IPv6:{client_ip}]" if ":" in client_ip else f"[{client_ip}]"


def protocol_keyword(esmtp: bool, tls: bool, authenticated: bool, utf8: bool = False) -> str:
    """RFC 3848: ESMTP, ESMTPA, ESMTPS or ESMTPSA (SMTP for HELO sessions);
    RFC 6531 §3.7.3: UTF8SMTP, UTF8SMTPA, UTF8SMTPS, UTF8SMTPSA for SMTPUTF8 mail."""
    if not esmtp:
        return "SMTP"
    return ("UTF8SMTP" if utf8 else "ESMTP") + ("S" if tls else "") + ("A" if authenticated else "")


def received_header(
    *,
    helo: str,
    client_ip: str,
    hostname: str,
    esmtp: bool,
    tls_version: str | None,
    cipher: str | None,
    identity: str,
    queue_hint: str,
    timestamp: float,
    smtputf8: bool = False,
    show_login: bool = True,
) -> bytes:
    """One folded Received header line block, CRLF-terminated.

    The authenticated identity goes into a comment, as Postfix's
    ``(Authenticated sender: ...)``, when ``show_login`` (``smtp.received_login``);
    without it the ``with`` keyword still says the client authenticated (ESMTPA,
    RFC 3848), as Postfix's with ``smtpd_sasl_authenticated_header = no``, and the
    login, half of what a guesser needs and of no use to a recipient, stays in the
    server's own log. The client-supplied HELO is stripped of
    anything that is not printable ASCII (an internationalised name is written
    with A-labels first), and of comment and clause delimiters, so
    it can neither break the header nor add words that look like the server's.
    """
    helo_safe = _HELO_UNSAFE.sub("?", _helo_shown(helo))[:255] or "unknown"
    with_kw = protocol_keyword(esmtp, tls_version is not None, bool(identity), smtputf8)
    lines = [f"Received: from {helo_safe} ({_address_literal(client_ip)})"]
    if identity and show_login:
        lines.append(f"\t(Authenticated sender: {_account(identity, smtputf8)})")
    by = f"\tby {hostname} (smtpgate) with {with_kw} id {queue_hint}"
    if tls_version and cipher:
        by += f"\n\t(using {tls_version} with cipher {cipher})"
    lines.append(by + ";")
    lines.append("\t" + _date(int(timestamp)))
    return ("\r\n".join("\r\n".join(part.split("\n")) for part in lines) + "\r\n").encode("utf-8")
