"""The sans-IO SMTP submission server engine.

Theory of operation
-------------------
The I/O layer calls ``receive_data(bytes)``, then ``next_event()`` until it
returns ``NEED_DATA`` or ``PAUSED``, and writes ``data_to_send()`` once per
batch, so the replies to a pipelined group go out in one write (RFC 2920 §3).
With ``EngineSettings.max_pending_output`` it also returns ``OUTPUT_FULL`` when
that many octets of replies wait: the I/O layer writes them and asks again once
the client reads them, so unread replies stay bounded.
Protocol-level replies (syntax, sequence, limits) are decided here; anything
that needs the outside world (credentials, the spool, policy) is an event the
I/O layer answers with ``respond()`` or ``auth_answer()``, during which the
engine produces no further events. The engine never reads a clock and never
touches a socket: timeouts and shutdown arrive as method calls.

Line endings: a command line may end in CRLF or, as a named leniency, a bare
LF (gsasl sends them; Postfix accepts them); a bare CR never ends a line. In
DATA only CRLF.CRLF ends the message (see ``data.py``); a BDAT chunk ends after
exactly its declared octets (see ``bdat.py``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import Enum

from smtpgate.sasl import base as sasl
from smtpgate.sasl.exchange import AuthResult, ExchangeStep, Outcome, ServerExchange
from smtpgate.sasl.framing import decode_base64_strict, encode_base64
from smtpgate.smtp import replies as R
from smtpgate.smtp.address import (
    AddressError,
    DuplicateParameter,
    NonAsciiWithoutSmtputf8,
    ParameterError,
    decode_xtext,
    parse_params,
    parse_path,
    split_path_argument,
    without_needless_quotes,
)
from smtpgate.smtp.ascii_case import upper_ascii
from smtpgate.smtp.bdat import BdatSyntaxError, ChunkStream, parse_bdat
from smtpgate.smtp.data import DataEnd, DataStream, HeaderSection
from smtpgate.smtp.dsn_params import (
    DsnParamError,
    TransactionDsn,
    parse_envid,
    parse_rcpt_params,
    parse_ret,
)
from smtpgate.smtp.events import (
    NEED_DATA,
    OUTPUT_FULL,
    PAUSED,
    AuthFinished,
    AuthQuery,
    AuthRefused,
    CloseConnection,
    Event,
    MailFrom,
    MessageAborted,
    MessageData,
    MessageReceived,
    MessageStart,
    RcptTo,
    Sentinel,
    StartTls,
)
from smtpgate.smtp.states import KNOWN_VERBS, OUT_OF_SEQUENCE, TRANSITIONS, State
from smtpgate.smtp.xclient import ATTRIBUTES as XCLIENT_ATTRIBUTES
from smtpgate.smtp.xclient import Xclient, XclientSyntaxError, parse_xclient

#: RFC 5321 §4.5.3.1.6 text line limit, applied to command lines (with CRLF).
#: §4.5.3.1.4 says 512 for commands, but MAIL FROM may grow by 500 octets for
#: AUTH= (RFC 4954 §3) and real clients send long EHLO names; 1000 is what the
#: issue tracker and Postfix's line_length_limit-style practice settle on.
MAX_COMMAND_LINE = 1000
#: RFC 4954 §4: "12288 octets" is enough for every deployed mechanism. AUTH
#: command lines and SASL responses may be this long (plus CRLF).
MAX_AUTH_LINE = 12288 + 2
#: Commands an unauthenticated/cleartext client may always use (RFC 3207 §4,
#: RFC 4954 §6).
#: The `CloseConnection` reason of a client's QUIT: the one close nobody logs.
QUIT_REASON = "QUIT"
#: The reason of a close after a 421 the server sent on its own (timeout, shutdown,
#: revoked login): whoever sent that 421 has logged why.
SESSION_ENDED = "session ended"
#: The `MessageAborted` reason of a RSET (or STARTTLS) mid-BDAT: no refusal to log.
TRANSACTION_RESET = "transaction reset"
#: The auth log's reasons of an AUTH command refused before any exchange began
#: (``AuthRefused``, result ``refused``; docs/accounts.md). fail2ban counts all
#: but the two a logged-in client gets (contrib/fail2ban): a client that has
#: proven its password is no scanner.
REFUSED_BEFORE_STARTTLS = "AUTH before STARTTLS"
REFUSED_BEFORE_EHLO = "AUTH before EHLO"
REFUSED_MECHANISM = "mechanism not offered"
REFUSED_SYNTAX = "malformed AUTH command"
REFUSED_INITIAL = "initial response not allowed"
REFUSED_ALREADY = "already authenticated"
REFUSED_IN_TRANSACTION = "AUTH during a mail transaction"
REFUSED_REASONS = frozenset({
    REFUSED_BEFORE_STARTTLS, REFUSED_BEFORE_EHLO, REFUSED_MECHANISM, REFUSED_SYNTAX,
    REFUSED_INITIAL, REFUSED_ALREADY, REFUSED_IN_TRANSACTION})
_HTTP_VERBS = frozenset({"GET", "POST", "HEAD", "PUT", "CONNECT", "OPTIONS", "DELETE"})


class _Overlong(Enum):
    """What ``_take_line`` returns for a line over its limit: no bytes a client can
    send. (They were the lines ``<NUL>TOOLONG`` and ``<NUL>AUTHTOOLONG``: a client
    sending the second as a SASL response got 500 5.5.6 and the exchange stayed
    open, its next line read as the next response.)"""

    #: A command line over MAX_COMMAND_LINE, or a SASL response over MAX_AUTH_LINE.
    LINE = "line"
    #: An AUTH command over MAX_AUTH_LINE: its initial response is an
    #: authentication exchange line (RFC 4954 §4), so it gets 500 5.5.6.
    AUTH = "auth"


_TOO_LONG = _Overlong.LINE
_AUTH_TOO_LONG = _Overlong.AUTH
_NEED_AUTH = frozenset({"MAIL", "RCPT", "DATA"})
#: NOOP, RSET, VRFY, HELP, EHLO and HELO a session may send before each further
#: one counts as an error toward ``max_errors`` (Postfix's smtpd_junk_command_limit
#: and its default; Postfix leaves EHLO out, but then an EHLO every few minutes
#: would do what a NOOP no longer can). They move no mail, so without a bound a
#: client that never logs in held its connection for ever with a NOOP every few
#: minutes; a client that sends mail gets a fresh allowance with each message.
JUNK_COMMANDS = 100
#: RCPT commands past ``max_recipients`` in one transaction answered 452 before each
#: further one counts as an error toward ``max_errors`` (Postfix's
#: smtpd_recipient_overshoot_limit and its default). A client that pipelines more
#: recipients than the limit gets 452 for the rest and sends them in a second
#: transaction (RFC 5321 §4.5.3.1.10); one that never stops was never cut off.
RECIPIENT_OVERSHOOT = 1000
_VERB = re.compile(r"[A-Za-z]{1,16}")

MechanismFactory = Callable[[str, sasl.ChannelBinding, bool], sasl.ServerMechanism]


@dataclass(frozen=True, slots=True)
class EngineSettings:
    """What one listener's sessions need to know (built once per listener)."""

    hostname: str
    mechanism_factory: MechanismFactory
    #: Mechanisms offered after TLS, strongest first.
    mechanisms: tuple[str, ...] = ("PLAIN", "LOGIN")
    banner: str = "ESMTP smtpgate"
    max_message_size: int = 35_000_000
    max_recipients: int = 100
    max_errors: int = 10
    #: A STARTTLS listener (False for implicit TLS, where TLS is already on).
    starttls: bool = True
    #: Leniency: offer and accept AUTH in clear. Off by default.
    auth_in_clear: bool = False
    #: 'normalize' leniency for bare LF in message content (Postfix's mode).
    normalize_bare_lf: bool = False
    #: Offer BODY=BINARYMIME (RFC 3030): only where a message reaches its
    #: destination as it came. A relay or LMTP hop may lack BINARYMIME, and binary
    #: content must not be passed to one that does (RFC 3030 §3), so there it is not
    #: offered and clients send 8BITMIME or encode.
    binarymime: bool = True
    #: Replies (octets) that may wait for ``data_to_send()`` before the next
    #: command line is read (``next_event()`` returns ``OUTPUT_FULL``); 0: no
    #: bound, for a driver that takes the output only at the end. The server sets
    #: it: a client that pipelines commands and never reads the replies (an
    #: ``EHLO x`` of 8 octets is answered with 200) must not make it hold them all.
    max_pending_output: int = 0
    #: Look for ``Date`` and ``Message-ID`` once the header section is complete and
    #: name the missing ones in `MessageData.missing` (``smtp.add_missing_headers``):
    #: off, the header section is only collected, as before.
    note_missing_fields: bool = False


@dataclass(frozen=True, slots=True)
class TlsInfo:
    version: str
    cipher: str
    channel_binding: sasl.ChannelBinding
    #: The client's certificate, if it verified against the listener's client_ca.
    client_certificate: sasl.ClientCertificate | None = None



def _parameters(rest: str) -> tuple[dict[str, str | None], R.Reply | None]:
    """MAIL's or RCPT's parameters, or the reply refusing them (the address was
    fine: the reply says so)."""
    try:
        return parse_params(rest), None
    except DuplicateParameter:
        return {}, R.DUPLICATE_PARAMETER
    except ParameterError:
        return {}, R.SYNTAX_ERROR

class ServerEngine:
    """One SMTP session, from greeting to close."""

    # One per connection: without a __dict__ an idle session holds about 1.3 KiB
    # less (workload D, bench/README.md).
    __slots__ = (
        "_aborted",
        "_auth_default",
        "_body_8bit",
        "_body_binary",
        "_chunk_last",
        "_chunk_left",
        "_chunks",
        "_chunks_refused",
        "_close_reason",
        "_closing",
        "_data",
        "_discarding",
        "_dsn",
        "_emit",
        "_exchange",
        "_header",
        "_inbuf",
        "_junk",
        "_long_auth_mechanism",
        "_out",
        "_overshoot",
        "_paused",
        "_pending",
        "_recipients",
        "_sender",
        "_shutdown",
        "_skip",
        "_smtputf8",
        "errors",
        "esmtp",
        "helo",
        "hide_plus",
        "identity",
        "on_command",
        "settings",
        "state",
        "tls",
        "xclient_trusted",
    )

    def __init__(self, settings: EngineSettings, *, tls: TlsInfo | None = None):
        self.settings = settings
        self.state = State.CONNECTED
        self.tls: TlsInfo | None = tls
        self.helo = ""
        self.esmtp = False
        self.identity = ""  # authenticated identity, "" if none
        self.errors = 0
        self._junk = 0  # JUNK_COMMANDS' commands since the last accepted message
        #: Told the verb of each known command, and nothing else of the line (no
        #: arguments, never a SASL response): the I/O layer's debug log.
        self.on_command: Callable[[str], None] | None = None
        self._inbuf = bytearray()
        self._out = bytearray()
        self._paused = False
        #: Inside an over-long line: what to return at its end (_TOO_LONG or
        #: _AUTH_TOO_LONG), None otherwise.
        self._discarding: _Overlong | None = None
        #: The mechanism named by the over-long AUTH line being discarded.
        self._long_auth_mechanism = ""
        self._shutdown = False
        self._closing = False
        #: Why the session is closing: the reason of the `CloseConnection` to come.
        self._close_reason = SESSION_ENDED
        # Transaction
        self._sender = ""
        self._recipients: list[str] = []
        self._dsn = TransactionDsn()
        self._body_8bit = False
        self._smtputf8 = False
        self._body_binary = False  # BODY=BINARYMIME: BDAT only (RFC 3030 §3)
        self._data: DataStream | None = None
        self._header: HeaderSection | None = None
        self._aborted = False
        # BDAT (RFC 3030): the message's chunks, the octets of the current chunk
        # still to read and whether it is the LAST; ``_skip``: octets of a refused
        # BDAT still to read and drop (they are never commands).
        self._chunks: ChunkStream | None = None
        self._chunk_left = 0
        self._chunk_last = False
        self._skip = 0
        #: A BDAT was refused and the client's next chunks, up to the LAST, are
        #: the ones it pipelined behind it (RFC 3030 §2): read and dropped, not
        #: errors. Cleared by the LAST or by any other command.
        self._chunks_refused = False
        #: RCPT commands past ``max_recipients`` in this transaction.
        self._overshoot = 0
        # Pending decision, and an event waiting to be returned by next_event()
        self._pending: Event | None = None
        self._emit: Event | None = None
        #: The open SASL exchange (sasl/exchange.py), from AUTH to its reply.
        self._exchange: ServerExchange | None = None
        self._auth_default: R.Reply | None = None
        #: Set by the I/O layer: do not advertise -PLUS on this connection (the
        #: channel-binding fallback, docs/mechanisms.md). -PLUS stays usable.
        self.hide_plus = False
        #: Set by the I/O layer when the peer is a proxy this listener trusts with
        #: XCLIENT (``xclient_trusted``): only then is it advertised and accepted.
        self.xclient_trusted = False

    # ------------------------------------------------------------------ I/O API

    def greeting(self) -> None:
        """Queue the 220 greeting (RFC 5321 §4.2: no enhanced code)."""
        self._send(R.GREETING.with_text(f"{self.settings.hostname} {self.settings.banner}"))

    def receive_data(self, data: bytes) -> None:
        if self.state is State.CLOSED or self.state is State.TLS:
            # After STARTTLS, bytes go to the TLS layer, never to us. If any still
            # arrive here they are plaintext injection: drop them.
            return
        self._inbuf += data

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    @property
    def buffered(self) -> int:
        return len(self._inbuf)

    @property
    def closed(self) -> bool:
        return self.state is State.CLOSED

    @property
    def in_long_line(self) -> bool:
        """A command line over its limit is being read and dropped: its end has
        not come, though nothing of it is buffered (the I/O layer's command
        deadline keeps running)."""
        return self._discarding is not None

    @property
    def in_data(self) -> bool:
        """Message octets are being read (DATA, a BDAT chunk, or a refused chunk
        being dropped): the I/O layer's data timeouts apply."""
        return self.state is State.DATA or self.state is State.BDAT or self._skip > 0

    @property
    def in_message(self) -> bool:
        """A message is being read: DATA, or a BDAT message from its first chunk to
        the end of its LAST (the commands between chunks too), or a refused chunk
        being dropped. The I/O layer's message deadline runs meanwhile, so a
        message sent as small chunks far apart is bounded as DATA is."""
        return self.in_data or self.state is State.CHUNKS

    @property
    def draining_before_login(self) -> bool:
        """The octets of a BDAT refused before a login are being dropped: no
        transaction is in progress, so the I/O layer bounds them as a command line,
        not at the data rate (a client sending 500 octets a second held its
        connection for as long as the size it declared)."""
        return self._skip > 0 and not self.identity

    @property
    def in_auth(self) -> bool:
        """An AUTH exchange is open (the I/O layer's AUTH deadline runs)."""
        return self.state is State.AUTH

    @property
    def auth_announced_failure(self) -> sasl.Failure | None:
        """The open AUTH exchange's last 334 announced this failure and waits for
        the client's answer, which cannot change it (``ServerExchange``)."""
        exchange = self._exchange
        return None if exchange is None else exchange.announced_failure

    @property
    def idle(self) -> bool:
        """No message in flight and no decision pending: safe to hang up."""
        return not self._paused and self.state not in (
            State.DATA, State.AUTH, State.BDAT, State.CHUNKS)

    def next_event(self) -> Event | Sentinel:
        if self._emit is not None:
            # An event produced by auth_answer(), outside this loop.
            ev, self._emit = self._emit, None
            return ev
        if self._paused:
            return PAUSED
        while self.state is not State.CLOSED and self.state is not State.TLS:
            if self._skip:
                if not self._inbuf:
                    return NEED_DATA
                n = min(self._skip, len(self._inbuf))
                del self._inbuf[:n]
                self._skip -= n
                continue
            if self.state is State.BDAT:
                if not self._inbuf and self._chunk_left:
                    return NEED_DATA
                event = self._chunk_received()
                if event is not None:
                    return event
                continue
            if self.state is State.DATA:
                if not self._inbuf:
                    return NEED_DATA
                event = self._data_received()
                if event is not None:
                    return event
                continue
            limit = self.settings.max_pending_output
            if limit and len(self._out) >= limit:
                return OUTPUT_FULL
            line = self._take_line()
            if line is None:
                return NEED_DATA
            event = self._handle_line(line)
            if event is not None:
                return event
        if self.state is State.CLOSED and self._closing:
            self._closing = False
            return CloseConnection(self._close_reason)
        return NEED_DATA

    def respond(self, reply: R.Reply | None) -> None:
        """Answer the pending decision event; None means the default reply."""
        pending = self._pending
        if pending is None:
            raise RuntimeError("respond() without a pending decision")
        self._pending = None
        self._paused = False
        if isinstance(pending, MailFrom):
            self._respond_mail(pending, reply)
        elif isinstance(pending, RcptTo):
            self._respond_rcpt(pending, reply)
        elif isinstance(pending, MessageReceived):
            reply = reply or R.MESSAGE_ACCEPTED
            if reply.code < 400:
                # A message accepted forgives the session's earlier errors (as
                # Postfix does): a script sending hundreds of messages on one
                # connection was cut off at its tenth mistyped recipient.
                self.errors = self._junk = 0
            self._send(reply)
            self._after_message()
        elif isinstance(pending, AuthFinished):
            self._respond_auth(pending, reply)
        else:
            raise TypeError(f"respond() cannot answer {type(pending).__name__}")
        if self._shutdown and self.idle:
            self._close_with(R.SHUTTING_DOWN)

    def auth_answer(self, answer: sasl.CredentialAnswer) -> None:
        """Answer an AuthQuery with what the auth service found."""
        exchange = self._exchange
        if not isinstance(self._pending, AuthQuery) or exchange is None:
            raise RuntimeError("auth_answer() without a pending AuthQuery")
        self._pending = None
        self._paused = False
        self._emit = self._auth_step(exchange.answer(answer))

    def xclient_answer(self, identity: str | None, reply: R.Reply | None = None) -> None:
        """Answer an Xclient event: ``reply`` (>= 400) refuses it; otherwise the
        session starts again as the proxy's client (Postfix's XCLIENT: a new 220
        greeting, EHLO needed), logged in as ``identity`` when LOGIN gave one. As on
        a new connection, without LOGIN it is not logged in: an earlier AUTH was the
        proxy's or another client's, not the one ADDR now names."""
        pending = self._pending
        if not isinstance(pending, Xclient):
            raise TypeError("xclient_answer() without a pending Xclient")
        self._pending = None
        self._paused = False
        if reply is not None and reply.code >= 400:
            self._error_no_event(reply)
            return
        self._reset_transaction()
        self.state = State.CONNECTED
        self.helo = pending.helo or ""
        self.esmtp = pending.proto == "ESMTP"
        self.identity = identity or ""
        self.greeting()

    def tls_established(self, info: TlsInfo) -> None:
        """RFC 3207 §4.2: forget everything learned before TLS; a new EHLO is needed."""
        self.tls = info
        self._inbuf.clear()
        self.helo = ""
        self.esmtp = False
        self.identity = ""
        self._reset_transaction()
        self.state = State.CONNECTED

    def abandon_auth(self, reason: str) -> AuthFinished | None:
        """The connection is gone (dropped, timed out, shut down) in the middle of an
        AUTH exchange: return the AuthFinished the I/O layer must log, so that every
        attempt still ends in exactly one record; None if no exchange was open or its
        AuthFinished was already emitted. A verdict already sent as a 334 (SCRAM
        ``e=invalid-proof``, the OAUTHBEARER error JSON) is the failure it announced:
        a client that reads it and hangs up has failed, not cancelled."""
        exchange = self._exchange
        outcome = exchange.abandon(reason) if exchange is not None else None
        if outcome is None:
            return None  # no exchange open, or its AuthFinished was emitted
        self._pending = None
        return _auth_finished(outcome)

    def timeout(self, *, deadline: bool = False) -> None:
        """The I/O layer's idle timer fired (RFC 5321 §4.5.3.2), or with ``deadline``
        one of its deadlines passed (a command line, an AUTH exchange, DATA rate)."""
        idle = R.DATA_TIMEOUT if self.in_data else R.TIMEOUT
        self._close_with(R.TOO_SLOW if deadline else idle)

    def shutdown(self, *, force: bool = False) -> None:
        """Server is stopping: hang up now if idle (or forced), else after the
        message in flight has been answered."""
        self._shutdown = True
        if force or self.idle:
            self._close_with(R.SHUTTING_DOWN)

    # ------------------------------------------------------------- internals

    def _send(self, reply: R.Reply, extra: tuple[str, ...] = ()) -> None:
        self._out += reply.format(extra)

    def _close_with(self, reply: R.Reply) -> None:
        if self.state is State.CLOSED:
            return
        self._send(reply)
        self.state = State.CLOSED
        self._closing = True
        self._paused = False
        self._pending = None

    def _error(self, reply: R.Reply) -> Event | None:
        """Send an error reply; too many of them end the session (chasquid-style)."""
        self._send(reply)
        return self._count_error()

    def _junk_command(self) -> None:
        """A NOOP, RSET, VRFY, HELP, EHLO or HELO, a recipient already given or a
        ``BDAT 0`` without LAST, answered: past `JUNK_COMMANDS` it counts as an
        error (a close it causes is reported by next_event())."""
        self._junk += 1
        if self._junk > JUNK_COMMANDS and self._count_error() is not None:
            self._closing = True

    def _count_error(self) -> Event | None:
        self.errors += 1
        if self.errors >= self.settings.max_errors:
            self._close_with(R.TOO_MANY_ERRORS)
            # An error answered through a decision closes later, from next_event().
            self._close_reason = "too many errors"
            return self._close_event(self._close_reason)
        return None

    def _close_event(self, reason: str) -> Event:
        """``reason`` goes to the log unless it is QUIT: why the server closed."""
        self._closing = False
        return CloseConnection(reason)

    def _decide(self, event: Event) -> Event:
        self._pending = event
        self._paused = True
        return event

    def _take_line(self) -> bytes | _Overlong | None:
        buf = self._inbuf
        limit = MAX_AUTH_LINE if self.state is State.AUTH else MAX_COMMAND_LINE
        nl = buf.find(b"\n")
        if self._discarding is not None:
            if nl < 0:
                buf.clear()
                return None
            del buf[: nl + 1]
            marker, self._discarding = self._discarding, None
            return marker
        if nl < 0:
            if len(buf) > MAX_AUTH_LINE:
                # Over any limit: swallow the rest of this line, never parse it.
                self._discarding = self._too_long(buf)
                buf.clear()
            return None
        line = bytes(buf[: nl + 1])
        del buf[: nl + 1]
        if len(line) > limit and not (
            limit == MAX_COMMAND_LINE and len(line) <= MAX_AUTH_LINE and _is_auth_command(line)
        ):
            return self._too_long(line)
        # CRLF, or a bare LF as a named leniency; a CR elsewhere stays in the line.
        return line[:-2] if line.endswith(b"\r\n") else line[:-1]

    def _too_long(self, line: bytes | bytearray) -> _Overlong:
        """The marker for an over-long line: an AUTH command whose initial response
        is over the RFC 4954 §4 limit is an authentication exchange line too."""
        if self.state is not State.AUTH and _is_auth_command(line):
            self._long_auth_mechanism = _auth_mechanism_of(line)
            return _AUTH_TOO_LONG
        return _TOO_LONG

    def _handle_line(self, raw: bytes | _Overlong) -> Event | None:
        # Only a BDAT right behind a refused chunk is one the client pipelined
        # behind it (`_refuse_chunk`); any other line ends that run.
        after_refusal, self._chunks_refused = self._chunks_refused, False
        if isinstance(raw, _Overlong):
            if raw is _AUTH_TOO_LONG:
                # RFC 4954 §4/§6: 500 5.5.6, as for a response over the limit.
                name, self._long_auth_mechanism = self._long_auth_mechanism, ""
                return self._malformed_initial(
                    name, "authentication line too long", R.AUTH_LINE_TOO_LONG)
            if self.state is State.AUTH:
                return self._auth_malformed("authentication line too long", R.AUTH_LINE_TOO_LONG)
            return self._error(R.LINE_TOO_LONG)
        if self.state is State.AUTH:
            return self._auth_response(raw)
        if b"\x00" in raw:
            return self._error(R.NUL_IN_COMMAND)
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            return self._error(R.SYNTAX_ERROR)
        # Leniency (docs/smtp.md): trailing SP and HTAB are dropped from every
        # command, as Postfix does; a trailing tab was read as part of the verb
        # (``NOOP<TAB>``: 500) or as a parameter (RCPT: 501), a space was not.
        line = line.rstrip(" \t")
        verb_text, _, arg = line.partition(" ")
        verb = verb_text.upper()
        if not _VERB.fullmatch(verb_text):
            return self._error(R.UNKNOWN_COMMAND)
        if verb in _HTTP_VERBS and self.state is State.CONNECTED and not self.helo:
            # ALPACA: an HTTP client (or a cross-protocol attack) on an SMTP port.
            self._close_with(R.HTTP_REFUSED)
            return self._close_event(f"HTTP request line ({verb}) as the first command")
        if verb not in KNOWN_VERBS:
            return self._error(R.UNKNOWN_COMMAND)
        if self.on_command is not None:
            self.on_command(verb)
        if verb == "BDAT":
            # Its octets follow whatever the answer: framing comes first.
            return self._cmd_bdat(arg, after_refusal=after_refusal)
        if verb in _NEED_AUTH and not self.identity:
            # RFC 6409 §4.3 / RFC 3207 §4: refuse before looking at sequence, so a
            # relay probe learns nothing but "authenticate first".
            refusal = self._require_auth()
            assert refusal is not None
            return self._error(refusal)
        allowed = TRANSITIONS.get(self.state, {})
        if verb not in allowed:
            reply = OUT_OF_SEQUENCE.get((self.state, verb), R.BAD_SEQUENCE)
            if verb == "AUTH":
                return self._auth_refused(reply, self._out_of_sequence_auth(),
                                          _auth_mechanism_of(raw))
            return self._error(reply)
        return _COMMANDS[verb](self, arg.strip(" "))

    # ------------------------------------------------------------- commands

    def _ehlo_lines(self) -> tuple[str, ...]:
        s = self.settings
        lines = [
            "PIPELINING",
            f"SIZE {s.max_message_size}",
            "8BITMIME",
            "SMTPUTF8",
            "ENHANCEDSTATUSCODES",
            "DSN",  # RFC 3461
            "CHUNKING",  # RFC 3030
        ]
        if s.binarymime:
            lines.append("BINARYMIME")
        if s.starttls and self.tls is None:
            lines.append("STARTTLS")
        mechs = self.offered_mechanisms()
        if mechs:
            lines.append("AUTH " + " ".join(mechs))
        if self.xclient_trusted:
            lines.append("XCLIENT " + " ".join(XCLIENT_ATTRIBUTES))
        return tuple(lines)

    def offered_mechanisms(self) -> tuple[str, ...]:
        """What EHLO advertises: the usable mechanisms, less -PLUS when the I/O
        layer set ``hide_plus`` for a client that cannot bind."""
        usable = self.usable_mechanisms()
        if not self.hide_plus:
            return usable
        return tuple(m for m in usable if not m.endswith("-PLUS"))

    def usable_mechanisms(self) -> tuple[str, ...]:
        """What AUTH accepts. RFC 4954 §4: no AUTH before TLS unless the listener
        allows it; -PLUS only when this connection has channel-binding data
        (RFC 5802 §6). A -PLUS variant held back from EHLO is still accepted: the
        server supports binding here, and a client that asks for it can bind."""
        if self.tls is None and not self.settings.auth_in_clear:
            return ()
        cb = self.tls.channel_binding if self.tls else sasl.ChannelBinding()
        # EXTERNAL (RFC 4422 App. A) only where a client certificate verified:
        # never in clear, never on a session with no credential to map.
        cert = self.tls is not None and self.tls.client_certificate is not None
        return tuple(
            m for m in self.settings.mechanisms
            if (not m.endswith("-PLUS") or cb.available) and (m != "EXTERNAL" or cert)
        )

    @property
    def plus_usable(self) -> bool:
        """This connection supports a -PLUS mechanism (advertised or held back)."""
        return any(m.endswith("-PLUS") for m in self.usable_mechanisms())

    def _cmd_ehlo(self, arg: str) -> Event | None:
        name = _helo_name(arg)
        if name is None:
            return self._error(R.SYNTAX_EHLO)
        self.helo, self.esmtp = name, True
        dropped = self._drop_chunks()
        self._reset_transaction()
        self.state = State.GREETED
        self._send(R.EHLO_OK.with_text(self.settings.hostname), self._ehlo_lines())
        self._junk_command()
        return dropped

    def _cmd_helo(self, arg: str) -> Event | None:
        name = _helo_name(arg)
        if name is None:
            return self._error(R.SYNTAX_HELO)
        self.helo, self.esmtp = name, False
        dropped = self._drop_chunks()
        self._reset_transaction()
        self.state = State.GREETED
        self._send(R.HELO_OK.with_text(self.settings.hostname))
        self._junk_command()
        return dropped

    def _cmd_noop(self, arg: str) -> Event | None:
        self._send(R.NOOP_OK)
        self._junk_command()
        return None

    def _cmd_help(self, arg: str) -> Event | None:
        # What this session can use now: it listed STARTTLS inside TLS (where
        # STARTTLS is 503), AUTH where no mechanism is offered (in clear, 530) and
        # AUTH after a login (503, RFC 4954 §4: one successful AUTH a session).
        s = self.settings
        names = ["EHLO", "HELO"]
        if s.starttls and self.tls is None:
            names.append("STARTTLS")
        if self.offered_mechanisms() and not self.identity:
            names.append("AUTH")
        names += ["MAIL", "RCPT", "DATA", "BDAT", "RSET", "NOOP", "VRFY", "QUIT"]
        if self.xclient_trusted:
            names.append("XCLIENT")
        self._send(R.help_reply(tuple(names)))
        self._junk_command()
        return None

    def _cmd_vrfy(self, arg: str) -> Event | None:
        # RFC 5321 §3.5.3: 252 reveals nothing about accounts.
        if not arg:
            return self._error(R.SYNTAX_ERROR)
        self._send(R.VRFY_CANNOT)
        self._junk_command()
        return None

    def _cmd_expn(self, arg: str) -> Event | None:
        return self._error(R.NOT_IMPLEMENTED)

    def _cmd_rset(self, arg: str) -> Event | None:
        if arg:
            return self._error(R.SYNTAX_NO_ARGS)
        dropped = self._drop_chunks()
        self._reset_transaction()
        if self.state in (State.MAIL, State.RCPT, State.CHUNKS):
            self.state = State.GREETED
        self._send(R.RESET_OK)
        self._junk_command()
        return dropped

    def _cmd_quit(self, arg: str) -> Event | None:
        self._close_with(R.BYE)
        return self._close_event(QUIT_REASON)

    def _cmd_starttls(self, arg: str) -> Event | None:
        if self.tls is not None:
            return self._error(R.TLS_ALREADY_ACTIVE)
        if not self.settings.starttls:
            return self._error(R.NOT_IMPLEMENTED)
        if arg:
            return self._error(R.SYNTAX_NO_ARGS)
        self._send(R.STARTTLS_READY)
        # RFC 3207 §4.2 and CVE-2011-0411: whatever the client pipelined behind
        # STARTTLS was sent in clear and must never be executed inside TLS.
        discarded = len(self._inbuf)
        self._inbuf.clear()
        self._reset_transaction()
        self.state = State.TLS
        return StartTls(discarded)

    def _cmd_xclient(self, arg: str) -> Event | None:
        # Postfix XCLIENT_README: only from authorized clients, never inside a
        # transaction (the states table answers 503 there).
        if not self.xclient_trusted:
            return self._error(R.XCLIENT_DENIED)
        try:
            attrs = parse_xclient(arg)
        except XclientSyntaxError:
            return self._error(R.XCLIENT_SYNTAX)
        return self._decide(attrs)

    def _require_auth(self) -> R.Reply | None:
        """RFC 6409 §4.3: submission needs authentication; in clear, RFC 3207 §4."""
        if self.identity:
            return None
        if self.tls is None and self.settings.starttls and not self.settings.auth_in_clear:
            return R.MUST_STARTTLS
        return R.AUTH_REQUIRED

    def _cmd_mail(self, arg: str) -> Event | None:
        refusal = self._require_auth()
        if refusal is not None:
            return self._error(refusal)
        try:
            path, rest = split_path_argument(arg, "FROM")
        except AddressError:
            return self._error(R.SYNTAX_MAIL)
        params, refusal = _parameters(rest)
        if refusal is not None:
            return self._error(refusal)
        smtputf8 = "SMTPUTF8" in params
        if smtputf8 and params["SMTPUTF8"] is not None:
            return self._error(R.SYNTAX_ERROR)
        try:
            # In its least-quoted form, as the recipients (_cmd_rcpt).
            sender = without_needless_quotes(parse_path(path, allow_null=True, utf8=smtputf8))
        except NonAsciiWithoutSmtputf8:
            return self._error(R.UTF8_NOT_DECLARED)
        except AddressError:
            return self._error(R.BAD_SENDER_ADDRESS)
        size: int | None = None
        body_8bit = body_binary = False
        auth_param: str | None = None
        dsn_ret: str | None = None
        dsn_envid: str | None = None
        for key, value in params.items():
            if key == "SIZE":
                # RFC 1870 §6: refuse a declared size over the limit up front. §3:
                # size-value is ASCII digits ("²" passes str.isdigit, not int()).
                if value is None or not (value.isascii() and value.isdigit()) or len(value) > 20:
                    return self._error(R.SYNTAX_ERROR)
                size = int(value)
                if size > self.settings.max_message_size:
                    return self._error(R.MESSAGE_TOO_BIG)
            elif key == "BODY":
                # RFC 6152 §2; RFC 3030 §3 (BINARYMIME: sent with BDAT only)
                body = upper_ascii(value) if value is not None else ""
                if body not in ("7BIT", "8BITMIME", "BINARYMIME"):
                    return self._error(R.BAD_BODY_PARAMETER)
                if body == "BINARYMIME" and not self.settings.binarymime:
                    return self._error(R.BINARYMIME_NOT_OFFERED)
                body_8bit, body_binary = body != "7BIT", body == "BINARYMIME"
            elif key == "SMTPUTF8":
                pass
            elif key in ("RET", "ENVID"):
                # RFC 3461 §4.3, §4.4 (dsn_params.py)
                try:
                    if key == "RET":
                        dsn_ret = parse_ret(value)
                    else:
                        dsn_envid = parse_envid(value)
                except DsnParamError:
                    return self._error(R.BAD_DSN_PARAMETER)
            elif key == "AUTH":
                # RFC 4954 §5: accepted from anyone, trusted from no one: the
                # envelope always records the session's own identity.
                if value is None:
                    return self._error(R.SYNTAX_ERROR)
                try:
                    auth_param = decode_xtext(value)
                except AddressError:
                    return self._error(R.SYNTAX_ERROR)
            else:
                return self._error(R.UNKNOWN_PARAMETER)
        self._sender, self._body_8bit, self._smtputf8 = sender, body_8bit, smtputf8
        self._body_binary = body_binary
        self._dsn = TransactionDsn(dsn_ret, dsn_envid)
        return self._decide(MailFrom(sender, size, body_8bit, smtputf8, auth_param))

    def _respond_mail(self, event: MailFrom, reply: R.Reply | None) -> None:
        if reply is None or reply.code < 400:
            self._send(reply or R.SENDER_OK)
            self.state = State.MAIL
        elif reply.code == 421:  # RFC 5321 §3.8: the server closes the channel
            self._close_with(reply)
        else:
            self._sender = ""
            self._error_no_event(reply)

    def _cmd_rcpt(self, arg: str) -> Event | None:
        refusal = self._require_auth()
        if refusal is not None:
            return self._error(refusal)
        try:
            path, rest = split_path_argument(arg, "TO")
        except AddressError:
            return self._error(R.SYNTAX_RCPT)
        params, refusal = _parameters(rest)
        if refusal is not None:
            return self._error(refusal)
        try:
            dsn = parse_rcpt_params(params, utf8=self._smtputf8)  # RFC 3461, RFC 6533
        except KeyError:
            return self._error(R.UNKNOWN_PARAMETER)
        except DsnParamError:
            return self._error(R.BAD_DSN_PARAMETER)
        try:
            rcpt = parse_path(path, allow_null=False, utf8=self._smtputf8, postmaster=True)
        except NonAsciiWithoutSmtputf8:
            return self._error(R.UTF8_NOT_DECLARED)
        except AddressError:
            return self._error(R.BAD_ADDRESS)
        if rcpt == "postmaster":
            # RFC 5321 §4.1.1.3 makes the bare <Postmaster> a recipient; RFC 6409
            # §4.2 has a submission server pass on only qualified domains. It is this
            # server's postmaster (Postfix appends $myorigin alike), not a bare
            # name a relay would refuse or resolve against its own domain.
            rcpt = f"postmaster@{self.settings.hostname}"
        # RFC 5321 §4.1.2: all quoted forms of a local part are one mailbox, sent in
        # the least-quoted one: "bob"@x is bob@x, the same recipient (once in the
        # envelope, once against the limits and the budget) and so written onward.
        rcpt = without_needless_quotes(rcpt)
        if rcpt in self._recipients:
            # The same address again (a client that puts it in To and Cc): 250 and
            # kept once, with the first RCPT's DSN parameters, as Postfix's cleanup
            # does. It is no new recipient, so it is not put to the decision: the
            # account's recipient budget counted it twice (450 at the budget's last
            # recipient), and at limits.max_recipients it got 452; either made the
            # client send it again on its own, and the recipient got two copies.
            # It moves no mail, so it counts as a NOOP does (the same address
            # over and over was never cut off).
            self._send(R.RECIPIENT_OK)
            self._junk_command()
            return None
        if len(self._recipients) >= self.settings.max_recipients:
            # RFC 5321 §4.5.3.1.10: 452 and the client sends the rest later.
            self._overshoot += 1
            if self._overshoot <= RECIPIENT_OVERSHOOT:
                self._send(R.TOO_MANY_RECIPIENTS)
                return None
            return self._error(R.TOO_MANY_RECIPIENTS)
        return self._decide(RcptTo(rcpt, dsn if params else None))

    def _respond_rcpt(self, event: RcptTo, reply: R.Reply | None) -> None:
        if reply is None or reply.code < 400:
            # A new address (_cmd_rcpt answers one already in the envelope).
            self._recipients.append(event.recipient)
            if event.dsn is not None:
                self._dsn = replace(self._dsn, rcpts=(*self._dsn.rcpts,
                                                      (event.recipient, event.dsn)))
            self._send(reply or R.RECIPIENT_OK)
            self.state = State.RCPT
        else:
            self._error_no_event(reply)

    def _error_no_event(self, reply: R.Reply) -> None:
        event = self._error(reply)
        if event is not None:
            # Too many errors: the close is reported by next_event().
            self._closing = True

    def _cmd_data(self, arg: str) -> Event | None:
        if arg:
            return self._error(R.SYNTAX_NO_ARGS)
        if not self._recipients:
            return self._error(R.NO_VALID_RECIPIENTS)
        if self._body_binary:
            return self._error(R.BINARYMIME_NEEDS_BDAT)
        self._send(R.START_DATA)
        self._data = DataStream(self.settings.max_message_size,
                                normalize_lf=self.settings.normalize_bare_lf)
        self.state = State.DATA
        return self._message_start()

    def _message_start(self) -> MessageStart:
        self._header = HeaderSection()
        self._aborted = False
        return MessageStart(
            sender=self._sender,
            recipients=tuple(self._recipients),
            identity=self.identity,
            helo=self.helo,
            body_8bit=self._body_8bit,
            smtputf8=self._smtputf8,
            dsn=self._dsn,
            body_binary=self._body_binary,
        )

    def _data_received(self) -> Event | None:
        """Feed what arrived to the DATA reader: the message content that is final
        goes out as a `MessageData` (or, once the message cannot be accepted, one
        `MessageAborted`); at its end the decision follows (held in ``_emit`` when
        both come from the same bytes)."""
        data, header = self._data, self._header
        assert data is not None and header is not None
        chunk = bytes(self._inbuf)
        self._inbuf.clear()
        out, end, leftover = data.feed(chunk)
        event = self._content_event(out, header, too_big=data.too_big, doomed=data.doomed,
                                    at_end=end is not None)
        if end is None:
            return event
        self._inbuf += leftover
        final = self._end_of_data(end, header)
        if event is None:
            return final
        self._emit = final
        return event

    def _content_event(self, out: bytes, header: HeaderSection, *, too_big: bool,
                       doomed: bool, at_end: bool) -> Event | None:
        """What content of a DATA or BDAT message that became final (``out``) is
        told as: a `MessageData`, or, the first time the message shows it cannot be
        accepted, one `MessageAborted` and nothing after it. ``at_end``: the
        message's last octet is in ``out`` (a check of the whole header section
        may then run on a header that never ended)."""
        if self._aborted:
            return None
        ended = header.feed(out)
        whole = ended or at_end
        reason = ("message too big" if too_big
                  else "bare CR or LF" if doomed
                  else "header section too big" if header.too_big
                  else "NUL in the header section" if whole and header.has_nul
                  else "message begins with white space" if header.folded_start
                  else "too many Received fields (mail loop)"
                  if whole and header.too_many_hops
                  else "")
        if reason:
            self._aborted = True
            return MessageAborted(reason)
        if ended and self.settings.note_missing_fields:
            return MessageData(out, header.missing())
        return MessageData(out) if out else None

    def _end_of_data(self, end: DataEnd, header: HeaderSection) -> Event | None:
        self._data = self._header = None
        refusal = None
        if end.too_big:
            refusal = R.MESSAGE_TOO_BIG
        elif end.bare_cr or (end.bare_lf and not self.settings.normalize_bare_lf):
            # Refused after the real end, so nothing the client sent is lost
            # track of and nothing behind a bare LF is run as a command.
            refusal = R.BARE_LINE_ENDING
        elif header.too_big:
            refusal = R.HEADER_TOO_BIG
        elif header.has_nul:
            # docs/smtp.md "NUL octets": every reader of the header (our From check,
            # filters and mail readers in C) must see the same fields; a NUL ends a
            # C string, so a field would read differently to each. The body passes.
            refusal = R.NUL_IN_HEADER
        elif header.folded_start:
            # docs/smtp.md "A message that begins with white space": its first line
            # would fold into the field stored or delivered above it, ours (the
            # Received header, a Date or Message-ID added, Return-Path) or the
            # next hop's, and read as that server's words.
            refusal = R.FOLDED_FIRST_LINE
        elif header.too_many_hops:
            # RFC 5321 §6.3: a mail loop, refused for good so that it ends here.
            refusal = R.TOO_MANY_HOPS
        if refusal is not None:
            self._send(refusal)
            self._after_message()
            return None
        return self._decide(
            MessageReceived(
                sender=self._sender,
                recipients=tuple(self._recipients),
                identity=self.identity,
                helo=self.helo,
                body_8bit=self._body_8bit,
                smtputf8=self._smtputf8,
                header=header.header(),
                size=end.size,
                # A message without an empty line is all header: it ends here.
                missing=header.missing()
                if self.settings.note_missing_fields and not header.done else (),
            )
        )

    # ----------------------------------------------------------------- BDAT

    def _cmd_bdat(self, arg: str, *, after_refusal: bool = False) -> Event | None:
        """RFC 3030 §2. Once the size is read, the chunk's octets are read too,
        whether the command is accepted or not: a refused chunk is dropped
        (``_skip``), never parsed as commands."""
        try:
            size, last = parse_bdat(arg)
        except BdatSyntaxError:
            self._close_with(R.BDAT_SYNTAX)
            return self._close_event("BDAT size unreadable")
        refusal = self._require_auth()
        if refusal is None and self.state not in (State.RCPT, State.CHUNKS):
            refusal = OUT_OF_SEQUENCE.get((self.state, "BDAT"), R.BAD_SEQUENCE)
        if refusal is not None:
            self._skip = size
            return self._refuse_chunk(refusal, last, after_refusal)
        self._chunk_left, self._chunk_last = size, last
        start: Event | None = None
        if self.state is State.RCPT:
            self._chunks = ChunkStream(self.settings.max_message_size,
                                       normalize_lf=self.settings.normalize_bare_lf,
                                       final_crlf=not self._body_binary)
            start = self._message_start()
        self.state = State.BDAT
        return start

    def _refuse_chunk(self, refusal: R.Reply, last: bool, after_refusal: bool) -> Event | None:
        """Answer a BDAT whose octets are being dropped. After a refused chunk
        (or a BDAT refused outside a transaction) the chunks the client pipelined
        behind it, up to its LAST, are read and dropped as RFC 3030 §2 requires
        and answered `R.CHUNK_DISCARDED`; they move nothing, so each counts as a
        NOOP does, not as an error. Each was answered 503 and counted as one, so
        a message in ten chunks refused at its first got 421 Too many errors
        (a temporary failure, for a message refused for good) in the middle of
        its chunks. Before a login a BDAT stays an error: there is no
        transaction to be in."""
        if after_refusal:
            self._chunks_refused = not last
            self._send(R.CHUNK_DISCARDED)
            self._junk_command()
            return None
        self._chunks_refused = not last and bool(self.identity)
        return self._error(refusal)

    def _chunk_received(self) -> Event | None:
        """Read the chunk's octets that arrived: the content goes out as
        `MessageData` (or one `MessageAborted`); at the chunk's end its reply, or
        after the LAST the decision (held in ``_emit`` when both are due)."""
        chunks, header = self._chunks, self._header
        assert chunks is not None and header is not None
        n = min(self._chunk_left, len(self._inbuf))
        piece = bytes(self._inbuf[:n])
        del self._inbuf[:n]
        self._chunk_left -= n
        out = chunks.feed(piece) if n else b""
        # After the LAST octet a CR held back is judged (bare) before the verdict.
        end = chunks.end() if not self._chunk_left and self._chunk_last else None
        if end is not None:
            out += chunks.tail  # a final CRLF the content lacked (bdat.py)
        event = self._content_event(out, header, too_big=chunks.too_big,
                                    doomed=chunks.doomed, at_end=end is not None)
        if self._chunk_left:
            return event
        final: Event | None = None
        if self._chunk_last or self._aborted:
            # The LAST chunk, or a refusal (the transaction ends: the chunks the
            # client pipelined behind it, up to its LAST, are dropped).
            self._chunks_refused = not self._chunk_last
            final = self._end_of_data(end or chunks.end(), header)
        else:
            self._send(R.CHUNK_RECEIVED)
            self.state = State.CHUNKS
            if not n:
                # BDAT 0 without LAST (only a size-0 chunk ends with nothing read):
                # legal, and it moves nothing, so it counts as a NOOP does; a
                # client sending it over and over was never cut off.
                self._junk_command()
        if event is None:
            return final
        self._emit = final
        return event

    def _drop_chunks(self) -> Event | None:
        """RSET, EHLO or HELO between chunks: the message written so far goes."""
        if self.state is not State.CHUNKS or self._aborted:
            return None
        self._aborted = True
        return MessageAborted(TRANSACTION_RESET)

    def _after_message(self) -> None:
        self._reset_transaction()
        self.state = State.GREETED
        if self._shutdown and not self._paused:
            self._close_with(R.SHUTTING_DOWN)

    def _reset_transaction(self) -> None:
        self._sender = ""
        self._recipients = []
        self._dsn = TransactionDsn()
        self._body_8bit = False
        self._body_binary = False
        self._smtputf8 = False
        self._data = None
        self._header = None
        self._chunks = None
        self._chunk_left = 0
        self._chunk_last = False
        self._overshoot = 0

    # ----------------------------------------------------------------- AUTH

    def _cmd_auth(self, arg: str) -> Event | None:
        parts = arg.split(" ")
        name = upper_ascii(parts[0])
        refusal = self._auth_refusal()
        if refusal is not None:
            return self._auth_refused(*refusal, name)
        if not arg or len(parts) > 2:
            return self._auth_refused(R.AUTH_SYNTAX, REFUSED_SYNTAX, name)
        if name not in self.usable_mechanisms():
            return self._auth_refused(R.AUTH_UNKNOWN_MECHANISM, REFUSED_MECHANISM, name)
        initial: bytes | None = None
        if len(parts) == 2:
            if parts[1] == "=":
                initial = b""  # RFC 4954 §4: "=" is a zero-length initial response
            else:
                initial = decode_base64_strict(parts[1].encode("ascii", "replace"))
                if initial is None:
                    return self._malformed_initial(name, "invalid base64", R.AUTH_BAD_BASE64)
        exchange = self._new_exchange(name)
        if exchange is None:
            return self._auth_refused(R.AUTH_UNKNOWN_MECHANISM, REFUSED_MECHANISM, name)
        if initial is not None and exchange.server_first:
            return self._auth_refused(R.AUTH_UNEXPECTED_INITIAL, REFUSED_INITIAL, name)
        self._exchange = exchange
        self.state = State.AUTH
        return self._auth_step(exchange.start(initial))

    def _auth_refusal(self) -> tuple[R.Reply, str] | None:
        """Why this session may not AUTH now, whatever the command says: the reply
        and the auth log's reason; None if it may."""
        # RFC 4954 §4: one successful AUTH per session.
        if self.identity:
            return R.AUTH_ALREADY, REFUSED_ALREADY
        if self.tls is None and not self.settings.auth_in_clear:
            return R.MUST_STARTTLS, REFUSED_BEFORE_STARTTLS
        return None

    def _out_of_sequence_auth(self) -> str:
        """The auth log's reason of an AUTH the states table refuses."""
        if self.identity:
            return REFUSED_IN_TRANSACTION if self.state is not State.CONNECTED else REFUSED_ALREADY
        return REFUSED_BEFORE_EHLO

    def _auth_refused(self, reply: R.Reply, reason: str, mechanism: str) -> Event:
        """Answer an AUTH command refused before any exchange began with ``reply``
        (an error toward ``max_errors``), and say so to the I/O layer, which logs
        it: until 2026-12 such a refusal left no trace in the auth log, so a
        scanner trying AUTH in clear or with garbage was invisible to fail2ban and
        ``smtpgate report``. A close it causes is reported by next_event()."""
        self._send(reply)
        if self._count_error() is not None:
            self._closing = True
        return AuthRefused(mechanism, reason, self.identity)

    def _new_exchange(self, name: str) -> ServerExchange | None:
        """An exchange of mechanism ``name`` on this session (None: no such one)."""
        cb = self.tls.channel_binding if self.tls else sasl.ChannelBinding()
        # RFC 5802 §6: a "y" flag is a downgrade wherever the server supports
        # binding, including a connection where -PLUS was held back from EHLO.
        try:
            mech = self.settings.mechanism_factory(name, cb, self.plus_usable)
        except KeyError:
            return None
        return ServerExchange(name, mech, plus_withheld=self.hide_plus)

    def _malformed_initial(self, name: str, reason: str, reply: R.Reply) -> Event | None:
        """An AUTH command whose initial response cannot be decoded (bad base64, a
        line over the RFC 4954 §4 limit) is a failed attempt, as the same response
        sent after a 334 is: answered ``reply``, logged, and counted toward the
        client's address by the guard (docs/protection.md, "What counts as a
        failure"). Otherwise ``AUTH PLAIN <garbage>`` could be repeated unseen by
        the auth log, fail2ban and the guard's flooding limit. An AUTH that would
        be refused anyway (before EHLO, in a transaction, after a login, before
        TLS, an unknown mechanism) is ``reply`` too, logged as refused with both
        reasons."""
        refusal: str | None
        if self.state is not State.GREETED:
            refusal = self._out_of_sequence_auth()
        else:
            found = self._auth_refusal()
            refusal = found[1] if found is not None else None
        if refusal is None and name not in self.usable_mechanisms():
            refusal = REFUSED_MECHANISM
        exchange = self._new_exchange(name) if refusal is None else None
        if exchange is None:
            return self._auth_refused(reply, f"{refusal or REFUSED_MECHANISM}: {reason}", name)
        self._exchange = exchange
        self.state = State.AUTH
        return self._auth_end(exchange.malformed_initial(reason), reply)

    def _auth_step(self, step: ExchangeStep) -> Event | None:
        """Frame what the exchange asks for: a 334 line, a credential look-up, or
        the attempt's end."""
        if isinstance(step, sasl.Challenge):
            # RFC 4954 §4: a 334 line with the base64 data (nothing after the
            # space if empty), also when the challenge carries the verdict (SCRAM
            # v=/e=, the OAuth error JSON).
            self._send(R.AUTH_CHALLENGE.with_text(encode_base64(step.data)))
            return None
        if isinstance(step, sasl.NeedCredentials):
            assert self._exchange is not None
            return self._decide(AuthQuery(self._exchange.mechanism, step.query))
        return self._auth_end(step)

    def _auth_response(self, raw: bytes) -> Event | None:
        exchange = self._exchange
        assert exchange is not None
        if raw == b"*":
            # RFC 4954 §4: "*" cancels; the server MUST reply 501, also after a
            # verdict announced in a 334 (SCRAM's e=, the OAuth error JSON): the
            # attempt still ends as that failure (logged, counted by the guard),
            # only its reply is the 501 (before 2026-12 it was the failure's 535).
            outcome = exchange.cancel()
            return self._auth_end(outcome, R.AUTH_CANCELLED)
        data = decode_base64_strict(raw)
        if data is None:
            return self._auth_malformed("invalid base64", R.AUTH_BAD_BASE64)
        return self._auth_step(exchange.respond(data))

    def _auth_malformed(self, reason: str, reply: R.Reply) -> Event:
        """A response that cannot be decoded (bad base64, over the RFC 4954 §4 line
        limit) ends the attempt: answered ``reply``, or as the failure the server
        had already announced (535 5.7.8, 454 if temporary)."""
        exchange = self._exchange
        assert exchange is not None
        announced = exchange.verdict_announced
        return self._auth_end(exchange.malformed(reason), None if announced else reply)

    def _auth_end(self, outcome: Outcome, reply: R.Reply | None = None) -> Event:
        """The exchange is over: its one AuthFinished, answered after the decision
        (``abandon_auth`` returns None from here on, whether or not the reply has
        gone out)."""
        self._auth_default = reply or _AUTH_REPLIES[outcome.result]
        return self._decide(_auth_finished(outcome))

    def _respond_auth(self, event: AuthFinished, reply: R.Reply | None) -> None:
        final = reply or self._auth_default or R.AUTH_FAILED
        if self._auth_default is R.AUTH_CANCELLED and event.result != AuthResult.SUCCESS:
            final = R.AUTH_CANCELLED  # the client's "*": 501 whatever else was decided
        self._exchange = None
        self.state = State.GREETED
        if event.result == AuthResult.SUCCESS and final.code == 235:
            self.identity = event.identity
            self._send(final)
        else:
            self._error_no_event(final)


#: The reply each way an exchange ends gets by default (RFC 4954 §6, §4 for "*").
_AUTH_REPLIES: dict[AuthResult, R.Reply] = {
    AuthResult.SUCCESS: R.AUTH_SUCCESS,
    AuthResult.FAILURE: R.AUTH_FAILED,
    AuthResult.TEMPFAIL: R.AUTH_TEMPFAIL,
    AuthResult.CANCELLED: R.AUTH_CANCELLED,
}


#: What splits an EHLO/HELO argument into words: any white space (a tab as a
#: space, and Unicode's) and any control character (C0, DEL, C1).
_NOT_IN_A_NAME = re.compile(r"[\s\x00-\x1f\x7f-\x9f]")


def _helo_name(arg: str) -> str | None:
    """The one name an EHLO or HELO carries (RFC 5321 §4.1.1.1: a domain or an
    address literal), WSP around it ignored; None when there is none, or more than
    one: ``x y`` and ``x<TAB>y`` alike. Otherwise lenient (docs/smtp.md): a name
    that is no valid domain (``DESKTOP_7Q``) is taken as sent, as Postfix does
    without ``reject_invalid_helo_hostname``."""
    name = arg.strip(" \t")
    return name if name and not _NOT_IN_A_NAME.search(name) else None


def _auth_mechanism_of(line: bytes | bytearray) -> str:
    """The mechanism an AUTH command line names, in upper case ("" if its name is
    not ASCII): read from the start of a line that is over the limit."""
    word = bytes(line[5:5 + 64]).split(b" ", 1)[0]
    return upper_ascii(word.decode("ascii")) if word.isascii() else ""


def _is_auth_command(line: bytes | bytearray) -> bool:
    """The line is an AUTH command with an argument (a mechanism, maybe an initial
    response)."""
    return bytes(line[:5]).upper() == b"AUTH "


def _auth_finished(o: Outcome) -> AuthFinished:
    return AuthFinished(
        o.mechanism, o.result, o.username, o.identity, o.reason, o.binding, o.malformed
    )


#: The handler of each verb of ``states.TRANSITIONS``, which has already allowed the
#: verb in this state (``test_smtp_engine_dispatch`` checks both name the same verbs).
_COMMANDS: dict[str, Callable[[ServerEngine, str], Event | None]] = {
    "EHLO": ServerEngine._cmd_ehlo,
    "HELO": ServerEngine._cmd_helo,
    "NOOP": ServerEngine._cmd_noop,
    "HELP": ServerEngine._cmd_help,
    "VRFY": ServerEngine._cmd_vrfy,
    "EXPN": ServerEngine._cmd_expn,
    "RSET": ServerEngine._cmd_rset,
    "QUIT": ServerEngine._cmd_quit,
    "STARTTLS": ServerEngine._cmd_starttls,
    "MAIL": ServerEngine._cmd_mail,
    "RCPT": ServerEngine._cmd_rcpt,
    "DATA": ServerEngine._cmd_data,
    "BDAT": ServerEngine._cmd_bdat,
    "AUTH": ServerEngine._cmd_auth,
    "XCLIENT": ServerEngine._cmd_xclient,
}
