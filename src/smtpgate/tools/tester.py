"""``smtpgate test``: one SMTP session, every step shown, and an exit code that says
where it stopped.

Theory of operation
-------------------
`run_test` walks the stages of a submission in order: connect (and the TLS
handshake first for implicit TLS), greeting, EHLO, STARTTLS and EHLO again,
AUTH, MAIL, RCPT, DATA. ``quit_after`` stops cleanly after a stage. The first
stage that fails decides the `ExitCode`; every byte exchanged is in the
`Transcript`, with the SASL payloads decoded and the secrets masked (see
``transcript.py``). The CLI prints the transcript as it grows and, with
``--json``, the `TestReport` at the end.

Security choices:

* ``--tls-verify`` is the default: a chain or host name that does not verify
  stops the test after the handshake (the certificate is still shown);
* credentials never go out in clear unless the user chose ``--plain``;
* ``--auth auto`` picks the strongest mechanism the server offers that we have
  credentials for, -PLUS only when the connection has channel-binding data;
  a password in the form of an smtpgate app password gets PLAIN or LOGIN, the
  only mechanisms app passwords work with (SCRAM keys exist for one password
  per account).

Wrong port, wrong mode: an implicit-TLS server waits for the ClientHello and
sends nothing, so a plain connection to it waits forever for a greeting. After
``greeting_wait`` seconds without one, a second connection sends a ClientHello;
a TLS answer stops the test with "HOST:PORT speaks implicit TLS (...): use --tls".
Otherwise the first connection keeps waiting (some servers greet late on
purpose) until ``timeout``.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import re
import time
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Literal

from smtpgate.client.errors import LocalProtocolError, RemoteProtocolError, TruncatedReply
from smtpgate.client.extensions import Extensions
from smtpgate.client.replies import ServerReply
from smtpgate.plural import count
from smtpgate.sasl.base import ChannelBinding
from smtpgate.tls.client import TlsClientSession, make_client_context
from smtpgate.tls.session import TlsError
from smtpgate.tools import mechanisms
from smtpgate.tools.session import (
    AuthResult,
    ServerClosed,
    SmtpSession,
    authenticate,
    speaks_tls,
)
from smtpgate.tools.tlsreport import TlsReport
from smtpgate.tools.transcript import Masker, Transcript
from smtpgate.tools.wire import ClearTextAnswer, WireClosed
from smtpgate.visible import visible

#: The form of the app passwords ``smtpgate app-password add`` prints (five groups
#: of four from a 31-letter alphabet); see ``auth/store.py``.
APP_PASSWORD_FORM = re.compile(r"[a-z2-9]{4}(?:-[a-z2-9]{4}){4}")
#: What a refused SCRAM login with a password of the app passwords' form needs to
#: be told (an ordinary password refused is just refused).
APP_PASSWORD_HINT = (
    "if this is an smtpgate app password: app passwords work with PLAIN and LOGIN "
    "only, not SCRAM; try --auth PLAIN"
)
#: The same where the server offers neither PLAIN nor LOGIN on the connection.
APP_PASSWORD_HINT_NO_PLAIN = (
    "if this is an smtpgate app password: app passwords work with PLAIN and LOGIN "
    "only, not SCRAM, and the server offers neither here"
)


class ExitCode(IntEnum):
    """Where ``smtpgate test`` stopped (docs/tester.md lists them)."""

    SUCCESS = 0
    #: A local problem: unreadable file, unusable credentials, bad option values.
    ERROR = 1
    #: click's usage error (bad or missing option).
    USAGE = 2
    #: No connection, connection lost, timeout, or a greeting other than 220.
    CONNECTION = 3
    #: STARTTLS not offered or refused, handshake failed, certificate not verified.
    TLS = 4
    #: AUTH answered 5xx, mechanism not offered, or the server failed to prove itself.
    AUTH_REFUSED = 5
    #: AUTH answered 4xx (try again later).
    AUTH_TEMPFAIL = 6
    #: MAIL, RCPT or DATA refused (4xx or 5xx): the message was not accepted.
    MESSAGE_REFUSED = 7
    #: The server does not speak SMTP properly (EHLO and HELO refused, bad reply).
    PROTOCOL = 8


Stage = Literal["connect", "ehlo", "tls", "auth", "mail", "rcpt", "data"]
QUIT_AFTER: tuple[Stage, ...] = ("connect", "ehlo", "tls", "auth", "mail", "rcpt")
TlsMode = Literal["starttls", "implicit", "plain"]

OUTCOME_NAMES = {
    ExitCode.SUCCESS: "success",
    ExitCode.ERROR: "error",
    ExitCode.USAGE: "usage",
    ExitCode.CONNECTION: "connection-failure",
    ExitCode.TLS: "tls-failure",
    ExitCode.AUTH_REFUSED: "auth-refused",
    ExitCode.AUTH_TEMPFAIL: "auth-tempfail",
    ExitCode.MESSAGE_REFUSED: "message-refused",
    ExitCode.PROTOCOL: "protocol-error",
}


@dataclass(frozen=True, slots=True)
class TesterOptions:
    __test__ = False  # not a pytest class, despite the name

    host: str
    port: int
    tls_mode: TlsMode = "starttls"
    auth: str | None = None  # a mechanism name, "auto", or None for no AUTH
    user: str = ""
    password: str = ""
    token: str = ""
    mail_from: str | None = None
    rcpt_to: tuple[str, ...] = ()
    data: bytes | None = None  # a whole message (--data FILE)
    body: str | None = None  # a body for a generated message (--body TEXT)
    #: ``Name: value`` fields (--header), each replacing the message's field of that
    #: name or added to it, as swaks's --header does.
    headers: tuple[str, ...] = ()
    quit_after: Stage | None = None
    tls_verify: bool = True
    ca_file: Path | None = None
    tls_version: str | None = None
    tls_name: str | None = None  # name to verify and send as SNI; default host
    ehlo_name: str = "localhost"
    timeout: float = 30.0
    #: Seconds without a greeting before probing for implicit TLS (see above).
    greeting_wait: float = 5.0


class _Stop(Exception):
    def __init__(self, code: ExitCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class TestReport:
    """Everything one run established; `to_json` is the ``--json`` record."""

    __test__ = False  # not a pytest class, despite the name

    options: TesterOptions
    transcript: Transcript
    exit_code: ExitCode = ExitCode.SUCCESS
    error: str = ""
    stage: Stage | None = None  # the last stage completed
    banner: str = ""
    extensions: Extensions = field(default_factory=Extensions)
    tls: TlsReport | None = None
    auth: AuthResult | None = None
    mechanisms_offered: tuple[str, ...] = ()
    accepted: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)
    queued: str = ""
    #: Replies the server sent when none was due (``SmtpSession.take_unsolicited``).
    unsolicited: list[str] = field(default_factory=list)
    elapsed: float = 0.0

    @property
    def outcome(self) -> str:
        return OUTCOME_NAMES[self.exit_code]

    def to_json(self) -> dict[str, object]:
        o = self.options
        sender, recipients = envelope(o)
        return {
            "server": o.host,
            "port": o.port,
            "mode": o.tls_mode,
            "outcome": self.outcome,
            "exit_code": int(self.exit_code),
            "error": self.error or None,
            "stage": self.stage,
            "banner": self.banner,
            "extensions": dict(self.extensions.keywords),
            "mechanisms_offered": list(self.mechanisms_offered),
            "tls": self.tls.to_json() if self.tls else None,
            "auth": self.auth.to_json() if self.auth else None,
            "message": {
                "from": sender,
                "to": list(recipients),
                "accepted": self.accepted,
                "refused": self.refused,
                "queued": self.queued or None,
            },
            "unsolicited_replies": self.unsolicited,
            "elapsed_seconds": round(self.elapsed, 3),
            "transcript": self.transcript.to_json(),
        }


def envelope(opts: TesterOptions) -> tuple[str, tuple[str, ...]]:
    """The envelope the session uses: ``--from`` (default: ``--user`` if it is an
    address, else the null sender) and ``--to`` (default: the sender)."""
    sender = opts.mail_from
    if sender is None:
        sender = opts.user if "@" in opts.user else ""
    return sender, opts.rcpt_to or ((sender,) if sender else ())


#: --quit-after stages that end the session before RCPT: no recipient is needed.
_BEFORE_RCPT: frozenset[Stage] = frozenset(("connect", "ehlo", "tls", "auth", "mail"))


def recipient_missing(opts: TesterOptions) -> bool:
    """Whether the session would reach RCPT with no one to send to (no ``--to``, and
    a null sender to default to): a usage error the command line says before it
    connects, not after a login at MAIL."""
    return not envelope(opts)[1] and opts.quit_after not in _BEFORE_RCPT


def author(opts: TesterOptions, sender: str, domain: str) -> str:
    """The generated message's From: address. The envelope sender when there is
    one; with the null sender (``--from ''``) a header still needs a mailbox (RFC
    5322 §3.6.2: "From: <>" names none, and a strict server refuses it): the
    ``--user`` when it is an address (who sends it, as a sender-ownership check
    expects), else the mail system's own ``MAILER-DAEMON@`` the EHLO domain, as
    Postfix signs what it sends with the null sender."""
    if sender:
        return sender
    return opts.user if "@" in opts.user else f"MAILER-DAEMON@{domain}"


#: RFC 5322 §2.2: a field name is printable US-ASCII but ":", at least one.
_FIELD_NAME = re.compile(r"[!-9;-~]+")


def header_problem(text: str) -> str | None:
    """Why ``text`` (a --header) cannot be a header field, or None."""
    name, colon, value = text.partition(":")
    if not colon or not _FIELD_NAME.fullmatch(name):
        return f"{text!r} is not 'Name: value' (RFC 5322 §2.2: a name of printable ASCII)"
    if "\r" in value or "\n" in value or "\0" in value:
        return f"{text!r}: CR, LF or NUL in the value"
    return None


def apply_headers(message: bytes, fields: tuple[str, ...]) -> bytes:
    """``message`` with each of ``fields`` in its header section: replacing the
    field of the same name (case-insensitive, with its folded lines; every one of
    them when it occurs more than once), else added at the end of the section.
    A message whose lines end with LF alone keeps that (the DATA framing makes
    them CRLF)."""
    if not fields:
        return message
    eol = b"\r\n" if b"\r\n" in message else b"\n"
    if message.startswith(eol):  # no header section, only a body
        head, body = b"", message[len(eol):]
    else:
        head, sep, body = message.partition(eol + eol)
        if not sep:  # a header section only
            head, body = message.removesuffix(eol), b""
    lines = head.split(eol) if head else []
    for wanted in fields:
        name = wanted.partition(":")[0].strip().lower().encode("utf-8")
        kept: list[bytes] = []
        replaced = False
        skipping = False
        for line in lines:
            if skipping and line[:1] in (b" ", b"\t"):
                continue  # a folded line of the field replaced
            skipping = line.partition(b":")[0].strip().lower() == name
            if skipping and not replaced:
                kept.append(wanted.encode("utf-8"))
                replaced = True
            elif not skipping:
                kept.append(line)
        if not replaced:
            kept.append(wanted.encode("utf-8"))
        lines = kept
    return eol.join(lines) + eol + eol + body


def build_message(opts: TesterOptions, sender: str, recipients: tuple[str, ...]) -> bytes:
    """The message to send: ``--data`` as given, else a small generated one; then
    the ``--header`` fields."""
    return apply_headers(_message(opts, sender, recipients), opts.headers)


def _message(opts: TesterOptions, sender: str, recipients: tuple[str, ...]) -> bytes:
    if opts.data is not None:
        return opts.data
    body = opts.body if opts.body is not None else "This is a test message sent by smtpgate test."
    domain = opts.ehlo_name if "." in opts.ehlo_name else "smtpgate.invalid"
    headers = [
        f"From: <{author(opts, sender, domain)}>",
        f"To: {', '.join(f'<{r}>' for r in recipients)}",
        f"Subject: smtpgate test {email.utils.formatdate(localtime=True)}",
        f"Date: {email.utils.formatdate(localtime=True)}",
        f"Message-ID: {email.utils.make_msgid('smtpgate-test', domain=domain)}",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8",
        "User-Agent: smtpgate test",
    ]
    if not body.isascii():
        headers.append("Content-Transfer-Encoding: 8bit")
    text = "\r\n".join(headers) + "\r\n\r\n" + body.replace("\r\n", "\n").replace("\n", "\r\n")
    return text.encode("utf-8") + (b"" if text.endswith("\r\n") else b"\r\n")


#: Message lines shown in the transcript before it says "... N more lines".
SHOWN_MESSAGE_LINES = 20


#: Why a server may close before it says anything: a node behind a balancer
#: (docs/scale-out.md) waits for a PROXY header first and closes a connection
#: without one, which is every direct test of that node.
PROXY_HINT = ("; a listener that expects a PROXY protocol header first (proxy_protocol = "
              "true, behind HAProxy) closes a connection that sends none: test it through "
              "the balancer")


class _Tester:
    def __init__(self, opts: TesterOptions, transcript: Transcript) -> None:
        self.opts = opts
        self.report = TestReport(opts, transcript)
        secrets = tuple(s for s in (opts.password, opts.token) if s)
        self.masker = Masker(secrets)
        transcript.scrub = self.masker.text
        self.session: SmtpSession | None = None
        self.tls_session: TlsClientSession | None = None
        #: The server greeted (a close before that says more than "connection lost").
        self.greeted = False
        #: What is due from the server now, for a timeout's error line (the JSON's
        #: ``error``, which monitoring reads, said only "the server").
        self.awaiting = "the greeting"

    @property
    def where(self) -> str:
        """``host:port``, an IPv6 address in brackets (``[::1]:587``, RFC 3986)."""
        host = f"[{self.opts.host}]" if ":" in self.opts.host else self.opts.host
        return f"{host}:{self.opts.port}"

    @property
    def s(self) -> SmtpSession:
        assert self.session is not None
        return self.session

    def info(self, text: str) -> None:
        self.report.transcript.add("info", text, self.session is not None and self.s.tls)

    def done(self, stage: Stage) -> bool:
        """Record ``stage`` as completed; True when the user asked to stop here."""
        self.report.stage = stage
        return self.opts.quit_after == stage

    async def run(self) -> TestReport:
        start = time.monotonic()
        try:
            await self._run()
        except _Stop as e:
            self.report.exit_code = e.code
            self.report.error = visible(self.masker.text(e.message))
            self.report.transcript.add("error", e.message)
        finally:
            if self.session is not None:
                # No QUIT before the greeting (RFC 5321 §3.1: the client waits
                # for it): after an implicit-TLS handshake whose certificate did
                # not verify, the greeting still due would be taken as a reply
                # nobody asked for, or as the answer to QUIT.
                if self._broken or not self.greeted:
                    await self.session.close()
                else:
                    await self.session.quit()
                self.report.unsolicited = [visible(self.masker.text(str(r)))
                                           for r in self.session.unsolicited]
            self.report.elapsed = time.monotonic() - start
        return self.report

    _broken = False

    async def _run(self) -> None:
        opts = self.opts
        self.info(f"connecting to {self.where} ({opts.tls_mode})")
        try:
            self.session = await SmtpSession.connect(
                opts.host, opts.port, timeout=opts.timeout,
                transcript=self.report.transcript, masker=self.masker,
            )
            # Every reply is read before the next command: one that came unasked
            # is taken out, not read as the next command's (see SmtpSession).
            self.session.watch_unsolicited = True
        except TimeoutError:
            raise _Stop(
                ExitCode.CONNECTION, f"connection to {self.where} timed out"
            ) from None
        except OSError as e:
            raise _Stop(
                ExitCode.CONNECTION,
                f"cannot connect to {self.where}: {e.strerror or e}",
            ) from None
        self.info(f"connected to {self.s.wire.peer}")
        try:
            await self._conversation()
        except TimeoutError:
            self._broken = True
            raise _Stop(ExitCode.CONNECTION, f"timed out waiting for {self.awaiting} "
                        f"({opts.timeout:g} s, --timeout)") from None
        except (ServerClosed, WireClosed) as e:
            self._broken = True
            if not self.greeted:
                raise _Stop(ExitCode.CONNECTION,
                            f"connection closed before the greeting: {e}{PROXY_HINT}") from None
            raise _Stop(ExitCode.CONNECTION, f"connection lost: {e}") from None
        except OSError as e:
            self._broken = True
            raise _Stop(ExitCode.CONNECTION, f"connection lost: {e.strerror or e}") from None
        except TruncatedReply as e:
            # A server killed or cut off mid-reply: the connection was lost; what
            # came of the reply is in the transcript.
            self._broken = True
            raise _Stop(ExitCode.CONNECTION, f"connection lost: {e}") from None
        except RemoteProtocolError as e:
            self._broken = True
            raise _Stop(ExitCode.PROTOCOL, f"the server does not speak SMTP: {e}") from None
        except LocalProtocolError as e:
            raise _Stop(ExitCode.ERROR, f"cannot send that: {e}") from None

    async def _handshake(self) -> None:
        opts = self.opts
        name = opts.tls_name or opts.host
        try:
            ctx = make_client_context(opts.ca_file, version=opts.tls_version)
            tls = TlsClientSession(ctx, name)
            await self.s.start_tls(tls)
        except ClearTextAnswer as e:
            self._broken = True
            hint = (": this port speaks SMTP without TLS first, use --starttls"
                    if opts.tls_mode == "implicit" else "")
            raise _Stop(ExitCode.TLS, f"TLS handshake failed: {e}{hint}") from None
        except TlsError as e:
            self._broken = True
            raise _Stop(ExitCode.TLS, f"{e}{self._version_hint(str(e))}") from None
        except (WireClosed, OSError) as e:
            self._broken = True
            hint = PROXY_HINT if opts.tls_mode == "implicit" else ""
            raise _Stop(ExitCode.TLS, f"TLS handshake failed: {e}{hint}") from None
        except TimeoutError:
            self._broken = True
            raise _Stop(ExitCode.TLS, "TLS handshake timed out") from None
        self.tls_session = tls
        report = TlsReport.from_session(tls, dt.datetime.now(dt.UTC))
        self.report.tls = report
        for line in report.lines():
            self.info(line)
        v = report.verification
        if opts.tls_verify and not v.ok:
            # Say only what can help: a CA file does not make an expired certificate
            # valid, nor does it change the names a certificate holds.
            hints = []
            missing = report.missing_issuer
            if missing is not None:
                hints.append("--ca FILE if that issuer is a private root CA")
            elif not v.chain_ok and not v.only_validity_period:
                hints.append("--ca FILE to trust it")
            if not v.hostname_ok:
                hints.append("--tls-name NAME to check it for the name it holds")
            hints.append("--no-tls-verify to go on anyway")
            problems = v.problems()
            if missing is not None:
                problems.append(report.chain_hint())
            raise _Stop(
                ExitCode.TLS,
                "certificate not accepted: " + "; ".join(problems) + f" ({', '.join(hints)})",
            )

    def _version_hint(self, error: str) -> str:
        """What OpenSSL's "tlsv1 alert protocol version" (the server's alert) or
        "unsupported protocol" (ours) means here: no TLS version in common."""
        if "protocol version" not in error and "unsupported protocol" not in error:
            return ""
        if self.opts.tls_version:
            return f": the server does not speak TLS {self.opts.tls_version} (--tls-version)"
        return (": the server speaks neither TLS 1.2 nor 1.3, the versions offered (TLS 1.0 "
                "and 1.1 never are, RFC 8996); smtpgate audit says which old one it speaks")

    async def _greeting(self) -> ServerReply:
        """The greeting on a plain connection; see "Wrong port, wrong mode" above."""
        opts = self.opts
        if opts.greeting_wait <= 0 or opts.greeting_wait >= opts.timeout:
            return await self.s.read_reply()
        try:
            return await self.s.read_reply(opts.greeting_wait)
        except TimeoutError:
            pass
        self.info(f"no greeting after {opts.greeting_wait:g} s; checking with a second "
                  "connection whether the port speaks implicit TLS")
        if await self._speaks_tls():
            self._broken = True
            raise _Stop(
                ExitCode.TLS,
                f"{self.where} speaks implicit TLS (it sent no greeting and "
                "answered a TLS ClientHello): use --tls",
            )
        self.info("no TLS answer either; still waiting for the greeting")
        return await self.s.read_reply(opts.timeout - opts.greeting_wait)

    async def _speaks_tls(self) -> bool:
        opts = self.opts
        return await speaks_tls(opts.host, opts.port, opts.tls_name or opts.host,
                                opts.greeting_wait)

    async def _ehlo(self) -> None:
        self.awaiting = "the reply to EHLO"
        reply = await self.s.ehlo(self.opts.ehlo_name)
        if reply.code == 421:  # the server is closing (RFC 5321 §3.8): HELO was not tried
            raise _Stop(ExitCode.PROTOCOL, f"EHLO refused, the server is closing: {reply}")
        if reply.code != 250:
            raise _Stop(ExitCode.PROTOCOL, f"EHLO and HELO refused: {reply}")
        self.report.extensions = self.s.engine.extensions
        self.report.mechanisms_offered = self.s.engine.extensions.auth_mechanism_list

    async def _conversation(self) -> None:
        opts = self.opts
        if opts.tls_mode == "implicit":
            await self._handshake()
            greeting = await self.s.read_reply()
        else:
            greeting = await self._greeting()
        self.greeted = True
        self.report.banner = greeting.text
        if greeting.code != 220:
            raise _Stop(ExitCode.CONNECTION, f"server refused the session: {greeting}")
        if self.done("connect"):
            return
        await self._ehlo()
        if self.done("ehlo"):
            return
        if opts.tls_mode == "starttls":
            if not self.s.engine.extensions.starttls:
                raise _Stop(
                    ExitCode.TLS,
                    "the server does not offer STARTTLS (--plain to go on without TLS)",
                )
            self.awaiting = "the reply to STARTTLS"
            reply = await self.s.command(self.s.engine.starttls())
            if reply.code != 220:
                raise _Stop(ExitCode.TLS, f"STARTTLS refused: {reply}")
            await self._handshake()
            await self._ehlo()
        if opts.tls_mode != "plain":
            if self.done("tls"):
                return
        elif opts.quit_after == "tls":
            return  # nothing to do for "tls" without TLS: stop where asked
        if opts.auth is not None:
            await self._auth()
            if self.done("auth"):
                return
        elif opts.quit_after == "auth":
            return  # no --user, no AUTH: stop where asked, before any MAIL
        await self._message()

    async def _auth(self) -> None:
        opts = self.opts
        offered = self.s.engine.extensions.auth_mechanism_list
        shown = " ".join(offered)
        cb = self.tls_session.channel_binding() if self.tls_session else ChannelBinding()
        if not offered:
            raise _Stop(ExitCode.AUTH_REFUSED, "the server offers no AUTH mechanism here")
        requested = (opts.auth or "auto").upper()
        app_password = bool(APP_PASSWORD_FORM.fullmatch(opts.password)) and not opts.token
        if requested == "AUTO":
            name = mechanisms.choose(
                offered, password=bool(opts.password), token=bool(opts.token),
                channel_binding=cb.available,
            )
            cleartext = [m for m in mechanisms.implemented()
                         if m in mechanisms.CLEARTEXT and m in offered]
            if app_password and cleartext and name not in cleartext:
                name = cleartext[0]
                self.info(f"--auth auto chose {name} (offered: {shown}): the password has the "
                          "form of an smtpgate app password, which works with PLAIN and "
                          "LOGIN only")
            elif name is None:
                raise _Stop(
                    ExitCode.AUTH_REFUSED,
                    f"no offered mechanism ({shown}) can be used with "
                    "the credentials given",
                )
            else:
                self.info(f"--auth auto chose {name} (offered: {shown})")
        else:
            name = requested
            if name not in mechanisms.implemented():
                raise _Stop(ExitCode.ERROR, f"mechanism {name} is not implemented; "
                            f"known: {', '.join(mechanisms.implemented())}")
            if name not in offered:
                raise _Stop(ExitCode.AUTH_REFUSED,
                            f"the server does not offer {name} (offers: {shown})")
        if name.endswith("-PLUS") and not cb.available:
            raise _Stop(ExitCode.ERROR, f"{name} needs TLS (channel binding)")
        if not self.s.tls and (name in mechanisms.CLEARTEXT or name in mechanisms.TOKEN_MECHANISMS):
            self.report.transcript.add(
                "error", f"warning: {name} sends the secret itself, and there is no TLS (--plain)"
            )
        try:
            mech = mechanisms.build(
                name, username=opts.user, password=opts.password, token=opts.token,
                channel_binding=cb, offered=offered,
            )
        except ValueError as e:
            raise _Stop(ExitCode.ERROR, f"cannot use these credentials with {name}: {e}") from None
        self.awaiting = "a reply in the AUTH exchange"
        result = self.masker.auth_result(await authenticate(self.s, mech))
        self.report.auth = result
        if result.outcome == "tempfail":
            raise _Stop(ExitCode.AUTH_TEMPFAIL, f"{name}: temporary failure: {result.detail}")
        if result.outcome == "refused":
            # Only when the server said no: after a 235 without a server signature
            # the password was not the problem (the server is).
            said_no = result.reply is not None and result.reply.code != 235
            hint = ""
            if name.startswith("SCRAM-") and app_password and said_no:
                # Only a password of the app passwords' form can be one: the server
                # takes nothing else as an app password (auth/service.py).
                hint = (f" ({APP_PASSWORD_HINT})" if {"PLAIN", "LOGIN"} & set(offered)
                        else f" ({APP_PASSWORD_HINT_NO_PLAIN})")
            raise _Stop(ExitCode.AUTH_REFUSED, f"{name} refused: {result.detail}{hint}")
        verified = " (server signature verified)" if result.server_verified else ""
        self.info(f"authenticated as {opts.user} with {name}{verified}")

    async def _message(self) -> None:
        opts = self.opts
        s = self.s
        sender, recipients = envelope(opts)
        if recipient_missing(opts):
            raise _Stop(ExitCode.ERROR, "no recipient: pass --to ADDRESS")
        content = build_message(opts, sender, recipients)
        self.awaiting = "the reply to MAIL"
        reply = await s.command(s.engine.mail(sender, self._mail_params(
            sender, recipients, content)))
        if not reply.is_positive:
            raise _Stop(ExitCode.MESSAGE_REFUSED, f"MAIL refused: {reply}")
        if self.done("mail"):
            return
        self.awaiting = "the reply to RCPT"
        for rcpt in recipients:
            reply = await s.command(s.engine.rcpt(rcpt))
            if reply.is_positive:
                self.report.accepted.append(rcpt)
            else:
                self.report.refused[rcpt] = str(reply)
        if self.report.refused:
            bad = ", ".join(f"{r}: {t}" for r, t in self.report.refused.items())
            raise _Stop(ExitCode.MESSAGE_REFUSED, f"RCPT refused: {bad}")
        if self.done("rcpt"):
            return
        self.awaiting = "the reply to DATA"
        reply = await s.command(s.engine.data())
        if reply.code != 354:
            raise _Stop(ExitCode.MESSAGE_REFUSED, f"DATA refused: {reply}")
        payload = s.engine.message(content)
        lines = payload.decode("utf-8", "replace").split("\r\n")[:-1]
        shown = lines[:SHOWN_MESSAGE_LINES]
        if len(lines) > SHOWN_MESSAGE_LINES + 1:
            more = len(lines) - SHOWN_MESSAGE_LINES - 1
            shown = [*shown, f"[... {count(more, 'more line', 'more lines')}, {len(payload)} bytes in all ...]", lines[-1]]
        else:
            shown = lines
        self.awaiting = "the reply to the message (after DATA)"
        await s.send(payload, "\n".join(shown))
        reply = await s.read_reply()
        if not reply.is_positive:
            raise _Stop(ExitCode.MESSAGE_REFUSED, f"message refused after DATA: {reply}")
        self.report.queued = str(reply)
        self.done("data")


    def _mail_params(self, sender: str, recipients: tuple[str, ...], content: bytes) -> list[str]:
        """MAIL's parameters for this message, as a conforming client declares them:
        SMTPUTF8 for a non-ASCII address or header (RFC 6531 §3.4, RFC 6532), which
        a server without it cannot take; BODY=8BITMIME for 8-bit content when the
        server offers it (RFC 6152 §3; without it the content goes as is, as
        swaks sends it, with a warning)."""
        ext = self.s.engine.extensions
        params = []
        if not content.isascii():
            if ext.eightbitmime:
                params.append("BODY=8BITMIME")
            else:
                self.report.transcript.add(
                    "error", "warning: the message has 8-bit content and the server does "
                    "not offer 8BITMIME (RFC 6152)", self.s.tls)
        if _needs_smtputf8(sender, recipients, content):
            if not ext.smtputf8:
                raise _Stop(ExitCode.ERROR, "the server does not offer SMTPUTF8, which a "
                            "non-ASCII address or header needs (RFC 6531)")
            params.append("SMTPUTF8")
        return params


def _needs_smtputf8(sender: str, recipients: tuple[str, ...], content: bytes) -> bool:
    """A non-ASCII envelope address, or a non-ASCII octet in the header section."""
    if not sender.isascii() or not all(r.isascii() for r in recipients):
        return True
    # A --data file may end its lines with LF alone.
    header = re.split(rb"(?:^|\r?\n)\r?\n", content, maxsplit=1)[0]
    return not header.isascii()


async def run_test(opts: TesterOptions, transcript: Transcript | None = None) -> TestReport:
    """Run one test session; never raises for anything the server or network does."""
    return await _Tester(opts, transcript if transcript is not None else Transcript()).run()

