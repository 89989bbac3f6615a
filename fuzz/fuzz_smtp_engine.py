"""Fuzz the sans-IO SMTP server engine (smtp/engine.py) with whole sessions.

Input: byte 0 sets the session (bit 0: TLS already on; 1: AUTH in clear allowed;
2: bare-LF normalisation; 3: a 64-byte message size limit; 4: two recipients
at most; 5: an implicit-TLS listener; 6: a client certificate; 7: the auth store
is down), byte 1 seeds the random cut points, the rest is what the client sends
(``_common.expand`` applies). The driver answers every decision as the server
would, with a fixed account table. Invariants, beyond "no exception":

* the same bytes in one piece, cut at random points and byte by byte give the
  same events and the same output;
* the output is whole replies only: CRLF-terminated lines of a 2xx-5xx code and
  "-" or " ", at most 512 octets (RFC 5321 §4.5.3.1.5; a 334 challenge may be
  longer), continuation lines of one code, an enhanced code of the reply's class
  on every reply but the greeting, the EHLO/HELO answer and 334/354 (RFC 2034 §3);
  the client's reply parser reads it without error; nothing follows a 221/421;
* DATA ends only at CRLF.CRLF (byte by byte, the engine leaves DATA exactly when
  the bytes since the DATA line end with it), and the message handed over is that
  content dot-unstuffed;
* a MAIL or RCPT address handed over, its path with angle brackets or without,
  is one mailbox: no bracket, space, comma or parenthesis outside a quoted local part;
* no MAIL, RCPT or message before a successful AUTH; a success only for an identity
  the auth service granted; no mechanism error masked as a temporary failure.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

with C.instrument(__name__ == "__main__"):
    from smtpgate.client.errors import RemoteProtocolError
    from smtpgate.client.replies import ReplyParser
    from smtpgate.sasl import base as S
    from smtpgate.sasl.registry import create_server_mechanism, server_mechanism_names
    from smtpgate.sasl.scram import scram_credentials_from_password
    from smtpgate.smtp import replies as R
    from smtpgate.smtp.engine import REFUSED_REASONS, EngineSettings, ServerEngine, TlsInfo
    from smtpgate.smtp.events import (
        NEED_DATA,
        PAUSED,
        AuthFinished,
        AuthQuery,
        AuthRefused,
        CloseConnection,
        MailFrom,
        MessageReceived,
        RcptTo,
        StartTls,
    )
    from smtpgate.smtp.states import State

HOST = "mx.test"
PASSWORDS = {
    "alice@example.org": "correct horse",
    "dialog@example.org": "correct horse battery",  # tests/dialogs' account
    C.RFC_USER: C.RFC_PASSWORD,
}
SCRAM_CREDS = {
    h: scram_credentials_from_password(C.RFC_PASSWORD, h, it, salt=salt)
    for h, (salt, it, _, _) in C.RFC_SCRAM.items()
}
MECHANISMS = tuple(server_mechanism_names())
_TLS_FIELDS = {f.name for f in dataclasses.fields(TlsInfo)}
_LINE = re.compile(rb"[2-5][0-9][0-9][ -]")
_ENHANCED = re.compile(rb"([245])\.[0-9]{1,3}\.[0-9]{1,3} ")
#: RFC 5321 §4.5.3.1.5: a reply line is at most 512 octets with its CRLF.
MAX_REPLY_LINE = 512


#: What no address handed over holds outside a quoted local part: the marks of a
#: path, a list, a comment or a parameter the parser should have kept out of it.
_NOT_IN_ADDRESS = frozenset('<> ,;()"\t')


def check_address(address: str, ev: object) -> None:
    """A MAIL or RCPT address handed over is one mailbox, its path written with or
    without angle brackets: a bare path never lets a bracket, a second address or
    a parameter into the address the sender policy is asked about."""
    local, _, domain = address.rpartition("@")
    outside = domain if local.startswith('"') and local.endswith('"') else address
    if not _NOT_IN_ADDRESS.isdisjoint(outside):
        C.fail("an address handed over holds a path's, list's or parameter's marks", ev)


def _factory(name: str, cb: S.ChannelBinding, plus: bool) -> S.ServerMechanism:
    if name.startswith("SCRAM-"):
        nonce = C.RFC_SCRAM["sha256" if "256" in name else "sha1"][3]
    else:
        nonce = "1896.697170952"
    return create_server_mechanism(
        name, channel_binding=cb, hostname=HOST, plus_advertised=plus,
        nonce_factory=lambda: nonce, decoy_secret=b"fuzz-decoy", decoy_iterations=4096,
    )


def _tls(cert: bool) -> TlsInfo:
    kw: dict[str, object] = {}
    if cert and "client_certificate" in _TLS_FIELDS and hasattr(S, "ClientCertificate"):
        kw["client_certificate"] = S.ClientCertificate("ab" * 32)
    return TlsInfo("TLSv1.3", "TLS_AES_128_GCM_SHA256", S.ChannelBinding(dict(C.CB_DATA)), **kw)


class Session:
    """One engine driven over one chunking; records what a comparison needs."""

    def __init__(self, flags: int, xclient: bool = False) -> None:
        self.flags = flags
        self.settings = EngineSettings(
            hostname=HOST,
            mechanism_factory=_factory,
            mechanisms=MECHANISMS,
            max_message_size=64 if flags & 8 else 100_000,
            max_recipients=2 if flags & 16 else 100,
            starttls=not flags & 32,
            auth_in_clear=bool(flags & 2),
            normalize_bare_lf=bool(flags & 4),
        )
        self.cert = bool(flags & 64)
        self.store_down = bool(flags & 128)
        self.engine = ServerEngine(self.settings, tls=_tls(self.cert) if flags & 1 else None)
        if hasattr(self.engine, "xclient_trusted"):
            self.engine.xclient_trusted = bool(xclient)
        self.events: list[object] = []
        self.out = bytearray()
        self.granted: set[str] = set()
        self.stopped = False
        # Byte-by-byte bookkeeping of DATA.
        self.fed = bytearray()
        self.data_start: int | None = None
        #: Streaming DATA (MessageStart, MessageData..., MessageReceived/Aborted): the
        #: content so far, None outside a message or once it was aborted.
        self.content: bytearray | None = None
        #: The message under way is BODY=BINARYMIME (its octets are kept as sent).
        self.binary = False
        #: Each MessageReceived with its content; how many there were when DATA began.
        self.received: list[tuple[MessageReceived, bytes]] = []
        self.received_at_data = 0

    def run(self, chunks: list[bytes], *, track_data: bool = False) -> None:
        e = self.engine
        e.greeting()
        self.out += e.data_to_send()
        for chunk in chunks:
            if self.stopped:
                break
            was_in_data = e.state is State.DATA  # DATA only (in_data covers BDAT too)
            e.receive_data(chunk)
            self.fed += chunk
            self.pump()
            self.out += e.data_to_send()
            if track_data:
                self.track(was_in_data)

    def track(self, was_in_data: bool) -> None:
        e = self.engine
        in_data = e.state is State.DATA
        if not was_in_data and in_data:
            self.data_start = len(self.fed)
            self.received_at_data = len(self.received)
        elif was_in_data and not in_data and not self.stopped:
            assert self.data_start is not None
            seg = bytes(self.fed[self.data_start :])
            if not (b"\r\n" + seg).endswith(b"\r\n.\r\n"):
                C.fail("DATA ended before CRLF.CRLF", seg[-40:])
            self.check_message(seg)
            self.data_start = None

    def check_message(self, seg: bytes) -> None:
        handed = self.received[self.received_at_data :]
        if not handed:
            return  # refused (too big, bare CR/LF): no message handed over
        content = handed[0][1]
        if self.settings.normalize_bare_lf:
            return
        raw = seg[:-3]  # without ".\r\n"; ends with CRLF or is empty
        lines = raw[:-2].split(b"\r\n") if raw else []
        want = b"".join((ln[1:] if ln.startswith(b".") else ln) + b"\r\n" for ln in lines)
        if content != want:
            C.fail("message is not the DATA content unstuffed", (content[:80], want[:80]))

    def pump(self) -> None:
        e = self.engine
        while not self.stopped:
            ev = e.next_event()
            if ev is NEED_DATA or ev is PAUSED:
                return
            kind = type(ev).__name__
            if kind == "MessageData":
                # Its cuts follow the chunking: compared as the content it adds up to.
                if self.content is None:
                    C.fail("message data outside a message or after its abort", ev)
                else:
                    self.content += ev.data
                continue
            self.events.append(ev if not isinstance(ev, StartTls) else StartTls(0))
            if isinstance(ev, MailFrom | RcptTo | MessageReceived) and not e.identity:
                C.fail("transaction event without authentication", ev)
            if kind == "MessageStart":
                if not e.identity or self.content is not None:
                    C.fail("message start unauthenticated or inside a message", ev)
                self.content = bytearray()
                self.binary = bool(getattr(ev, "body_binary", False))
            elif kind == "MessageAborted":
                # Which fault is named first may follow the chunking; the reply does not.
                self.events[-1] = "MessageAborted"
                self.content = None
            elif kind == "Xclient":
                # A proxy the listener trusts vouches for its client's login.
                login = getattr(ev, "login", None)
                if login:
                    self.granted.add(login)
                e.xclient_answer(login or None)  # type: ignore[attr-defined]
            elif isinstance(ev, MailFrom):
                check_address(ev.sender, ev)
                e.respond(R.SENDER_NOT_OWNED if "deny" in ev.sender else None)
            elif isinstance(ev, RcptTo):
                check_address(ev.recipient, ev)
                e.respond(R.BAD_ADDRESS if "deny" in ev.recipient else None)
            elif isinstance(ev, MessageReceived):
                content = getattr(ev, "data", None)
                if content is None:
                    if self.content is None:
                        C.fail("message received without its start or after its abort", ev)
                    content = bytes(self.content or b"")
                self.content = None
                self.check_received(ev, content)
                self.received.append((ev, content))
                e.respond(R.MESSAGE_ACCEPTED)
            elif isinstance(ev, AuthQuery):
                e.auth_answer(self.answer(ev.query))
            elif isinstance(ev, AuthFinished):
                if ev.reason.startswith("internal mechanism error"):
                    C.fail("a mechanism raised inside the exchange", ev)
                if ev.result == "success" and ev.identity not in self.granted:
                    C.fail("AUTH success for an identity nobody granted", ev)
                e.respond(None)
            elif isinstance(ev, AuthRefused):
                # A notice, not a decision: one of the engine's reasons (maybe with
                # the undecodable initial response's after a colon), no exchange open.
                if ev.reason.partition(":")[0] not in REFUSED_REASONS:
                    C.fail("AUTH refused with a reason of no kind", ev)
                if e.state is State.AUTH:
                    C.fail("AUTH refused while an exchange is open", ev)
            elif isinstance(ev, StartTls | CloseConnection):
                self.stopped = True
            else:
                C.fail("unknown event", ev)

    def check_received(self, ev: MessageReceived, d: bytes) -> None:
        if ev.identity not in self.granted or not ev.recipients:
            C.fail("message without identity or recipients", ev)
        if len(ev.recipients) > self.settings.max_recipients:
            C.fail("more recipients than the limit", ev)
        if len(d) > self.settings.max_message_size:
            C.fail("message over the size limit", len(d))
        if getattr(ev, "size", len(d)) != len(d):
            C.fail("MessageReceived.size is not the content's", (ev, len(d)))
        header = getattr(ev, "header", None)
        if header is not None:
            end = 0 if d.startswith(b"\r\n") else d.find(b"\r\n\r\n") + 2
            want = d[:end] if end >= 2 or d.startswith(b"\r\n") else d
            if header != want:
                C.fail("MessageReceived.header is not the header section", (header, d[:200]))
        if d and not d.endswith(b"\r\n") and not self.binary:
            # DATA's end is CRLF.CRLF; BDAT content that lacks it gets one (bdat.py),
            # BINARYMIME is kept as sent.
            C.fail("message does not end with CRLF", d[-20:])
        if d.count(b"\r") != d.count(b"\r\n") or d.count(b"\n") != d.count(b"\r\n"):
            C.fail("bare CR or LF in an accepted message", d[:80])

    def answer(self, q: S.CredentialQuery) -> S.CredentialAnswer:
        if self.store_down:
            return S.NotFound("store down", temporary=True)
        if isinstance(q, S.VerifyPassword):
            ok = PASSWORDS.get(q.username) == q.password
            if ok:
                self.granted.add(q.username)
            return S.Verdict(ok=ok, identity=q.username if ok else "", reason="bad")
        if isinstance(q, S.LookupScram):
            return SCRAM_CREDS[q.hash_name] if q.username == C.RFC_USER else S.NotFound()
        if isinstance(q, S.ProofArrived):
            return S.Verdict(ok=True)  # the login path's guard re-check: go on
        if isinstance(q, S.ConfirmIdentity):
            # The mechanism proved it (fuzz_sasl_server.py checks that proof).
            self.granted.add(q.username)
            return S.Verdict(ok=True, identity=q.username)
        if type(q).__name__ == "VerifyCertificate":
            ok = self.cert and q.username in ("", C.RFC_USER)
            if ok:
                self.granted.add(C.RFC_USER)
            return S.Verdict(ok=ok, identity=C.RFC_USER if ok else "")
        return S.NotFound()


def check_output(out: bytes) -> None:
    if not out.endswith(b"\r\n"):
        C.fail("output does not end with CRLF", out[-60:])
    lines = out[:-2].split(b"\r\n")
    reply: list[bytes] = []
    replies: list[list[bytes]] = []
    for line in lines:
        if b"\n" in line or b"\r" in line:
            C.fail("bare CR or LF in a reply line", line)
        if not _LINE.match(line):
            C.fail("not a reply line", line)
        if len(line) + 2 > MAX_REPLY_LINE and not line.startswith(b"334 "):
            C.fail("reply line over 512 octets", line[:60])
        if reply and line[:3] != reply[0][:3]:
            C.fail("continuation line with another code", (reply, line))
        reply.append(line)
        if line[3:4] == b" ":
            replies.append(reply)
            reply = []
    if reply:
        C.fail("reply without its last line", reply)
    for i, rep in enumerate(replies):
        code = rep[0][:3]
        if i == 0:
            if code != b"220":
                C.fail("no 220 greeting", rep)
            continue
        if code in (b"334", b"354") or (code in (b"250",) and rep[0][4:] == HOST.encode()):
            continue
        if code == b"220" and rep[0][4:].startswith(HOST.encode() + b" "):
            continue  # a greeting again (after XCLIENT, as Postfix does)
        for line in rep:
            m = _ENHANCED.match(line, 4)
            if m is None or m.group(1) != code[:1]:
                C.fail("reply without an enhanced code of its class", rep)
        if code in (b"221", b"421") and i != len(replies) - 1:
            C.fail("output after the closing reply", replies[i:])
    parser = ReplyParser()
    parser.feed(out)
    n = 0
    try:
        while parser.next_reply() is not None:
            n += 1
    except RemoteProtocolError as e:
        C.fail("the client parser refuses our output", (str(e), out[-200:]))
    if n != len(replies):
        C.fail("the client parser counts other replies", (n, len(replies)))


def TestOneInput(data: bytes) -> None:
    if len(data) < 2:
        return
    flags, seed = data[0], data[1]
    stream = C.expand(data[2:])
    sessions = []
    for chunks in C.chunkings(stream, seed, bytewise_limit=1024, random_cuts=False):
        s = Session(flags, xclient=bool(seed & 0x80))
        s.run(chunks, track_data=len(chunks) == len(stream) and len(stream) > 1)
        sessions.append(s)
    first = sessions[0]
    for s in sessions[1:]:
        if s.events != first.events or s.out != first.out:
            C.fail("chunking changes the session", (first.events, s.events, first.out[-300:],
                                                    s.out[-300:]))
    check_output(bytes(first.out))


if __name__ == "__main__":
    C.main(TestOneInput)
