"""RFC 3461 DSN parameters of MAIL FROM (RET, ENVID) and RCPT TO (NOTIFY, ORCPT).

Parsing only: the engine keeps what these return with the transaction, the
queue stores it with the envelope and ``queue/dsn.py`` acts on it.
"""

from __future__ import annotations

from dataclasses import dataclass

from smtpgate.smtp import utf8_addr
from smtpgate.smtp.address import (
    AddressError,
    decode_xtext,
    has_character_barred_from_addresses,
)
from smtpgate.smtp.ascii_case import upper_ascii

#: RFC 3461 §4.4: ENVID is at most 100 characters, counted decoded: Postfix's
#: ``sendmail -V`` takes up to 100 and its SMTP client sends them as xtext, where
#: each ``+``, ``=`` or space is three (``+2B``), up to 300 on the wire.
MAX_ENVID = 100
#: RFC 3461 §4.2: "the ORCPT parameter MUST NOT exceed 500 characters".
MAX_ORCPT = 500
_NOTIFY = frozenset({"NEVER", "SUCCESS", "FAILURE", "DELAY"})


class DsnParamError(ValueError):
    """A DSN parameter is malformed (the reply is 501)."""


def _ascii_xtext(value: str, what: str) -> str:
    """``value`` decoded from xtext, which must give printable US-ASCII: RFC 3461
    §4.2 and §4.4 say so of the original recipient address and of ENVID. An
    encoded octet over 127 (``+C3+A4``) decoded one code point per octet, so the
    value was no longer the client's: a relay was sent ``+C3+83+C2+A4`` for it and
    a report showed ``??``. (A UTF-8 address has RFC 6533's ``utf-8`` type.)

    Raises:
        DsnParamError: not xtext, or a control or non-ASCII octet encoded in it.
    """
    try:
        decoded = decode_xtext(value)
    except AddressError as e:
        raise DsnParamError(f"{what}: {e}") from None
    if not decoded.isascii():
        raise DsnParamError(f"{what}: not US-ASCII once decoded")
    return decoded


@dataclass(frozen=True, slots=True)
class RcptParams:
    """NOTIFY (upper-cased keywords; None if not given) and ORCPT ("type;address",
    decoded from xtext; None if not given) of one RCPT TO."""

    notify: tuple[str, ...] | None = None
    orcpt: str | None = None


def parse_ret(value: str | None) -> str:
    """RFC 3461 §4.3: RET=FULL or RET=HDRS.

    Raises:
        DsnParamError: anything else.
    """
    if value is None or upper_ascii(value) not in ("FULL", "HDRS"):
        raise DsnParamError("RET must be FULL or HDRS")
    return upper_ascii(value)


def parse_envid(value: str | None) -> str:
    """RFC 3461 §4.4: ENVID=<xtext>, kept decoded. The 100-character limit is on
    the decoded identifier, as Postfix counts it: an ENVID of 99 characters with
    spaces in it, as Postfix relays one, was refused 501 and the message bounced.

    Raises:
        DsnParamError: missing, too long, or not xtext of printable US-ASCII.
    """
    if not value or len(value) > 3 * MAX_ENVID:
        raise DsnParamError("ENVID must be 1 to 100 characters")
    decoded = _ascii_xtext(value, "ENVID")
    if len(decoded) > MAX_ENVID:
        raise DsnParamError("ENVID must be 1 to 100 characters")
    return decoded


def parse_notify(value: str | None) -> tuple[str, ...]:
    """RFC 3461 §4.1: NOTIFY=NEVER, or a comma list of SUCCESS, FAILURE, DELAY.

    Raises:
        DsnParamError: empty, unknown keyword, repeated, or NEVER with others.
    """
    if not value:
        raise DsnParamError("NOTIFY needs a value")
    words = tuple(upper_ascii(w) for w in value.split(","))
    if not set(words) <= _NOTIFY or len(set(words)) != len(words):
        raise DsnParamError("NOTIFY takes NEVER or SUCCESS, FAILURE, DELAY")
    # RFC 3461 §4.1: "NEVER ... MUST NOT be combined with any other value"
    if "NEVER" in words and len(words) > 1:
        raise DsnParamError("NOTIFY=NEVER cannot be combined")
    return words


def parse_orcpt(value: str | None, *, utf8: bool = False) -> str:
    """RFC 3461 §4.2: ORCPT=addr-type;xtext, kept as "addr-type;decoded". The
    ``utf-8`` type (RFC 6533 §3) is written with ``\\x{HEX}`` escapes instead, and
    in an SMTPUTF8 transaction (``utf8``) may carry UTF-8 as it is.

    Raises:
        DsnParamError: no type, too long, or not xtext (of printable US-ASCII
            for a type other than ``utf-8``).
    """
    if not value or len(value) > MAX_ORCPT:
        raise DsnParamError("ORCPT must be 1 to 500 characters")
    addr_type, semi, address = value.partition(";")
    if not semi or not addr_type or not address or not addr_type.isascii():
        raise DsnParamError("ORCPT must be addr-type;address")
    if not utf8_addr.is_utf8_type(addr_type):
        return f"{addr_type};{_ascii_xtext(address, 'ORCPT')}"
    try:
        decoded = utf8_addr.decode(address, unitext=utf8)
    except AddressError as e:
        raise DsnParamError(f"ORCPT: {e}") from None
    if has_character_barred_from_addresses(decoded):
        # What RCPT TO refuses in an address (audit h19) is refused here too,
        # written as it is or as an escape (audit h24): it went into the
        # Original-Recipient field of an internationalized report as it was.
        raise DsnParamError("ORCPT: line separator, bidi control or BOM in the address")
    return f"{utf8_addr.UTF8_TYPE};{decoded}"


def parse_rcpt_params(params: dict[str, str | None], *, utf8: bool = False) -> RcptParams:
    """NOTIFY and ORCPT from RCPT TO's parameters (``utf8``: in an SMTPUTF8
    transaction).

    Raises:
        DsnParamError: one is malformed.
        KeyError: a parameter other than these two (the caller answers 555).
    """
    notify: tuple[str, ...] | None = None
    orcpt: str | None = None
    for key, value in params.items():
        if key == "NOTIFY":
            notify = parse_notify(value)
        elif key == "ORCPT":
            orcpt = parse_orcpt(value, utf8=utf8)
        else:
            raise KeyError(key)
    return RcptParams(notify, orcpt)


@dataclass(frozen=True, slots=True)
class TransactionDsn:
    """The DSN parameters of one mail transaction: RET and ENVID of MAIL FROM, and
    NOTIFY/ORCPT of each accepted recipient that gave any."""

    ret: str | None = None
    envid: str | None = None
    rcpts: tuple[tuple[str, RcptParams], ...] = ()


#: A transaction without DSN parameters.
NO_DSN = TransactionDsn()
