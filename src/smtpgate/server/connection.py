"""One client connection: moves bytes between the socket, TLS and the SMTP engine.

It decides nothing: the engine words every reply, `server/decisions.py` answers its
decision events. One that needs I/O runs in a task, during which the engine reads
no command; one that raises is logged with its traceback and answered as a
temporary failure. Replies produced by one batch of input are written in one go,
once the engine needs more input (or the 354 that the client waits for).
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
from collections.abc import Callable
from functools import partial
from typing import Any, cast

from smtpgate import metrics
from smtpgate.queue.incoming import Incoming
from smtpgate.server.decisions import Decisions, Peer, Pending
from smtpgate.server.runtime import ListenerRuntime, ServerRuntime
from smtpgate.smtp import replies as R
from smtpgate.smtp.engine import QUIT_REASON, SESSION_ENDED, ServerEngine, TlsInfo
from smtpgate.smtp.events import (
    NEED_DATA,
    OUTPUT_FULL,
    PAUSED,
    CloseConnection,
    MessageReceived,
    MessageStart,
    StartTls,
)
from smtpgate.smtp.peer_address import host_port, reported_address
from smtpgate.tls.native_session import NativeServerSession, ServerNameNotAscii
from smtpgate.tls.session import TlsError, TlsServerSession, open_server_session
from smtpgate.web.log_budget import LogBudget

log = logging.getLogger("smtpgate.session")

#: Stop reading from a client that keeps sending while we wait on a decision.
#: What a connection refused by a limit (``ConnectionLimiter.acquire``) is told,
#: and what the log says of it.
_REFUSAL_REPLIES = {
    "total": R.TOO_MANY_CONNECTIONS,
    "per_ip": R.TOO_MANY_CONNECTIONS_FROM_IP,
    "rate": R.CONNECTION_RATE_FROM_IP,
}
_REFUSAL_REASONS = {
    "total": "limits.max_connections reached",
    "per_ip": "limits.max_connections_per_ip reached",
    "rate": "limits.connection_rate_per_ip exceeded",
}
#: Refused connections are one line each for the first few a minute: a client
#: hammering the server must not also fill its log.
REFUSALS_LOGGED = 10
REFUSAL_WINDOW = 60.0


def _report_refusals(count: int) -> None:
    log.warning("%d more connections refused by limits.* (more than %d in %g s are not "
                "logged one by one)", count, REFUSALS_LOGGED, REFUSAL_WINDOW)


_refusal_log = LogBudget(REFUSALS_LOGGED, REFUSAL_WINDOW, _report_refusals)


def _report_server_names(count: int) -> None:
    log.info("%d more TLS handshakes failed on a server name (SNI) that is not ASCII "
             "(more than %d in %g s are not logged one by one)", count, REFUSALS_LOGGED,
             REFUSAL_WINDOW)


#: A ClientHello whose server name is not ASCII comes from no real mail client
#: (RFC 6066 allows only A-labels; fuzzers and scanners send them), and anyone may
#: send one a connection: logged as the refused connections are.
_server_name_log = LogBudget(REFUSALS_LOGGED, REFUSAL_WINDOW, _report_server_names)


def _report_handshakes(count: int) -> None:
    log.info("%d more TLS handshakes failed (more than %d in %g s are not logged one "
             "by one)", count, REFUSALS_LOGGED, REFUSAL_WINDOW)


#: Any other failed handshake (TLS 1.0 only, no common cipher, garbage on the
#: implicit-TLS port) is as cheap for a stranger to cause, once a connection, and
#: loopback is exempt from the connection rate: the same budget, its own count.
#: Each still counts in the metrics (its session ends with TLS version "none").
_handshake_log = LogBudget(REFUSALS_LOGGED, REFUSAL_WINDOW, _report_handshakes)


def _report_records(count: int) -> None:
    log.info("%d more TLS sessions ended by a record that failed after the handshake "
             "(more than %d in %g s are not logged one by one)", count, REFUSALS_LOGGED,
             REFUSAL_WINDOW)


#: A record that fails after the handshake (garbage, a forged or truncated record,
#: a TLS 1.2 renegotiation attempt) ends its session: a client that can complete a
#: handshake can send one a connection, so it has the same budget, its own count.
_record_log = LogBudget(REFUSALS_LOGGED, REFUSAL_WINDOW, _report_records)


def _report_handshake_timeouts(count: int) -> None:
    log.info("%d more TLS handshakes timed out (more than %d in %g s are not logged one "
             "by one)", count, REFUSALS_LOGGED, REFUSAL_WINDOW)


#: A connection that starts no handshake, or stops half-way, until
#: ``tls.handshake_timeout``: a scanner's open-and-wait costs nothing but a
#: socket, so these too are the first ten a minute, then a count.
_handshake_timeout_log = LogBudget(REFUSALS_LOGGED, REFUSAL_WINDOW,
                                   _report_handshake_timeouts)


_PAUSE_READING_AT = 1 << 20
#: Replies the engine holds before it reads the next command (its listeners'
#: ``EngineSettings.max_pending_output``): they are then written out, so that the
#: transport can tell us (``pause_writing``) that the client is not reading them.
#: A pipelined batch of a well-behaved client stays far below.
MAX_PENDING_OUTPUT = 64 * 1024
_FAULT = "%s %s: unexpected error in a decision; answered as a temporary failure"
#: Seconds a closed session's last replies may wait for a client that reads
#: nothing before the connection is reset: until they are written the transport
#: stays open and the session keeps its connection slot (its address's and the
#: server's), so without a bound such clients could hold every slot for ever.
_CLOSE_LINGER = 10.0


class SmtpConnection(asyncio.Protocol):
    """One client connection: moves bytes between the transport, the TLS session
    and the engine, and runs the engine's decisions as tasks."""

    # One per connection, like the engine's and the decisions' (workload D).
    __slots__ = (
        "_auth_started",
        "_closed",
        "_counted",
        "_data_bytes",
        "_data_started",
        "_disk_paused",
        "_eof",
        "_last_activity",
        "_line_started",
        "_loop",
        "_proxy",
        "_reading_paused",
        "_task",
        "_task_event",
        "_timer",
        "_timer_at",
        "_tls_started",
        "_tls_version",
        "_writing_paused",
        "client_ip",
        "client_port",
        "decisions",
        "engine",
        "listener",
        "rt",
        "session_id",
        "tls",
        "tls_ready",
        "transport",
    )

    def __init__(self, runtime: ServerRuntime, listener: ListenerRuntime):
        self.rt = runtime
        self.listener = listener
        self.engine = ServerEngine(listener.settings)
        self.transport: asyncio.Transport | None = None
        self.tls: TlsServerSession | NativeServerSession | None = None
        self.tls_ready = False
        self.client_ip = ""
        self.client_port = 0
        self.session_id = secrets.token_hex(6)
        self.decisions = Decisions(runtime, Peer(self.session_id, listener.name, "", 0),
                                   self.engine, alive=lambda: not self._closed)
        self._task: asyncio.Task[None] | None = None
        #: The decision event ``_task`` answers (None: none, or none the engine waits on).
        self._task_event: object = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        # The session's clocks (see ``_expiry``): the last byte in (idle timeouts),
        # and the start of the unit each deadline bounds (None: none under way).
        self._last_activity = 0.0
        self._tls_started = 0.0
        #: The version the handshake agreed, for the metrics: a session that failed
        #: later no longer tells it (OpenSSL's object is then in its error state).
        self._tls_version: str | None = None
        self._line_started: float | None = None
        self._auth_started: float | None = None
        self._data_started: float | None = None
        self._data_bytes = 0
        self._closed = False
        self._counted = False
        #: Counted as a trusted XCLIENT proxy's connection (total only).
        self._proxy = False
        self._reading_paused = False
        #: Reading stopped until the message being received is written out.
        self._disk_paused = False
        #: The client half-closed: answer what it sent, then close.
        self._eof = False
        #: Reading and command processing stopped: the client does not read its
        #: replies (the transport's buffer is over its high-water mark).
        self._writing_paused = False
        self._loop = asyncio.get_running_loop()

    # ------------------------------------------------------- asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses; trust the duck.
        self.transport = tr = cast(asyncio.Transport, transport)
        peer = tr.get_extra_info("peername") or ("", 0)
        self.client_ip, self.client_port = str(peer[0]), int(peer[1])
        if self.client_ip.startswith("::ffff:"):
            # An IPv4 client of a dual-stack listener ([::]:587): its IPv4 address,
            # as the guard counts it and as a firewall (fail2ban's iptables ban)
            # can refuse it; '::ffff:192.0.2.7' in the auth log banned nothing.
            self.client_ip = reported_address(self.client_ip) or self.client_ip
        self.decisions.peer = Peer(self.session_id, self.listener.name, self.client_ip,
                                   self.client_port)
        self.engine.xclient_trusted = self.listener.trusts_xclient(self.client_ip)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s connect from %s on listener %s", self.session_id, self.where,
                      self.listener.name)
            self.engine.on_command = self._debug_command
        # A proxy trusted to send XCLIENT connects for many clients: the rate of
        # new connections and the per-address cap are theirs, and only XCLIENT
        # names them (``ConnectionLimiter.acquire``).
        self._proxy = self.engine.xclient_trusted
        refused = self.rt.limiter.acquire(self.client_ip, proxy=self._proxy)
        if refused is not None:
            reply = _REFUSAL_REPLIES[refused]
            if _refusal_log.take():
                log.warning("refused %s: %s", self.where, _REFUSAL_REASONS[refused])
            metrics.connection_refused(self.listener.name, refused)
            if not self.listener.implicit_tls:
                # RFC 8314 §3.3: on an implicit-TLS port nothing goes in clear. A
                # cleartext 421 there is a broken TLS record to the client ("wrong
                # version number"), which blames TLS for a connection limit; a
                # handshake only to say 421 would spend what the limit protects.
                tr.write(reply.format())
            tr.close()
            self._closed = True
            return
        self._counted = True
        metrics.connection_opened(self.listener.name)
        self.rt.connections.add(self)
        self._last_activity = self._loop.time()
        if self.listener.implicit_tls:
            self.tls = open_server_session(self.rt.tls, self.listener.name)
            self._tls_started = self._last_activity
            self._rearm()
            self._start_plus_fallback_look_up()
        else:
            self.engine.greeting()
            self._flush()
            self._rearm()

    def data_received(self, data: bytes) -> None:
        if self._closed:
            return
        self._last_activity = self._loop.time()
        if self.tls is not None:
            try:
                data, out = self.tls.receive(data)
            except TlsError as e:
                if self._failure_budget(e).take():
                    log.info("%s %s %s", self.session_id, self.where, e)
                # The library's alert (protocol_version, handshake_failure, ...) tells
                # the client why; without it the client sees only the connection end.
                self._abort(self.tls.outgoing())
                return
            except EOFError:
                self._abort()
                return
            if self.tls.peer_closed:
                # The client's last commands came with its close_notify. TLS 1.3
                # closes one direction only: they are answered, then the session
                # closes, as after a TCP half-close (before, they were dropped
                # unanswered). TLS 1.2 closes both (RFC 5246 §7.2.1: OpenSSL has
                # queued its own close_notify): no reply could follow, so nothing
                # is run, or a message stored would go unacknowledged and be sent
                # again.
                if self.tls.version != "TLSv1.3":
                    self._abort()
                    return
                self._eof = True
            if out and self.transport is not None:
                self.transport.write(out)
            if not self.tls_ready:
                if not self.tls.handshake_done:
                    return
                self._tls_up()
            if not data:
                return
        if self._data_started is not None:
            self._data_bytes += len(data)
        self.engine.receive_data(data)
        if self._task is None:
            self._pump()
        elif self.engine.buffered > _PAUSE_READING_AT and self.transport is not None:
            self.transport.pause_reading()
            self._reading_paused = True
        receiving = self.decisions.receiving
        if (receiving is not None and receiving.incoming.backlog > _PAUSE_READING_AT
                and not self._disk_paused and self.transport is not None):
            # The disk is behind the client: stop reading, so that a session holds
            # a bounded buffer whatever the message size (queue/incoming.py).
            self.transport.pause_reading()
            self._disk_paused = True

    def _failure_budget(self, e: TlsError) -> LogBudget:
        """The budget a TLS failure's log line takes from: a failed handshake's, or
        that of a record that fails after it. Each is one line a connection that
        anyone may open, so none is logged whatever the rate."""
        if isinstance(e, ServerNameNotAscii):
            return _server_name_log
        if self.tls is not None and not self.tls.handshake_done:
            return _handshake_log
        return _record_log

    def eof_received(self) -> bool | None:
        """The client has sent all it will (a TCP half-close, as ``nc -N`` or a
        script does after QUIT). What it sent before is answered: with a decision
        under way (the message's spool write, a MAIL look-up) the transport stays
        open until its reply and those of the commands behind it are out, or a
        client whose message was stored would see no 250 and send it again."""
        if self._closed or self._task is None:
            return None  # everything read was answered already: let the transport close
        self._eof = True
        return True

    def pause_writing(self) -> None:
        """The client is not reading its replies: read and run no more commands
        until it does. Without this a client that pipelines commands and never
        reads made the server buffer every reply (12.6 MB of ``EHLO x`` lines,
        never read, grew a worker by 240 MB)."""
        self._writing_paused = True
        if self.transport is not None and not self._closed:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self._closed:
            return
        self._read_on()
        if self._task is None:
            self._pump()  # the commands read before the pause

    @property
    def where(self) -> str:
        """The client as the session log names it: ``address:port``, an IPv6 address in
        brackets, as the auth log writes it (a filter on one finds the other)."""
        return host_port(self.client_ip, self.client_port)

    def connection_lost(self, exc: Exception | None) -> None:
        log.debug("%s disconnect %s%s", self.session_id, self.where, f" ({exc})" if exc else "")
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        # A client may read a SCRAM e=invalid-proof (or the OAUTHBEARER error) and
        # hang up before the 535: the attempt must still be logged (issue 3).
        self._abandon_auth("connection closed during AUTH")
        # Gone in the middle of DATA: its temp file goes (a message already handed
        # to the spool is not in ``receiving`` any more, and finishes).
        self.decisions.message_dropped()
        if self._counted:
            self._counted = False
            self.rt.limiter.release(self.client_ip, proxy=self._proxy)
            self.rt.connections.discard(self)
            metrics.session_ended(self.listener.name, self._tls_version)
        # An in-flight spool write is left to finish (its result is simply not
        # sent); an in-flight auth lookup is harmless to finish too.

    def _abandon_auth(self, reason: str) -> None:
        """End an AUTH exchange still open with ``reason`` in its one auth-log
        record (``ServerEngine.abandon_auth``); nothing if none is open or it was
        ended already."""
        abandoned = self.engine.abandon_auth(reason)
        if abandoned is not None:
            self.decisions.abandoned(abandoned)

    # ------------------------------------------------------------ the loop

    def _pump(self) -> None:
        """Drain the engine's events, then start or stop the deadlines' clocks."""
        before = self.engine.buffered
        self._drain()
        if self._eof and self._task is None and not self._closed:
            self._close(flush=True)  # the half-closed client's last command answered
        if not self._closed:
            self._clocks(before)

    def _drain(self) -> None:
        """Drain the engine's events; hand decisions that need I/O to a task."""
        while not self._closed:
            if self._writing_paused:
                break
            ev = self.engine.next_event()
            if ev is OUTPUT_FULL:
                self._flush()  # may pause writing: then the loop ends
                continue
            if ev is NEED_DATA or ev is PAUSED:
                break
            if isinstance(ev, StartTls):
                self._start_tls()
                return
            if isinstance(ev, CloseConnection):
                if ev.reason not in (QUIT_REASON, SESSION_ENDED):
                    # Too many errors, an HTTP request, an unreadable BDAT: a probe
                    # or a broken client, which the administrator should see.
                    log.info("%s %s closed: %s", self.session_id, self.where, ev.reason)
                self._close(flush=True)
                return
            starts = isinstance(ev, MessageStart)
            if starts:
                self._flush()  # the 354 goes out while the spool file is set up
            try:
                pending = self.decisions.handle(ev)
            except Exception:
                log.exception(_FAULT, self.session_id, self.client_ip)
                if not self._answer(partial(self.decisions.answer_fault, ev), resume=False):
                    return
                continue
            if starts and self.decisions.receiving is not None:
                incoming = self.decisions.receiving.incoming
                incoming.on_flushed = partial(self._disk_flushed, incoming)
            if pending is not None:
                # The replies gathered so far wait for the decision's: the client
                # reads none before it has its whole pipelined group's, and RFC
                # 2920 §3 asks for them as a unit (they went out in two writes).
                self._task = self._loop.create_task(self._decide(pending))
                self._task_event = pending.event
                return
        self._flush()

    async def _decide(self, pending: Pending[Any]) -> None:
        """Run a decision and answer the engine with its result. One that raises is
        logged and answered as a temporary failure, so the engine never waits on it."""
        try:
            result = await pending.work
        except Exception:
            log.exception(_FAULT, self.session_id, self.client_ip)
            answer = partial(self.decisions.answer_fault, pending.event)
        else:
            answer = partial(pending.answer, result)
        if not self._closed:
            self._answer(answer, resume=True)

    def _answer(self, answer: Callable[[], None], *, resume: bool) -> bool:
        """Hand an answer to the engine (and read on); False if that raised: closed."""
        try:
            answer()
            if resume:
                self._resume()
        except Exception:
            log.exception("%s %s: unexpected error; closing the session",
                          self.session_id, self.client_ip)
            self._abort()
            return False
        return True

    def _resume(self) -> None:
        self._task, self._task_event = None, None
        # The client's idle time starts with our reply (RFC 5321 §4.5.3.2): what
        # the decision took (a penalty, a slow look-up, a spool write) was ours.
        self._last_activity = self._loop.time()
        if self._reading_paused:
            self._reading_paused = False
            self._read_on()
        self._pump()

    def _read_on(self) -> None:
        """Read from the client again unless something still stops it: a decision
        under way, the disk behind, or replies the client has not read."""
        if (self.transport is not None and not self._reading_paused
                and not self._disk_paused and not self._writing_paused):
            self.transport.resume_reading()

    def _disk_flushed(self, incoming: Incoming) -> None:
        """A part of the message is on its way to disk: read on if it caught up."""
        if (self._disk_paused and incoming.backlog <= _PAUSE_READING_AT // 2
                and not self._closed):
            self._disk_paused = False
            self._last_activity = self._loop.time()  # the wait was the disk's, not the client's
            self._read_on()

    def _flush(self) -> None:
        out = self.engine.data_to_send()
        if not out or self.transport is None or self._closed:
            return
        if self.tls is not None:
            out = self.tls.send(out)
        self.transport.write(out)

    # ------------------------------------------------------------------ TLS

    def _start_tls(self) -> None:
        # The 220 goes out in clear; from here on every byte is TLS. The engine
        # already dropped whatever was pipelined behind STARTTLS.
        self._flush()
        self.tls = open_server_session(self.rt.tls, self.listener.name)
        self._tls_started = self._loop.time()
        self._rearm()
        self._start_plus_fallback_look_up()

    def _start_plus_fallback_look_up(self) -> None:
        pending = self.decisions.plus_fallback_look_up(self.listener.settings.mechanisms)
        if pending is not None:
            self._task = self._loop.create_task(self._decide(pending))
            self._task_event = pending.event

    def _tls_up(self) -> None:
        assert self.tls is not None
        self.tls_ready = True
        self._tls_version = self.tls.version
        cert, untrusted = self.tls.client_certificate()
        if untrusted:  # 'optional': the session goes on, without EXTERNAL
            log.info("%s %s %s", self.session_id, self.where, untrusted)
        info = TlsInfo(self.tls.version, self.tls.cipher, self.tls.channel_binding(), cert)
        if self.listener.implicit_tls:
            self.engine = self.decisions.engine = ServerEngine(self.listener.settings, tls=info)
            self.engine.hide_plus = self.decisions.plus_until is not None
            self.engine.xclient_trusted = self.listener.trusts_xclient(self.client_ip)
            self.engine.greeting()
        else:
            self.engine.tls_established(info)
            self.decisions.tls_started()
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s TLS established: %s %s", self.session_id, info.version, info.cipher)
            self.engine.on_command = self._debug_command
        self._flush()
        self._rearm()

    def _debug_command(self, verb: str) -> None:
        log.debug("%s command %s", self.session_id, verb)  # the verb only: never AUTH data

    # ------------------------------------------------------- timers, closing

    def _clocks(self, before: int) -> None:
        """After the engine has read what it could (``before``: the bytes it held
        then): start the clock of a command line, an AUTH exchange or DATA that has
        begun, stop those that ended. The engine itself never reads a clock."""
        now = self._loop.time()
        engine = self.engine
        left = engine.buffered
        # A line over the limit is dropped as it comes (nothing of it stays
        # buffered) but is still one line: its deadline runs on to its end, or a
        # client sending an endless line held the connection for ever.
        long_line = engine.in_long_line
        if engine.in_data or (left == 0 and not long_line):
            self._line_started = None
        elif self._line_started is None or (left < before and not long_line):
            self._line_started = now  # what is left began in this read
        if not engine.in_auth:
            self._auth_started = None
        elif self._auth_started is None:
            self._auth_started = now
        if not engine.in_message:
            self._data_started = None
        elif self._data_started is None:
            self._data_started, self._data_bytes = now, 0
        self._rearm()

    def _expiry(self) -> tuple[float, bool]:
        """When the session times out, and whether by a deadline (True) or by
        idleness. Idle timeouts restart with every byte; deadlines do not, so a
        client cannot hold a connection by trickling (docs/smtp.md, "Deadlines")."""
        limits = self.rt.limits
        if self.tls is not None and not self.tls_ready:
            return self._tls_started + self.rt.handshake_timeout, True
        deadline = math.inf
        if self._data_started is not None:
            if limits.data_min_rate:
                # Postfix's smtpd_min_data_rate: data_timeout to start with, plus
                # one second for every data_min_rate octets received, for DATA and
                # for a BDAT message from its first chunk to its LAST.
                deadline = (self._data_started + limits.data_timeout
                            + self._data_bytes / limits.data_min_rate)
            if self.engine.draining_before_login:
                deadline = min(deadline, self._data_started + limits.command_deadline)
        if self.engine.in_data:
            idle = self._last_activity + limits.data_timeout
        else:
            idle = self._last_activity + limits.command_timeout
            if self._line_started is not None:
                deadline = min(deadline, self._line_started + limits.command_deadline)
            if self._auth_started is not None:
                deadline = min(deadline, self._auth_started + limits.auth_deadline)
        return (deadline, True) if deadline < idle else (idle, False)

    def _rearm(self) -> None:
        """Make sure the timer fires no later than the session's expiry."""
        at, _ = self._expiry()
        if at < self._timer_at:
            self._arm_at(at)

    def _arm_at(self, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        self._timer = self._loop.call_at(at, self._check_time)

    def _check_time(self) -> None:
        self._timer, self._timer_at = None, math.inf
        if self._closed:
            return
        now = self._loop.time()
        at, deadline = self._expiry()
        if self._task is not None or self._disk_paused:
            # A decision is running (the client waits on us), or we stopped reading
            # until the disk catches up: not the client's time. Look again later.
            self._arm_at(max(at, now + 1.0))
            return
        if now < at:
            self._arm_at(at)
            return
        if self.tls is not None and not self.tls_ready:
            if _handshake_timeout_log.take():
                log.info("%s %s TLS handshake timed out (tls.handshake_timeout, %g s)",
                         self.session_id, self.where, self.rt.handshake_timeout)
            self._abort()
            return
        why = "deadline passed" if deadline else "idle timeout"
        log.info("%s %s %s", self.session_id, self.where, why)
        # The server hangs up, not the client: the record says so (until 2026-12 a
        # client held at the auth_deadline was "connection closed during AUTH").
        self._abandon_auth(f"timed out during AUTH ({why})")
        self.engine.timeout(deadline=deadline)
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
            if not force or isinstance(self._task_event, MessageReceived):
                # A spool write or auth lookup is finishing: the engine hangs up
                # with 421 right after answering it. A message's spool write is
                # always let finish: its client gets the 250, then the 421.
                self.engine.shutdown(force=False)
                return
            # The grace is over: a look-up still waiting (a login behind the guard's
            # penalty or the attempt gate, a sender check) is dropped, and the
            # client gets its 421 now. Nothing half-done is lost; before, such a
            # session held the stop past shutdown_grace, a flood of them by minutes.
            task, self._task, self._task_event = self._task, None, None
            task.cancel()
        self.engine.shutdown(force=force)
        if self.engine.closed:
            self._flush()
            self._close()

    def _close(self, *, flush: bool = False) -> None:
        """Close; with ``flush``, the engine's last reply (221, 421) goes out first,
        in one write with the close_notify (one send instead of two a session)."""
        if self._closed or self.transport is None:
            return
        out = b""
        if flush:
            out = self.engine.data_to_send()
            if out and self.tls is not None:
                out = self.tls.send(out)
        if self.tls is not None and self.tls_ready:
            try:
                out += self.tls.close()
            except Exception as e:  # noqa: BLE001 - close_notify is best effort
                log.debug("%s close_notify not sent: %s", self.session_id, e)
        self._closed = True
        if out:
            self.transport.write(out)
        self.transport.close()
        self._linger()

    def _abort(self, last: bytes = b"") -> None:
        """Close without a word of SMTP; ``last``: TLS records still owed (an alert)."""
        self._closed = True
        if self.transport is not None:
            if last:
                self.transport.write(last)
            self.transport.close()
            self._linger()

    def _linger(self) -> None:
        """Just closed: if replies are still unwritten (a client that reads nothing),
        reset the connection `_CLOSE_LINGER` seconds from now, which frees its slot.
        The timer holds the transport, not this session, and only such a session
        arms one: 300 sessions a second must not keep 3,000 closed ones alive."""
        tr = self.transport
        if tr is not None and tr.get_write_buffer_size():
            self._loop.call_later(_CLOSE_LINGER, _reset_unread, tr,
                                  f"{self.session_id} {self.where}")


def _reset_unread(transport: asyncio.Transport, who: str) -> None:
    """`SmtpConnection._linger`'s timer: still unwritten replies mean the client
    still reads nothing."""
    if transport.get_write_buffer_size():
        log.info("%s closed session still unread after %.0f s: reset", who, _CLOSE_LINGER)
        transport.abort()
