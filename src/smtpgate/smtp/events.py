"""Events the SMTP engine hands to the I/O layer.

Some events are *decisions*: the engine stops producing events until the I/O
layer calls ``respond()`` (or ``auth_answer()`` for ``AuthQuery``). The rest
are instructions (``StartTls``, ``CloseConnection``).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from smtpgate.sasl.base import CredentialQuery
from smtpgate.sasl.exchange import AuthResult, BindingEvidence
from smtpgate.smtp.dsn_params import NO_DSN, RcptParams, TransactionDsn
from smtpgate.smtp.xclient import Xclient

# AuthResult and BindingEvidence are re-exported: the types of AuthFinished's fields.
__all__ = [
    "NEED_DATA",
    "OUTPUT_FULL",
    "PAUSED",
    "AuthFinished",
    "AuthQuery",
    "AuthRefused",
    "AuthResult",
    "BindingEvidence",
    "CloseConnection",
    "Event",
    "MailFrom",
    "MessageAborted",
    "MessageData",
    "MessageReceived",
    "MessageStart",
    "RcptTo",
    "Sentinel",
    "StartTls",
    "Xclient",
]


class Sentinel(Enum):
    #: Nothing more can happen until more bytes arrive.
    NEED_DATA = "NEED_DATA"
    #: Waiting for the I/O layer to answer the last decision event.
    PAUSED = "PAUSED"
    #: ``EngineSettings.max_pending_output`` octets of replies are waiting: take
    #: them (``data_to_send()``), and call ``next_event()`` again once the client
    #: reads them. The commands behind them stay unread until then.
    OUTPUT_FULL = "OUTPUT_FULL"


NEED_DATA = Sentinel.NEED_DATA
PAUSED = Sentinel.PAUSED
OUTPUT_FULL = Sentinel.OUTPUT_FULL


@dataclass(frozen=True, slots=True)
class StartTls:
    """Write pending output in clear, then start the TLS handshake and call
    ``tls_established()``. The engine has already discarded every byte the client
    pipelined behind STARTTLS (RFC 3207 §4.2; CVE-2011-0411)."""

    discarded: int = 0


@dataclass(frozen=True, slots=True)
class AuthQuery:
    """Decision: resolve ``query`` with the auth service, then ``auth_answer()``."""

    mechanism: str
    query: CredentialQuery


@dataclass(frozen=True, slots=True)
class AuthFinished:
    """Decision: one AUTH attempt ended. Log it, apply delays or penalties, then
    ``respond(None)`` for the default reply (235/535/454/501) or another reply.

    The fields are the SASL exchange's ``Outcome`` (sasl/exchange.py). ``result``
    is an ``AuthResult`` ('success', 'failure', 'tempfail' or 'cancelled'; a str,
    so it compares equal to those); ``username`` is the identity the client gave
    (for the log), ``identity`` the proven one.
    A 'failure' or 'tempfail' the server had already announced (SCRAM ``e=``, the
    OAuth error JSON) stays that, whatever the client answered or if it hung up.

    ``binding`` is what the exchange showed about the client's channel binding
    (docs/mechanisms.md, "-PLUS and GNU SASL clients"): 'cannot-bind' when a
    ``-PLUS`` exchange ended before the client's first message, 'can-bind' when
    the client bound or said it could, '' when it showed nothing.
    """

    mechanism: str
    result: AuthResult
    username: str
    identity: str
    reason: str
    binding: BindingEvidence = ""
    #: The exchange ended on a message the mechanism could not parse (``Outcome``).
    malformed: bool = False


@dataclass(frozen=True, slots=True)
class MailFrom:
    """Decision: may this session use ``sender``? ``respond(None)`` accepts."""

    sender: str
    size: int | None
    body_8bit: bool
    smtputf8: bool
    auth_param: str | None


@dataclass(frozen=True, slots=True)
class RcptTo:
    """Decision: accept ``recipient``? ``respond(None)`` accepts."""

    recipient: str
    #: RFC 3461 NOTIFY/ORCPT given with it (None: neither).
    dsn: RcptParams | None = None


@dataclass(frozen=True, slots=True)
class MessageStart:
    """DATA was accepted (354 sent): open somewhere to write the message to. Its
    content follows as `MessageData`, then one `MessageReceived` or `MessageAborted`."""

    sender: str
    recipients: tuple[str, ...]
    identity: str
    helo: str
    body_8bit: bool
    smtputf8: bool
    #: RFC 3461 parameters of the transaction (RET, ENVID, NOTIFY, ORCPT).
    dsn: TransactionDsn = NO_DSN
    #: BODY=BINARYMIME (RFC 3030): sent with BDAT, may hold any octets.
    body_binary: bool = False


@dataclass(frozen=True, slots=True)
class MessageData:
    """The next part of the message: dot-unstuffed, CRLF line ends. Append it;
    the engine never holds the message (memory stays bounded whatever its size).

    ``missing``: the header section ended in this part and lacks these of
    ``Date`` and ``Message-ID`` (``smtp.data.DATE``, ``MESSAGE_ID``), for the I/O
    layer to add at the top of the message before it writes this part (RFC 6409
    §8.2, §8.3). Empty in every other part, when both are there, and when
    ``EngineSettings.note_missing_fields`` is off.
    """

    data: bytes
    missing: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class MessageAborted:
    """The message in progress will be refused (too big, bare CR or LF, header
    section too long): discard what was written. The engine reads on to the real
    end of the data and answers it then."""

    reason: str


@dataclass(frozen=True, slots=True)
class MessageReceived:
    """Decision: the message written from `MessageData` ended; make it durable,
    then ``respond(MESSAGE_ACCEPTED...)``.

    ``header`` is its header section (each field's CRLF included, not the empty
    line after it; all of a message without one), for the From/Sender checks;
    ``size`` the octets of all its `MessageData`. ``missing``: as
    `MessageData.missing`, for a message that ended without an empty line (all
    header), whose header section ends only here.
    """

    sender: str
    recipients: tuple[str, ...]
    identity: str
    helo: str
    body_8bit: bool
    smtputf8: bool
    header: bytes
    size: int
    missing: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class AuthRefused:
    """Notice (not a decision, already answered): an AUTH command refused before
    any SASL exchange began (no STARTTLS yet, a mechanism not offered, a login
    already made, a malformed command). No credential was looked at; the I/O layer
    writes its one auth-log record (result ``refused``) so that every AUTH a client
    sends is in the log, the report and the metrics (docs/accounts.md).

    ``mechanism`` is the name the client gave (upper case, "" if none), ``reason``
    one of ``REFUSED_*`` in ``smtp/engine.py``, ``username`` the session's account
    when it had logged in already ("" otherwise)."""

    mechanism: str
    reason: str
    username: str = ""


@dataclass(frozen=True, slots=True)
class CloseConnection:
    """Flush pending output and close the connection."""

    reason: str


Event = (
    StartTls | AuthQuery | AuthFinished | AuthRefused | MailFrom | RcptTo | MessageReceived | CloseConnection
    | Xclient | MessageStart | MessageData | MessageAborted
)
