"""An SMTP client session for the tools: the client shell over a `Wire`, with a transcript.

The shell (``smtpgate.queue.smtp_io.SmtpClientConnection``), the engine and the
SASL driver (``smtpgate.client.auth``) are the ones relay delivery uses; this
module adds only what the tools need on top: one timeout for the whole session,
and a `Transcript` of what went over the wire, with each SASL step decoded and
its secrets masked (`TranscriptObserver`). `authenticate` says how an exchange
ended in the three ways that matter to an administrator: success, refused (5xx,
or a server that failed to prove itself), temporary failure (4xx).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import socket
from collections.abc import Callable

from smtpgate.client.auth import MAX_AUTH_ROUNDS, AuthSend, ClientAuthResult
from smtpgate.client.engine import ClientEngine
from smtpgate.client.errors import RemoteProtocolError
from smtpgate.client.replies import ServerReply, split_challenge
from smtpgate.config import hostname_problem
from smtpgate.queue.smtp_io import ConnectionClosed, SessionObserver, SmtpClientConnection
from smtpgate.sasl.base import ClientMechanism
from smtpgate.tls.client import TlsClientSession, make_client_context
from smtpgate.tls.session import TlsError
from smtpgate.tools.transcript import MASK, Kind, Masker, Transcript
from smtpgate.tools.wire import TlsSetup, Wire

__all__ = [
    "MAX_AUTH_ROUNDS",
    "MAX_UNSOLICITED_REPLIES",
    "AuthResult",
    "ServerClosed",
    "SmtpSession",
    "TranscriptObserver",
    "authenticate",
    "default_ehlo_name",
    "speaks_tls",
]

#: More replies nobody asked for than this in one session is a server that will
#: not stop (one that writes replies without pause would fill the memory): the
#: session ends as a protocol error.
MAX_UNSOLICITED_REPLIES = 10
#: How much `SmtpSession.take_unsolicited` reads at a time.
_UNSOLICITED_STEP = 4096

#: The server closed the connection while we waited for a reply.
ServerClosed = ConnectionClosed
#: How an AUTH exchange ended (the tools' name for the driver's result).
AuthResult = ClientAuthResult


class TranscriptObserver(SessionObserver):
    """Writes a session into a `Transcript`: lines as they complete, SASL payloads
    decoded and masked."""

    def __init__(self, transcript: Transcript, masker: Masker) -> None:
        self.transcript = transcript
        self.masker = masker
        self._rx_partial = b""
        #: The mechanism of the AUTH exchange in progress (its 334 lines may need masking).
        self._auth_mechanism: str | None = None

    def sent(self, data: bytes, display: str | None, tls: bool) -> None:
        shown = display if display is not None else data.decode("utf-8", "replace")
        for line in shown.splitlines() or [""]:
            self.transcript.add("send", self.masker.text(line), tls)

    def received(self, data: bytes, tls: bool) -> None:
        if not data:  # the end: show what is left of a last line
            data = b"\n" if self._rx_partial else b""
        buf = self._rx_partial + data
        *lines, self._rx_partial = buf.split(b"\n")
        for raw in lines:
            # A server may echo what it was sent (a broken one, or a trap): the
            # secret never shows in a line received either.
            self.transcript.add("recv", self.masker.text(self._shown(raw.rstrip(b"\r")).decode(
                "utf-8", "replace")), tls)

    def _shown(self, line: bytes) -> bytes:
        """The line, or its code and a mask for a challenge of the exchange in
        progress whose decoded payload must not show (the SCRAM ``v=``)."""
        parts = split_challenge(line)
        if parts is None or self._auth_mechanism is None:
            return line
        head, text = parts
        try:
            challenge = base64.b64decode(text.strip(), validate=True)
        except ValueError:
            return line
        if self.masker.server_sasl(self._auth_mechanism, challenge)[1]:
            return head + MASK.encode()
        return line

    def tls_started(self, dropped: int) -> None:
        self._rx_partial = b""
        if dropped:
            self.transcript.add(
                "error", f"discarded {dropped} bytes the server sent in clear after 220", True
            )

    def auth_step(self, mechanism: str, step: AuthSend, tls: bool) -> None:
        self._auth_mechanism = mechanism
        if step.challenge is not None:
            shown, _ = self.masker.server_sasl(mechanism, step.challenge)
            self.transcript.add("sasl-recv", self.masker.text(shown) or "(empty)", tls)
        if step.note:
            self.transcript.add("error", step.note, tls)
        if step.payload is None:
            self.sent(step.data, None, tls)
            return
        decoded, masked = self.masker.client_sasl(mechanism, step.index, step.payload)
        b64 = MASK if masked else base64.b64encode(step.payload).decode("ascii")
        self.sent(step.data, f"AUTH {mechanism} {b64 or '='}" if step.command else b64, tls)
        self.transcript.add("sasl-send", decoded or "(empty)", tls)

    def auth_done(self, result: ClientAuthResult, tls: bool) -> None:
        self._auth_mechanism = None
        if not result.ok and result.reply is not None and result.reply.code == 235:
            self.transcript.add("error", result.detail, tls)  # yes from the server, no from us


class SmtpSession:
    """One SMTP conversation of a tool; see the module docstring."""

    def __init__(
        self,
        wire: Wire,
        *,
        timeout: float,
        transcript: Transcript | None = None,
        masker: Masker | None = None,
    ) -> None:
        self.wire = wire
        self.timeout = timeout
        self.transcript = transcript if transcript is not None else Transcript()
        self.masker = masker or Masker()
        self._observer = TranscriptObserver(self.transcript, self.masker)
        self.conn: SmtpClientConnection[TlsSetup] = SmtpClientConnection(
            wire, observer=self._observer
        )
        #: Look for replies nobody asked for before each send (`unsolicited`);
        #: only for a caller that reads every reply before it sends again.
        self.watch_unsolicited = False
        #: The replies found so, in order.
        self.unsolicited: list[ServerReply] = []

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
    def engine(self) -> ClientEngine:
        return self.conn.engine

    @property
    def tls(self) -> bool:
        return self.wire.tls

    def note(self, kind: Kind, text: str) -> None:
        self.transcript.add(kind, text, self.tls)

    async def send(self, data: bytes, display: str | None = None) -> None:
        """Write ``data``; the transcript shows ``display`` instead when given."""
        await self.take_unsolicited()
        await self.conn.send(data, self.timeout, display)

    async def take_unsolicited(self) -> None:
        """With ``watch_unsolicited``: every reply that came before this send, when
        every reply owed has been read, was asked for by nobody. Read as the
        answer to the next command, it would shift every reply after it by one
        (what swaks then shows); taken out here, with a warning in the
        transcript, the replies stay aligned. One sent a moment after we send
        cannot be told from the answer, so this catches those that came first.

        Raises:
            RemoteProtocolError: more than `MAX_UNSOLICITED_REPLIES` in the session.
            TlsError: a TLS record failed.
        """
        if not self.watch_unsolicited:
            return
        while True:
            # A step at a time, so a server that never stops writing is caught after
            # a few kilobytes, not after all the memory.
            data = await self.wire.recv_available(_UNSOLICITED_STEP)
            if data is not None:
                self._observer.received(data, self.tls)
            if data == b"":
                self.engine.receive_data(b"")  # closed: the next read says so
            for reply in self.engine.unsolicited_replies(data or b""):
                self.unsolicited.append(reply)
                if len(self.unsolicited) > MAX_UNSOLICITED_REPLIES:
                    raise RemoteProtocolError(
                        f"more than {MAX_UNSOLICITED_REPLIES} replies nobody asked for "
                        "(RFC 5321 §4.2: one reply to each command); given up")
                self.note("error", f"warning: the server sent a reply nobody asked for: "
                          f"{reply} (not taken as the answer to the next command)")
            if not data:
                return

    async def read_reply(self, timeout: float | None = None) -> ServerReply:
        """The next reply.

        Raises:
            ServerClosed: the connection ended first.
            TimeoutError: no reply in time.
            RemoteProtocolError: not SMTP.
            TlsError: a TLS record failed.
        """
        return await self.conn.read_reply(timeout if timeout is not None else self.timeout)

    async def command(self, data: bytes, display: str | None = None) -> ServerReply:
        await self.take_unsolicited()
        return await self.conn.command(data, self.timeout, display)

    async def ehlo(self, name: str) -> ServerReply:
        """EHLO, and HELO if the server refuses EHLO (RFC 5321 §3.2)."""
        reply = await self.command(self.engine.ehlo(name))
        if reply.code != 250 and reply.code != 421:
            reply = await self.command(self.engine.helo(name))
        return reply

    async def start_tls(self, session: TlsSetup) -> int:
        """Handshake now (after a 220 to STARTTLS, or at once for implicit TLS);
        returns how many bytes that came in clear after the 220 were discarded.

        RFC 3207 §4.2: anything received in clear after the 220 is discarded and
        the EHLO knowledge forgotten (the shell does both).
        """
        return await self.conn.start_tls(session, self.timeout)

    async def quit(self) -> None:
        """QUIT politely, then close; never raises. Not while the task is being
        cancelled (the audit's ``max_time`` ran out): then only close, since QUIT
        would wait for a reply from a server that is slow by then."""
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            await self.close()
            return
        with contextlib.suppress(Exception):  # QUIT is a courtesy; the session is over
            await self.send(self.engine.quit())
            await self.read_reply(min(self.timeout, 5.0))
        await self.close()

    async def close(self) -> None:
        await self.conn.close(1.0)


async def authenticate(
    session: SmtpSession, mech: ClientMechanism, *, initial_response: bool = True
) -> AuthResult:
    """Run one AUTH exchange with ``mech`` (RFC 4954 §4) through the shared driver.

    Raises:
        ServerClosed, TimeoutError, RemoteProtocolError: the conversation broke.
    """
    await session.take_unsolicited()
    return await session.conn.authenticate(
        mech, session.timeout, initial_response=initial_response
    )


async def speaks_tls(host: str, port: int, server_name: str, timeout: float) -> bool:
    """Does a new connection to ``host:port`` answer a ClientHello with a TLS record
    (a handshake, 0x16, or an alert, 0x15)? How the tools tell an implicit-TLS port,
    which waits silently for the client, from an SMTP server slow to greet."""
    try:
        hello = TlsClientSession(make_client_context(), server_name).start()
        wire = await Wire.connect(host, port, timeout)
    except (OSError, TimeoutError, TlsError):
        return False
    try:
        await wire.send(hello, timeout)
        first = await wire.recv(timeout)
    except (OSError, TimeoutError):
        return False
    finally:
        await wire.close()
    return first[:1] in (b"\x15", b"\x16")


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
