"""One client connection: moves bytes between the socket, TLS and the SMTP engine.

It parses nothing and never decides a reply code on its own: the engine does
that, and the auth service, policy and spool answer the engine's decision
events. Replies produced by one batch of input are written in one go.

Policy hooks (issue 4; docs/protection.md, docs/policy.md):

- AuthQuery: the guard is asked first, before the auth service does any
  Argon2id or PBKDF2 work. A refusal answers the mechanism with a temporary
  failure, which ends as the guard's 454 4.7.0; a penalty is an
  ``asyncio.sleep`` in this session only, never a blocking wait.
- AuthFinished: the outcome goes to the guard (committed) before the reply.
- MailFrom: sender ownership and the per-identity message budget.
- RcptTo: the recipient budget of the transaction.
- MessageReceived: ownership of the From header; the message is counted
  before its 250 goes out.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, cast

from smtpgate.auth.guard import Guard, GuardCheck, Refusal
from smtpgate.auth.guard_store import ACCOUNT, ACCOUNT_NEW, THROTTLE
from smtpgate.auth.sender_profile import SenderProfile
from smtpgate.auth.service import AuthContext, AuthService
from smtpgate.auth.store import AppPassword, StoreError
from smtpgate.config import LimitsConfig, PolicyConfig
from smtpgate.policy.rates import Budget, RateLimiter
from smtpgate.policy.sender import header_from_addresses
from smtpgate.queue.envelope import Envelope
from smtpgate.queue.spool import Spool, SpoolError
from smtpgate.sasl.base import (
    ConfirmIdentity,
    CredentialAnswer,
    LookupCramMd5,
    LookupScram,
    NotFound,
    Verdict,
)
from smtpgate.server.limits import ConnectionLimiter
from smtpgate.smtp import replies as R
from smtpgate.smtp.engine import EngineSettings, ServerEngine, TlsInfo
from smtpgate.smtp.events import (
    NEED_DATA,
    PAUSED,
    AuthFinished,
    AuthQuery,
    CloseConnection,
    MailFrom,
    MessageReceived,
    RcptTo,
    StartTls,
)
from smtpgate.smtp.received import received_header
from smtpgate.tls.session import ServerTlsContext, TlsError, TlsServerSession

log = logging.getLogger("smtpgate.session")
policy_log = logging.getLogger("smtpgate.policy")

#: The guard's refusal kinds and the reply each gets.
_REFUSAL_REPLIES = {
    ACCOUNT: R.AUTH_ACCOUNT_LOCKED,
    ACCOUNT_NEW: R.AUTH_ACCOUNT_LOCKED,
    THROTTLE: R.AUTH_THROTTLED,
}

#: Stop reading from a client that keeps sending while we wait on a decision.
_PAUSE_READING_AT = 1 << 20


@dataclass(frozen=True, slots=True)
class _Concluded:
    """What is left to do for one logged AUTH attempt."""

    #: The guard refused the attempt before any credential was checked.
    blocked: Refusal | None = None
    #: The guard's view of the attempt, to count a failure or record a success.
    attempt: GuardCheck | None = None
    #: A failure counts toward the account's lockout (False: a policy refusal).
    counts_account: bool = True
    #: The app password that logged in, if one did.
    app: AppPassword | None = None


@dataclass(frozen=True, slots=True)
class ListenerRuntime:
    name: str
    implicit_tls: bool
    settings: EngineSettings


@dataclass
class ServerRuntime:
    """What every connection of one worker process shares."""

    hostname: str
    auth: AuthService
    spool: Spool
    tls: ServerTlsContext
    limits: LimitsConfig
    limiter: ConnectionLimiter
    on_stored: Callable[[], None]
    handshake_timeout: float = 30.0
    failure_floor: float = 0.25
    add_received: bool = True
    connections: set[SmtpConnection] = field(default_factory=set)
    guard: Guard | None = None
    rates: RateLimiter | None = None
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    #: Fire-and-forget tasks of closed connections (held so they are not collected).
    background: set[asyncio.Task[None]] = field(default_factory=set)


class SmtpConnection(asyncio.Protocol):
    def __init__(self, runtime: ServerRuntime, listener: ListenerRuntime):
        self.rt = runtime
        self.listener = listener
        self.engine = ServerEngine(listener.settings)
        self.transport: asyncio.Transport | None = None
        self.tls: TlsServerSession | None = None
        self.tls_ready = False
        self.client_ip = ""
        self.client_port = 0
        self.session_id = secrets.token_hex(6)
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._last_activity = 0.0
        self._closed = False
        self._counted = False
        self._reading_paused = False
        self._loop = asyncio.get_running_loop()
        # One AUTH attempt: the guard's check and what the auth service noted.
        self._attempt: GuardCheck | None = None
        self._refusal: str | None = None
        self._attempt_app: AppPassword | None = None
        #: The channel-binding fallback: until when -PLUS is held back from this
        #: client's address (None: offered). See ``_binding_hint_update``.
        self._plus_until: float | None = None
        # After login: the app password used, what the account may send as,
        # and the budget of the current transaction.
        self._app: AppPassword | None = None
        self._profile: SenderProfile | None = None
        self._budget: Budget | None = None
        self._rcpts = 0

    # ------------------------------------------------------- asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses; trust the duck.
        self.transport = tr = cast(asyncio.Transport, transport)
        peer = tr.get_extra_info("peername") or ("", 0)
        self.client_ip, self.client_port = str(peer[0]), int(peer[1])
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s connect from %s:%s on listener %s", self.session_id,
                      self.client_ip, self.client_port, self.listener.name)
            self.engine.on_command = self._debug_command
        refused = self.rt.limiter.acquire(self.client_ip)
        if refused is not None:
            reply = R.TOO_MANY_CONNECTIONS if refused == "total" else R.TOO_MANY_CONNECTIONS_FROM_IP
            log.warning("refused %s:%s: %s connection limit", self.client_ip, self.client_port, refused)
            tr.write(reply.format())
            tr.close()
            self._closed = True
            return
        self._counted = True
        self.rt.connections.add(self)
        self._last_activity = self._loop.time()
        if self.listener.implicit_tls:
            self.tls = TlsServerSession(self.rt.tls)
            self._arm_timer(self.rt.handshake_timeout)
            self._start_plus_fallback_look_up()
        else:
            self.engine.greeting()
            self._flush()
            self._arm_timer(self.rt.limits.command_timeout)

    def data_received(self, data: bytes) -> None:
        if self._closed:
            return
        self._last_activity = self._loop.time()
        if self.tls is not None:
            try:
                data, out = self.tls.receive(data)
            except TlsError as e:
                log.info("%s %s:%s %s", self.session_id, self.client_ip, self.client_port, e)
                self._abort()
                return
            except EOFError:
                self._abort()
                return
            if out and self.transport is not None:
                self.transport.write(out)
            if not self.tls_ready:
                if not self.tls.handshake_done:
                    return
                self._tls_up()
            if not data:
                return
        self.engine.receive_data(data)
        if self._task is None:
            self._pump()
        elif self.engine.buffered > _PAUSE_READING_AT and self.transport is not None:
            self.transport.pause_reading()
            self._reading_paused = True

    def eof_received(self) -> bool | None:
        return None  # let the transport close

    def connection_lost(self, exc: Exception | None) -> None:
        log.debug("%s disconnect %s:%s%s", self.session_id, self.client_ip, self.client_port,
                  f" ({exc})" if exc else "")
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        # A client may read a SCRAM e=invalid-proof (or the OAUTHBEARER error) and
        # hang up before the 535: the attempt must still be logged (issue 3).
        abandoned = self.engine.abandon_auth("connection closed during AUTH")
        if abandoned is not None:
            self._auth_abandoned(abandoned)
        if self._counted:
            self._counted = False
            self.rt.limiter.release(self.client_ip)
            self.rt.connections.discard(self)
        # An in-flight spool write is left to finish (its result is simply not
        # sent); an in-flight auth lookup is harmless to finish too.

    # ------------------------------------------------------------ the loop

    def _pump(self) -> None:
        """Drain the engine's events; hand decisions that need I/O to a task."""
        engine = self.engine
        while not self._closed:
            ev = engine.next_event()
            if ev is NEED_DATA or ev is PAUSED:
                break
            kind = type(ev)
            if kind is RcptTo:
                engine.respond(self._rcpt_reply())
            elif kind is MailFrom:
                assert isinstance(ev, MailFrom)
                if self._mail_needs_io():
                    self._spawn(self._mail_from(ev))
                    break
                engine.respond(None)
            elif kind is MessageReceived:
                assert isinstance(ev, MessageReceived)
                self._spawn(self._store(ev))
                break
            elif kind is AuthQuery:
                assert isinstance(ev, AuthQuery)
                self._spawn(self._auth_query(ev))
                break
            elif kind is AuthFinished:
                assert isinstance(ev, AuthFinished)
                later = self._auth_finished_now(ev)
                if later is None:
                    continue
                self._spawn(later)
                break
            elif kind is StartTls:
                self._start_tls()
                return
            elif kind is CloseConnection:
                self._flush()
                self._close()
                return
        self._flush()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        self._flush()
        self._task = self._loop.create_task(coro)

    def _resume(self) -> None:
        self._task = None
        if self._reading_paused and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()
        self._pump()

    def _flush(self) -> None:
        out = self.engine.data_to_send()
        if not out or self.transport is None or self._closed:
            return
        if self.tls is not None:
            out = self.tls.send(out)
        self.transport.write(out)

    # ------------------------------------------------------------ decisions

    def _auth_context(self) -> AuthContext:
        return AuthContext(
            listener=self.listener.name,
            client_ip=self.client_ip,
            client_port=self.client_port,
            tls_version=self.engine.tls.version if self.engine.tls else None,
            session_id=self.session_id,
        )

    async def _auth_query(self, ev: AuthQuery) -> None:
        query = ev.query
        guard = self.rt.guard
        if guard is not None and not isinstance(query, ConfirmIdentity):
            # The first look-up of an attempt (SCRAM's ConfirmIdentity is its
            # second): the guard decides before any hashing happens.
            self._refusal, self._attempt_app = None, None
            check = await guard.check(self.client_ip, getattr(query, "username", ""))
            if self._closed:
                return
            self._attempt = check
            if check.delay > 0:
                await asyncio.sleep(check.delay)  # the penalty: this session only
                if self._closed:
                    return
            if check.refusal is not None:
                answer: CredentialAnswer
                if isinstance(query, (LookupScram, LookupCramMd5)):
                    answer = NotFound(reason=check.refusal.reason, temporary=True)
                else:
                    answer = Verdict(ok=False, reason=check.refusal.reason, temporary=True)
                self.engine.auth_answer(answer)
                self._resume()
                return
        res = await self.rt.auth.resolve_detailed(query, self._auth_context())
        if self._closed:
            return
        self._refusal = res.refusal or self._refusal
        self._attempt_app = res.app_password or self._attempt_app
        self.engine.auth_answer(res.answer)
        self._resume()

    def _conclude_attempt(self, ev: AuthFinished) -> _Concluded:
        """Write the attempt's one auth-log record and say what the guard must do
        with it. Shared by the answered path and the hung-up one, so an attempt is
        logged and counted the same whichever way the client left: a failure the
        server had decided (SCRAM ``e=``, the OAuth error JSON) is a failure with
        its reason, whether the client then sent ``*``, anything else, or nothing."""
        attempt, self._attempt = self._attempt, None
        refusal, self._refusal = self._refusal, None
        app, self._attempt_app = self._attempt_app, None
        ctx = self._auth_context()
        if ev.result == "tempfail" and attempt is not None and attempt.refusal is not None:
            # Refused by the guard: logged as such (fail2ban and the report count
            # it as blocked), not counted again, answered with the guard's reply.
            self.rt.auth.record(ctx, ev.mechanism, ev.username, "tempfail",
                                f"blocked: {attempt.refusal.reason}")
            return _Concluded(blocked=attempt.refusal)
        reason = ev.reason
        if ev.result == "success" and not reason and app is not None:
            reason = f"app password {app.name!r}"
        self.rt.auth.record(ctx, ev.mechanism, ev.username, ev.result, reason)
        guard = self.rt.guard
        if ev.result == "failure" and guard is not None and attempt is None:
            attempt = guard.bare_check(self.client_ip)  # failed before naming an account
        # A refusal that did not depend on the secret never counts toward the
        # account's lockout (docs/protection.md, "What counts as a failure").
        return _Concluded(attempt=attempt, counts_account=refusal is None, app=app)

    def _auth_finished_now(self, ev: AuthFinished) -> Coroutine[Any, Any, None] | None:
        """Log the attempt; answer at once, or return the coroutine that will."""
        done = self._conclude_attempt(ev)
        # Written before the reply, so the client's next connection (which the
        # kernel may hand to another worker) already sees it.
        hint = self._binding_hint_update(ev)
        if done.blocked is not None:
            reply = _REFUSAL_REPLIES.get(done.blocked.kind, R.AUTH_BLOCKED)
            if hint is not None:
                return self._answer_after(hint, reply)
            self.engine.respond(reply)
            return None
        guard = self.rt.guard
        if ev.result == "success":
            self._app, self._profile = done.app, None
            attempt = done.attempt
            if guard is not None and attempt is not None and guard.success_needs_write(
                attempt, ev.identity
            ):
                return self._auth_succeeded(guard, attempt, ev.identity, hint)
        elif ev.result == "failure":
            return self._auth_failed(done.attempt, counts_account=done.counts_account, hint=hint)
        if hint is not None:
            return self._answer_after(hint, None)
        self.engine.respond(None)
        return None

    def _binding_hint_update(self, ev: AuthFinished) -> Coroutine[Any, Any, None] | None:
        """The channel-binding fallback (docs/mechanisms.md): hold -PLUS back from
        an address whose client gave up on it before its first message (GNU SASL in
        mutt and neomutt), offer it again once a client there shows it can bind,
        and renew a held-back -PLUS on the logins it lets through."""
        guard = self.rt.guard
        engine = self.engine
        if guard is None or not engine.plus_usable:
            return None
        if ev.binding == "cannot-bind" and not engine.hide_plus:
            engine.hide_plus = True  # a retry in this session sees it too
            self._plus_until = None
            return guard.hold_back_plus(self.client_ip)
        if ev.binding == "can-bind" and engine.hide_plus:
            engine.hide_plus = False
            self._plus_until = None
            return guard.offer_plus_again(self.client_ip)
        renew = engine.hide_plus and guard.plus_fallback_due(self._plus_until)
        if ev.result == "success" and renew:
            self._plus_until = None
            return guard.hold_back_plus(self.client_ip)
        return None

    def _start_plus_fallback_look_up(self) -> None:
        """As the TLS handshake starts (-PLUS needs TLS): is -PLUS held back from this
        address? The look-up runs during the handshake; the engine reads no command
        until it is done (a task is pending), so the EHLO after TLS knows."""
        guard = self.rt.guard
        plus = any(m.endswith("-PLUS") for m in self.listener.settings.mechanisms)
        if guard is not None and plus:
            self._task = self._loop.create_task(self._look_up_plus_fallback(guard))

    async def _look_up_plus_fallback(self, guard: Guard) -> None:
        self._plus_until = await guard.plus_held_back(self.client_ip)
        self.engine.hide_plus = self._plus_until is not None
        if self._closed:
            return
        self._resume()

    def _auth_abandoned(self, ev: AuthFinished) -> None:
        """Log an attempt the client hung up on; a failure it had already been told
        (SCRAM ``e=invalid-proof``) still counts with the guard, or a guesser could
        read the verdict, hang up before the 535 and never be counted."""
        done = self._conclude_attempt(ev)
        hint = self._binding_hint_update(ev)
        if hint is not None:
            self._background(hint, "could not store the channel-binding fallback")
        guard = self.rt.guard
        if ev.result != "failure" or guard is None or done.attempt is None:
            return
        self._background(
            guard.failure(done.attempt, counts_account=done.counts_account),
            "guard: could not count an abandoned AUTH",
        )

    def _background(self, coro: Coroutine[Any, Any, object], what: str) -> None:
        """Run ``coro`` after the connection is gone; nobody waits for it, so its
        errors are logged here."""

        async def run() -> None:
            try:
                await coro
            except Exception:
                log.exception("%s %s", self.session_id, what)

        task = self._loop.create_task(run())
        self.rt.background.add(task)
        task.add_done_callback(self.rt.background.discard)

    async def _answer_after(self, work: Coroutine[Any, Any, object], reply: R.Reply | None) -> None:
        await work
        if self._closed:
            return
        self.engine.respond(reply)
        self._resume()

    async def _auth_succeeded(
        self,
        guard: Guard,
        attempt: GuardCheck,
        identity: str,
        hint: Coroutine[Any, Any, None] | None,
    ) -> None:
        if hint is not None:
            await hint
        await guard.success(attempt, identity)  # committed before the 235
        if self._closed:
            return
        self.engine.respond(None)
        self._resume()

    async def _auth_failed(
        self,
        attempt: GuardCheck | None,
        *,
        counts_account: bool,
        hint: Coroutine[Any, Any, None] | None = None,
    ) -> None:
        if hint is not None:
            await hint
        if self.rt.guard is not None and attempt is not None:
            # Committed before the 535, so the next attempt anywhere sees it.
            await self.rt.guard.failure(attempt, counts_account=counts_account)
        # A floor with jitter: a failure never answers faster than this, so an
        # unknown account and a wrong password look alike (chasquid does this).
        floor = self.rt.failure_floor
        if floor > 0:
            await asyncio.sleep(floor * (1 + random.random() * 0.5))
        if self._closed:
            return
        self.engine.respond(None)
        self._resume()

    # --- sending policy ---------------------------------------------------------

    def _mail_needs_io(self) -> bool:
        p = self.rt.policy
        return (
            p.sender_ownership != "off" or p.from_header != "off" or self.rt.rates is not None
        )

    async def _mail_from(self, ev: MailFrom) -> None:
        reply = await self._mail_decision(ev)
        if self._closed:
            return
        self.engine.respond(reply)
        self._resume()

    async def _mail_decision(self, ev: MailFrom) -> R.Reply | None:
        identity = self.engine.identity
        self._budget, self._rcpts = None, 0
        if self._profile is None or self._profile.name != identity:
            try:
                self._profile = await self.rt.auth.sender_profile(identity)
            except StoreError as e:
                log.error("%s sending policy unavailable: %s", self.session_id, e)
                return R.INTERNAL_ERROR
        profile = self._profile
        mode = self.rt.policy.sender_ownership
        if mode != "off":
            if ev.sender:
                owned = profile.owns(ev.sender)
            else:
                owned = self.rt.policy.allow_null_sender
            if not owned:
                policy_log.warning(
                    "%s %s: user=%s MAIL FROM:<%s> not owned by the account%s",
                    self.session_id, self.client_ip, identity, ev.sender,
                    "" if mode == "enforce" else " (logged only)",
                )
                if mode == "enforce":
                    return R.SENDER_NOT_OWNED
        if self.rt.rates is not None:
            budget = await self.rt.rates.budget(profile, self._app)
            if budget.messages_left is not None and budget.messages_left <= 0:
                policy_log.warning(
                    "%s %s: user=%s message rate limit: %s",
                    self.session_id, self.client_ip, identity, budget.detail,
                )
                return R.MESSAGE_RATE_EXCEEDED
            self._budget = budget
        return None

    def _rcpt_reply(self) -> R.Reply | None:
        budget = self._budget
        left = None if budget is None else budget.recipients_left
        if left is not None and self._rcpts >= left:
            policy_log.warning(
                "%s %s: user=%s recipient rate limit reached (%d left this hour)",
                self.session_id, self.client_ip, self.engine.identity, max(left, 0),
            )
            return R.RECIPIENT_RATE_EXCEEDED
        self._rcpts += 1
        return None

    def _from_header_reply(self, ev: MessageReceived) -> R.Reply | None:
        mode = self.rt.policy.from_header
        profile = self._profile
        if mode == "off" or profile is None:
            return None
        addresses = header_from_addresses(ev.data)
        bad = [a for a in addresses or () if not profile.owns(a)]
        if not bad:
            return None
        policy_log.warning(
            "%s %s: user=%s From: %s not owned by the account%s",
            self.session_id, self.client_ip, ev.identity, ", ".join(bad),
            "" if mode == "enforce" else " (logged only)",
        )
        return R.FROM_NOT_OWNED if mode == "enforce" else None

    async def _store(self, ev: MessageReceived) -> None:
        refused = self._from_header_reply(ev)
        if refused is not None:
            self.engine.respond(refused)
            self._resume()
            return
        now = time.time()
        tls = self.engine.tls
        data = ev.data
        if self.rt.add_received:
            data = (
                received_header(
                    helo=ev.helo,
                    client_ip=self.client_ip,
                    hostname=self.rt.hostname,
                    esmtp=self.engine.esmtp,
                    tls_version=tls.version if tls else None,
                    cipher=tls.cipher if tls else None,
                    identity=ev.identity,
                    queue_hint=self.session_id,
                    timestamp=now,
                    smtputf8=ev.smtputf8,
                )
                + data
            )
        envelope = Envelope(
            mail_from=ev.sender,
            rcpt_to=ev.recipients,
            auth_identity=ev.identity or None,
            client_ip=self.client_ip,
            helo=ev.helo,
            listener=self.listener.name,
            smtputf8=ev.smtputf8,
            body_8bit=ev.body_8bit,
            received_at=now,
        )
        # The sending-rate count is written while the spool commits, and both are
        # done before the 250, so a counter survives a crash as the message does. If
        # the spool then fails, the account is charged for a message it may resend:
        # the conservative side.
        budget = self._budget
        counting = (
            self._loop.create_task(self.rt.rates.count(budget.keys, 1, len(ev.recipients)))
            if self.rt.rates is not None and budget is not None
            else None
        )
        try:
            qid = await self.rt.spool.store(envelope, data)
        except SpoolError as e:
            log.error("%s spool write failed: %s", self.session_id, e)
            reply = R.QUEUE_FAILED
        except Exception:
            log.exception("%s unexpected error while spooling", self.session_id)
            reply = R.QUEUE_FAILED
        else:
            reply = R.MESSAGE_ACCEPTED.with_text(f"OK queued as {qid}")
            log.info(
                "%s queued %s from=<%s> rcpts=%d size=%d user=%s",
                self.session_id, qid, ev.sender, len(ev.recipients), len(data), ev.identity,
            )
            self.rt.on_stored()
        if counting is not None:
            await counting  # count() logs and swallows its own database faults
        if self._closed:
            return
        self.engine.respond(reply)
        self._resume()

    # ------------------------------------------------------------------ TLS

    def _start_tls(self) -> None:
        # The 220 goes out in clear; from here on every byte is TLS. The engine
        # already dropped whatever was pipelined behind STARTTLS.
        self._flush()
        self.tls = TlsServerSession(self.rt.tls)
        self._arm_timer(self.rt.handshake_timeout)
        self._start_plus_fallback_look_up()

    def _tls_up(self) -> None:
        assert self.tls is not None
        self.tls_ready = True
        info = TlsInfo(self.tls.version, self.tls.cipher, self.tls.channel_binding())
        if self.listener.implicit_tls:
            self.engine = ServerEngine(self.listener.settings, tls=info)
            self.engine.hide_plus = self._plus_until is not None
            self.engine.greeting()
        else:
            self.engine.tls_established(info)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s TLS established: %s %s", self.session_id, info.version, info.cipher)
            self.engine.on_command = self._debug_command
        self._flush()
        self._arm_timer(self.rt.limits.command_timeout)

    def _debug_command(self, verb: str) -> None:
        log.debug("%s command %s", self.session_id, verb)  # the verb only: never AUTH data

    # ------------------------------------------------------- timers, closing

    def _arm_timer(self, delay: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_later(delay, self._check_idle)

    def _check_idle(self) -> None:
        if self._closed:
            return
        if self.tls is not None and not self.tls_ready:
            limit = self.rt.handshake_timeout
        elif self.engine.in_data:
            limit = self.rt.limits.data_timeout
        else:
            limit = self.rt.limits.command_timeout
        idle = self._loop.time() - self._last_activity
        if self._task is not None or idle < limit:
            self._timer = self._loop.call_later(max(limit - idle, 1.0), self._check_idle)
            return
        log.info("%s %s:%s idle timeout", self.session_id, self.client_ip, self.client_port)
        if self.tls is not None and not self.tls_ready:
            self._abort()
            return
        self.engine.timeout()
        self._flush()
        self._close()

    def shutdown(self, *, force: bool = False) -> None:
        """Server stopping: 421 now if idle (or forced), else after the current message."""
        if self._closed:
            return
        if self.tls is not None and not self.tls_ready:
            self._abort()
            return
        if self._task is not None:
            # A spool write or auth lookup is finishing: the engine hangs up
            # with 421 right after answering it.
            self.engine.shutdown(force=False)
            return
        self.engine.shutdown(force=force)
        if self.engine.closed:
            self._flush()
            self._close()

    def _close(self) -> None:
        if self._closed or self.transport is None:
            return
        if self.tls is not None and self.tls_ready:
            try:
                self.transport.write(self.tls.close())
            except Exception as e:  # noqa: BLE001 - close_notify is best effort
                log.debug("%s close_notify not sent: %s", self.session_id, e)
        self._closed = True
        self.transport.close()

    def _abort(self) -> None:
        self._closed = True
        if self.transport is not None:
            self.transport.close()
