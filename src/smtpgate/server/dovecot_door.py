"""The Dovecot auth protocol front door: moves bytes between an MTA's connection
(Postfix, Exim) and `frontdoor/dovecot.py`, and runs each request through the one
login path (`auth/login.py`) with the client address the MTA passes (``rip``).

It decides nothing: the engine frames every line and says when to close; the
login path applies the guard (its penalty is waited before the answer, as
Dovecot's auth penalty is), known addresses, app passwords, the mechanism policy
and conditional access, writes the auth log (front door "dovecot", the MTA's
session id when it sends one) and commits the guard's count before the answer.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import secrets
from collections.abc import Callable, Coroutine
from typing import Any, cast

from smtpgate import metrics
from smtpgate.auth.login import LoginAttempt, temporary_answer
from smtpgate.auth.oauth import error_reply_fields
from smtpgate.auth.service import AuthContext
from smtpgate.config import Config
from smtpgate.frontdoor.dovecot import (
    NEED_DATA,
    AuthRequest,
    CredentialsNeeded,
    Disconnect,
    DovecotServer,
    DovecotSettings,
    ExchangeEnded,
    RequestRefused,
)
from smtpgate.sasl._common import NO_CHANNEL_BINDING
from smtpgate.sasl.base import ServerMechanism
from smtpgate.sasl.exchange import AuthResult
from smtpgate.sasl.registry import create_server_mechanism, server_mechanism_names
from smtpgate.server.front_doors import UNFINISHED_TIMEOUT, FrontDoor, UnfinishedClock
from smtpgate.web.log_budget import LogBudget

log = logging.getLogger("smtpgate.frontdoor")

#: Connection ids for CUID, unique within this process.
_CUID = itertools.count(1)
#: Seconds a request may wait for the peer's next CONT (Dovecot's own limit): Postfix
#: never cancels a request its client gave up, so it is concluded then.
REQUEST_TIMEOUT = 150.0
#: Refused requests logged one by one per connection in each ``REFUSAL_WINDOW``
#: seconds; the others are counted and logged as one line. A refusal costs the
#: peer a 9-byte line (a ``CONT`` for an unknown id) and the log ten times that.
REFUSALS_LOGGED = 10
REFUSAL_WINDOW = 60.0


def protocol_factory(door: FrontDoor) -> Callable[[], asyncio.BaseProtocol]:
    return lambda: DovecotConnection(door)


def settings_for(door: FrontDoor) -> DovecotSettings:
    """The engine's settings from the door's current configuration. The MECH lines
    are sent once, at the handshake (Dovecot's protocol has no later list, and
    Postfix reads it once per connection); each request's mechanism is made under
    the configuration current then (`_mechanism`)."""
    return DovecotSettings(
        mechanisms=_offered(door.cfg),
        mechanism_factory=lambda name: _mechanism(door, name),
        spid=str(os.getpid()),
        cuid=str(next(_CUID)),
        cookie=secrets.token_hex(16),
    )


def _offered(cfg: Config) -> tuple[str, ...]:
    """The mechanisms ``cfg`` offers on the door, in the registry's order."""
    wanted = {m.upper() for m in cfg.auth.mechanisms} - cfg.accounts.withheld_mechanisms
    return tuple(m for m in server_mechanism_names() if m in wanted)


def _mechanism(door: FrontDoor, name: str) -> ServerMechanism:
    """The server mechanism for one request, under the configuration current now.
    A mechanism a reload took away is refused (KeyError: ``FAIL ... Unsupported
    authentication mechanism``) on connections opened before it too, which still
    list it: an MTA keeps its connection for hours, and an administrator who
    turns a mechanism off expects it off (one a reload adds is offered on new
    connections only)."""
    cfg = door.cfg
    if name not in _offered(cfg):
        raise KeyError(name)
    scope, openid = error_reply_fields(cfg.auth)
    return create_server_mechanism(
        name,
        channel_binding=NO_CHANNEL_BINDING,
        hostname=cfg.hostname,
        decoy_secret=door.secret,
        decoy_iterations=cfg.accounts.scram_iterations,
        oauth_scope=scope,
        openid_configuration=openid,
    )


class DovecotConnection(asyncio.Protocol):
    """One MTA connection: its requests run concurrently, each as one login attempt."""

    def __init__(self, door: FrontDoor) -> None:
        self.door = door
        self.engine = DovecotServer(settings_for(door))
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self._closed = False
        #: The login attempt of each request in progress, by request id.
        self._attempts: dict[int, LoginAttempt] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        #: A timer per request waiting on the peer, by (id, challenge number).
        self._timers: dict[tuple[int, int], asyncio.TimerHandle] = {}
        #: Refusals logged one by one, then counted (``_log_refusal``).
        self._refusal_log = LogBudget(REFUSALS_LOGGED, REFUSAL_WINDOW,
                                      self._report_unlogged_refusals)
        #: The deadline of a line begun and not finished (never of silence).
        self._unfinished = UnfinishedClock(self._line_too_slow)

    # ------------------------------------------------------------ asyncio

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "unix"
        self.transport.write(self.engine.handshake())

    def data_received(self, data: bytes) -> None:
        self.engine.receive_data(data)
        self._pump()

    def eof_received(self) -> bool | None:
        return None  # close: the MTA has nothing more to ask

    def pause_writing(self) -> None:
        """The peer does not read our answers: stop reading its lines until it does.
        Each line can cost an answer several times its size (a ``CONT`` for an
        unknown id, 9 bytes, is answered with a 60-byte ``FAIL``), so a peer that
        only writes would otherwise grow our write buffer without bound."""
        t = self.transport
        if t is not None and not self._closed and not t.is_closing():
            t.pause_reading()

    def resume_writing(self) -> None:
        t = self.transport
        if t is not None and not self._closed and not t.is_closing():
            t.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._unfinished.stop()
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        for ended in self.engine.connection_lost():
            self._conclude_unanswered(ended)
        self._refusal_log.flush()

    # ------------------------------------------------------------ events

    def _pump(self) -> None:
        engine = self.engine
        while not self._closed:
            ev = engine.next_event()
            if ev is NEED_DATA:
                break
            if isinstance(ev, CredentialsNeeded):
                self._run(self._resolve(ev), ev.request.id)
            elif isinstance(ev, ExchangeEnded):
                if ev.answered:
                    self._run(self._finish(ev), ev.request.id)
                else:
                    self._conclude_unanswered(ev)
            elif isinstance(ev, RequestRefused):
                if ev.client_attempt:
                    self._record_refusal(ev)
                else:
                    self._log_refusal(ev)
            elif isinstance(ev, Disconnect):
                self._flush()
                self._disconnect(ev)
                return
        self._flush()
        self._arm_timers()
        if not self._closed:
            self._unfinished.update(engine.line_unfinished)

    def _line_too_slow(self) -> None:
        if not self._closed:
            self._disconnect(Disconnect(f"a line begun {UNFINISHED_TIMEOUT:.0f} s ago is "
                                        "still unfinished", protocol_error=True))

    def _record_refusal(self, ev: RequestRefused) -> None:
        """A client's AUTH refused for what its session lacks (plaintext without TLS,
        no client address): an auth-log ``failure`` with the reason, as a refused
        SMTP login has (the administrator sees whose MTA sends passwords in clear, and
        fail2ban sees the address), and ``refused_policy`` in the metrics. The guard
        counts none: no credential was checked, so nothing was guessed, and what is
        refused is the MTA's configuration (its ``secured``, its ``rip``), which a
        count would turn into blocks of its legitimate clients' addresses."""
        ctx = self._context(ev.remote_ip, ev.remote_port, ev.secured, ev.session)
        self.door.runtime.login.auth.record(ctx, ev.mechanism, "", "failure", ev.reason)
        metrics.auth_attempt(ev.mechanism, "dovecot", "refused_policy", None)

    def _log_refusal(self, ev: RequestRefused) -> None:
        """The first ``REFUSALS_LOGGED`` refusals of each window one by one, the rest
        counted (``_report_unlogged_refusals``)."""
        if self._refusal_log.take():
            log.info("%s %s: request %d refused: %s (client %s)", self.door.listener.label,
                     self.peer, ev.id, ev.reason, ev.remote_ip or "unknown")

    def _report_unlogged_refusals(self, count: int) -> None:
        log.info("%s %s: %d more requests refused (more than %d in %.0f s are not "
                 "logged one by one)", self.door.listener.label, self.peer,
                 count, REFUSALS_LOGGED, REFUSAL_WINDOW)

    def _arm_timers(self) -> None:
        """One timer per request left waiting on the peer; a request that moved on
        loses its timer."""
        waiting = set(self.engine.waiting_on_client())
        for key in [k for k in self._timers if k not in waiting]:
            self._timers.pop(key).cancel()
        loop = asyncio.get_running_loop()
        for key in waiting - self._timers.keys():
            self._timers[key] = loop.call_later(REQUEST_TIMEOUT, self._expire, key)

    def _expire(self, key: tuple[int, int]) -> None:
        self._timers.pop(key, None)
        if not self._closed:
            self.engine.expire(*key)
            self._pump()

    def _flush(self) -> None:
        out = self.engine.data_to_send()
        if out and self.transport is not None and not self._closed:
            self.transport.write(out)

    def _disconnect(self, ev: Disconnect) -> None:
        if ev.protocol_error:
            log.warning("%s %s: closing: %s", self.door.listener.label, self.peer, ev.reason)
        else:
            log.info("%s %s: closing: %s", self.door.listener.label, self.peer, ev.reason)
        if self.transport is not None:
            self.transport.close()

    def _run(self, work: Coroutine[Any, Any, None], rid: int) -> None:
        """Run one request's I/O; a fault ends it as a temporary failure."""

        async def guarded() -> None:
            try:
                await work
            except Exception:
                log.exception("%s %s: request %d: unexpected error; answered as a "
                              "temporary failure", self.door.listener.label, self.peer, rid)
                self._attempts.pop(rid, None)
                if not self._closed:
                    self._disconnect(Disconnect("internal error", protocol_error=False))

        task = asyncio.get_running_loop().create_task(guarded())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _context(self, ip: str, port: int, secured: bool, session: str) -> AuthContext:
        """The login context of a request the MTA sent for its client at ``ip``:
        ``secured`` (the client's TLS) is all Dovecot's protocol says of it."""
        return AuthContext(
            listener=self.door.listener.label,
            client_ip=ip,
            client_port=port,
            tls_version="TLS" if secured else None,
            session_id=session or secrets.token_hex(6),
            front_door="dovecot",
        )

    def _attempt(self, request: AuthRequest) -> LoginAttempt:
        attempt = self._attempts.get(request.id)
        if attempt is None:
            ctx = self._context(request.remote_ip, request.remote_port, request.secured,
                                request.session)
            attempt = self.door.runtime.login.begin(ctx, alive=lambda: not self._closed)
            self._attempts[request.id] = attempt
        return attempt

    async def _resolve(self, ev: CredentialsNeeded) -> None:
        try:
            answer = await self._attempt(ev.request).resolve(ev.query)
        except Exception:
            log.exception("%s %s: request %d: credential look-up failed",
                          self.door.listener.label, self.peer, ev.request.id)
            answer = temporary_answer(ev.query, "internal error")
        if answer is None or self._closed:
            return  # the MTA is gone; connection_lost concluded the attempt
        self.engine.answer(ev.request.id, answer)
        self._pump()

    async def _finish(self, ev: ExchangeEnded) -> None:
        rid = ev.request.id
        attempt = self._attempt(ev.request)
        self._attempts.pop(rid, None)
        done = attempt.conclude(ev.outcome)
        if done.pending is not None:
            await done.pending  # the guard's commit and the failure floor, before the answer
        result = done.result
        if result.principal is not None:
            self.engine.finish(rid, AuthResult.SUCCESS, result.principal.account)
        else:
            failed = AuthResult.TEMPFAIL if result.result is AuthResult.TEMPFAIL else AuthResult.FAILURE
            self.engine.finish(rid, failed, ev.outcome.username)
        self._pump()

    def _conclude_unanswered(self, ev: ExchangeEnded) -> None:
        """Log an exchange nobody waits for; a failure already announced still counts."""
        attempt = self._attempt(ev.request)
        self._attempts.pop(ev.request.id, None)
        done = attempt.conclude(ev.outcome, answered=False)
        if done.pending is not None:
            self._background(done.pending)

    def _background(self, coro: Coroutine[Any, Any, None]) -> None:
        rt = self.door.runtime

        async def run() -> None:
            try:
                await coro
            except Exception:
                log.exception("%s %s: guard: could not count an abandoned request",
                              self.door.listener.label, self.peer)

        task = asyncio.get_running_loop().create_task(run())
        rt.background.add(task)
        task.add_done_callback(rt.background.discard)
