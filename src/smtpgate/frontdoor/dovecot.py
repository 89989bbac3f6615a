"""The server side of the Dovecot authentication protocol, sans-IO.

Theory of operation
-------------------
Postfix (``smtpd_sasl_type = dovecot``) and Exim (``driver = dovecot``) relay an
SMTP client's SASL exchange to an auth server over this line protocol; smtpgate
plays Dovecot's ``auth`` process (docs/integration.md; the protocol facts are in
the shared protocol digest, §3.1). The engine follows h11's contract:

- ``handshake()`` once, on connect: VERSION, the MECH lines, SPID, CUID, COOKIE,
  DONE, all at once (what Dovecot's ``auth-legacy`` listener does: old Exim waits
  for DONE before it says anything, Postfix talks first; both work);
- ``receive_data(bytes)``, then ``next_event()`` until ``NEED_DATA``;
  ``data_to_send()`` after each call gives the lines to write;
- ``answer(id, answer)`` after each ``CredentialsNeeded``; ``finish(id, result,
  user)`` after each ``ExchangeEnded`` that was answered (the caller has logged
  and counted the attempt, and waited the guard's penalty and the failure floor);
- ``connection_lost()`` when the peer is gone: every exchange still under way
  ends as one ``ExchangeEnded(answered=False)``, so nothing is left behind.

One connection carries many requests, told apart by their id (Postfix keeps one
connection per smtpd process and multiplexes; Exim opens one per AUTH, id 1).
Each request runs one ``ServerExchange``; the engine frames its challenges as
``CONT`` and its end as ``OK``/``FAIL``.

Decisions where the protocol leaves room (each documented in docs/integration.md):

- A temporary failure (a backend fault, the guard's refusal) is answered by
  closing the connection, not with ``FAIL ... temp``: Postfix and Exim read every
  ``FAIL`` as a permanent 535, and a lost connection as a temporary failure
  (Postfix: ``454 4.7.0``; Exim: ``435``). Postfix reconnects on its next AUTH.
  The close ends the other requests on the connection too, but a Postfix smtpd
  has one in flight at a time (the rest are ones its clients abandoned) and Exim
  opens a connection per AUTH (tests/integration/test_frontdoor_postfix_temp_fail.py).
- ``CONT`` for an unknown id gets ``FAIL id`` and the connection stays (as in
  Dovecot: the request may have been dropped to make room); a ``CONT`` for a
  request the server is still deciding, a duplicate or malformed id, an unknown
  command, a line over ``MAX_LINE`` or a major version other than 1 close the
  connection (a client bug; nothing sensible can follow).
- At most ``MAX_PENDING`` requests at once per connection. Postfix never cancels
  a request its client gave up on (``*``), so a new request evicts the oldest
  one that waits on the client; when none does, the peer is flooding and the
  connection is closed. The caller also times such requests out (``expire``).
- A mechanism that sends the password itself (flag ``plaintext``) is refused
  unless the MTA says the client's session is protected (``secured``), which is
  Dovecot's ``disable_plaintext_auth = yes`` default moved to the auth server.
- ``-PLUS`` and EXTERNAL are never offered: Postfix and Exim pass neither the
  channel-binding data nor the client certificate.
- A failure a mechanism announces in a challenge (SCRAM ``e=``, the OAuth error
  JSON) is answered ``FAIL`` at once, as Dovecot does, not relayed: Postfix never
  reports a client that read it and gave up, so the guess would be counted late.
  A success's ``v=`` is relayed (the client checks it) and completes with the
  MTA's empty ``CONT``.
"""

from __future__ import annotations

import re
import unicodedata
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import ClassVar

from smtpgate import mechanism_facts as facts
from smtpgate.sasl.base import (
    CredentialAnswer,
    CredentialQuery,
    Failure,
    ServerMechanism,
    Step,
)
from smtpgate.sasl.exchange import AuthResult, Challenge, NeedCredentials, Outcome, ServerExchange
from smtpgate.sasl.framing import decode_base64_strict, encode_base64
from smtpgate.smtp.ascii_case import upper_ascii
from smtpgate.smtp.peer_address import reported_address

__all__ = [
    "MAX_LINE",
    "MAX_PENDING",
    "NEED_DATA",
    "AuthRequest",
    "CredentialsNeeded",
    "Disconnect",
    "DovecotServer",
    "DovecotSettings",
    "Event",
    "ExchangeEnded",
    "RequestRefused",
    "mechanism_flags",
    "offerable",
]

#: Dovecot's own limit on a client line (``AUTH_CLIENT_MAX_LINE_LENGTH``, 16 KiB:
#: "GSSAPI can use quite large packets"). The longest SMTP AUTH line, 12288 bytes
#: (RFC 4954 §4), fits with room for the fields around it.
MAX_LINE = 16384
#: Exim 4.96 reads the server's lines into an 8192-byte buffer: no line we send
#: may be longer (with its LF).
MAX_OUT_LINE = 8191
#: Requests in progress on one connection. An smtpd process asks one at a time,
#: Exim one per connection; the room is for requests Postfix abandoned.
MAX_PENDING = 32
#: The protocol version we speak; 1.2 is what Dovecot 2.3 announces.
VERSION = (1, 2)


class _Sentinel(Enum):
    NEED_DATA = "NEED_DATA"


NEED_DATA = _Sentinel.NEED_DATA

_SESSION = re.compile(r"[A-Za-z0-9._:@/+-]{1,64}")
_DIGITS = re.compile(r"[0-9]{1,10}")

#: Texts of the FAIL replies that carry one; Postfix appends ``reason=`` to its 535
#: reply to the SMTP client, so they tell how to fix the request, never whether a
#: name exists.
REASON_UNKNOWN_ID = "Unknown or expired authentication request"
REASON_NO_SERVICE = "Missing service parameter"
REASON_AFTER_RESP = "Parameter after resp"
REASON_MECHANISM = "Unsupported authentication mechanism"
REASON_BASE64 = "Invalid base64 data in initial response"
REASON_NO_RIP = "Missing or invalid client address (rip)"
REASON_NOT_SECURED = "Plaintext authentication needs a TLS session"
#: Refusals of what a client did (through the MTA), not of the peer's protocol: each
#: is an attempt in the auth log (``RequestRefused.client_attempt``).
CLIENT_REFUSALS = frozenset({REASON_NOT_SECURED, REASON_NO_RIP})


def offerable(name: str) -> bool:
    """A mechanism this protocol can carry: not -PLUS (no channel-binding data
    reaches us through Postfix or Exim), not EXTERNAL (no client certificate)."""
    f = _FACTS.get(name)
    return f is not None and not f.channel_binding and not f.client_certificate


_FACTS = {f.name: f for f in facts.MECHANISMS}


def mechanism_flags(name: str) -> tuple[str, ...]:
    """The MECH flags, as Dovecot assigns them: Postfix maps them to its
    ``smtpd_sasl_security_options`` (``noplaintext`` hides the ``plaintext`` ones)."""
    f = _FACTS[name]
    if f.cleartext or f.oauth:
        return ("plaintext",)
    if f.family == "scram":
        return ("mutual-auth",)
    if f.plaintext_equivalent:
        return ("dictionary", "active")
    return ()


def _needs_secured(name: str) -> bool:
    return "plaintext" in mechanism_flags(name)


@dataclass(frozen=True, slots=True)
class DovecotSettings:
    """What one connection's engine is built with."""

    #: Enabled mechanisms, strongest first (``offerable`` ones only are used).
    mechanisms: tuple[str, ...]
    #: A fresh server mechanism for one request.
    mechanism_factory: Callable[[str], ServerMechanism]
    #: SPID, CUID and COOKIE of the handshake (the caller draws the cookie).
    spid: str
    cuid: str
    cookie: str
    max_line: int = MAX_LINE
    max_pending: int = MAX_PENDING


@dataclass(frozen=True, slots=True)
class AuthRequest:
    """One ``AUTH`` line: what the MTA says about its client."""

    id: int
    mechanism: str
    service: str
    #: The client's session with the MTA is protected (TLS, or Exim's local client).
    secured: bool
    valid_client_cert: bool
    remote_ip: str
    local_ip: str = ""
    remote_port: int = 0
    local_port: int = 0
    #: The MTA's session id ("" if it sent none: Postfix and Exim do not).
    session: str = ""
    no_penalty: bool = False


@dataclass(frozen=True, slots=True)
class CredentialsNeeded:
    """The exchange of ``request`` needs the auth service: call ``answer``."""

    request: AuthRequest
    query: CredentialQuery


@dataclass(frozen=True, slots=True)
class ExchangeEnded:
    """The exchange of ``request`` is over. ``answered``: the peer waits for the
    verdict (call ``finish``); False: it is gone or gave the request up, and only
    the log and the guard's count are left to do."""

    request: AuthRequest
    outcome: Outcome
    answered: bool = True


@dataclass(frozen=True, slots=True)
class RequestRefused:
    """A request answered ``FAIL`` before any exchange began. No credential was
    looked at, so the guard counts none; but one refused for what the client's
    session lacks (``client_attempt``: a plaintext mechanism without ``secured``, no
    usable ``rip``) is a client's AUTH the MTA passed on, and the shell writes it
    to the auth log as such. The others are the peer's protocol faults (the server
    log)."""

    id: int
    reason: str
    remote_ip: str = ""
    mechanism: str = ""
    remote_port: int = 0
    session: str = ""
    secured: bool = False
    client_attempt: bool = False


@dataclass(frozen=True, slots=True)
class Disconnect:
    """Close the connection after writing ``data_to_send()``."""

    reason: str
    #: The peer broke the protocol (logged as a warning), or not (a temporary failure).
    protocol_error: bool = True


Event = CredentialsNeeded | ExchangeEnded | RequestRefused | Disconnect


class _VerdictWatch(ServerMechanism):
    """Passes a mechanism's steps through and notes a failure it would announce in a
    challenge (SCRAM ``e=``, the OAuth error JSON).

    Through an MTA that verdict is not relayed: Dovecot answers ``FAIL`` at once, and
    Postfix would never tell us about a client that read ``e=`` and gave up (it
    sends nothing for a ``*`` or a hang-up), so the failure would be counted only
    when the request is dropped. The engine answers such a challenge itself."""

    name: ClassVar[str] = "verdict-watch"

    def __init__(self, inner: ServerMechanism) -> None:
        self._inner = inner
        self.announced_failure = False

    def _note(self, step: Step) -> Step:
        self.announced_failure = isinstance(step, Failure) and step.error_data is not None
        return step

    def start(self, initial: bytes | None) -> Step:
        return self._note(self._inner.start(initial))

    def step(self, response: bytes) -> Step:
        return self._note(self._inner.step(response))

    def answer(self, result: CredentialAnswer) -> Step:
        return self._note(self._inner.answer(result))


class _Wait(Enum):
    CLIENT = "the client's CONT"
    SERVER = "the auth service"
    VERDICT = "the caller's finish()"


@dataclass(slots=True)
class _Request:
    request: AuthRequest
    exchange: ServerExchange
    watch: _VerdictWatch
    wait: _Wait = _Wait.CLIENT
    order: int = 0
    #: Challenges sent so far: ``expire`` drops a request only if it still waits on
    #: the client for the same one.
    challenges: int = 0


@dataclass(slots=True)
class _Handshake:
    version: bool = False
    minor: int = 0
    cpid: bool = False


class DovecotServer:
    """One connection of the Dovecot auth protocol (see the module docstring)."""

    def __init__(self, settings: DovecotSettings) -> None:
        self.settings = settings
        self.mechanisms = tuple(m for m in settings.mechanisms if offerable(m))
        self._buffer = bytearray()
        self._out: list[bytes] = []
        self._events: deque[Event] = deque()
        self._requests: dict[int, _Request] = {}
        self._client = _Handshake()
        self._counter = 0
        self._closed = False

    # ------------------------------------------------------------------ output

    def handshake(self) -> bytes:
        """The server's whole handshake; MECH lines come before SPID (Postfix and
        Exim take an SPID first as a sign of the wrong socket)."""
        s = self.settings
        lines = [f"VERSION\t{VERSION[0]}\t{VERSION[1]}"]
        lines += ["\t".join(("MECH", m, *mechanism_flags(m))) for m in self.mechanisms]
        lines += [f"SPID\t{s.spid}", f"CUID\t{s.cuid}", f"COOKIE\t{s.cookie}", "DONE"]
        return "".join(f"{line}\n" for line in lines).encode()

    def data_to_send(self) -> bytes:
        out = b"".join(self._out)
        self._out.clear()
        return out

    def _send(self, *fields: str) -> None:
        line = "\t".join(fields)
        if len(line) > MAX_OUT_LINE:
            raise ValueError(f"{fields[0]} line of {len(line)} bytes is over {MAX_OUT_LINE}")
        self._out.append(line.encode() + b"\n")

    # ------------------------------------------------------------------ input

    def receive_data(self, data: bytes) -> None:
        if not self._closed:
            self._buffer += data

    @property
    def line_unfinished(self) -> bool:
        """Bytes of a line have arrived without its newline (asked once
        ``next_event`` said NEED_DATA). An MTA may pause between lines as long as it
        likes (Postfix keeps its connection for hours), never inside one: the
        shell gives such bytes a deadline (``server/front_doors.py``)."""
        return bool(self._buffer) and not self._closed

    def next_event(self) -> Event | _Sentinel:
        while not self._events:
            if self._closed:
                return NEED_DATA
            end = self._buffer.find(b"\n")
            if end < 0:
                if len(self._buffer) > self.settings.max_line:
                    return self._disconnect(f"line longer than {self.settings.max_line} bytes")
                return NEED_DATA
            if end > self.settings.max_line:
                return self._disconnect(f"line longer than {self.settings.max_line} bytes")
            # A CR before the LF is part of the line end, as Dovecot's own line
            # reader takes it (i_stream_next_line): a client written for Windows,
            # or a test sending CRLF, was closed as a malformed line.
            raw = bytes(self._buffer[: end - 1 if end and self._buffer[end - 1] == 0x0D else end])
            del self._buffer[: end + 1]
            self._line(raw)
        return self._events.popleft()

    def _disconnect(self, reason: str, *, protocol_error: bool = True) -> Disconnect:
        self._closed = True
        self._buffer.clear()
        ev = Disconnect(reason, protocol_error)
        return ev

    def _queue_disconnect(self, reason: str) -> None:
        self._events.append(self._disconnect(reason))

    def _line(self, raw: bytes) -> None:
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            self._queue_disconnect("a line that is not UTF-8")
            return
        if not line:
            return  # an empty line says nothing; Dovecot skips it too
        fields = line.split("\t")
        cmd = fields[0]
        if cmd == "AUTH":
            self._auth(fields)
        elif cmd == "CONT":
            self._cont(fields)
        elif cmd == "VERSION":
            self._version(fields)
        elif cmd == "CPID":
            if len(fields) != 2 or not _DIGITS.fullmatch(fields[1]):
                self._queue_disconnect("malformed CPID line")
            else:
                self._client.cpid = True
        elif cmd == "CANCEL":
            self._cancel(fields)
        else:
            self._queue_disconnect(f"unknown command {_printable(cmd)!r}")

    def _version(self, fields: list[str]) -> None:
        if len(fields) != 3 or not all(_DIGITS.fullmatch(f) for f in fields[1:]):
            self._queue_disconnect("malformed VERSION line")
        elif int(fields[1]) != VERSION[0]:
            self._queue_disconnect(f"protocol major version {fields[1]}, not {VERSION[0]}")
        else:
            self._client.version, self._client.minor = True, int(fields[2])

    def _id(self, fields: list[str]) -> int | None:
        """The request id of a line, or None (the connection is being closed)."""
        if len(fields) < 2 or not _DIGITS.fullmatch(fields[1]):
            self._queue_disconnect(f"malformed {fields[0]} line")
            return None
        rid = int(fields[1])
        if not 0 < rid < 1 << 32:
            self._queue_disconnect(f"{fields[0]} with request id {rid} out of range")
            return None
        return rid

    # ------------------------------------------------------------------ AUTH

    def _auth(self, fields: list[str]) -> None:
        if not (self._client.version and self._client.cpid):
            self._queue_disconnect("AUTH before the client's VERSION and CPID")
            return
        rid = self._id(fields)
        if rid is None:
            return
        if len(fields) < 3 or not fields[2]:
            self._queue_disconnect("AUTH without a mechanism")
            return
        if rid in self._requests:
            self._queue_disconnect(f"AUTH with the id {rid} of a request in progress")
            return
        if not self._make_room():
            return
        parsed = self._parse_auth(rid, fields)
        if isinstance(parsed, str):
            self._refuse(rid, parsed, fields)
            return
        request, initial = parsed
        try:
            mech = self.settings.mechanism_factory(request.mechanism)
        except KeyError:
            self._refuse(rid, REASON_MECHANISM, fields)
            return
        self._counter += 1
        watch = _VerdictWatch(mech)
        entry = _Request(request, ServerExchange(request.mechanism, watch), watch,
                         order=self._counter)
        self._requests[rid] = entry
        self._step(entry, entry.exchange.start(initial))

    def _parse_auth(self, rid: int, fields: list[str]) -> tuple[AuthRequest, bytes | None] | str:
        """The request and its decoded initial response, or the reason to refuse it."""
        mechanism = upper_ascii(fields[2])
        params: dict[str, str] = {}
        flags: set[str] = set()
        resp: str | None = None
        for f in fields[3:]:
            if resp is not None:
                # Dovecot refuses this too: a resp= before user data that could
                # smuggle fields in.
                return REASON_AFTER_RESP
            key, sep, value = f.partition("=")
            if key == "resp" and sep:
                resp = value
            elif sep:
                params.setdefault(key, value)
            else:
                flags.add(key)
        service = params.get("service") or params.get("protocol") or ""
        if not service:
            return REASON_NO_SERVICE
        if mechanism not in self.mechanisms:
            return REASON_MECHANISM
        rip = _address(params.get("rip", ""))
        if not rip:
            return REASON_NO_RIP
        secured = "secured" in flags or "secured" in params
        if _needs_secured(mechanism) and not secured:
            return REASON_NOT_SECURED
        session = params.get("session", "")
        request = AuthRequest(
            id=rid,
            mechanism=mechanism,
            service=_printable(service)[:32],
            secured=secured,
            valid_client_cert="valid-client-cert" in flags,
            remote_ip=rip,
            local_ip=_address(params.get("lip", "")),
            remote_port=_port(params.get("rport", "")),
            local_port=_port(params.get("lport", "")),
            session=session if _SESSION.fullmatch(session) else "",
            no_penalty="no-penalty" in flags,
        )
        if resp is None or (resp == "" and self._client.minor < 2):
            # Exim always sends resp=, empty when its client gave no initial
            # response; Dovecot reads that as none from clients below 1.2.
            return request, None
        initial = _b64decode(resp)
        if initial is None:
            return REASON_BASE64
        return request, initial

    def _refuse(self, rid: int, reason: str, fields: list[str]) -> None:
        self._send("FAIL", str(rid), f"reason={reason}")

        def param(name: str) -> str:
            return next((f[len(name) + 1:] for f in fields[3:] if f.startswith(name + "=")), "")

        session = param("session")
        self._events.append(RequestRefused(
            rid, reason, _address(param("rip")),
            mechanism=_printable(fields[2].upper())[:32] if len(fields) > 2 else "",
            remote_port=_port(param("rport")),
            session=session if _SESSION.fullmatch(session) else "",
            secured=any(f == "secured" or f.startswith("secured=") for f in fields[3:]),
            client_attempt=reason in CLIENT_REFUSALS,
        ))

    def _make_room(self) -> bool:
        """Below ``max_pending`` requests: evict the oldest that waits on the client
        (Postfix's abandoned ones); when none does, the peer floods."""
        if len(self._requests) < self.settings.max_pending:
            return True
        waiting = [r for r in self._requests.values() if r.wait is _Wait.CLIENT]
        if not waiting:
            self._queue_disconnect(f"more than {self.settings.max_pending} requests in progress")
            return False
        oldest = min(waiting, key=lambda r: r.order)
        self._drop(oldest, "given up by the peer (a newer request took its place)")
        return True

    def _drop(self, entry: _Request, reason: str) -> None:
        del self._requests[entry.request.id]
        outcome = entry.exchange.abandon(reason)
        if outcome is not None:
            self._events.append(ExchangeEnded(entry.request, outcome, answered=False))

    # ------------------------------------------------------------------ CONT, CANCEL

    def _cont(self, fields: list[str]) -> None:
        rid = self._id(fields)
        if rid is None:
            return
        entry = self._requests.get(rid)
        if entry is None:
            self._send("FAIL", str(rid), f"reason={REASON_UNKNOWN_ID}")
            self._events.append(RequestRefused(rid, REASON_UNKNOWN_ID))
            return
        if entry.wait is not _Wait.CLIENT:
            self._queue_disconnect(f"CONT for request {rid} while it waits on {entry.wait.value}")
            return
        data = _b64decode(fields[2] if len(fields) > 2 else "")
        if data is None:
            self._step(entry, entry.exchange.malformed("invalid base64 in a response"))
        else:
            self._step(entry, entry.exchange.respond(data))

    def _cancel(self, fields: list[str]) -> None:
        rid = self._id(fields)
        if rid is None:
            return
        entry = self._requests.get(rid)
        if entry is not None and entry.wait is _Wait.CLIENT:
            self._drop(entry, "cancelled by the peer")
            if self._client.minor >= 4:
                self._send("CANCELLED", str(rid))

    # ------------------------------------------------------------------ the exchange

    def _step(self, entry: _Request, step: Challenge | NeedCredentials | Outcome) -> None:
        rid = entry.request.id
        if isinstance(step, Challenge) and entry.watch.announced_failure:
            # The failure goes out as FAIL now (see _VerdictWatch).
            self._step(entry, entry.exchange.respond(b""))
        elif isinstance(step, Challenge):
            entry.wait = _Wait.CLIENT
            entry.challenges += 1
            self._send("CONT", str(rid), encode_base64(step.data))
        elif isinstance(step, NeedCredentials):
            entry.wait = _Wait.SERVER
            self._events.append(CredentialsNeeded(entry.request, step.query))
        else:
            entry.wait = _Wait.VERDICT
            self._events.append(ExchangeEnded(entry.request, step))

    def answer(self, rid: int, answer: CredentialAnswer) -> None:
        """The auth service's answer to request ``rid``'s ``CredentialsNeeded``.
        Ignored once the connection is gone."""
        entry = self._requests.get(rid)
        if entry is None or self._closed:
            return
        if entry.wait is not _Wait.SERVER:
            raise RuntimeError(f"answer() for request {rid}, which waits on {entry.wait.value}")
        self._step(entry, entry.exchange.answer(answer))

    def finish(self, rid: int, result: AuthResult, user: str = "") -> None:
        """Answer request ``rid``: ``OK user=`` for a success (``user`` is the account
        logged in), ``FAIL`` for a failure (``user`` is the name the client gave, sent
        back when it is safe on the wire), and a closed connection for a temporary
        failure (see the module docstring)."""
        entry = self._requests.pop(rid, None)
        if entry is None or self._closed:
            return
        if entry.wait is not _Wait.VERDICT:
            raise RuntimeError(f"finish() for request {rid}, which waits on {entry.wait.value}")
        # The name goes to Postfix's or Exim's log: as with the mechanism, no
        # control, format or separator character reaches it (a FAIL's name is the
        # client's, any text; an OK's is an account's, which cannot have one, and
        # is sent only exactly right). Longer than any address: not sent at all.
        shown = _printable(user, _MAX_USER) if 0 < len(user) <= _MAX_USER else ""
        if result is AuthResult.SUCCESS and shown and shown == user:
            self._send("OK", str(rid), f"user={user}")
        elif result is AuthResult.TEMPFAIL:
            self._events.append(self._disconnect(
                f"temporary failure of request {rid}", protocol_error=False))
        elif shown and result is not AuthResult.SUCCESS:
            self._send("FAIL", str(rid), f"user={shown}")
        else:
            self._send("FAIL", str(rid))

    def connection_lost(self) -> list[ExchangeEnded]:
        """The peer is gone: every exchange still under way, ended as hung up."""
        self._closed = True
        self._buffer.clear()
        ended = []
        for entry in list(self._requests.values()):
            if entry.wait is _Wait.VERDICT:
                continue  # already concluded; its answer just goes nowhere
            del self._requests[entry.request.id]
            outcome = entry.exchange.abandon("connection closed")
            if outcome is not None:
                ended.append(ExchangeEnded(entry.request, outcome, answered=False))
        return ended

    def waiting_on_client(self) -> list[tuple[int, int]]:
        """(id, challenge number) of each request waiting for the client's CONT: the
        caller times them out with ``expire`` (Postfix never cancels a request its
        client gave up)."""
        return [(rid, e.challenges) for rid, e in self._requests.items()
                if e.wait is _Wait.CLIENT]

    def expire(self, rid: int, challenge: int) -> None:
        """Drop request ``rid`` if it still waits on the client for challenge number
        ``challenge`` (no answer in the caller's time): it ends as ``ExchangeEnded``
        (not answered), like a request dropped to make room."""
        entry = self._requests.get(rid)
        if entry is not None and entry.wait is _Wait.CLIENT and entry.challenges == challenge:
            self._drop(entry, "no answer from the peer in time")

    @property
    def pending(self) -> int:
        """Requests in progress (tests and metrics)."""
        return len(self._requests)


def _b64decode(text: str) -> bytes | None:
    """Strict base64 (``sasl/framing.py``, shared with SMTP); "=" is the empty
    response, as in SMTP (RFC 4954 §4)."""
    if text == "=":
        return b""
    return decode_base64_strict(text.encode("ascii", "replace"))


def _address(text: str) -> str:
    """The address in its one spelling ("" if it is none): an IPv4 client a
    dual-stack socket reports as ``::ffff:a.b.c.d`` is its IPv4 address, as the
    guard counts it, so the auth log names what a firewall can ban."""
    return reported_address(text) or ""


def _port(text: str) -> int:
    if _DIGITS.fullmatch(text) and int(text) < 65536:
        return int(text)
    return 0


#: What ``_printable`` replaces: controls (C0, DEL, C1), format characters (bidi
#: overrides and isolates, zero-width ones), line and paragraph separators,
#: surrogates. Account names refuse the same; a log line must not carry them raw.
_UNPRINTABLE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})


#: Longest user name sent back in OK or FAIL: twice an address's 254 octets.
_MAX_USER = 512


def _printable(text: str, limit: int = 64) -> str:
    """``text`` cut to ``limit`` characters, each one of ``_UNPRINTABLE_CATEGORIES``
    a '?' (the protocol's TAB and LF among them)."""
    text = text[:limit]
    if text.isascii() and text.isprintable():
        return text
    return "".join("?" if unicodedata.category(c) in _UNPRINTABLE_CATEGORIES else c
                   for c in text)

