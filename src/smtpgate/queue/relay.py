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
  so the message may arrive twice (RFC 1047); SMTP cannot do better.

Credentials are never sent in clear unless ``relay_tls`` is "none", which is an
explicit choice (a relay on localhost).
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from smtpgate.client.engine import xtext
from smtpgate.client.errors import LocalProtocolError, ProtocolError
from smtpgate.client.extensions import Extensions
from smtpgate.client.replies import ServerReply
from smtpgate.queue.delivery import (
    Delivered,
    DeliveryResult,
    PermFailure,
    QueuedMessage,
    TempFailure,
)
from smtpgate.queue.smtp_io import SmtpClientConnection
from smtpgate.sasl.base import ClientAuthError, ClientMechanism

log = logging.getLogger("smtpgate.queue.relay")

TlsMode = Literal["opportunistic", "require", "none"]
#: A SASL exchange longer than this is a server leading us on.
_MAX_AUTH_ROUNDS = 10


@dataclass(frozen=True, slots=True)
class RelayTimeouts:
    """RFC 5321 §4.5.3.2 minimum timeouts (seconds), connect aside."""

    connect: float = 30.0
    greeting: float = 300.0  # §4.5.3.2.1: initial 220, 5 minutes
    command: float = 300.0  # §4.5.3.2.2/3: MAIL, RCPT, 5 minutes
    data_init: float = 120.0  # §4.5.3.2.4: DATA, 2 minutes
    data_end: float = 600.0  # §4.5.3.2.6: final dot, 10 minutes
    tls: float = 60.0


class _Abort(Exception):
    """Ends a session; every recipient without a result gets ``result``."""

    def __init__(self, result: TempFailure | PermFailure) -> None:
        super().__init__(result.reply)
        self.result = result


def _temp(text: str) -> _Abort:
    return _Abort(TempFailure(text))


def _by_code(reply: ServerReply, what: str) -> TempFailure | PermFailure:
    """4xx temporary, 5xx permanent; anything else unexpected is temporary."""
    text = f"{what}: {reply}"
    if reply.is_permanent:
        return PermFailure(text)
    return TempFailure(text)


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
    ) -> None:
        if tls_mode != "none" and tls_context is None:
            raise ValueError(f"tls_mode {tls_mode!r} needs a TLS context")
        self.host = host
        self.port = port
        self._helo = helo_name
        self._tls_mode = tls_mode
        self._tls_context = tls_context
        self._auth = auth
        self._t = timeouts

    async def deliver(
        self, message: QueuedMessage, recipients: tuple[str, ...]
    ) -> Mapping[str, DeliveryResult]:
        results: dict[str, DeliveryResult] = {}
        try:
            conn = await SmtpClientConnection.open(self.host, self.port, timeout=self._t.connect)
        except (OSError, TimeoutError) as e:
            failure = TempFailure(f"4.4.1 cannot connect to relay {self.host}:{self.port}: {e}")
            return dict.fromkeys(recipients, failure)
        try:
            await self._session(conn, message, recipients, results)
        except _Abort as a:
            for r in recipients:
                results.setdefault(r, a.result)
        except (OSError, TimeoutError, ProtocolError, ssl.SSLError) as e:
            what = "timeout" if isinstance(e, TimeoutError) else str(e) or type(e).__name__
            failure = TempFailure(f"4.4.2 relay session with {self.host} failed: {what}")
            for r in recipients:
                results.setdefault(r, failure)
        finally:
            await conn.close()
        return results

    async def close(self) -> None:
        """Nothing to release: every delivery has its own connection."""

    async def _session(
        self,
        conn: SmtpClientConnection,
        message: QueuedMessage,
        recipients: tuple[str, ...],
        results: dict[str, DeliveryResult],
    ) -> None:
        engine = conn.engine
        t = self._t
        greeting = await conn.read_reply(t.greeting)
        if greeting.code != 220:
            raise _temp(f"relay greeting: {greeting}")
        ext = await self._hello(conn)
        if self._tls_mode != "none":
            ext = await self._starttls(conn, ext)
        authenticated = False
        if self._auth is not None:
            await self._authenticate(conn, ext, self._auth())
            authenticated = True

        params = self._mail_params(message, ext, authenticated)
        try:
            mail_cmd = engine.mail(message.envelope.mail_from, params)
        except LocalProtocolError as e:
            raise _Abort(PermFailure(f"5.1.7 cannot send this sender: {e}")) from None
        rcpt_cmds: list[tuple[str, bytes]] = []
        for rcpt in recipients:
            try:
                rcpt_cmds.append((rcpt, engine.rcpt(rcpt)))
            except LocalProtocolError as e:
                results[rcpt] = PermFailure(f"5.1.3 cannot send this recipient: {e}")
        if ext.pipelining:
            # RFC 2920 §3.1: MAIL and the RCPTs may go as one group; DATA waits below.
            await conn.send(mail_cmd + b"".join(cmd for _, cmd in rcpt_cmds))
            mail_reply = await conn.read_reply(t.command)
            rcpt_replies = [await conn.read_reply(t.command) for _ in rcpt_cmds]
            if not mail_reply.is_positive:
                raise _Abort(_by_code(mail_reply, "relay refused sender"))
        else:
            mail_reply = await conn.command(mail_cmd, t.command)
            if not mail_reply.is_positive:
                raise _Abort(_by_code(mail_reply, "relay refused sender"))
            rcpt_replies = [await conn.command(cmd, t.command) for _, cmd in rcpt_cmds]

        accepted = []
        for (rcpt, _), reply in zip(rcpt_cmds, rcpt_replies, strict=True):
            if reply.is_positive:  # 250, or 251/252 (RFC 5321 §3.4)
                accepted.append(rcpt)
            else:
                results[rcpt] = _by_code(reply, "relay refused recipient")
        if not accepted:
            await self._quit(conn)
            return

        data_reply = await conn.command(engine.data(), t.data_init)
        if data_reply.code != 354:
            raise _Abort(_by_code(data_reply, "relay refused DATA"))
        final = await conn.command(engine.message(message.data), t.data_end)
        if final.is_positive:
            for rcpt in accepted:
                results[rcpt] = Delivered(f"relay {self.host}: {final}")
        else:
            raise _Abort(_by_code(final, "relay refused message"))
        await self._quit(conn)

    async def _hello(self, conn: SmtpClientConnection) -> Extensions:
        reply = await conn.command(conn.engine.ehlo(self._helo), self._t.command)
        if reply.code == 250:
            return conn.engine.extensions
        # RFC 5321 §3.2: a server that refuses EHLO may still accept HELO.
        reply = await conn.command(conn.engine.helo(self._helo), self._t.command)
        if reply.code != 250:
            raise _temp(f"relay refused HELO: {reply}")
        return conn.engine.extensions

    async def _starttls(self, conn: SmtpClientConnection, ext: Extensions) -> Extensions:
        if not ext.starttls:
            if self._tls_mode == "require":
                raise _temp("4.7.0 relay does not offer STARTTLS (relay_tls = require)")
            return ext
        reply = await conn.command(conn.engine.starttls(), self._t.command)
        if reply.code != 220:
            if self._tls_mode == "require":
                raise _temp(f"relay refused STARTTLS: {reply}")
            log.warning("relay %s refused STARTTLS (%s); continuing in clear", self.host, reply)
            return ext
        assert self._tls_context is not None
        await conn.start_tls(self._tls_context, self.host, self._t.tls)
        # RFC 3207 §4.2: forget what the server said in clear; ask again.
        return await self._hello(conn)

    async def _authenticate(
        self, conn: SmtpClientConnection, ext: Extensions, mech: ClientMechanism
    ) -> None:
        if mech.cleartext_credentials and not conn.tls and self._tls_mode != "none":
            raise _temp(f"4.7.0 not sending {mech.name} credentials to {self.host} without TLS")
        if mech.name not in ext.auth_mechanisms:
            raise _temp(f"4.7.0 relay does not offer AUTH {mech.name}")
        engine = conn.engine
        reply = await conn.command(engine.auth(mech.name, mech.start()), self._t.command)
        for _ in range(_MAX_AUTH_ROUNDS):
            if reply.code != 334:
                break
            try:
                answer = mech.step(engine.challenge(reply))
            except ClientAuthError as e:
                await conn.command(engine.auth_cancel(), self._t.command)
                raise _temp(f"relay AUTH exchange failed: {e}") from None
            reply = await conn.command(engine.auth_response(answer), self._t.command)
        if reply.code != 235:
            # Temporary even for 535: a wrong relay password is ours to fix, not a
            # reason to bounce the user's mail.
            raise _temp(f"relay refused AUTH {mech.name}: {reply}")

    @staticmethod
    def _mail_params(message: QueuedMessage, ext: Extensions, authenticated: bool) -> list[str]:
        env = message.envelope
        params: list[str] = []
        size = len(message.data)
        if ext.size is not None:
            if ext.size and size > ext.size:
                # RFC 1870 §6.1: the relay has told us it will refuse this.
                raise _Abort(PermFailure(f"5.3.4 message size {size} exceeds relay limit "
                                         f"{ext.size}"))
            params.append(f"SIZE={size}")
        if env.body_8bit:
            if not ext.eightbitmime:
                # RFC 6152 §3: no 8-bit data to a server without 8BITMIME; we do
                # not downgrade, so the message is undeliverable this way.
                raise _Abort(PermFailure("5.6.3 relay does not accept 8-bit data (8BITMIME)"))
            params.append("BODY=8BITMIME")
        if env.smtputf8:
            if not ext.smtputf8:
                # RFC 6531 §3.2: without SMTPUTF8 at the next hop we cannot proceed.
                raise _Abort(PermFailure("5.6.7 relay does not support SMTPUTF8"))
            params.append("SMTPUTF8")
        if authenticated and ext.has("AUTH"):
            # RFC 4954 §5: tell a relay we authenticated to who submitted the
            # message, or "<>" if no one did.
            identity = env.auth_identity
            params.append(f"AUTH={xtext(identity)}" if identity else "AUTH=<>")
        return params

    async def _quit(self, conn: SmtpClientConnection) -> None:
        """Polite QUIT; the outcome no longer depends on it."""
        try:
            await conn.command(conn.engine.quit(), 10.0)
        except (OSError, TimeoutError, ProtocolError):
            pass


def tls_context(*, verify: bool, ca_file: str | None) -> ssl.SSLContext:
    """Client context for STARTTLS to the relay: TLS 1.2+ (RFC 8996), verification
    per ``relay_verify_cert``/``relay_ca_file`` (system CAs when no file)."""
    ctx = ssl.create_default_context(cafile=ca_file)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx

