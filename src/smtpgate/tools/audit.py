"""``smtpgate audit``: probe SMTP servers' TLS and AUTH set-up and grade it.

Theory of operation
-------------------
Each target (host and port) gets a few short connections, each a probe with one
question (the catalogue of what can be found is ``findings.py``):

1. **main**: greeting, EHLO in clear (what AUTH is advertised before TLS),
   STARTTLS or implicit TLS (version, cipher, certificate, chain and host
   name), EHLO again (what AUTH is offered after TLS), then the **relay**
   probe without AUTH: one MAIL and one RCPT per classic trick (plain, percent
   hack, source route, quoted local part, bang path), then RSET. DATA is never
   sent, so nothing can be relayed even by an open relay.
2. **auth in clear** (not for implicit TLS): ``AUTH <mech>`` before TLS with no
   initial response. A 334 means the server runs the exchange in clear; we
   answer with a *dummy* identity (``audit-probe@smtpgate-audit.invalid`` and a
   random password), never a real credential, and only for PLAIN and LOGIN;
   other mechanisms are cancelled with ``*``.
3. **STARTTLS injection**: ``STARTTLS`` and an unknown command in one write.
   A server that keeps its input buffer across the TLS switch answers that
   command inside TLS, before our EHLO; a correct one discarded it (RFC 3207
   §4.2), so the first reply inside TLS is the 250 to EHLO.
4. **legacy TLS**: a handshake pinned to TLS 1.0, then to 1.1. OpenSSL 3
   refuses both at its default security level even on the client side, so the
   probe uses ``@SECLEVEL=0`` (see ``wire.LegacyTls``); only this probe does.
5. **credentials** (with ``--user``): one connection per mechanism offered after
   TLS that we can speak, always over TLS; never in clear.
6. **made-up login after TLS**: the dummy identity of 2. once more, inside TLS,
   with PLAIN or LOGIN: a server keeping AUTH for TLS refuses the clear probe
   whatever its back end checks.

Probes of one target run one after the other (servers rate-limit a client
address); targets run concurrently, a few at a time.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import secrets
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from smtpgate.auth.networks import parse_ip
from smtpgate.client.errors import ProtocolError
from smtpgate.client.replies import ServerReply
from smtpgate.plural import count
from smtpgate.sasl.scram import ScramClient, escape_saslname
from smtpgate.tls.client import TlsClientSession, make_client_context
from smtpgate.tls.session import TlsError
from smtpgate.tools import mechanisms
from smtpgate.tools.findings import Finding, finding, grade, worst
from smtpgate.tools.hostport import split_host_port
from smtpgate.tools.session import AuthResult, SmtpSession, authenticate, speaks_tls
from smtpgate.tools.tlsreport import TlsReport
from smtpgate.tools.transcript import Masker
from smtpgate.tools.wire import ClearTextAnswer, LegacyTls, WireClosed

Mode = Literal["starttls", "implicit", "auto"]

#: RFC 6409 submission, RFC 8314 submissions; port 25 only when asked (it is
#: the MX port, where AUTH is unusual and relaying rules differ).
DEFAULT_PORTS = (587, 465)
MX_PORT = 25
#: A certificate that expires within this many days is a finding: ACME renews
#: at 30 days left, so a healthy set-up never shows less.
EXPIRY_WARNING_DAYS = 30

#: RFC 7677 §4 (and RFC 5802 §5.1 for SHA-1): a server SHOULD announce at least
#: this many PBKDF2 iterations.
MIN_SCRAM_ITERATIONS = 4096
#: How long to wait for a greeting before deciding an unknown port speaks TLS first.
GREETING_SNIFF_SECONDS = 3.0

DUMMY_USER = "audit-probe@smtpgate-audit.invalid"
RELAY_LOCAL_PART = "relay-probe"
RELAY_SENDER = "audit-probe@example.com"
#: The unknown verb pipelined behind STARTTLS (a recognisable non-250 answer).
INJECTED_COMMAND = "XSMTPGATEAUDIT"


class _Probe(Exception):
    """A probe could not finish; the message goes into the target's notes."""


@dataclass(frozen=True, slots=True)
class Target:
    host: str
    port: int
    mode: Mode
    #: The mode came from an ``smtp://``/``smtps://`` scheme the user wrote, not
    #: from the port's convention (465 implicit, 25/587 STARTTLS).
    scheme_given: bool = False
    #: The port was written, not one of a bare HOST's defaults (587, 465, 25):
    #: a default port with nothing on it is no failure while another of the
    #: host's ports was audited (most servers offer only 587 or only 465).
    port_given: bool = field(default=True, compare=False)

    @property
    def label(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def _mode_for(port: int) -> Mode:
    if port == 465:
        return "implicit"
    if port in (25, 587):
        return "starttls"
    return "auto"


def parse_targets(specs: Sequence[str], *, port25: bool = False) -> list[Target]:
    """``HOST``, ``HOST:PORT``, ``[v6]:PORT``, with an optional ``smtp://`` (STARTTLS)
    or ``smtps://`` (implicit TLS) scheme. A host without a port means 587 and 465
    (and 25 with ``port25``).

    Raises:
        ValueError: a spec that is not a target.
    """
    out: list[Target] = []
    for spec in specs:
        mode: Mode | None = None
        rest = spec
        schemes: dict[str, Mode] = {"smtps://": "implicit", "smtp://": "starttls"}
        for scheme, m in schemes.items():
            if rest.lower().startswith(scheme):
                mode, rest = m, rest[len(scheme) :]
        rest = rest.rstrip("/")
        try:
            host, port_text = split_host_port(rest)
        except ValueError as e:
            raise ValueError(f"{spec!r}: {e}") from None
        if not host:
            raise ValueError(f"{spec!r}: no host")
        if port_text:
            if not port_text.isdigit() or not 0 < int(port_text) < 65536:
                raise ValueError(f"{spec!r}: bad port")
            ports = [int(port_text)]
        else:
            ports = [*DEFAULT_PORTS, *([MX_PORT] if port25 else [])]
        for port in ports:
            t = Target(host, port, mode or _mode_for(port), scheme_given=mode is not None,
                       port_given=bool(port_text))
            if t not in out:
                out.append(t)
            elif t.port_given:  # written out as well as a default: it was asked for
                out[out.index(t)] = t
    return out


@dataclass(frozen=True, slots=True)
class AuditOptions:
    ca_file: Path | None = None
    tls_name: str | None = None
    timeout: float = 15.0
    user: str = ""
    password: str = ""
    token: str = ""
    ehlo_name: str = "localhost"
    relay_domain: str | None = None  # default: the name in the server's greeting
    outside_domain: str = "example.net"
    concurrency: int = 4
    #: Seconds for all the probes of one target (see `_Auditor.run`).
    max_time: float = 300.0
    now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)


@dataclass(frozen=True, slots=True)
class RelayAttempt:
    trick: str
    recipient: str
    reply: str
    accepted: bool

    def to_json(self) -> dict[str, object]:
        return {"trick": self.trick, "recipient": self.recipient, "reply": self.reply,
                "accepted": self.accepted}


@dataclass
class TargetReport:
    target: Target
    reachable: bool = False
    error: str = ""
    mode_used: Literal["starttls", "implicit", "plain", ""] = ""
    banner: str = ""
    starttls_offered: bool | None = None
    tls_error: str = ""
    #: The port speaks another TLS mode than the one expected of it (and was
    #: audited in the mode it speaks): what was expected and what was found.
    mode_mismatch: str = ""
    tls: TlsReport | None = None
    mechanisms_clear: tuple[str, ...] | None = None  # None: no clear phase (implicit TLS)
    mechanisms_tls: tuple[str, ...] | None = None
    auth_clear_accepted: bool | None = None
    auth_clear_detail: str = ""
    #: The mechanism the AUTH-in-clear probe started (the offered one that gives
    #: most away in clear): what an accepted one exposes decides the finding.
    auth_clear_mechanism: str = ""
    #: The dummy identity (of the AUTH-in-clear probe, or after TLS) got 235.
    auth_dummy_accepted: bool = False
    #: Why: the exchange that took it.
    auth_dummy_detail: str = ""
    #: The made-up login after TLS: True accepted, False refused, None not tried.
    dummy_login_after_tls: bool | None = None
    dummy_login_detail: str = ""
    legacy_versions: dict[str, bool | None] = field(default_factory=dict)
    injection: Literal["vulnerable", "not-vulnerable", "inconclusive", "not-tested"] = (
        "not-tested"
    )
    injection_detail: str = ""
    #: What came in clear after the server's 220 to STARTTLS, before the handshake
    #: (discarded, as RFC 3207 §4.2 says): which probe saw how many bytes.
    response_injection: list[str] = field(default_factory=list)
    relay: list[RelayAttempt] = field(default_factory=list)
    relay_domain: str = ""
    relay_note: str = ""
    credentials: list[AuthResult] = field(default_factory=list)
    #: The made-up name's SCRAM client-first after an existing account's (--user)
    #: got its salt: the mechanism, the name and the reply (None: not tried).
    scram_unknown_name: tuple[str, str, ServerReply] | None = None
    #: The iteration count each SCRAM mechanism announced in a login that succeeded
    #: with the server's signature verified (the account's real keys, not a
    #: decoy's made up for an unknown name).
    scram_iterations: dict[str, int] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """The main probe finished, so the findings mean something."""
        return self.reachable and not self.error

    @property
    def grade(self) -> str:
        return grade(self.findings) if self.complete else "-"

    @property
    def mechanisms_in_use(self) -> tuple[str, ...]:
        """Where clients really authenticate: after TLS, or in clear without TLS."""
        if self.mechanisms_tls is not None:
            return self.mechanisms_tls
        return self.mechanisms_clear or ()

    def to_json(self) -> dict[str, object]:
        return {
            "target": self.target.label,
            "host": self.target.host,
            "port": self.target.port,
            "mode": self.mode_used or self.target.mode,
            "reachable": self.reachable,
            "error": self.error or None,
            "grade": self.grade,
            "banner": self.banner,
            "starttls_offered": self.starttls_offered,
            "tls_error": self.tls_error or None,
            "mode_mismatch": self.mode_mismatch or None,
            "tls": self.tls.to_json() if self.tls else None,
            "legacy_versions_accepted": self.legacy_versions,
            "auth_before_tls": {
                "advertised": list(self.mechanisms_clear)
                if self.mechanisms_clear is not None else None,
                "accepted": self.auth_clear_accepted,
                "mechanism": self.auth_clear_mechanism or None,
                "detail": self.auth_clear_detail or None,
            },
            "auth_made_up_identity": {
                "after_tls": self.dummy_login_after_tls,
                "detail": self.dummy_login_detail or None,
            },
            "mechanisms_after_tls": list(self.mechanisms_tls)
            if self.mechanisms_tls is not None else None,
            "starttls_injection": {"result": self.injection,
                                   "detail": self.injection_detail or None},
            "starttls_response_injection": self.response_injection,
            "relay": {
                "domain": self.relay_domain,
                "note": self.relay_note or None,
                "attempts": [a.to_json() for a in self.relay],
            },
            "credentials": [c.to_json() for c in self.credentials],
            "scram_iterations": self.scram_iterations,
            "scram_unknown_name": {
                "mechanism": self.scram_unknown_name[0],
                "name": self.scram_unknown_name[1],
                "reply": str(self.scram_unknown_name[2]),
                "salt_given": self.scram_unknown_name[2].code == 334,
            } if self.scram_unknown_name is not None else None,
            "findings": [f.to_json() for f in self.findings],
            "notes": self.notes,
        }


@dataclass
class AuditReport:
    targets: list[TargetReport]

    @property
    def grade(self) -> str:
        reached = [t for t in self.targets if t.complete]
        if not reached:
            return "-"
        return grade(f for t in reached for f in t.findings)

    @property
    def findings(self) -> list[Finding]:
        return [f for t in self.targets for f in t.findings]

    @property
    def not_audited(self) -> list[TargetReport]:
        """The targets that could not be audited (no connection, the main probe
        broken off): the grade says nothing about them. A bare HOST's default
        port is left out when another port of that host was audited: a server
        that offers 587 alone is not a failure for lack of 465."""
        audited = {t.target.host for t in self.targets if t.complete}
        return [t for t in self.targets if not t.complete
                and (t.target.port_given or t.target.host not in audited)]

    def to_json(self) -> dict[str, object]:
        w = worst(self.findings)
        return {
            "grade": self.grade,
            "worst_severity": w.label if w is not None else None,
            "targets": [t.to_json() for t in self.targets],
        }


# --- the probes ----------------------------------------------------------------------


class _Auditor:
    def __init__(self, target: Target, opts: AuditOptions) -> None:
        self.t = target
        self.opts = opts
        self.r = TargetReport(target)
        self.masker = Masker(tuple(s for s in (opts.password, opts.token) if s))
        #: The main probe's handshake failed (as opposed to no STARTTLS, or refused):
        #: the server does speak TLS, perhaps only an old version.
        self.handshake_failed = False
        #: Every session a probe opened (for `_unsolicited_note`).
        self._sessions: list[SmtpSession] = []
        #: The SCRAM mechanisms whose server-first (salt and count) the --user
        #: account got: an unknown name's answer is compared with it.
        self._salted: list[str] = []

    @property
    def tls_name(self) -> str:
        return self.opts.tls_name or self.t.host

    async def _connect(self) -> SmtpSession:
        try:
            session = await SmtpSession.connect(
                self.t.host, self.t.port, timeout=self.opts.timeout, masker=self.masker
            )
        except TimeoutError:
            raise _Probe("connection timed out") from None
        except OSError as e:
            raise _Probe(f"cannot connect: {e.strerror or e}") from None
        # Every probe reads each reply before it sends again: a reply that came
        # unasked (an EHLO answered twice) is set aside, not read as the next
        # command's answer, which would make a 250 the answer to STARTTLS (a false
        # no-tls) and the 334 to AUTH in clear the next one's (a missed finding).
        # The STARTTLS injection probe turns this off where it pipelines.
        session.watch_unsolicited = True
        self._sessions.append(session)
        return session

    def _unsolicited_note(self) -> None:
        """One note for the replies nobody asked for, in every probe's session."""
        replies = [r for s in self._sessions for r in s.unsolicited]
        if replies:
            self.r.notes.append(
                f"the server sent {count(len(replies), 'reply', 'replies')} nobody asked "
                f"for (RFC 5321 §4.2), first: {self.masker.text(str(replies[0]))}; set "
                "aside, not taken as the answer to the next command")

    async def _greeting(self, s: SmtpSession) -> ServerReply:
        reply = await s.read_reply()
        if reply.code != 220:
            raise _Probe(f"server refused the session: {reply}")
        return reply

    async def _ehlo(self, s: SmtpSession) -> None:
        reply = await s.ehlo(self.opts.ehlo_name)
        if reply.code != 250:
            raise _Probe(f"EHLO and HELO refused: {reply}")

    def _tls_session(self) -> TlsClientSession:
        return TlsClientSession(make_client_context(self.opts.ca_file), self.tls_name)

    async def _open(
        self, mode: Literal["starttls", "implicit"]
    ) -> tuple[SmtpSession, TlsClientSession]:
        """A session with TLS up and EHLO sent inside it (for later probes)."""
        s = await self._connect()
        try:
            tls = self._tls_session()
            if mode == "implicit":
                await s.start_tls(tls)
                await self._greeting(s)
                await self._ehlo(s)
            else:
                await self._greeting(s)
                await self._ehlo(s)
                reply = await s.command(s.engine.starttls())
                if reply.code != 220:
                    raise _Probe(f"STARTTLS refused: {reply}")
                self._response_injection(self._current, await s.start_tls(tls))
                await self._ehlo(s)
        except BaseException:
            await s.close()
            raise
        return s, tls

    # 1. main probe -------------------------------------------------------------

    async def main(self) -> None:
        mode = self.t.mode
        s = await self._connect()
        try:
            greeting: ServerReply | None = None
            if mode == "auto":
                try:
                    greeting = await s.read_reply(GREETING_SNIFF_SECONDS)
                    mode = "starttls"
                except TimeoutError:
                    # Nothing said yet: a server waiting for a TLS ClientHello, or
                    # one slow to greet (a greet pause). A second connection asks.
                    if await speaks_tls(self.t.host, self.t.port, self.tls_name,
                                        GREETING_SNIFF_SECONDS):
                        await s.close()
                        s = await self._connect()
                        mode = "implicit"
                    else:
                        mode = "starttls"
                        greeting = await s.read_reply(
                            max(self.opts.timeout - GREETING_SNIFF_SECONDS, 1.0))
            elif mode == "starttls":
                try:
                    greeting = await s.read_reply()
                except TimeoutError:
                    # No greeting in the whole timeout (a greet pause is shorter):
                    # an implicit-TLS port waits for the client's ClientHello.
                    if not await speaks_tls(self.t.host, self.t.port, self.tls_name,
                                            GREETING_SNIFF_SECONDS):
                        raise
                    await s.close()
                    s = await self._connect()
                    mode = "implicit"
                    self._mismatch("STARTTLS (an SMTP greeting first)",
                                   "implicit TLS: no greeting, but a TLS handshake")
            if mode == "implicit" and not await self._implicit(s):
                # The port greets in clear: audit what it does speak.
                await s.close()
                s = await self._connect()
                self._mismatch("implicit TLS (RFC 8314)",
                               "an SMTP greeting in clear, before any TLS")
                mode = "starttls"
            if mode != "implicit":
                await self._after_greeting(s, greeting or await s.read_reply())
            if not self.r.tls_error:
                try:
                    await self._relay(s)
                except TimeoutError:
                    self.r.notes.append("relay probe: timed out")
                except (OSError, WireClosed, ProtocolError, TlsError) as e:
                    self.r.notes.append(f"relay probe: {e}")
        finally:
            await s.quit()

    def _mismatch(self, expected: str, found: str) -> None:
        scheme = "smtps" if self.t.mode == "starttls" else "smtp"
        why = ("as its scheme asked" if self.t.scheme_given
               else f"as port {self.t.port} conventionally does")
        self.r.mode_mismatch = (f"expected {expected} {why}, found {found}; audited as "
                                f"it speaks ({scheme}://{self.t.label})")
        self.r.notes.append(self.r.mode_mismatch)

    async def _implicit(self, s: SmtpSession) -> bool:
        """Implicit TLS, greeting and EHLO; False when the port answered in clear
        (then nothing is recorded: the caller audits it as what it speaks)."""
        self.r.mode_used = "implicit"
        tls = self._tls_session()
        try:
            await s.start_tls(tls)
        except ClearTextAnswer:
            return False
        except (TlsError, WireClosed) as e:
            self.r.reachable = True
            self.r.tls_error = f"implicit TLS handshake failed: {e}"
            self.handshake_failed = True
            return True
        self.r.tls = TlsReport.from_session(tls, self.opts.now())
        self.r.reachable = True
        greeting = await self._greeting(s)
        self.r.banner = greeting.text
        await self._ehlo(s)
        self.r.mechanisms_tls = s.engine.extensions.auth_mechanism_list
        return True

    async def _after_greeting(self, s: SmtpSession, greeting: ServerReply) -> None:
        self.r.reachable = True
        if greeting.code != 220:
            raise _Probe(f"server refused the session: {greeting}")
        self.r.banner = greeting.text
        await self._ehlo(s)
        ext = s.engine.extensions
        self.r.mechanisms_clear = ext.auth_mechanism_list
        self.r.starttls_offered = ext.starttls
        if not ext.starttls:
            self.r.mode_used = "plain"
            return
        self.r.mode_used = "starttls"
        reply = await s.command(s.engine.starttls())
        if reply.code == 421:
            # RFC 5321 §3.8: closing the channel (shutting down, busy), as after a
            # 421 to EHLO: nothing known about its TLS, so no "no-tls" to grade on.
            raise _Probe(f"STARTTLS answered {reply}: the server is closing the "
                         "session; try again later")
        if reply.code != 220:
            self.r.tls_error = f"STARTTLS refused: {reply}"
            return
        tls = self._tls_session()
        try:
            dropped = await s.start_tls(tls)
        except (TlsError, WireClosed) as e:
            self.r.tls_error = f"TLS handshake after STARTTLS failed: {e}"
            self.handshake_failed = True
            return
        self._response_injection("main", dropped)
        self.r.tls = TlsReport.from_session(tls, self.opts.now())
        await self._ehlo(s)
        self.r.mechanisms_tls = s.engine.extensions.auth_mechanism_list

    def _response_injection(self, probe: str, dropped: int) -> None:
        """Record bytes the server (or someone on the path) sent in clear after its
        220 to STARTTLS: discarded, but a client that kept them would have read
        them as the server's answers inside TLS."""
        if dropped:
            self.r.response_injection.append(
                f"{probe} probe: {count(dropped, 'byte')} in clear after the 220 to "
                "STARTTLS, before the handshake (discarded)")

    def _relay_domain(self) -> str:
        if self.opts.relay_domain:
            return self.opts.relay_domain
        # An IP address is no domain: "relay-probe@::1" is not even an address.
        first = self.r.banner.split(" ", 1)[0] if self.r.banner else ""
        if "." in first and all(c.isalnum() or c in ".-" for c in first) \
                and parse_ip(first) is None:
            return first
        return "localhost" if parse_ip(self.t.host) is not None else self.t.host

    async def _relay(self, s: SmtpSession) -> None:
        domain = self._relay_domain()
        outside = self.opts.outside_domain
        lp = RELAY_LOCAL_PART
        self.r.relay_domain = domain
        control = f"{lp}-{secrets.token_hex(4)}@{domain}"
        tricks = [
            ("plain", f"{lp}@{outside}"),
            ("percent-hack", f"{lp}%{outside}@{domain}"),
            ("source-route", f"@{domain}:{lp}@{outside}"),
            ("quoted-local-part", f'"{lp}@{outside}"'),
            ("quoted-local-part", f'"{lp}@{outside}"@{domain}'),
            ("bang-path", f"{outside}!{lp}"),
            ("bang-path", f"{outside}!{lp}@{domain}"),
        ]
        if self._stray_reply(s):
            return
        reply = await s.command(s.engine.mail(RELAY_SENDER))
        if not reply.is_positive:
            for trick, rcpt in tricks:
                self.r.relay.append(RelayAttempt(trick, rcpt, f"MAIL refused: {reply}", False))
            await s.command(s.engine.rset())
            return
        # A control address in the server's own domain: if any local part there is
        # accepted, acceptance of the "...@domain" forms proves nothing.
        control_reply = await s.command(s.engine.rcpt(control))
        control_ok = control_reply.is_positive
        for trick, rcpt in tricks:
            reply = await s.command(s.engine.rcpt(rcpt))
            local_form = rcpt.endswith("@" + domain) and not rcpt.startswith("@")
            accepted = reply.is_positive and not (control_ok and local_form)
            if reply.is_positive and control_ok and local_form:
                self.r.relay_note = (
                    f"{domain} accepts any local part, so forms ending in @{domain} "
                    "are inconclusive"
                )
            self.r.relay.append(RelayAttempt(trick, rcpt, str(reply), accepted))
            if self._stray_reply(s):
                return
        await s.command(s.engine.rset())  # never DATA

    def _stray_reply(self, s: SmtpSession) -> bool:
        """Whether the server sent more than the replies asked for: then each reply
        read would be the previous command's, and a closed relay could pass for an
        open one. The relay probe is dropped, with a note."""
        if not s.engine.unread_input:
            return False
        self.r.relay.clear()
        self.r.relay_note = ""
        self.r.notes.append("relay probe: the server sent a reply nobody asked for, so "
                            "the replies after it could not be told apart; not tested")
        return True

    async def relay_in_clear(self) -> None:
        s = await self._connect()
        try:
            await self._greeting(s)
            await self._ehlo(s)
            await self._relay(s)
        finally:
            await s.quit()

    # 2. AUTH in clear ------------------------------------------------------------

    async def auth_in_clear(self) -> None:
        s = await self._connect()
        try:
            await self._greeting(s)
            await self._ehlo(s)
            offered = s.engine.extensions.auth_mechanism_list
            # Nothing offered: PLAIN anyway (a server may take what it does not list).
            mech = mechanisms.most_exposing(offered) or "PLAIN"
            self.r.auth_clear_mechanism = mech
            reply = await s.command(s.engine.auth(mech, None))
            if reply.code == 334:
                final = await self._dummy_exchange(s, mech)
                self.r.auth_clear_accepted = True
                self.r.auth_dummy_accepted = final.code == 235
                self.r.auth_clear_detail = (
                    f"AUTH {mech} in clear got 334; a dummy identity then got: {final}"
                )
                self.r.auth_dummy_detail = self.r.auth_clear_detail
            elif reply.code == 235:  # without any credential at all
                self.r.auth_clear_accepted = True
                self.r.auth_dummy_accepted = True
                self.r.auth_clear_detail = f"AUTH {mech} in clear got {reply}"
                self.r.auth_dummy_detail = self.r.auth_clear_detail
            else:
                self.r.auth_clear_accepted = False
                self.r.auth_clear_detail = f"AUTH {mech} in clear got {reply}"
        finally:
            await s.quit()

    async def _dummy_exchange(self, s: SmtpSession, mech: str) -> ServerReply:
        """Finish an exchange the server started in clear, with nothing real in it."""
        e = s.engine
        dummy_password = secrets.token_urlsafe(12)
        if mech == "PLAIN":
            reply = await s.command(e.auth_response(f"\0{DUMMY_USER}\0{dummy_password}".encode()))
        elif mech == "LOGIN":
            reply = await s.command(e.auth_response(DUMMY_USER.encode()))
            if reply.code == 334:
                reply = await s.command(e.auth_response(dummy_password.encode()))
        else:
            reply = await s.command(e.auth_cancel())
        while reply.code == 334:  # a server leading us on: cancel
            reply = await s.command(e.auth_cancel())
        return reply

    async def dummy_login(self) -> None:
        """The made-up identity once more, over TLS: a server that keeps AUTH for
        TLS (as it should) answers the clear probe 530, whatever its back end
        checks. PLAIN or LOGIN only, the mechanisms that carry a password as is;
        nothing real is sent, and it costs one failed login at the server."""
        offered = self.r.mechanisms_tls or ()
        mech = next((m for m in ("PLAIN", "LOGIN") if m in offered), None)
        if mech is None:
            return
        s, _ = await self._open("implicit" if self.r.mode_used == "implicit" else "starttls")
        try:
            reply = await s.command(s.engine.auth(mech, None))
            final = await self._dummy_exchange(s, mech) if reply.code == 334 else reply
            self.r.dummy_login_after_tls = final.code == 235
            self.r.dummy_login_detail = f"a made-up identity got {final} to AUTH {mech} after TLS"
            if final.code == 235:
                self.r.auth_dummy_accepted = True
                self.r.auth_dummy_detail = self.r.dummy_login_detail
        finally:
            await s.quit()

    async def scram_unknown_name(self) -> None:
        """A made-up name in the --user's domain starts the SCRAM exchange the
        account's login started, and is cancelled at once. SCRAM's server-first
        message (salt and count) comes before any proof, so a server that answers
        an unknown name 535 there, and an existing one with its salt, tells anyone
        which accounts exist (Dovecot 2.3 does); one that makes up a salt for the
        unknown name (smtpgate's decoy) does not. Nothing real is sent."""
        offered = self.r.mechanisms_tls or ()
        known = next((m.removesuffix("-PLUS") for m in self._salted
                      if m.removesuffix("-PLUS") in offered), None)
        if known is None:
            return
        domain = self.opts.user.rpartition("@")[2] if "@" in self.opts.user else ""
        name = f"audit-probe-{secrets.token_hex(4)}" + (f"@{domain}" if domain else "")
        first = f"n,,n={escape_saslname(name)},r={secrets.token_urlsafe(18)}"
        s, _ = await self._open("implicit" if self.r.mode_used == "implicit" else "starttls")
        try:
            reply = await s.command(s.engine.auth(known, first.encode()))
            self.r.scram_unknown_name = (known, name, reply)
            end = reply
            while end.code == 334:  # the salt came: nothing more to learn, cancel
                end = await s.command(s.engine.auth_cancel())
        finally:
            await s.quit()

    # 3. STARTTLS injection ---------------------------------------------------------

    async def injection(self) -> None:
        s = await self._connect()
        try:
            await self._greeting(s)
            await self._ehlo(s)
            if not s.engine.extensions.starttls:
                return
            # Both lines in one write: the server reads them in one segment.
            await s.send(s.engine.starttls() + INJECTED_COMMAND.encode() + b"\r\n")
            # From here two replies are due for one command: an answer to the
            # pipelined one, inside TLS before our EHLO, is what this probe looks
            # for, not a reply to set aside.
            s.watch_unsolicited = False
            reply = await s.read_reply()
            if reply.code != 220:
                self.r.injection = "inconclusive"
                self.r.injection_detail = f"STARTTLS with a pipelined command got {reply}"
                return
            try:
                # What came in clear with the 220 is not counted as a response
                # injection here: it may be the answer to our own pipelined command.
                await s.start_tls(self._tls_session())
            except (TlsError, WireClosed) as e:
                self.r.injection = "inconclusive"
                self.r.injection_detail = f"TLS handshake failed: {e}"
                return
            first = await s.command(s.engine.ehlo(self.opts.ehlo_name))
            if first.code == 250:
                self.r.injection = "not-vulnerable"
                self.r.injection_detail = "the pipelined command was discarded"
                return
            try:
                second = await s.read_reply(min(self.opts.timeout, 3.0))
            except TimeoutError:
                self.r.injection = "inconclusive"
                self.r.injection_detail = f"EHLO after STARTTLS got {first}"
                return
            if second.code == 250:
                self.r.injection = "vulnerable"
                self.r.injection_detail = (
                    f"{INJECTED_COMMAND}, sent in clear with STARTTLS, was answered inside "
                    f"TLS: {first}"
                )
            else:
                self.r.injection = "inconclusive"
                self.r.injection_detail = f"replies after STARTTLS: {first}; {second}"
        finally:
            await s.quit()

    # 4. legacy TLS versions ----------------------------------------------------------

    async def legacy_version(self, name: str, version: ssl.TLSVersion) -> None:
        s = await self._connect()
        try:
            if self.r.mode_used != "implicit":
                await self._greeting(s)
                await self._ehlo(s)
                reply = await s.command(s.engine.starttls())
                if reply.code != 220:
                    raise _Probe(f"STARTTLS refused: {reply}")
            sni = None if self.tls_name.replace(".", "").isdigit() or ":" in self.tls_name \
                else self.tls_name
            try:
                await s.start_tls(LegacyTls(version, sni))
            except (TlsError, WireClosed, OSError):
                self.r.legacy_versions[name] = False
                return
            self.r.legacy_versions[name] = True
        finally:
            await s.close()

    # 5. credentials -------------------------------------------------------------------

    async def credentials(self) -> None:
        o = self.opts
        mode: Literal["starttls", "implicit"] = (
            "implicit" if self.r.mode_used == "implicit" else "starttls"
        )
        offered = self.r.mechanisms_tls or ()
        usable = [n for n in offered
                  if mechanisms.usable(n, password=bool(o.password), token=bool(o.token),
                                       channel_binding=True)]
        if not usable:
            secret = "a token" if o.token and not o.password else "a password"
            self.r.notes.append(
                "credentials not tried: no mechanism offered after TLS "
                f"({' '.join(offered) or 'no AUTH'}) can be used with {secret}")
        usable = _trial_order(usable)
        refused: list[str] = []
        for i, name in enumerate(usable):
            s, tls = await self._open(mode)
            try:
                cb = tls.channel_binding()
                if name.endswith("-PLUS") and not cb.available:
                    continue
                try:
                    mech = mechanisms.build(name, username=o.user, password=o.password,
                                            token=o.token, channel_binding=cb,
                                            offered=self.r.mechanisms_tls or ())
                except ValueError as e:
                    self.r.notes.append(f"{name}: credentials not usable: {e}")
                    continue
                result = self.masker.auth_result(await authenticate(s, mech))
                self.r.credentials.append(result)
                if isinstance(mech, ScramClient) and mech.iterations is not None:
                    # The account's salt came (what an unknown name's is compared with).
                    self._salted.append(name)
                    if result.ok and result.server_verified:
                        self.r.scram_iterations[name] = mech.iterations
            finally:
                await s.quit()
            if not result.ok:
                refused.append(name)
            rest = usable[i + 1:]
            if len(refused) >= 2 and not any(c.ok for c in self.r.credentials) and rest:
                self.r.notes.append(
                    f"credentials with {', '.join(rest)} not tried: {' and '.join(refused)} "
                    "refused them, and each further try would be one more failed login")
                return

    # evaluation ------------------------------------------------------------------------

    def evaluate(self) -> None:
        r = self.r
        add = r.findings.append
        if not r.reachable:
            return
        if r.mode_mismatch and not r.target.scheme_given:
            add(finding("tls-mode-mismatch", r.mode_mismatch))
        if r.tls is None:
            if r.tls_error:
                add(finding("no-tls", r.tls_error))
            elif r.mode_used == "plain":
                add(finding("no-tls", "STARTTLS is not offered"))
        if r.tls is not None:
            v = r.tls.verification
            # A chain that fails only on its dates is the expiry finding below.
            if not v.chain_ok and not v.only_validity_period:
                hint = r.tls.chain_hint()
                add(finding("cert-untrusted", f"{v.chain_error}; {hint}" if hint
                            else v.chain_error))
            if not v.hostname_ok:
                leaf = r.tls.leaf
                names = ", ".join([*leaf.dns_names, *leaf.ip_addresses]) if leaf else ""
                add(finding("cert-hostname", f"{v.hostname!r} is not among: {names or '(none)'}"))
            days = r.tls.days_left()
            leaf = r.tls.leaf
            if leaf is not None and days is not None:
                now = r.tls.checked_at
                if days < 0 or leaf.not_before > now:
                    add(finding("cert-expired", f"valid {leaf.not_before:%Y-%m-%d} to "
                                                f"{leaf.not_after:%Y-%m-%d}"))
                elif days < EXPIRY_WARNING_DAYS:
                    add(finding("cert-expiring", f"expires {leaf.not_after:%Y-%m-%d} "
                                                 f"({count(round(days), 'day')} left)"))
        legacy = [n for n, ok in r.legacy_versions.items() if ok]
        if legacy:
            add(finding("tls-legacy-versions", f"handshake completed with {', '.join(legacy)}"))
        if r.mechanisms_clear:
            add(finding("auth-offered-in-clear", "before STARTTLS: AUTH "
                        + " ".join(r.mechanisms_clear)))
        if r.auth_clear_accepted:
            # Rated by what the mechanism puts on the wire: GSSAPI in clear gives
            # away no password, PLAIN gives the password itself.
            exposure = mechanisms.clear_exposure(r.auth_clear_mechanism or "PLAIN")
            add(finding({"secret": "auth-accepted-in-clear",
                         "guessable": "auth-accepted-in-clear-guessable",
                         "none": "auth-accepted-in-clear-no-password"}[exposure],
                        r.auth_clear_detail))
        if r.auth_dummy_accepted:
            add(finding("auth-accepts-anything", r.auth_dummy_detail))
        in_use = r.mechanisms_in_use
        weak = [m for m in in_use if m in mechanisms.PLAINTEXT_EQUIVALENT]
        if weak:
            add(finding("weak-mechanisms", "offered: " + " ".join(weak)))
        if (
            r.tls is not None
            and r.mechanisms_tls
            and set(r.mechanisms_tls) <= mechanisms.CLEARTEXT
        ):
            add(finding("no-scram", "after TLS: AUTH " + " ".join(r.mechanisms_tls)))
        low = {m: i for m, i in r.scram_iterations.items() if i < MIN_SCRAM_ITERATIONS}
        if low:
            add(finding("scram-iterations-low", "; ".join(
                f"{m}: i={i}" for m, i in low.items()) + f" (RFC 7677: at least "
                f"{MIN_SCRAM_ITERATIONS})"))
        if r.scram_unknown_name is not None:
            mech, name, reply = r.scram_unknown_name
            if reply.code // 100 == 5:
                add(finding("user-enumeration", f"{mech}: {self.opts.user} got its salt "
                            f"(334), the made-up {name} got {reply} at once"))
        if r.injection == "vulnerable":
            add(finding("starttls-injection", r.injection_detail))
        if r.response_injection:
            add(finding("starttls-response-injection", "; ".join(r.response_injection)))
        relayed = [a for a in r.relay if a.accepted]
        if relayed:
            add(finding("open-relay", "; ".join(
                f"{a.trick} <{a.recipient}>: {a.reply}" for a in relayed)))
        if r.credentials and not any(c.ok for c in r.credentials):
            add(finding("credentials-refused", "; ".join(
                f"{c.mechanism}: {c.detail or c.outcome}" for c in r.credentials)))

    async def run(self) -> TargetReport:
        """Every probe, within ``max_time`` for the target as a whole: each step has
        its timeout, but a tarpit answering each command just inside it would
        otherwise hold the audit for (commands x timeout)."""
        r = self.r
        try:
            async with asyncio.timeout(self.opts.max_time):
                await self._probes()
        except _Probe as e:
            r.error = str(e)
            return r
        except TimeoutError:
            limit = f"--max-time ({self.opts.max_time:g} s)"
            if not self._main_done:
                r.error = f"the main probe did not finish within {limit}{self._where()}"
                return r
            r.notes.append(f"stopped at {limit}: the {self._current} probe and any after "
                           "it did not run or finish")
        self._unsolicited_note()
        self.evaluate()
        return r

    #: The probe under way (for the note when ``max_time`` runs out).
    _current = "connection"
    _main_done = False

    async def _probes(self) -> None:
        r = self.r
        await self._step("connection", self.main, fatal=True)
        self._main_done = True
        if r.reachable and not r.tls_error:
            if r.mode_used in ("starttls", "plain"):
                await self._step("AUTH in clear", self.auth_in_clear)
            if r.mode_used == "starttls":
                await self._step("STARTTLS injection", self.injection)
            if r.tls is not None:
                await self._legacy_versions()
            if self.opts.user:
                await self._credentials_if_safe()
            # After the real credentials: a smtpgate or Dovecot auth penalty for
            # this failure must not delay them.
            if r.tls is not None and not r.auth_dummy_accepted:
                await self._step("made-up login", self.dummy_login)
            if self._salted:
                await self._step("made-up SCRAM name", self.scram_unknown_name)
        elif r.reachable and r.mode_used in ("starttls", "plain"):
            await self._step("AUTH in clear", self.auth_in_clear)
            # TLS failed on the main connection, so its relay probe did not run: an
            # open relay does not need TLS to relay, so ask in clear.
            await self._step("relay", self.relay_in_clear)
            if self.handshake_failed:
                await self._legacy_versions()
        elif r.reachable and self.handshake_failed:
            await self._legacy_versions()

    async def _credentials_if_safe(self) -> None:
        """The credentials probe, only over TLS whose certificate verified: a real
        password must not go to whoever answers in the server's place (the tester
        refuses the same, unless --no-tls-verify)."""
        r = self.r
        if r.tls is None:
            r.notes.append("credentials not tried: no TLS (they are never sent in clear)")
        elif not r.tls.verification.ok:
            r.notes.append(
                "credentials not tried: the certificate did not verify ("
                + "; ".join(r.tls.verification.problems())
                + "), so the server may not be the one asked (--ca FILE trusts a private "
                "CA, --tls-name NAME checks another name)")
        else:
            await self._step("credentials", self.credentials)

    async def _legacy_versions(self) -> None:
        # Also after a failed handshake: a server that speaks only TLS 1.0 or 1.1
        # fails ours (1.2 and newer) and is then "no TLS"; say which old version
        # it does speak.
        for name, version in (("TLS 1.0", ssl.TLSVersion.TLSv1),
                              ("TLS 1.1", ssl.TLSVersion.TLSv1_1)):
            await self._step(name, functools.partial(self.legacy_version, name, version))

    async def _step(
        self, name: str, probe: Callable[[], Awaitable[None]], fatal: bool = False
    ) -> None:
        """Run one probe; its failure becomes a note (or, for the first, the error)."""
        self._current = name
        try:
            await probe()
        except _Probe as e:
            if fatal:
                raise
            self.r.notes.append(f"{name} probe: {e}")
        except TimeoutError:
            if fatal:
                # Also after the greeting: without the main probe's answers (TLS,
                # AUTH after TLS) there is nothing to grade, and "no findings"
                # would pass a server that hangs or hangs up mid-dialogue.
                raise _Probe("timed out waiting for the server"
                             + self._where()) from None
            self.r.notes.append(f"{name} probe: timed out")
        except (OSError, WireClosed, ProtocolError, TlsError) as e:
            if fatal:
                raise _Probe(f"connection failed: {e}{self._where()}") from None
            self.r.notes.append(f"{name} probe: {e}")

    def _where(self) -> str:
        """Where the main probe stopped, once the server had greeted."""
        if not self.r.reachable:
            return ""
        if self.r.tls is not None:
            return " (after the TLS handshake)"
        return " (after the greeting)"


def _trial_order(usable: list[str]) -> list[str]:
    """The order the credentials probe tries mechanisms in: the first of PLAIN and
    LOGIN (the password checked as it is: an app password, or keys of one SCRAM
    kind only, still pass), then the strongest other (an account restricted to
    SCRAM), then the rest strongest first. The probe stops after two refusals and
    no success: a wrong password then costs two failed logins, not one per
    mechanism (login guards and fail2ban, whose maxretry is often 5, count each)."""
    rank = {name: i for i, name in enumerate(mechanisms.implemented())}
    ordered = sorted(usable, key=lambda n: rank.get(n, len(rank)))
    clear = [n for n in ordered if n in mechanisms.CLEARTEXT][:1]
    others = [n for n in ordered if n not in clear]
    return clear + others


async def audit_target(target: Target, opts: AuditOptions) -> TargetReport:
    """Probe one target; never raises for anything the server or network does."""
    return await _Auditor(target, opts).run()


async def run_audit(
    targets: Sequence[Target],
    opts: AuditOptions,
    *,
    on_start: Callable[[Target], None] | None = None,
    on_done: Callable[[TargetReport], None] | None = None,
) -> AuditReport:
    """Probe every target, ``opts.concurrency`` at a time; reports in target order."""
    sem = asyncio.Semaphore(max(1, opts.concurrency))

    async def one(t: Target) -> TargetReport:
        async with sem:
            if on_start is not None:
                on_start(t)
            report = await audit_target(t, opts)
            if on_done is not None:
                on_done(report)
            return report

    reports = await asyncio.gather(*(one(t) for t in targets))
    return AuditReport(list(reports))

