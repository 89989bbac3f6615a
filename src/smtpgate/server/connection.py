"""One client connection: moves bytes between the socket, TLS and the SMTP engine.

It parses nothing and never decides a reply code on its own: the engine does
that, and the auth service, policy and spool answer the engine's decision
events. Replies produced by one batch of input are written in one go.
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

from smtpgate.auth.service import AuthContext, AuthService
from smtpgate.config import LimitsConfig
from smtpgate.queue.envelope import Envelope
from smtpgate.queue.spool import Spool, SpoolError
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

#: Stop reading from a client that keeps sending while we wait on a decision.
_PAUSE_READING_AT = 1 << 20


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

    # ------------------------------------------------------- asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses; trust the duck.
        self.transport = tr = cast(asyncio.Transport, transport)
        peer = tr.get_extra_info("peername") or ("", 0)
        self.client_ip, self.client_port = str(peer[0]), int(peer[1])
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
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
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
            if kind is MailFrom or kind is RcptTo:
                engine.respond(None)  # policy hooks land here (sender ownership)
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
                if self._auth_finished_now(ev):
                    continue
                self._spawn(self._auth_failed(ev))
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
        answer = await self.rt.auth.resolve(ev.query, self._auth_context())
        if self._closed:
            return
        self.engine.auth_answer(answer)
        self._resume()

    def _auth_finished_now(self, ev: AuthFinished) -> bool:
        """Log the attempt; answer successes and cancellations at once."""
        self.rt.auth.record(self._auth_context(), ev.mechanism, ev.username, ev.result, ev.reason)
        if ev.result in ("failure",):
            return False
        self.engine.respond(None)
        return True

    async def _auth_failed(self, ev: AuthFinished) -> None:
        # A floor with jitter: a failure never answers faster than this, so an
        # unknown account and a wrong password look alike (chasquid does this).
        floor = self.rt.failure_floor
        if floor > 0:
            await asyncio.sleep(floor * (1 + random.random() * 0.5))
        if self._closed:
            return
        self.engine.respond(None)
        self._resume()

    async def _store(self, ev: MessageReceived) -> None:
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

    def _tls_up(self) -> None:
        assert self.tls is not None
        self.tls_ready = True
        info = TlsInfo(self.tls.version, self.tls.cipher, self.tls.channel_binding())
        if self.listener.implicit_tls:
            self.engine = ServerEngine(self.listener.settings, tls=info)
            self.engine.greeting()
        else:
            self.engine.tls_established(info)
        self._flush()
        self._arm_timer(self.rt.limits.command_timeout)

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
            except Exception:  # noqa: BLE001 - best effort close_notify
                pass
        self._closed = True
        self.transport.close()

    def _abort(self) -> None:
        self._closed = True
        if self.transport is not None:
            self.transport.close()
