"""An SMTP client session for the tools: `Wire` + `ClientEngine` + `Transcript`.

The engine formats commands and parses replies; this class only moves bytes
and records what went over the wire. The SASL driver (`authenticate`) runs any
client mechanism of ``smtpgate.sasl`` over it, logging each step decoded and
masked, and says how the exchange ended in the three ways that matter to an
administrator: success, refused (5xx, or a server that failed to prove itself),
temporary failure (4xx).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from smtpgate.client.engine import CLOSED, ClientEngine
from smtpgate.client.errors import RemoteProtocolError
from smtpgate.client.replies import ServerReply
from smtpgate.config import hostname_problem
from smtpgate.sasl.base import ClientAuthError, ClientMechanism, ServerErrorMessage
from smtpgate.sasl.scram import ScramClient
from smtpgate.tls.client import TlsClientSession
from smtpgate.tools.transcript import MASK, Kind, Masker, Transcript, printable
from smtpgate.tools.wire import LegacyTls, Wire, WireClosed

#: A SASL exchange longer than this is a server leading us on (SCRAM needs 3).
MAX_AUTH_ROUNDS = 10


class ServerClosed(WireClosed):
    """The server closed the connection while we waited for a reply."""


class SmtpSession:
    """One SMTP conversation; see the module docstring."""

    def __init__(
        self,
        wire: Wire,
        *,
        timeout: float,
        transcript: Transcript | None = None,
        masker: Masker | None = None,
    ) -> None:
        self.wire = wire
        self.engine = ClientEngine()
        self.timeout = timeout
        self.transcript = transcript if transcript is not None else Transcript()
        self.masker = masker or Masker()
        self._rx_partial = b""

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        *,
        timeout: float,
        transcript: Transcript | None = None,
        masker: Masker | None = None,
    ) -> SmtpSession:
        """Open the TCP connection (read the greeting with `read_reply`, after TLS
        for implicit TLS).

        Raises:
            OSError, TimeoutError: no connection.
        """
        wire = await Wire.connect(host, port, timeout)
        return cls(wire, timeout=timeout, transcript=transcript, masker=masker)

    @property
    def tls(self) -> bool:
        return self.wire.tls is not None

    def note(self, kind: Kind, text: str) -> None:
        self.transcript.add(kind, text, self.tls)

    # --- bytes ------------------------------------------------------------------

    async def send(self, data: bytes, display: str | None = None) -> None:
        """Write ``data``; the transcript shows ``display`` instead when given."""
        shown = display if display is not None else data.decode("utf-8", "replace")
        for line in shown.splitlines() or [""]:
            self.note("send", self.masker.text(line))
        await self.wire.send(data)

    def _log_received(self, data: bytes) -> None:
        buf = self._rx_partial + data
        *lines, self._rx_partial = buf.split(b"\n")
        for raw in lines:
            self.note("recv", raw.rstrip(b"\r").decode("utf-8", "replace"))

    async def read_reply(self, timeout: float | None = None) -> ServerReply:
        """The next reply.

        Raises:
            ServerClosed: the connection ended first.
            TimeoutError: no reply in time.
            RemoteProtocolError: not SMTP.
            TlsError: a TLS record failed.
        """
        while True:
            event = self.engine.next_event()
            if isinstance(event, ServerReply):
                return event
            if event is CLOSED:
                raise ServerClosed("server closed the connection")
            data = await self.wire.recv(timeout if timeout is not None else self.timeout)
            if data:
                self._log_received(data)
            elif self._rx_partial:
                self._log_received(b"\n")
            self.engine.receive_data(data)

    async def command(self, data: bytes, display: str | None = None) -> ServerReply:
        await self.send(data, display)
        return await self.read_reply()

    async def ehlo(self, name: str) -> ServerReply:
        """EHLO, and HELO if the server refuses EHLO (RFC 5321 §3.2)."""
        reply = await self.command(self.engine.ehlo(name))
        if reply.code != 250 and reply.code != 421:
            reply = await self.command(self.engine.helo(name))
        return reply

    async def start_tls(self, session: TlsClientSession | LegacyTls) -> None:
        """Handshake now (after a 220 to STARTTLS, or at once for implicit TLS).

        RFC 3207 §4.2: anything received in clear after the 220 is discarded and
        the EHLO knowledge forgotten (the engine does both).
        """
        await self.wire.start_tls(session, self.timeout)
        dropped = self.engine.tls_established() + len(self._rx_partial)
        self._rx_partial = b""
        if dropped:
            self.note("error", f"discarded {dropped} bytes the server sent in clear after 220")

    async def quit(self) -> None:
        """QUIT politely, then close; never raises."""
        with contextlib.suppress(Exception):  # QUIT is a courtesy; the session is over
            await self.send(self.engine.quit())
            await self.read_reply(min(self.timeout, 5.0))
        await self.close()

    async def close(self) -> None:
        await self.wire.close()


@dataclass(frozen=True, slots=True)
class AuthResult:
    """How one AUTH exchange ended."""

    mechanism: str
    outcome: Literal["success", "refused", "tempfail"]
    reply: ServerReply | None
    detail: str = ""
    #: SCRAM only: the server proved it knows the keys (RFC 5802 §5 "v=").
    server_verified: bool | None = None

    @property
    def ok(self) -> bool:
        return self.outcome == "success"

    def to_json(self) -> dict[str, object]:
        return {
            "mechanism": self.mechanism,
            "result": self.outcome,
            "reply": str(self.reply) if self.reply is not None else None,
            "detail": self.detail,
            "server_verified": self.server_verified,
        }


def _decode_challenge(reply: ServerReply) -> bytes:
    text = reply.lines[0].strip() if reply.lines else ""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise RemoteProtocolError("challenge is not valid base64") from None


async def authenticate(
    session: SmtpSession, mech: ClientMechanism, *, initial_response: bool = True
) -> AuthResult:
    """Run one AUTH exchange with ``mech`` (RFC 4954 §4).

    Raises:
        ServerClosed, TimeoutError, RemoteProtocolError: the conversation broke.
    """
    name = mech.name
    engine = session.engine
    masker = session.masker
    step = 0

    async def send_client(data: bytes, first: bool) -> ServerReply:
        nonlocal step
        decoded, masked = masker.client_sasl(name, step, data)
        step += 1
        b64 = base64.b64encode(data).decode("ascii")
        if first:
            wire = engine.auth(name, data)
            display = f"AUTH {name} {MASK if masked else (b64 or '=')}"
        else:
            wire = engine.auth_response(data)
            display = MASK if masked else b64
        await session.send(wire, display)
        session.note("sasl-send", decoded or "(empty)")
        return await session.read_reply()

    initial = mech.start()
    pending: bytes | None = None
    if initial is not None and initial_response:
        reply = await send_client(initial, first=True)
    else:
        # No initial response: client-first data goes out on the empty challenge.
        pending = initial
        reply = await session.command(engine.auth(name, None))
    rounds = 0
    while reply.code == 334:
        rounds += 1
        challenge = _decode_challenge(reply)
        session.note("sasl-recv", printable(challenge) if challenge else "(empty)")
        if rounds > MAX_AUTH_ROUNDS:
            reply = await session.command(engine.auth_cancel())
            return AuthResult(name, "refused", reply, "too many challenges; cancelled")
        try:
            if pending is not None:
                response, pending = pending, None
            else:
                response = mech.step(challenge)
        except ServerErrorMessage as e:
            # The server gave its verdict (SCRAM e=) in a 334: answer with the
            # empty response, as RFC 4954 §4 expects, to read its final reply (535
            # for a failure), rather than cancel with "*" and hide the outcome.
            session.note("error", str(e))
            reply = await send_client(b"", first=False)
            if reply.code == 334:
                reply = await session.command(engine.auth_cancel())
            outcome: Literal["refused", "tempfail"] = (
                "tempfail" if 400 <= reply.code < 500 else "refused"
            )
            return AuthResult(name, outcome, reply, f"{e}; then {reply}", _verified(mech, False))
        except ClientAuthError as e:
            session.note("error", str(e))
            reply = await session.command(engine.auth_cancel())
            return AuthResult(name, "refused", reply, str(e), _verified(mech, False))
        reply = await send_client(response, first=False)
    verified = _verified(mech, None)
    if reply.code == 235:
        if verified is False:
            # RFC 5802 §5: the client authenticates the server by its signature; a
            # 235 without one means the server never proved it knows the keys.
            text = "235 without a SCRAM server signature: the server is not authenticated"
            session.note("error", text)
            return AuthResult(name, "refused", reply, text, False)
        return AuthResult(name, "success", reply, "", verified)
    if 400 <= reply.code < 500:
        return AuthResult(name, "tempfail", reply, str(reply), verified)
    return AuthResult(name, "refused", reply, str(reply), verified)


def _verified(mech: ClientMechanism, default: bool | None) -> bool | None:
    if isinstance(mech, ScramClient):
        return mech.done
    return default


def default_ehlo_name(
    fqdn: Callable[[], str] = socket.getfqdn, hostname: Callable[[], str] = socket.gethostname
) -> str:
    """This machine's name for EHLO, as swaks picks it: the fully qualified name when
    the resolver knows one, else the host name, else "localhost". ``getfqdn`` gives
    "localhost" on many machines whose /etc/hosts maps their name to 127.0.0.1."""
    for candidate in (fqdn, hostname):
        try:
            name = candidate()
        except OSError:
            continue
        if hostname_problem(name) is None and name.lower() not in _LOOPBACK_NAMES:
            return name
    return "localhost"


_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "localhost6",
                             "localhost6.localdomain6", "ip6-localhost", "ip6-loopback"})
