"""Deliver through a relay host (smarthost) over SMTP.

Theory of operation
-------------------
One connection per message: greeting, EHLO (HELO if refused), STARTTLS as
configured, AUTH when credentials are set, then MAIL, RCPT per recipient, DATA.
With PIPELINING (RFC 2920) MAIL and the RCPTs go out in one write; DATA waits for
their replies, so the message is never sent when no recipient was accepted.

What a reply means, per recipient (STYLE.md §11):

* a failure before MAIL (no connection, greeting, EHLO, TLS, AUTH) is temporary
  for everyone: it is about us and the relay, not the message, and an operator
  can fix it within ``max_age``;
* MAIL and RCPT replies: 4xx temporary, 5xx permanent, RCPT per recipient;
* the reply to DATA and after the final dot applies to every accepted recipient;
* losing the connection after the final dot but before its reply is temporary,
  so the message may arrive twice (RFC 1047); SMTP cannot do better;
* a hop's recipient limit (``452 4.5.3``, or RFC 821's ``552``, after it took a
  recipient, RFC 5321 §4.5.3.1.10) is no failure: the recipients it turned away go in a further
  transaction at once, on the same connection or a new one (`_over_limit`,
  `_MAX_RECONNECTS`).

Credentials are never sent in clear unless ``relay_tls`` is "none", which is an
explicit choice (a relay on localhost). AUTH runs through the one client SASL
driver (``smtpgate.client.auth``, shared with the tools): anything but its
success defers the message, including a 235 after SCRAM without the relay's
verified signature (RFC 5802 §5); the session then ends before MAIL.

XOAUTH2/OAUTHBEARER with tokens from a token endpoint (`TokenAuth`, the client
credentials grant of ``oauth_grant``) fetch the token only once TLS is up and the
relay offers the mechanism. A refusal of the token gets one more try on the same
session with a new token (the relay may have stopped taking one we still think
valid); no token at all (endpoint down, client refused) defers the message.

LMTP (RFC 2033, ``lmtp=True``) is the same session with three differences: LHLO
instead of EHLO, no STARTTLS or AUTH (a local delivery agent on a unix socket or
loopback), and after the final dot one reply per accepted recipient, in RCPT
order (§4.2), so one recipient can be refused while the others are delivered.

Every wait has a timeout (`RelayTimeouts`): a next hop that accepts the connection
and then stalls defers the message like any other temporary failure, and the
reply text and a WARNING record name the step that timed out and the host. A
cancelled delivery (the server shutting down) drops the connection at once; the
worker keeps the message queued; but once the hop has decided a recipient (it
took the message and the session waits for the reply to QUIT, say), the
cancellation ends in `RelayDeliverer._cut_short` and those outcomes are returned,
so a restart does not send the hop what it already took.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import unicodedata
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

from smtpgate.client.auth import ClientAuthResult
from smtpgate.client.engine import xtext
from smtpgate.client.errors import LocalProtocolError, ProtocolError
from smtpgate.client.extensions import Extensions
from smtpgate.client.replies import ServerReply
from smtpgate.plural import count
from smtpgate.queue.delivery import (
    Delivered,
    DeliveryResult,
    PermFailure,
    QueuedMessage,
    TempFailure,
)
from smtpgate.queue.oauth_grant import TokenUnavailable
from smtpgate.queue.smtp_io import SmtpClientConnection, TransportStream, TransportTls
from smtpgate.sasl.base import ChannelBinding, ClientMechanism
from smtpgate.sasl.registry import create_client_mechanism
from smtpgate.smtp import utf8_addr

log = logging.getLogger("smtpgate.queue.relay")

TlsMode = Literal["opportunistic", "require", "none"]
#: A graceful close that takes longer than this becomes an abort.
_CLOSE_TIMEOUT = 2.0
#: New connections one delivery may open for recipients a hop's recipient limit
#: (452 4.5.3) left over after it hung up; the rest wait for the next attempt.
#: Further transactions on a connection that stays up need no bound: each one
#: delivers at least one recipient.
_MAX_RECONNECTS = 10
#: A further transaction's MAIL met a closed connection (`_Reconnect`).
_HUNG_UP = "closed the connection at MAIL FROM"
#: How long to look for a reply a relay sent before it broke the connection (it is
#: already received, or it is not coming).
_EARLY_REPLY_WAIT = 1.0


@dataclass(frozen=True, slots=True)
class RelayTimeouts:
    """Seconds each step of a relay session may take (``[delivery] relay_*_timeout``).

    The defaults keep RFC 5321 §4.5.3.2's minimums: greeting 5 min (§4.5.3.2.1),
    MAIL and RCPT 5 min (§4.5.3.2.2/3), DATA 2 min and each data block 3 min
    (§4.5.3.2.4/5, both covered by ``command``), the final dot 10 min (§4.5.3.2.6).
    ``command`` also bounds EHLO, STARTTLS and its handshake, and each AUTH step.
    The RFC has no connect timeout; 30 s is ours, and QUIT gets 10 s because the
    outcome is known by then.
    """

    connect: float = 30.0
    greeting: float = 300.0
    command: float = 300.0
    data: float = 600.0
    quit: float = 10.0


class TokenSource(Protocol):
    """Access tokens from a token endpoint (``oauth_fetch.OAuthTokenSource``); both
    raise `TokenUnavailable`."""

    async def token(self) -> str: ...

    async def refresh(self, refused: str) -> str: ...


@dataclass(frozen=True, slots=True)
class TokenAuth:
    """AUTH ``mechanism`` (XOAUTH2 or OAUTHBEARER) as ``user`` with tokens from ``source``."""

    mechanism: str
    user: str
    source: TokenSource


class _Abort(Exception):
    """Ends a session; every recipient without a result gets ``result``. ``warn``:
    also one WARNING record, for what an operator must fix (relay AUTH)."""

    def __init__(self, result: TempFailure | PermFailure, *, warn: bool = False) -> None:
        super().__init__(result.reply)
        self.result = result
        self.warn = warn


class _Reconnect(Exception):
    """The hop took a transaction, then hung up (or said 421 to MAIL or a RCPT) at
    the next one: ``recipients``, left over by its recipient limit, go over a new
    connection. ``cause`` says which of those it was, for the log and, when the
    reconnects run out, the deferral reason (``how`` without the reply: "421 to
    MAIL FROM", to count alike causes; ``reply``: the 421, if it was one)."""

    def __init__(self, recipients: tuple[str, ...], how: str,
                 reply: ServerReply | None = None) -> None:
        super().__init__(len(recipients))
        self.recipients = recipients
        self.how = how
        self.reply = reply


@dataclass
class _Reconnects:
    """Why each connection of one delivery ended with recipients still to send:
    the deferral reason says what happened when ``_MAX_RECONNECTS`` runs out."""

    causes: list[_Reconnect] = field(default_factory=list)

    def reason(self, where: str) -> str:
        """``4.x.x WHERE: ...``: how many connections, each cause counted, the
        last reply. The code is the last 421's own (4.3.2 "shutting down"), else
        4.4.2 (the hop closed the connection)."""
        last = self.causes[-1]
        counted = Counter(c.how for c in self.causes)
        what = ", ".join(f"{how} {count(n, 'time')}" for how, n in counted.items())
        code = (last.reply.enhanced if last.reply is not None and last.reply.enhanced
                else "4.4.2")
        tail = f" (the last: {last.reply})" if last.reply is not None else ""
        return (f"{code} {where}: took part of the recipients on each of "
                f"{count(len(self.causes), 'connection')} in a row, turning the rest "
                f"away (recipient limit, 452), then ended it: {what}{tail}; the rest "
                "wait for the next attempt")


def _over_limit(reply: ServerReply) -> bool:
    """A RCPT reply that means "no more recipients in this transaction", not "not
    this recipient": 452 without an enhanced code or with 4.5.3 (RFC 5321
    §4.5.3.1.10; RFC 3463 X.5.3 "too many recipients"), or the 552 RFC 821 named
    for it, which the same section says to treat as temporary (552 with 5.5.3,
    or a bare 552; a 552 with another code, 5.2.2 mailbox full, is about the
    recipient). ``452 4.3.1`` (the hop's disk full, RFC 5321 §4.2.2 "insufficient
    system storage") and the other 4.x.x are about the hop, and wait for the retry
    like any 4xx. The caller asks only after the transaction took a recipient, so
    the next transaction is sure to make progress."""
    return reply.code in (452, 552) and reply.enhanced in (None, "4.5.3", "5.5.3")


def _rcpt_refused(reply: ServerReply, what: str, *, limit: bool) -> TempFailure | PermFailure:
    """A refused RCPT's result: by its code, except that a recipient limit is never
    permanent (RFC 5321 §4.5.3.1.10: a ``552 5.5.3`` is taken as temporary even
    to the transaction's first recipient, where it leaves nothing to try next)."""
    if limit or (reply.code == 552 and reply.enhanced == "5.5.3"):
        return TempFailure(f"{what}: {reply}")
    return _by_code(reply, what)


def _temp(text: str) -> _Abort:
    return _Abort(TempFailure(text))


def _by_code(reply: ServerReply, what: str) -> TempFailure | PermFailure:
    """4xx temporary, 5xx permanent; anything else unexpected is temporary."""
    text = f"{what}: {reply}"
    if reply.is_permanent:
        return PermFailure(text)
    return TempFailure(text)


#: `_Link.step` during the TLS handshake.
_HANDSHAKE = "the TLS handshake"


class _Link:
    """The connection plus the step in progress, so that a timeout can say which
    step it cut short (one per session: deliveries run concurrently)."""

    def __init__(self, conn: SmtpClientConnection[TransportTls]) -> None:
        self.conn = conn
        self.step = "the connection"
        self.limit = 0.0

    def _at(self, step: str, limit: float) -> None:
        self.step, self.limit = step, limit

    async def reply(self, step: str, limit: float) -> ServerReply:
        self._at(step, limit)
        return await self.conn.read_reply(limit)

    async def command(self, name: str, data: bytes, limit: float) -> ServerReply:
        self._at(f"the reply to {name}", limit)
        return await self.conn.command(data, limit)

    async def send(self, step: str, data: bytes, limit: float) -> None:
        self._at(step, limit)
        await self.conn.send(data, limit)

    async def start_tls(self, context: ssl.SSLContext, host: str, limit: float) -> None:
        self._at(_HANDSHAKE, limit)
        await self.conn.start_tls(TransportTls(context, host), limit)

    async def authenticate(self, mech: ClientMechanism, limit: float) -> ClientAuthResult:
        self._at("the reply to AUTH", limit)
        return await self.conn.authenticate(mech, limit)


class RelayDeliverer:
    """See the module docstring.

    ``tls_context`` is used for STARTTLS (None means never: mode "none").
    ``auth`` makes a fresh client mechanism per connection (e.g. ``PlainClient``).
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        helo_name: str,
        tls_mode: TlsMode = "opportunistic",
        tls_context: ssl.SSLContext | None = None,
        auth: Callable[[], ClientMechanism] | None = None,
        timeouts: RelayTimeouts = RelayTimeouts(),
        auth_for: Callable[[ChannelBinding], ClientMechanism] | None = None,
        pins: frozenset[str] = frozenset(),
        lmtp: bool = False,
        unix_path: str | None = None,
        token_auth: TokenAuth | None = None,
    ) -> None:
        if auth is not None and auth_for is None:
            auth_for = _ignore_binding(auth)
        if auth_for is not None and token_auth is not None:
            raise ValueError("one of auth_for and token_auth")
        if lmtp and (tls_mode != "none" or auth_for is not None or token_auth is not None):
            raise ValueError("LMTP delivery has no STARTTLS or AUTH")
        if tls_mode != "none" and tls_context is None:
            raise ValueError(f"tls_mode {tls_mode!r} needs a TLS context")
        self.host = host
        self.port = port
        self._helo = helo_name
        self._tls_mode = tls_mode
        self._tls_context = tls_context
        self._auth = auth_for
        self._token_auth = token_auth
        self._t = timeouts
        self._lmtp = lmtp
        self._unix_path = unix_path
        self._pins = pins

    @property
    def timeouts(self) -> RelayTimeouts:
        return self._t

    @property
    def where(self) -> str:
        """The next hop in log lines and deferral reasons."""
        kind = "lmtp" if self._lmtp else "relay"
        if self._unix_path is not None:
            return f"{kind} unix:{self._unix_path}"
        return f"{kind} {self.host}:{self.port}"

    async def deliver(
        self, message: QueuedMessage, recipients: tuple[str, ...]
    ) -> Mapping[str, DeliveryResult]:
        """One session; a cancelled delivery drops the connection at once (the
        worker keeps the message queued)."""
        results: dict[str, DeliveryResult] = {}
        ended = _Reconnects()
        try:
            pending = await self._connection(message, recipients, results, ended)
            for _ in range(_MAX_RECONNECTS):
                if not pending:
                    break
                cause = ended.causes[-1]
                log.info("queue: %s: %s %s%s with %s over its recipient limit (452) "
                         "still to send; a new connection for them", message.queue_id,
                         self.where, cause.how,
                         f" ({cause.reply})" if cause.reply is not None else "",
                         count(len(pending), "recipient"))
                pending = await self._connection(message, pending, results, ended)
        except asyncio.CancelledError:
            if not any(isinstance(r, Delivered | PermFailure) for r in results.values()):
                raise  # nothing decided: the message stays queued as it was
            return self._cut_short(message, recipients, results)
        if pending:  # _MAX_RECONNECTS spent: the next attempt takes them
            text = ended.reason(self.where)
            log.warning("queue: %s: %s", message.queue_id, text)
            for r in pending:
                results.setdefault(r, TempFailure(text))
        return results

    async def _connection(
        self, message: QueuedMessage, recipients: tuple[str, ...],
        results: dict[str, DeliveryResult], ended: _Reconnects,
    ) -> tuple[str, ...]:
        """One connection; returns the recipients a recipient limit (452) left over
        that this connection could not take in a further transaction (the hop hung
        up or said 421 after a transaction that delivered), for a new one."""
        where = self.where
        try:
            if self._unix_path is not None:
                conn = await SmtpClientConnection.open_unix(self._unix_path,
                                                            timeout=self._t.connect)
            else:
                conn = await SmtpClientConnection.open(self.host, self.port,
                                                       timeout=self._t.connect)
        except TimeoutError:
            why = f"no connection within {self._t.connect:g} s"
            self._session_failed(message, recipients, results, f"4.4.1 {where}: {why}")
            return ()
        except OSError as e:
            why = f"cannot connect: {e.strerror or e}"
            self._session_failed(message, recipients, results, f"4.4.1 {where}: {why}")
            return ()
        link = _Link(conn)
        try:
            await self._session(link, message, recipients, results)
        except _Reconnect as again:
            conn.abort()
            ended.causes.append(again)
            return again.recipients
        except asyncio.CancelledError:
            conn.abort()
            raise
        except _Abort as a:
            if a.warn:
                log.warning("queue: %s: %s", message.queue_id, a.result.reply)
            for r in recipients:
                results.setdefault(r, a.result)
        except TimeoutError:
            conn.abort()  # a peer that stalled would stall a graceful close too
            why = f"timed out after {link.limit:g} s waiting for {link.step}"
            self._session_failed(message, recipients, results, f"4.4.2 {where}: {why}")
            return ()
        except (OSError, ProtocolError, ssl.SSLError) as e:
            why = f"session failed during {link.step}: {str(e) or type(e).__name__}"
            # A handshake that fails (a certificate that does not verify, no common
            # cipher) is RFC 3463's X.7.5 "cryptographic failure", as Postfix says
            # 4.7.5 "Server certificate not verified": not the network's X.4.2.
            code = ("4.7.5" if isinstance(e, ssl.SSLError) and link.step == _HANDSHAKE
                    else "4.4.2")
            self._session_failed(message, recipients, results, f"{code} {where}: {why}")
        await conn.close(timeout=_CLOSE_TIMEOUT)
        return ()

    @staticmethod
    def _session_failed(
        message: QueuedMessage,
        recipients: tuple[str, ...],
        results: dict[str, DeliveryResult],
        text: str,
    ) -> dict[str, DeliveryResult]:
        """A broken session (no connection, a timeout, a dropped link) is about the
        relay, not the message: logged once, temporary for every open recipient."""
        log.warning("queue: %s: %s", message.queue_id, text)
        failure = TempFailure(text)
        for r in recipients:
            results.setdefault(r, failure)
        return results

    def _cut_short(
        self,
        message: QueuedMessage,
        recipients: tuple[str, ...],
        results: dict[str, DeliveryResult],
    ) -> dict[str, DeliveryResult]:
        """A cancelled delivery (the server stopping) after the hop decided some
        recipients: while waiting for the reply to QUIT, or in a further transaction
        after a recipient limit. Raising would drop what the hop said, and the
        recipients it took would get the message again after the restart; so the
        cancellation ends here (``uncancel``: the worker records the outcome, a
        moment's disk work) and the undecided recipients are retried."""
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
        text = f"4.4.2 {self.where}: delivery cut short by a stop"
        log.warning("queue: %s: %s; the outcome of %d recipient(s) the hop gave is kept",
                    message.queue_id, text, len(results))
        for r in recipients:
            results.setdefault(r, TempFailure(text))
        return results

    async def close(self) -> None:
        """Nothing to release: every delivery has its own connection."""

    async def _session(
        self,
        link: _Link,
        message: QueuedMessage,
        recipients: tuple[str, ...],
        results: dict[str, DeliveryResult],
    ) -> None:
        t = self._t
        greeting = await link.reply("the greeting", t.greeting)
        if greeting.code != 220:
            raise _temp(f"{self.where} greeting: {greeting}")
        if self._lmtp:
            ext = await self._lhlo(link)
        else:
            ext = await self._hello(link)
        if self._tls_mode != "none":
            ext = await self._starttls(link, ext)
        if self._pins and not link.conn.tls:
            # A pin means "this relay and no other": never fall back to clear.
            raise _temp(f"4.7.0 {self.where}: relay_tls_pins is set but the session is "
                        "not TLS")
        authenticated = False
        if self._token_auth is not None:
            await self._authenticate_with_tokens(link, ext, self._token_auth)
            authenticated = True
        elif self._auth is not None:
            try:
                mech = self._auth(_binding(link.conn))
            except (OSError, ValueError) as e:  # an unreadable token file, no binding data
                raise _Abort(TempFailure(f"4.7.0 {self.where}: AUTH not possible: {e}"),
                         warn=True) from None
            await self._authenticate(link, ext, mech)
            authenticated = True

        params = self._mail_params(message, ext, authenticated, self.where)
        batch, follow_up = recipients, False
        while batch:
            left = await self._transaction(link, message, batch, params, ext, results,
                                           follow_up=follow_up)
            if len(left) == len(batch):  # no progress: never loop on a hop
                break
            batch, follow_up = left, True
        await self._quit(link)

    async def _transaction(
        self,
        link: _Link,
        message: QueuedMessage,
        recipients: tuple[str, ...],
        params: list[str],
        ext: Extensions,
        results: dict[str, DeliveryResult],
        *,
        follow_up: bool,
    ) -> tuple[str, ...]:
        """One mail transaction (MAIL, RCPTs, DATA) for ``recipients``; returns those
        a recipient limit left over for a further transaction (see `_over_limit`).

        A follow-up transaction (``follow_up``) whose MAIL finds the hop gone, or
        whose MAIL or a RCPT is answered 421, raises `_Reconnect`: the hop took the
        transaction before, so the rest goes over a new connection.
        """
        engine = link.conn.engine
        t = self._t
        try:
            mail_cmd = engine.mail(_on_wire(message.envelope.mail_from, params), params)
        except LocalProtocolError as e:
            raise _Abort(PermFailure(f"5.1.7 cannot send this sender: {e}")) from None
        rcpt_cmds: list[tuple[str, bytes]] = []
        for rcpt in recipients:
            results.pop(rcpt, None)  # a 452 of the transaction before, tried again
            try:
                rcpt_cmds.append((rcpt, engine.rcpt(_on_wire(rcpt, params),
                                                    _rcpt_dsn(message, rcpt, ext))))
            except LocalProtocolError as e:
                results[rcpt] = PermFailure(f"5.1.3 cannot send this recipient: {e}")
        if ext.pipelining:
            # RFC 2920 §3.1: MAIL and the RCPTs may go as one group; DATA waits below.
            group = mail_cmd + b"".join(cmd for _, cmd in rcpt_cmds)
            try:
                await link.send("the relay to take MAIL FROM and RCPT TO", group, t.command)
                mail_reply = await link.reply("the reply to MAIL FROM", t.command)
            except (OSError, ProtocolError):
                if follow_up:
                    raise _Reconnect(recipients, _HUNG_UP) from None
                raise
        else:
            try:
                mail_reply = await link.command("MAIL FROM", mail_cmd, t.command)
            except (OSError, ProtocolError):
                if follow_up:
                    raise _Reconnect(recipients, _HUNG_UP) from None
                raise
        if follow_up and mail_reply.code == 421:
            raise _Reconnect(recipients, "421 to MAIL FROM", mail_reply)
        if not mail_reply.is_positive:
            # Decided already: the RCPT replies cannot change it, and a relay may
            # hang up without sending them (the session ends here anyway).
            raise _Abort(_by_code(mail_reply, f"{self.where} refused sender"))
        accepted: list[str] = []
        left: list[str] = []
        for rcpt, cmd in rcpt_cmds:
            if ext.pipelining:
                reply = await link.reply("the reply to RCPT TO", t.command)
            else:
                reply = await link.command("RCPT TO", cmd, t.command)
            if reply.is_positive:  # 250, or 251/252 (RFC 5321 §3.4)
                accepted.append(rcpt)
                continue
            if reply.code == 421:
                # RFC 5321 §3.8: the hop is closing the channel. No further RCPT
                # (nor, pipelined, a wait for replies that will not come) and no
                # DATA; refusals already given stand. In a follow-up transaction
                # the connection is gone as after a 421 to its MAIL: this
                # recipient, those after it and those it accepted go over a new
                # one at once (bounded by _MAX_RECONNECTS). Otherwise they are
                # deferred with its reply.
                if follow_up:
                    raise _Reconnect(tuple(r for r in recipients
                                           if r not in results or r in left),
                                     "421 to RCPT TO", reply)
                raise _Abort(_by_code(reply, f"{self.where} refused recipient"))
            # Kept at once: a relay that hangs up before the rest still refused
            # this one (a 5xx bounces, not retried with the others).
            limit = bool(accepted) and _over_limit(reply)
            results[rcpt] = _rcpt_refused(reply, f"{self.where} refused recipient",
                                          limit=limit)
            if limit:
                left.append(rcpt)
        if not accepted:
            return ()

        data_reply = await link.command("DATA", engine.data(), t.command)
        if data_reply.code != 354:
            raise _Abort(_by_code(data_reply, f"{self.where} refused DATA"))
        # RFC 5321 §4.5.3.2.5: each block of the message gets the command timeout
        # to be taken; §4.5.3.2.6: the reply to the final dot gets ``data``.
        try:
            await link.send("the relay to take the message", engine.message(message.data),
                            t.command)
        except (OSError, ProtocolError):
            # A relay may refuse in the middle of the data (552 message too big) and
            # hang up: its reply is already here, and it decides (a 5xx bounces).
            early = await _reply_if_any(link)
            if early is None or early.is_positive:
                raise
            raise _Abort(_by_code(early, f"{self.where} refused message")) from None
        if self._lmtp:
            # RFC 2033 §4.2: one reply per accepted recipient, in RCPT order.
            for rcpt in accepted:
                each = await link.reply("the reply to the final dot", t.data)
                results[rcpt] = (Delivered(f"{self.where}: {each}") if each.is_positive
                                 else _by_code(each, f"{self.where} refused message"))
            return tuple(left)
        final = await link.reply("the reply to the final dot", t.data)
        if not final.is_positive:
            raise _Abort(_by_code(final, f"{self.where} refused message"))
        # RFC 3461 §6.2.4: past a next hop without DSN, success is ours to report.
        action = "" if ext.has("DSN") else "relayed"
        for rcpt in accepted:
            results[rcpt] = Delivered(f"{self.where}: {final}", dsn_action=action)
        return tuple(left)

    async def _hello(self, link: _Link) -> Extensions:
        engine = link.conn.engine
        reply = await link.command("EHLO", engine.ehlo(self._helo), self._t.command)
        if reply.code == 250:
            return engine.extensions
        if reply.code == 421:
            # RFC 5321 §3.8: the relay is closing the channel, not refusing EHLO;
            # a HELO would meet a closed connection and the 421 be lost.
            raise _temp(f"{self.where} refused EHLO: {reply}")
        # RFC 5321 §3.2: a server that refuses EHLO may still accept HELO.
        reply = await link.command("HELO", engine.helo(self._helo), self._t.command)
        if reply.code != 250:
            raise _temp(f"{self.where} refused HELO: {reply}")
        return engine.extensions

    async def _lhlo(self, link: _Link) -> Extensions:
        engine = link.conn.engine
        reply = await link.command("LHLO", engine.lhlo(self._helo), self._t.command)
        if reply.code != 250:
            raise _temp(f"{self.where} refused LHLO: {reply}")
        return engine.extensions

    async def _starttls(self, link: _Link, ext: Extensions) -> Extensions:
        if not ext.starttls:
            if self._tls_mode == "require":
                # Ours to fix (the relay's or our TLS settings): one WARNING record.
                raise _Abort(TempFailure(f"4.7.0 {self.where} does not offer STARTTLS "
                                         "(relay_tls = require)"), warn=True)
            return ext
        reply = await link.command("STARTTLS", link.conn.engine.starttls(), self._t.command)
        if reply.code == 421:
            # RFC 5321 §3.8: the relay is closing the channel (shutting down, busy),
            # which is no refusal of TLS to go on from in clear: deferred with its
            # words, even with relay_tls = "opportunistic", and no WARNING.
            raise _temp(f"{self.where} refused STARTTLS: {reply}")
        if reply.code != 220:
            if self._tls_mode == "require":
                raise _Abort(TempFailure(f"4.7.0 {self.where} refused STARTTLS "
                                         f"(relay_tls = require): {reply}"), warn=True)
            log.warning("relay %s refused STARTTLS (%s); continuing in clear", self.host, reply)
            return ext
        assert self._tls_context is not None
        await link.start_tls(self._tls_context, self.host, self._t.command)
        if self._pins:
            self._check_pin(link.conn)
        # RFC 3207 §4.2: forget what the server said in clear; ask again.
        return await self._hello(link)

    def _check_pin(self, conn: SmtpClientConnection[TransportTls]) -> None:
        """``relay_tls_pins``: the relay's certificate must be one of these (SHA-256
        of the DER certificate), on top of (or, with relay_verify_cert = false,
        instead of) the CA check. A mismatch defers the message and names the
        fingerprint seen, for an operator who renewed the certificate."""
        stream = conn.stream
        seen = stream.peer_fingerprint() if isinstance(stream, TransportStream) else None
        if seen not in self._pins:
            raise _Abort(TempFailure(
                f"4.7.5 relay {self.host}:{self.port}: certificate sha256 {seen} is not "
                "one of relay_tls_pins"), warn=True)

    async def _authenticate(self, link: _Link, ext: Extensions, mech: ClientMechanism) -> None:
        """AUTH through the shared client SASL driver (`smtpgate.client.auth`), which
        decides what the replies mean; anything but success defers the message.

        Temporary even for 535: a wrong relay password is ours to fix, not a reason
        to bounce the user's mail. A 235 after SCRAM without the relay's verified
        signature (RFC 5802 §5) is no success: the relay has not proved who it is,
        so nothing is sent over that session.
        """
        self._may_authenticate(link, ext, mech.name)
        result = await link.authenticate(mech, self._t.command)
        if not result.ok:
            raise self._refused(result)

    def _may_authenticate(self, link: _Link, ext: Extensions, name: str) -> None:
        # Every mechanism, not only those sending the password: SCRAM over a clear
        # link still gives away the user name and an offline-guessable proof.
        # Both are ours to fix, like a refused AUTH: one WARNING record each.
        if not link.conn.tls and self._tls_mode != "none":
            raise _Abort(TempFailure(
                f"4.7.0 not sending {name} credentials to {self.where} without TLS"),
                warn=True)
        if name not in ext.auth_mechanisms:
            raise _Abort(TempFailure(f"4.7.0 {self.where} does not offer AUTH {name}"),
                         warn=True)

    def _refused(self, result: ClientAuthResult) -> _Abort:
        if result.client_ended:  # the relay misbehaved; we ended the exchange
            text = f"4.7.0 relay {self.host}:{self.port}: AUTH {result.mechanism} abandoned: "
        else:
            text = f"{self.where} refused AUTH {result.mechanism}: "
        return _Abort(TempFailure(text + result.detail), warn=True)

    async def _authenticate_with_tokens(self, link: _Link, ext: Extensions,
                                        auth: TokenAuth) -> None:
        """XOAUTH2/OAUTHBEARER with a token from the token endpoint, fetched only once
        the token may be sent (TLS, the mechanism offered).

        A refusal (535, after the mechanism's error JSON, RFC 7628 §3.2.2) may mean
        the relay no longer takes a token we still think valid (revoked, keys
        rotated): one new token, one more AUTH on the same session (RFC 4954 §4
        allows another AUTH after a failed one). A temporary reply (454) or a
        relay that misbehaved is not about the token: no second try.
        """
        self._may_authenticate(link, ext, auth.mechanism)
        token = await self._token(auth.source.token())
        result = await link.authenticate(self._token_mechanism(auth, token), self._t.command)
        if not result.ok and result.outcome == "refused" and not result.client_ended:
            log.info("relay %s:%s refused the access token (%s); trying a new one",
                     self.host, self.port, result.detail)
            token = await self._token(auth.source.refresh(token))
            result = await link.authenticate(self._token_mechanism(auth, token),
                                              self._t.command)
        if not result.ok:
            raise self._refused(result)

    async def _token(self, fetch: Awaitable[str]) -> str:
        """No token is ours to fix (endpoint, client registration): deferred, with
        one WARNING record naming the key and the URL."""
        try:
            return await fetch
        except TokenUnavailable as e:
            raise _Abort(TempFailure(f"4.7.0 {self.where}: AUTH not possible: {e}"),
                         warn=True) from None

    def _token_mechanism(self, auth: TokenAuth, token: str) -> ClientMechanism:
        try:
            return create_client_mechanism(auth.mechanism, username=auth.user, token=token)
        except ValueError as e:  # a user name XOAUTH2 cannot carry
            raise _Abort(TempFailure(f"4.7.0 {self.where}: AUTH not possible: {e}"),
                         warn=True) from None

    @staticmethod
    def _mail_params(message: QueuedMessage, ext: Extensions, authenticated: bool,
                     where: str) -> list[str]:
        """MAIL's parameters for this hop (``where``, named in a refusal: with routes
        the bounce says which hop cannot take the message)."""
        env = message.envelope
        params: list[str] = []
        size = len(message.data)
        if ext.size is not None:
            if ext.size and size > ext.size:
                # RFC 1870 §6.1: the relay has told us it will refuse this.
                raise _Abort(PermFailure(f"5.3.4 {where}: message size {size} exceeds its "
                                         f"limit {ext.size}"))
            params.append(f"SIZE={size}")
        if env.body_binary:
            # RFC 3030 §3: binary content goes only to a hop that offers BINARYMIME,
            # with BDAT; this client sends DATA, so no hop may take it. Such a
            # message was accepted while delivery.mode was 'maildir' (the only mode
            # that offers BINARYMIME) and is still queued after a change of mode.
            raise _Abort(PermFailure(
                "5.6.3 message is binary (BODY=BINARYMIME) and cannot be passed on by "
                "relay or LMTP"))
        if env.body_8bit and ext.eightbitmime:
            params.append("BODY=8BITMIME")
        elif env.body_8bit and not message.data.isascii():
            # RFC 6152 §3: no 8-bit data to a server without 8BITMIME; we do
            # not downgrade, so the message is undeliverable this way. Declared
            # 8BITMIME but all ASCII (Postfix declares it for every message whose
            # Content-Transfer-Encoding says 8bit), it has no 8-bit data: it goes
            # as it is, without the parameter.
            raise _Abort(PermFailure(f"5.6.3 {where} does not accept 8-bit data "
                                     "(8BITMIME)"))
        elif ext.eightbitmime and not message.data.isascii():
            # 8-bit data its client sent without BODY=8BITMIME: declared to a hop
            # that takes it (RFC 6152 §3), so the hop does not treat it as 7-bit. A
            # hop without 8BITMIME gets it as it came, as before: not bounced.
            params.append("BODY=8BITMIME")
        if env.smtputf8:
            if ext.smtputf8:
                params.append("SMTPUTF8")
            elif _needs_smtputf8(message):
                # RFC 6531 §3.2: without SMTPUTF8 at the next hop we cannot proceed.
                raise _Abort(PermFailure(f"5.6.7 {where} does not support SMTPUTF8"))
            # Else asked for but not needed (Go's net/smtp and Jakarta Mail ask on
            # every message): nothing in it is internationalized, so it goes as
            # plain ESMTP, as Postfix sends it; an internationalized domain in an
            # address goes as its A-labels (`_on_wire`).
        if ext.has("DSN"):
            # RFC 3461 §4: a next hop that speaks DSN gets the sender's choices.
            if env.dsn_ret is not None:
                params.append(f"RET={env.dsn_ret}")
            if env.dsn_envid is not None:
                params.append(f"ENVID={xtext(env.dsn_envid)}")
        if authenticated and ext.has("AUTH"):
            # RFC 4954 §5: tell a relay we authenticated to who submitted the
            # message, or "<>" if no one did.
            identity = env.auth_identity
            params.append(f"AUTH={xtext(identity)}" if identity else "AUTH=<>")
        return params

    async def _quit(self, link: _Link) -> None:
        """Polite QUIT; the outcome no longer depends on it."""
        try:
            await link.command("QUIT", link.conn.engine.quit(), self._t.quit)
        except (OSError, TimeoutError, ProtocolError):
            pass


async def _reply_if_any(link: _Link) -> ServerReply | None:
    """A reply the relay sent before the connection broke, if one came."""
    try:
        return await link.conn.read_reply(_EARLY_REPLY_WAIT)
    except (OSError, ProtocolError, TimeoutError, ssl.SSLError):
        return None


def _needs_smtputf8(message: QueuedMessage) -> bool:
    """Whether the message has what RFC 6531 §3.2 keeps from a hop without SMTPUTF8:
    a non-ASCII local part in an envelope address, or a non-ASCII octet in its
    header section (RFC 6532 header fields; the Received header smtpgate wrote for
    a UTF-8 account is one). An 8-bit body alone needs 8BITMIME, not SMTPUTF8,
    and an internationalized domain has an ASCII spelling, its A-labels (RFC 5890
    §2.3.2.1), which such a hop takes (`_on_wire`): bob@bücher.example, typed so
    in a client that then asks for SMTPUTF8, bounced 5.6.7 there until the h29i18n
    review."""
    env = message.envelope
    if not all(_local_part(a).isascii() for a in (env.mail_from, *env.rcpt_to)):
        return True
    data = message.data
    end = 0 if data.startswith(b"\r\n") else data.find(b"\r\n\r\n")
    return not data[: end if end >= 0 else len(data)].isascii()


def _local_part(address: str) -> str:
    return address.rpartition("@")[0]


def _on_wire(address: str, params: list[str]) -> str:
    """``address`` as MAIL or RCPT gives it: as it is in an SMTPUTF8 transaction;
    without SMTPUTF8 (a hop that does not offer it, `_needs_smtputf8` having found
    only ASCII local parts) each non-ASCII label of its domain as its A-label,
    made from the label in lower case and NFC, as DNS sees that domain (RFC 5891
    §5.3-5.4)."""
    local, at, domain = address.rpartition("@")
    if domain.isascii() or "SMTPUTF8" in params:
        return address
    labels = [
        label if label.isascii()
        else "xn--" + unicodedata.normalize("NFC", label.lower()).encode("punycode").decode("ascii")
        for label in domain.split(".")
    ]
    return f"{local}{at}{'.'.join(labels)}"


def _rcpt_dsn(message: QueuedMessage, rcpt: str, ext: Extensions) -> list[str]:
    """NOTIFY and ORCPT of ``rcpt`` for a next hop that advertises DSN (RFC 3461
    §4.1, §4.2; ORCPT's address re-encoded as xtext, or for the ``utf-8`` type in
    RFC 6533's 7-bit form, which every next hop can take)."""
    params = message.envelope.dsn_for(rcpt)
    if params is None or not ext.has("DSN"):
        return []
    out = []
    if params.notify is not None:
        out.append("NOTIFY=" + ",".join(params.notify))
    if params.orcpt is not None:
        addr_type, _, address = params.orcpt.partition(";")
        if utf8_addr.is_utf8_type(addr_type):
            out.append(f"ORCPT={addr_type};{utf8_addr.encode(address, unitext=False)}")
        else:
            out.append(f"ORCPT={addr_type};{xtext(address)}")
    return out


def _ignore_binding(auth: Callable[[], ClientMechanism]) -> Callable[[ChannelBinding],
                                                                    ClientMechanism]:
    return lambda _binding: auth()


def _binding(conn: SmtpClientConnection[TransportTls]) -> ChannelBinding:
    """What SCRAM-*-PLUS can bind to on this connection (RFC 5929): the relay's
    certificate (tls-server-end-point), and tls-unique below TLS 1.3. The standard
    ``ssl`` module offers no keying-material exporter, so no tls-exporter."""
    stream = conn.stream
    if not isinstance(stream, TransportStream):
        return ChannelBinding()
    return stream.channel_binding()


def tls_context(*, verify: bool, ca_file: str | None) -> ssl.SSLContext:
    """Client context for STARTTLS to the relay: TLS 1.2+ (RFC 8996), verification
    per ``relay_verify_cert``/``relay_ca_file`` (system CAs when no file)."""
    ctx = ssl.create_default_context(cafile=ca_file)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx

