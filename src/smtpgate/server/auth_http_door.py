"""The asyncio shell of nginx's ``auth_http`` front door (docs/integration.md).

One connection, one request (``frontdoor/auth_http.py`` parses it), one answer.
The login runs the SASL exchange of the mechanism nginx names through the one
login path (``runtime.login``): the guard with ``Client-IP`` as the client's
address, the penalty, the credentials, the auth log (front door ``auth_http``),
the guard's commit and the failure floor, all before the answer, as for SMTP AUTH.
Success sends nginx to the listener's ``upstream`` (``Auth-Server``/``Auth-Port``),
which takes the identity from nginx's ``XCLIENT LOGIN=``: the account named in
``Auth-User``, xtext-encoded, since nginx writes it there unescaped.

What nginx is told on failure:

- wrong credentials: ``535 5.7.8`` with ``Auth-Wait: 1``, the least that makes
  nginx let the client retry instead of closing, until ``MAX_WAITED_ATTEMPTS``
  or while the guard would refuse the next attempt under the account's canonical
  name; then no ``Auth-Wait`` and nginx ends the session. The guard's penalty is
  waited once, here, before the next attempt's credentials are checked (as for
  SMTP AUTH, inside the address's attempt gate, so parallel nginx sessions from
  one address still queue behind it); an ``Auth-Wait`` of the penalty made the
  client wait it twice, and nginx's wait is per session, so it cannot stand in
  for the gated one;
- the guard's refusal or a backend fault: the 454 SMTP AUTH would give, without
  ``Auth-Wait`` (nginx closes the session: a blocked client has nothing to retry);
- a password (``plain``: AUTH PLAIN or LOGIN) from a client nginx does not
  report as on TLS (no ``Auth-SSL: on``): the 530 SMTP gives AUTH before
  STARTTLS, nothing checked (CRAM-MD5 sends no password and is let through);
- ``Auth-Method: none`` (no AUTH): ``530 5.7.0``, submission needs a login;
  a method or protocol smtpgate does not serve here: ``504 5.5.4``; for a method,
  with ``Auth-Wait`` (until ``MAX_WAITED_ATTEMPTS``), so that the client may
  choose another one, as after a 504 on smtpgate's own port.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from collections.abc import Callable
from typing import cast

from smtpgate.auth.authlog import neutralize
from smtpgate.auth.guard import mail_login_key
from smtpgate.auth.guard_state import ACCOUNT, ACCOUNT_NEW, THROTTLE
from smtpgate.auth.service import AuthContext
from smtpgate.frontdoor.auth_http import (
    MAX_WAITED_ATTEMPTS,
    AuthHttpAnswer,
    AuthHttpError,
    AuthHttpParser,
    AuthHttpRequest,
    bad_request_answer,
    format_answer,
    split_salt,
)
from smtpgate.sasl.base import Challenge, ChannelBinding
from smtpgate.sasl.exchange import AuthResult, NeedCredentials, Outcome, ServerExchange
from smtpgate.sasl.plain import PlainSyntaxError, encode_plain
from smtpgate.sasl.registry import create_server_mechanism
from smtpgate.server.front_doors import FrontDoor
from smtpgate.smtp import replies as R
from smtpgate.smtp.engine import REFUSED_BEFORE_STARTTLS, REFUSED_MECHANISM
from smtpgate.web.log_budget import LogBudget

log = logging.getLogger("smtpgate.session")

#: Seconds a client of this socket has to send its request (nginx sends it at once).
REQUEST_TIMEOUT = 30.0

_REFUSAL_REPLIES = {
    ACCOUNT: R.AUTH_ACCOUNT_LOCKED,
    ACCOUNT_NEW: R.AUTH_ACCOUNT_LOCKED,
    THROTTLE: R.AUTH_THROTTLED,
}
_ids = itertools.count(1)

#: Seconds between warnings that nginx sends a balancer's address as Client-IP.
REALIP_WARNING_WINDOW = 3600.0

#: Seconds of ``Auth-Wait`` after wrong credentials: nginx closes the session on
#: 0 or none, so 1 is the least that lets the client try again. The guard's
#: penalty is not added: smtpgate waits it before checking the next attempt.
AUTH_WAIT = 1


def _error(reply: R.Reply, wait: int | None = None) -> AuthHttpAnswer:
    return AuthHttpAnswer(False, text=reply.text, error_code=f"{reply.code} {reply.enhanced}",
                          wait=wait)


class AuthHttpDecider:
    """Decides one request; shared by the connections of one front door."""

    def __init__(self, door: FrontDoor) -> None:
        self.door = door
        assert door.listener.upstream is not None  # config requires it for auth_http
        host, _, port = door.listener.upstream.rpartition(":")
        self._server = host.strip("[]")
        self._port = int(port)
        #: One warning an hour per process about a Client-IP that is the balancer's.
        self._realip_log = LogBudget(1, REALIP_WARNING_WINDOW, self._report_realip)

    def _mechanism(self, req: AuthHttpRequest) -> tuple[str, bytes | None] | None:
        """(mechanism, what the client sends first) for the exchange, or None if the
        request cannot be one. A PLAIN request whose fields make no PLAIN message
        starts with None: `_unusable` says why, and the exchange ends with that."""
        if req.method == "plain":  # nginx says "plain" for SMTP AUTH PLAIN and LOGIN
            if req.unreadable:
                return "PLAIN", None
            try:
                return "PLAIN", encode_plain(req.user, req.password)
            except PlainSyntaxError:
                return "PLAIN", None
        if req.method == "cram-md5":
            return "CRAM-MD5", None
        return None

    @staticmethod
    def _unusable(req: AuthHttpRequest, mechanism: str = "PLAIN") -> str:
        """Why nginx's Auth-User and Auth-Pass make no PLAIN message (or CRAM-MD5
        response), in the auth log's words. An empty PLAIN message stood in for
        both cases, and a NUL was logged as "empty authcid or password"."""
        if req.unreadable:
            # What the client typed in another charset: a failed login, counted,
            # as a LOGIN of such bytes is on smtpgate's own port. It was an HTTP
            # 400, which nginx turns into its own internal-error 451 for the client.
            return f"{mechanism}: {req.unreadable} is not UTF-8"
        if "\0" in req.user:
            return "PLAIN: NUL in Auth-User"
        if "\0" in req.password:
            return "PLAIN: NUL in Auth-Pass"
        return "PLAIN: empty Auth-User or Auth-Pass"

    def _check_client_ip(self, req: AuthHttpRequest) -> None:
        """nginx behind a PROXY-protocol balancer without ``set_real_ip_from`` sends
        the balancer's address as ``Client-IP`` and its client's only in
        ``Proxy-Protocol-Addr``: the guard then counts every client as one (one
        guesser blocks them all) and the auth log names the balancer. Said in the
        log (within a budget), not mended here: nginx takes a PROXY header from
        anyone who reaches its port, and only its ``set_real_ip_from`` knows whose
        to believe."""
        if req.proxy_client_ip and req.proxy_client_ip != req.client_ip and (
                self._realip_log.take()):
            log.warning("auth_http: nginx sent Client-IP %s, and %s as its PROXY header's "
                        "client (Proxy-Protocol-Addr): the guard and the auth log see the "
                        "balancer, not the client; add 'set_real_ip_from %s;' to nginx's "
                        "mail block (docs/integration.md)", req.client_ip,
                        req.proxy_client_ip, req.client_ip)

    def _report_realip(self, count: int) -> None:
        log.warning("auth_http: %d more requests with Client-IP the balancer's address "
                    "(no set_real_ip_from in nginx)", count)

    async def decide(self, req: AuthHttpRequest, alive: Callable[[], bool]) -> AuthHttpAnswer:
        self._check_client_ip(req)
        if req.protocol != "smtp":
            log.warning("auth_http: Auth-Protocol %s refused (smtpgate serves SMTP)",
                        neutralize(req.protocol, 32))
            return _error(R.AUTH_UNKNOWN_MECHANISM)
        if req.method == "none":
            return _error(R.AUTH_REQUIRED)
        chosen = self._mechanism(req)
        cfg = self.door.cfg
        rt = self.door.runtime
        ctx = AuthContext(
            listener=self.door.listener.label,
            client_ip=req.client_ip,
            client_port=0,
            tls_version=req.tls_version,
            session_id=f"http{os.getpid()}-{next(_ids)}/{req.attempt}",
            front_door="auth_http",
        )
        if chosen is None or chosen[0] not in cfg.auth.mechanisms or (
                chosen[0] in cfg.accounts.withheld_mechanisms):
            # A client's AUTH refused before any exchange, in the auth log as on
            # smtpgate's own port (``AuthRefused``): until 2026-12 none was written.
            rt.login.refused(ctx, chosen[0] if chosen else req.method.upper(),
                             "" if req.unreadable else req.user,
                             REFUSED_MECHANISM)
            # With Auth-Wait the session goes on and the client may choose another
            # mechanism, as after a 504 on smtpgate's own port: nginx advertises
            # what its smtp_auth lists, and a client that picked CRAM-MD5 first
            # (Python's smtplib does) lost the session before it could fall back.
            return _error(R.AUTH_UNKNOWN_MECHANISM,
                          AUTH_WAIT if req.attempt < MAX_WAITED_ATTEMPTS else None)
        name, initial = chosen
        if name == "PLAIN" and req.tls_version is None:
            # smtpgate's own rule (no password in clear) moved to the proxy: nginx
            # says Auth-SSL: on when its client's connection is TLS.
            log.warning("auth_http: %s sent a password without TLS to nginx; refused",
                        req.client_ip)
            rt.login.refused(ctx, name, "" if req.unreadable else req.user,
                             REFUSED_BEFORE_STARTTLS)
            return _error(R.MUST_STARTTLS)
        if name == "CRAM-MD5":
            parts = split_salt(req.salt)
            if parts is None:
                raise AuthHttpError("bad Auth-Salt")
            local, host = parts
            mech = create_server_mechanism(name, channel_binding=ChannelBinding(),
                                           hostname=host, nonce_factory=lambda: local)
        else:
            mech = create_server_mechanism(name, channel_binding=ChannelBinding())
        attempt = rt.login.begin(ctx, alive)
        exchange = ServerExchange(name, mech)
        step = exchange.start(initial)
        while not isinstance(step, Outcome):
            if isinstance(step, Challenge):
                if name != "CRAM-MD5" or req.unreadable:
                    # PLAIN challenges only when started without a message.
                    step = exchange.malformed(self._unusable(req, name))
                    continue
                step = exchange.respond(f"{req.user} {req.password}".encode())
            elif isinstance(step, NeedCredentials):
                answer = await attempt.resolve(step.query)
                if answer is None:  # nginx went away
                    gone = exchange.abandon("auth_http client closed")
                    if gone is not None:
                        attempt.conclude(gone, answered=False)
                    return _error(R.AUTH_TEMPFAIL)
                step = exchange.answer(answer)
        result = await attempt.finish(step)
        if result.result is AuthResult.SUCCESS:
            account = result.principal.account if result.principal is not None else ""
            return AuthHttpAnswer(True, server=self._server, port=self._port, account=account)
        if result.refusal is not None:
            return _error(_REFUSAL_REPLIES.get(result.refusal.kind, R.AUTH_BLOCKED))
        if result.result is not AuthResult.FAILURE:
            return _error(R.AUTH_TEMPFAIL)
        return _error(R.AUTH_FAILED, await self._wait(req, attempt.account))

    async def _wait(self, req: AuthHttpRequest, account: str) -> int | None:
        """Auth-Wait after a failure: ``AUTH_WAIT``; None once the client has had
        ``MAX_WAITED_ATTEMPTS``, or when the guard would refuse its next attempt
        (read-only ``check``): nginx then ends the session, nothing to retry.

        ``account``: the name the login path counted the attempt under (the
        account's canonical name: letter case, IDN and SASLprep spellings and a
        directory's other names are one), so it is that account's lockout and
        throttle that are read; the name as typed when no look-up named one."""
        if req.attempt >= MAX_WAITED_ATTEMPTS:
            return None
        guard = self.door.runtime.guard
        if guard is None:
            return AUTH_WAIT
        check = await guard.check(req.client_ip, account or mail_login_key(req.user))
        if check.refusal is not None:
            return None
        return AUTH_WAIT


class AuthHttpProtocol(asyncio.Protocol):
    """One nginx request: read it, decide it, answer, close."""

    def __init__(self, decider: AuthHttpDecider) -> None:
        self._decider = decider
        self._parser = AuthHttpParser()
        self._transport: asyncio.Transport | None = None
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._alive = True
        #: Bytes of the request read so far (for the timeout's log line).
        self._received = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses; trust the duck.
        self._transport = cast(asyncio.Transport, transport)
        self._timer = asyncio.get_running_loop().call_later(REQUEST_TIMEOUT, self._timeout)

    def _timeout(self) -> None:
        """Nginx writes its request at once: a connection still without a whole one
        is a stuck or hostile peer (logged, so that it is not a silent reset)."""
        if self._task is None and self._transport is not None:
            if self._received:
                log.warning("auth_http: a request begun %.0f s ago is still unfinished "
                            "(%d bytes), closing the connection", REQUEST_TIMEOUT,
                            self._received)
            else:
                log.info("auth_http: no request within %.0f s, closing the connection",
                         REQUEST_TIMEOUT)
            self._transport.abort()

    def data_received(self, data: bytes) -> None:
        if self._task is not None:
            return  # nginx sends nothing after its request; ignore, the answer is coming
        self._received += len(data)
        try:
            req = self._parser.receive_data(data)
        except AuthHttpError as e:
            self._refuse(str(e))
            return
        if req is not None:
            self._task = asyncio.get_running_loop().create_task(self._answer(req))

    def _refuse(self, why: str) -> None:
        log.warning("auth_http: bad request refused: %s", why)
        assert self._transport is not None
        self._task = asyncio.get_running_loop().create_task(self._send(bad_request_answer()))

    async def _answer(self, req: AuthHttpRequest) -> None:
        try:
            answer = await self._decider.decide(req, lambda: self._alive)
            out = format_answer(answer)
        except AuthHttpError as e:
            log.warning("auth_http: bad request refused: %s", e)
            out = bad_request_answer()
        except Exception:
            log.exception("auth_http: request from %s failed", req.client_ip)
            out = format_answer(_error(R.AUTH_TEMPFAIL))
        await self._send(out)

    async def _send(self, out: bytes) -> None:
        t = self._transport
        if t is not None and not t.is_closing():
            t.write(out)
            t.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._alive = False
        if self._timer is not None:
            self._timer.cancel()


def protocol_factory(door: FrontDoor) -> Callable[[], asyncio.BaseProtocol]:
    decider = AuthHttpDecider(door)
    return lambda: AuthHttpProtocol(decider)
