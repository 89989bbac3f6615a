"""The decisions of one SMTP session: each engine event, to the object that decides it.

`server/connection.py` moves bytes; this module says what the engine's decision
events mean and who answers them:

- AuthQuery, AuthFinished: the login path (`auth/login.py`): guard, penalty,
  credentials, auth log, the guard's commit and the failure floor. Here only what
  is SMTP's: the guard's refusal kind becomes its 454 wording, and the
  channel-binding fallback (docs/mechanisms.md), since only SMTP advertises -PLUS.
- MailFrom, RcptTo, the From header: the sending policy of the logged-in
  `Principal` (`policy/submission.py`).
- MessageStart, MessageData, MessageAborted: the message as it arrives, written
  to the spool by the intake (`queue/intake.py`); MessageReceived, answered once
  it is durable.

``handle(event)`` answers at once, or returns a `Pending`: the work and how its
result answers the engine. If either raises, ``answer_fault(event)`` answers it as
a temporary failure (451 4.3.0; 454 4.7.0 during AUTH), so that no fault leaves
the engine waiting.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, replace
from typing import Any, Generic, TypeVar

from smtpgate.auth.directory import StoreError
from smtpgate.auth.guard_state import ACCOUNT, ACCOUNT_NEW, THROTTLE
from smtpgate.auth.login import LoginAttempt, LoginResult, temporary_answer
from smtpgate.auth.principal import Principal
from smtpgate.auth.service import AuthContext
from smtpgate.policy.submission import Sending, needs_lookup
from smtpgate.queue.intake import Arrival, Message, Receiving
from smtpgate.sasl.base import CredentialAnswer
from smtpgate.sasl.exchange import AuthResult
from smtpgate.server.runtime import ServerRuntime
from smtpgate.smtp import replies as R
from smtpgate.smtp.engine import TRANSACTION_RESET, ServerEngine
from smtpgate.smtp.events import (
    AuthFinished,
    AuthQuery,
    AuthRefused,
    MailFrom,
    MessageAborted,
    MessageData,
    MessageReceived,
    MessageStart,
    RcptTo,
    Xclient,
)
from smtpgate.smtp.peer_address import host_port

log = logging.getLogger("smtpgate.session")
T = TypeVar("T")

#: The guard's refusal kinds and the reply each gets.
_REFUSAL_REPLIES = {
    ACCOUNT: R.AUTH_ACCOUNT_LOCKED,
    ACCOUNT_NEW: R.AUTH_ACCOUNT_LOCKED,
    THROTTLE: R.AUTH_THROTTLED,
}


@dataclass(frozen=True, slots=True)
class Pending(Generic[T]):
    """A decision that needs I/O: run ``work``, hand its result to ``answer``."""

    work: Coroutine[Any, Any, T]
    answer: Callable[[T], None]
    #: The decision event it answers (None: the engine is not waiting on it).
    event: object = None


@dataclass(frozen=True, slots=True)
class Peer:
    """The session's facts the decisions log and record."""

    session_id: str
    listener: str
    client_ip: str
    client_port: int


class Decisions:
    """Answers the decision events of one session's engine.

    ``engine`` is the connection's current engine (an implicit-TLS listener makes
    a new one when the handshake is done); ``alive`` is False once the client is gone.
    """

    __slots__ = ("_alive", "_login", "_sending", "engine", "peer", "plus_until", "principal", "receiving", "rt")

    def __init__(
        self, rt: ServerRuntime, peer: Peer, engine: ServerEngine, alive: Callable[[], bool]
    ) -> None:
        self.rt = rt
        self.peer = peer
        self.engine = engine
        self._alive = alive
        #: The AUTH attempt in progress (from its first credential query).
        self._login: LoginAttempt | None = None
        #: The channel-binding fallback: until when -PLUS is held back from this
        #: client's address (None: offered). See ``_binding_hint_update``.
        self.plus_until: float | None = None
        #: Who logged in, and the sending policy of their transactions.
        self.principal: Principal | None = None
        self._sending: Sending | None = None
        #: The message being received (MessageStart to its end).
        self.receiving: Receiving | None = None

    def handle(self, ev: object) -> Pending[Any] | None:
        """Answer ``ev`` now (None), or say what to run before answering it. The
        message's own events (start, data, abort) are carried out here too."""
        engine = self.engine
        if isinstance(ev, RcptTo):
            engine.respond(self._sending.rcpt() if self._sending is not None else None)
        elif isinstance(ev, MailFrom):
            rt, sending = self.rt, self._sending
            if sending is not None and sending.recheck_due(rt.session_recheck):
                return Pending(self._mail_from(ev, recheck=True), engine.respond, ev)
            if not needs_lookup(rt.policy, rt.rates):
                engine.respond(None)
            elif sending is not None and sending.answers_now(rt.rates, ev.sender):
                # The profile was read at the first MAIL and no limit needs a read.
                engine.respond(sending.mail_now(ev.sender, rt.policy, rt.rates))
            else:
                return Pending(self._mail_from(ev), engine.respond, ev)
        elif isinstance(ev, MessageData):
            receiving = self.receiving
            if receiving is not None:
                if ev.missing:  # the header section ended here without Date or Message-ID
                    receiving.add_missing(ev.missing)
                receiving.incoming.write(ev.data)
        elif isinstance(ev, MessageStart):
            self.message_start(ev)
        elif isinstance(ev, MessageAborted):
            if ev.reason != TRANSACTION_RESET:
                # A smuggling probe (bare CR or LF), an oversized message, a NUL in
                # the header: refused at the real end of the data, and logged here.
                p = self.peer
                who = self.principal.account if self.principal is not None else ""
                log.warning("%s %s user=%s message refused: %s", p.session_id,
                            p.client_ip, who, ev.reason)
            self.message_dropped()
        elif isinstance(ev, MessageReceived):
            return Pending(self._store(ev), engine.respond, ev)
        elif isinstance(ev, AuthQuery):
            return Pending(self._resolve(ev), self._auth_answer, ev)
        elif isinstance(ev, AuthFinished):
            return self._auth_finished(ev)
        elif isinstance(ev, AuthRefused):
            self.rt.login.refused(self._context(), ev.mechanism, ev.username, ev.reason)
        elif isinstance(ev, Xclient):
            return Pending(self._xclient(ev), self._xclient_answer, ev)
        else:
            raise TypeError(f"not a decision event: {type(ev).__name__}")
        return None

    def answer_fault(self, ev: object) -> None:
        """Answer ``ev``, whose decision raised, as a temporary failure. A pending
        AuthQuery gets a temporary answer: the exchange ends as ``tempfail``, which
        is logged and answered 454 4.7.0 like any backend fault."""
        engine = self.engine
        if isinstance(ev, AuthQuery):
            engine.auth_answer(temporary_answer(ev.query, "internal error"))
        elif isinstance(ev, AuthFinished):
            engine.respond(R.AUTH_TEMPFAIL)
        elif isinstance(ev, MessageReceived):
            engine.respond(R.QUEUE_FAILED)
        elif isinstance(ev, (MailFrom, RcptTo)):
            engine.respond(R.INTERNAL_ERROR)
        elif isinstance(ev, Xclient):
            engine.xclient_answer(None, R.INTERNAL_ERROR)

    def tls_started(self) -> None:
        """STARTTLS: the engine forgot the login (RFC 3207 §4.2); so do we."""
        self.principal, self._sending = None, None

    # ------------------------------------------------------------ AUTH

    def _context(self) -> AuthContext:
        p, tls = self.peer, self.engine.tls
        return AuthContext(
            listener=p.listener,
            client_ip=p.client_ip,
            client_port=p.client_port,
            tls_version=tls.version if tls else None,
            session_id=p.session_id,
            client_certificate=tls.client_certificate if tls else None,
        )

    def _attempt(self) -> LoginAttempt:
        if self._login is None:
            self._login = self.rt.login.begin(self._context(), alive=self._alive)
        return self._login

    async def _resolve(self, ev: AuthQuery) -> CredentialAnswer | None:
        return await self._attempt().resolve(ev.query)

    def _auth_answer(self, answer: CredentialAnswer | None) -> None:
        if answer is not None:  # None: the client is gone
            self.engine.auth_answer(answer)
            announced = self.engine.auth_announced_failure
            if announced is not None and self._login is not None:
                # The verdict went out in a 334 (SCRAM e=): counted now, not after
                # the client's answer, so that a client that never answers holds
                # up no other attempt (LoginAttempt.failure_announced).
                self._login.failure_announced(announced)

    def _auth_finished(self, ev: AuthFinished) -> Pending[R.Reply | None] | None:
        login, self._login = self._attempt(), None
        done = login.conclude(ev)
        # Written before the reply, so the client's next connection (which the
        # kernel may hand to another worker) already sees it.
        hint = self._binding_hint_update(ev)
        refusal = done.result.refusal
        reply = None if refusal is None else _REFUSAL_REPLIES.get(refusal.kind, R.AUTH_BLOCKED)
        if hint is None and done.pending is None:
            self._logged_in(done.result)
            self.engine.respond(reply)
            return None
        work = self._auth_reply_after(done.result, reply, hint, done.pending)
        return Pending(work, self.engine.respond, ev)

    async def _auth_reply_after(
        self,
        result: LoginResult,
        reply: R.Reply | None,
        hint: Coroutine[Any, Any, None] | None,
        pending: Coroutine[Any, Any, None] | None,
    ) -> R.Reply | None:
        try:
            if hint is not None:
                await hint
        finally:
            if pending is not None:
                await pending  # the guard's commit (and a failure's floor)
        self._logged_in(result)
        return reply

    def _logged_in(self, result: LoginResult) -> None:
        if result.principal is not None:
            p = self.peer
            self.principal = result.principal
            # The current directory's profile, also after a reload (auth/services.py).
            self._sending = Sending(result.principal, self.rt.login.services,
                                    session_id=p.session_id, client_ip=p.client_ip,
                                    profile=result.profile)

    def abandoned(self, ev: AuthFinished) -> None:
        """Log an attempt the client hung up on; a failure it had already been told
        still counts (``LoginAttempt.conclude``), in the background."""
        login, self._login = self._attempt(), None
        done = login.conclude(ev, answered=False)
        hint = self._binding_hint_update(ev)
        if hint is not None:
            self._background(hint, "could not store the channel-binding fallback")
        if done.pending is not None:
            self._background(done.pending, "guard: could not count an abandoned AUTH")

    def _background(self, coro: Coroutine[Any, Any, object], what: str) -> None:
        """Run ``coro`` after the connection is gone; nobody waits for it, so its
        errors are logged here."""

        async def run() -> None:
            try:
                await coro
            except Exception:
                log.exception("%s %s", self.peer.session_id, what)

        task = asyncio.get_running_loop().create_task(run())
        self.rt.background.add(task)
        task.add_done_callback(self.rt.background.discard)

    # --- the channel-binding fallback (docs/mechanisms.md) ---------------------

    def _binding_hint_update(self, ev: AuthFinished) -> Coroutine[Any, Any, None] | None:
        """Hold -PLUS back from an address whose client gave up on it before its
        first message (GNU SASL in mutt and neomutt), offer it again once a client
        there shows it can bind, and renew a held-back -PLUS on the logins it lets
        through."""
        guard = self.rt.guard
        engine = self.engine
        ip = self.peer.client_ip
        if guard is None or not engine.plus_usable:
            return None
        if ev.binding == "cannot-bind" and not engine.hide_plus:
            engine.hide_plus = True  # a retry in this session sees it too
            self.plus_until = None
            return guard.hold_back_plus(ip)
        if ev.binding == "can-bind" and engine.hide_plus:
            engine.hide_plus = False
            self.plus_until = None
            return guard.offer_plus_again(ip)
        renew = engine.hide_plus and guard.plus_fallback_due(self.plus_until)
        if ev.result is AuthResult.SUCCESS and renew:
            self.plus_until = None
            return guard.hold_back_plus(ip)
        return None

    def plus_fallback_look_up(self, mechanisms: tuple[str, ...]) -> Pending[None] | None:
        """As the TLS handshake starts (-PLUS needs TLS): is -PLUS held back from this
        address? The look-up runs during the handshake; the engine reads no command
        until it is done (a task is pending), so the EHLO after TLS knows."""
        if self.rt.guard is None or not any(m.endswith("-PLUS") for m in mechanisms):
            return None
        return Pending(self._look_up_plus_fallback(), lambda _: None)

    async def _look_up_plus_fallback(self) -> None:
        assert self.rt.guard is not None
        self.plus_until = await self.rt.guard.plus_held_back(self.peer.client_ip)
        self.engine.hide_plus = self.plus_until is not None

    # ------------------------------------------------------------ XCLIENT

    async def _xclient(self, ev: Xclient) -> str | None:
        """A trusted proxy's XCLIENT (the engine refused it from anyone else): its
        ADDR/PORT become the session's client for the guard, the auth log, the
        logs and Received; its LOGIN, the account the session is logged in as,
        as if by AUTH (sender ownership and rate limits apply to it). Returns the
        identity for the engine (None: LOGIN not given, so the session, new as
        on a new connection, is not logged in, whatever an earlier AUTH did)."""
        p = self.peer
        proxy = p.client_ip
        self.peer = replace(p, client_ip=ev.addr or p.client_ip,
                            client_port=ev.port if ev.port is not None else p.client_port)
        self.principal, self._sending = None, None
        identity: str | None
        if not ev.login:
            identity = None if ev.login is None else ""
        else:
            identity = await self.rt.auth.login_identity(ev.login)
            self._logged_in(LoginResult(AuthResult.SUCCESS, Principal(identity, "XCLIENT")))
        log.info("%s XCLIENT from %s: client %s name=%s login=%s", p.session_id, proxy,
                 host_port(self.peer.client_ip, self.peer.client_port), ev.name or "unknown",
                 identity if identity else "-")
        return identity

    def _xclient_answer(self, identity: str | None) -> None:
        self.engine.xclient_answer(identity)

    # ------------------------------------------------------------ sending

    async def _mail_from(self, ev: MailFrom, recheck: bool = False) -> R.Reply | None:
        if self._sending is None:  # the engine asks for AUTH first; never reached
            return R.INTERNAL_ERROR
        if recheck and (ended := await self._recheck(self._sending)) is not None:
            return ended
        rt = self.rt
        if not needs_lookup(rt.policy, rt.rates):
            return None
        space = self.rt.space
        if space is not None and (full := space.refused(ev.size)) is not None:
            return full
        return await self._sending.mail(ev.sender, self.rt.policy, self.rt.rates)

    async def _recheck(self, sending: Sending) -> R.Reply | None:
        """Read the session's account again (``[auth] session_recheck``): a login that
        would be refused now ends the session. A directory fault lets it go on, on
        what it held: it logged in, and the next recheck will tell."""
        who, p = sending.principal, self.peer
        if sending.token_expired():  # no read needed, nor a fault to let it go on
            log.warning("%s %s user=%s session ended: token expired", p.session_id,
                        p.client_ip, who.account)
            return R.LOGIN_REVOKED
        try:
            reason, profile = await self.rt.login.services.session_refusal(
                who, self._context(), sending.logged_in)
        except StoreError as e:
            log.warning("%s %s user=%s account could not be read again (session goes on): %s",
                        p.session_id, p.client_ip, who.account, e)
            sending.rechecked(None)
            return None
        if reason is None:
            sending.rechecked(profile)
            return None
        log.warning("%s %s user=%s session ended: %s", p.session_id, p.client_ip,
                    who.account, reason)
        return R.LOGIN_REVOKED

    def message_start(self, ev: MessageStart) -> Receiving:
        """DATA started: the spool file its content is written to as it arrives."""
        tls, p = self.engine.tls, self.peer
        arrival = Arrival(
            session_id=p.session_id,
            listener=p.listener,
            client_ip=p.client_ip,
            helo=ev.helo,
            esmtp=self.engine.esmtp,
            principal=self.principal,
            tls_version=tls.version if tls else None,
            tls_cipher=tls.cipher if tls else None,
        )
        message = Message(ev.sender, ev.recipients, b"", ev.smtputf8, ev.body_8bit, ev.dsn,
                          ev.body_binary)
        self.receiving = self.rt.intake.begin(
            message, arrival, hostname=self.rt.hostname, add_received=self.rt.add_received,
            received_login=self.rt.received_login)
        return self.receiving

    def message_dropped(self) -> None:
        """The message in progress is refused or its client gone: no file stays."""
        receiving, self.receiving = self.receiving, None
        if receiving is not None:
            receiving.incoming.discard()

    async def _store(self, ev: MessageReceived) -> R.Reply | None:
        receiving, self.receiving = self.receiving, None
        if receiving is None:  # the engine always starts a message first
            return R.QUEUE_FAILED
        try:
            if ev.missing:  # a message all header, without Date or Message-ID
                receiving.add_missing(ev.missing)
            sending = self._sending
            if sending is not None:
                # The From/Sender checks read the header section the engine kept.
                refused = await sending.look_up_header(ev.header)
                if refused is None:
                    refused = sending.message(ev.header, self.rt.policy)
                if refused is not None:
                    receiving.incoming.discard()
                    return refused
            held = None
            if sending is not None:
                reserved = await sending.reserve(self.rt.rates, len(ev.recipients))
                if isinstance(reserved, R.Reply):
                    receiving.incoming.discard()
                    return reserved
                held = reserved
            counting = (sending.count(self.rt.rates, len(ev.recipients), held)
                        if sending else None)
            reply = await self.rt.intake.finish(receiving, alongside=counting)
            if held is not None and reply.code != 250:
                await Sending.give_back(self.rt.rates, held)  # not stored: not sent
            return reply
        except BaseException:
            receiving.incoming.discard()  # a no-op once it was sealed
            raise
