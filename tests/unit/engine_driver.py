"""A tiny synchronous driver for the sans-IO engine, used by the engine tests.

It answers decision events the way the server would with a fixed account
table, so tests read as transcripts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from smtpgate.sasl import base as sasl
from smtpgate.sasl.registry import create_server_mechanism
from smtpgate.smtp import replies as R
from smtpgate.smtp.engine import EngineSettings, ServerEngine, TlsInfo
from smtpgate.smtp.events import (
    NEED_DATA,
    PAUSED,
    AuthFinished,
    AuthQuery,
    CloseConnection,
    MailFrom,
    MessageAborted,
    MessageData,
    MessageReceived,
    MessageStart,
    RcptTo,
    StartTls,
)

ACCOUNTS = {"alice@example.org": "correct horse"}
TLS = TlsInfo("TLSv1.3", "TLS_AES_128_GCM_SHA256", sasl.ChannelBinding({"tls-exporter": b"x" * 32}))


def factory(name: str, cb: sasl.ChannelBinding, plus: bool) -> sasl.ServerMechanism:
    return create_server_mechanism(name, channel_binding=cb, hostname="mx.test", plus_advertised=plus)


def settings(**kw: object) -> EngineSettings:
    base: dict[str, object] = {"hostname": "mx.test", "mechanism_factory": factory}
    base.update(kw)
    return EngineSettings(**base)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Delivered:
    """A message the engine handed over: its MessageReceived and the bytes of its
    MessageData events (what the server writes to the spool)."""

    event: MessageReceived
    data: bytes

    def __getattr__(self, name: str) -> object:
        return getattr(self.event, name)


@dataclass
class Driver:
    engine: ServerEngine
    events: list[object] = field(default_factory=list)
    messages: list[Delivered] = field(default_factory=list)
    #: The message being written (MessageStart to MessageReceived/MessageAborted).
    writing: bytearray | None = None
    auth_store_down: bool = False
    closed: bool = False
    starttls_pending: bool = False
    #: What MAIL is answered (None: the default 250).
    mail_reply: R.Reply | None = None

    @classmethod
    def new(cls, *, tls: bool = False, greet: bool = True, **kw: object) -> Driver:
        d = cls(ServerEngine(settings(**kw), tls=TLS if tls else None))
        if greet:
            d.engine.greeting()
            d.engine.data_to_send()
        return d

    def feed(self, data: bytes, *, bytewise: bool = False) -> bytes:
        chunks = [data[i : i + 1] for i in range(len(data))] if bytewise else [data]
        for chunk in chunks:
            self.engine.receive_data(chunk)
            self.pump()
        return self.engine.data_to_send()

    def pump(self) -> None:
        e = self.engine
        while True:
            ev = e.next_event()
            if ev is NEED_DATA or ev is PAUSED:
                return
            self.events.append(ev)
            if isinstance(ev, MailFrom):
                e.respond(self.mail_reply)
            elif isinstance(ev, RcptTo):
                e.respond(None)
            elif isinstance(ev, MessageStart):
                assert self.writing is None
                self.writing = bytearray()
            elif isinstance(ev, MessageData):
                assert self.writing is not None
                self.writing += ev.data
            elif isinstance(ev, MessageAborted):
                self.writing = None
            elif isinstance(ev, MessageReceived):
                assert self.writing is not None and len(self.writing) == ev.size
                self.messages.append(Delivered(ev, bytes(self.writing)))
                self.writing = None
                e.respond(R.MESSAGE_ACCEPTED)
            elif isinstance(ev, AuthQuery):
                e.auth_answer(self.answer(ev.query))
            elif isinstance(ev, AuthFinished):
                e.respond(None)
            elif isinstance(ev, StartTls):
                self.starttls_pending = True
                return
            elif isinstance(ev, CloseConnection):
                self.closed = True
                return

    def answer(self, q: sasl.CredentialQuery) -> sasl.CredentialAnswer:
        if self.auth_store_down:
            return sasl.Verdict(ok=False, temporary=True, reason="store down")
        if isinstance(q, sasl.VerifyPassword):
            # As the auth service: no proxy authorization (auth/service.py).
            ok = ACCOUNTS.get(q.username) == q.password and q.authzid in ("", q.username)
            return sasl.Verdict(ok=ok, identity=q.username if ok else "", reason="" if ok else "bad")
        if isinstance(q, sasl.ProofArrived):
            return sasl.Verdict(ok=True)  # as the auth service: the guard is not here
        return sasl.NotFound()

    def start_tls(self) -> None:
        assert self.starttls_pending
        self.starttls_pending = False
        self.engine.tls_established(TLS)
        self.pump()
