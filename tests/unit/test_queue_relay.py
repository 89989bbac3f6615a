"""Relay delivery over real SMTP: aiosmtpd as the peer, plus scripted servers for
what aiosmtpd cannot do (PIPELINING, dropped connections, odd greetings).

Every server listens on 127.0.0.1 port 0 inside the test's own event loop: no
fixed ports, no threads, no sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword, Session
from aiosmtpd.smtp import Envelope as PeerEnvelope
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from smtpgate.config import Config, DeliveryConfig, ListenerConfig, QueueConfig
from smtpgate.queue.delivery import Delivered, PermFailure, QueuedMessage, TempFailure
from smtpgate.queue.envelope import Envelope
from smtpgate.queue.factory import DeliverySetupError, make_deliverer
from smtpgate.queue.maildir import MaildirDeliverer
from smtpgate.queue.relay import RelayDeliverer, RelayTimeouts, TlsMode, tls_context
from smtpgate.queue.spool import Spool
from smtpgate.queue.worker import DeliveryWorker
from smtpgate.sasl.plain import PlainClient

ENV = Envelope(
    mail_from="alice@example.org",
    rcpt_to=("bob@example.net",),
    auth_identity="alice+sales@example.org",
    client_ip="192.0.2.7",
    helo="laptop.example.org",
    listener="submission",
    received_at=1_700_000_000.0,
)
DATA = b"Subject: hi\r\n\r\nhello\r\n.a line with a leading dot\r\n..two\r\n"


def message(env: Envelope = ENV, data: bytes = DATA) -> QueuedMessage:
    return QueuedMessage("18f00000000-1-0-00000000", env, data)


# --- certificates --------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca_file: Path
    server_context: ssl.SSLContext


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A throw-away CA and a server certificate for 127.0.0.1."""
    return make_pki(tmp_path_factory.mktemp("pki"))


def make_pki(d: Path) -> Pki:
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "smtpgate test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                       critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "relay.test")]))
        .issuer_name(ca_name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))
        ]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    (d / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (d / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ))
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(d / "cert.pem", d / "key.pem")
    return Pki(d / "ca.pem", ctx)


# --- an aiosmtpd peer -------------------------------------------------------------------


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    mail_options: list[str]
    content: bytes
    tls: bool
    login: bytes | None


@dataclass
class Handler:
    """Accepts everything except addresses that say otherwise."""

    received: list[Received] = field(default_factory=list)
    auth_params: list[str | bool] = field(default_factory=list)

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: PeerEnvelope,
                          address: str, mail_options: list[str]) -> str:
        if address.startswith("blocked@"):
            return "553 5.7.1 Sender not allowed"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: PeerEnvelope,
                          address: str, rcpt_options: list[str]) -> str:
        if address.startswith("temp"):
            return "450 4.2.0 Mailbox busy"
        if address.startswith("perm"):
            return "550 5.1.1 No such user"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: PeerEnvelope) -> str:
        content = envelope.content
        assert isinstance(content, bytes)
        if b"REJECT-PERM" in content:
            return "554 5.6.0 Content rejected"
        if b"REJECT-TEMP" in content:
            return "451 4.3.0 Try again"
        login = session.auth_data.login if isinstance(session.auth_data, LoginPassword) else None
        self.received.append(Received(
            str(envelope.mail_from), list(envelope.rcpt_tos), list(envelope.mail_options),
            content, session.ssl is not None, login,
        ))
        return "250 2.0.0 Queued"


class Rfc4954Smtp(SMTP):
    """aiosmtpd answers 555 to MAIL FROM ... AUTH=..., although RFC 4954 §5 requires
    servers that offer AUTH to accept it. Accept it here and record it."""

    def _getparams(self, params: Any) -> Any:
        result = super()._getparams(params)
        if result is not None and "AUTH" in result:
            self.event_handler.auth_params.append(result.pop("AUTH"))
        return result


def _authenticator(server: SMTP, session: Session, envelope: PeerEnvelope, mechanism: str,
                   auth_data: Any) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and auth_data.password == b"relay-secret"
    # handled=False: let aiosmtpd send the 535 itself.
    return AuthResult(success=ok, handled=False, auth_data=auth_data)


@dataclass
class Peer:
    port: int
    handler: Handler


@asynccontextmanager
async def aiosmtpd_peer(
    *, tls: ssl.SSLContext | None = None, auth: bool = False, auth_require_tls: bool = True
) -> AsyncIterator[Peer]:
    loop = asyncio.get_running_loop()
    handler = Handler()

    def factory() -> SMTP:
        return Rfc4954Smtp(
            handler, hostname="relay.test", loop=loop, tls_context=tls,
            authenticator=_authenticator if auth else None,
            auth_require_tls=auth_require_tls,
        )

    server = await loop.create_server(factory, "127.0.0.1", 0)
    try:
        yield Peer(server.sockets[0].getsockname()[1], handler)
    finally:
        server.close()
        await server.wait_closed()


def relay(
    port: int,
    *,
    tls_mode: TlsMode = "none",
    ca_file: Path | None = None,
    verify: bool = True,
    password: str | None = None,
    timeouts: RelayTimeouts | None = None,
) -> RelayDeliverer:
    ctx = None if tls_mode == "none" else tls_context(
        verify=verify, ca_file=str(ca_file) if ca_file else None
    )
    auth = None
    if password is not None:
        def auth() -> PlainClient:
            return PlainClient("relayuser", password)
    return RelayDeliverer("127.0.0.1", port, helo_name="smtpgate.test", tls_mode=tls_mode,
                          tls_context=ctx, auth=auth, timeouts=timeouts or RelayTimeouts())


# --- tests against aiosmtpd ------------------------------------------------------------


async def test_plain_relay_delivers_with_transparency_and_size() -> None:
    async with aiosmtpd_peer() as peer:
        results = await relay(peer.port).deliver(message(), ("bob@example.net",))
    assert isinstance(results["bob@example.net"], Delivered)
    (got,) = peer.handler.received
    assert got.mail_from == "alice@example.org"
    assert got.rcpt_tos == ["bob@example.net"]
    assert got.content == DATA  # dot-stuffed on the wire, intact on arrival
    assert f"SIZE={len(DATA)}" in got.mail_options  # RFC 1870
    assert not got.tls
    assert peer.handler.auth_params == []  # not authenticated: no AUTH= (RFC 4954 §5)


async def test_rcpt_replies_map_per_recipient() -> None:
    rcpts = ("ok@example.net", "temp@example.net", "perm@example.net")
    async with aiosmtpd_peer() as peer:
        results = await relay(peer.port).deliver(message(), rcpts)
    assert isinstance(results["ok@example.net"], Delivered)
    temp, perm = results["temp@example.net"], results["perm@example.net"]
    assert isinstance(temp, TempFailure) and "450 4.2.0" in temp.reply
    assert isinstance(perm, PermFailure) and "550 5.1.1" in perm.reply
    assert peer.handler.received[0].rcpt_tos == ["ok@example.net"]


async def test_each_outcome_names_the_next_hop_that_replied() -> None:
    """With routes, a refusal read "relay refused recipient: 550 ..." in `queue list`,
    the log and the bounce, whichever next hop refused; now it names it, as
    Postfix's "host mx.example.net[192.0.2.1] said: ..." does."""
    rcpts = ("ok@example.net", "temp@example.net", "perm@example.net")
    async with aiosmtpd_peer() as peer:
        results = await relay(peer.port).deliver(message(), rcpts)
        where = f"relay 127.0.0.1:{peer.port}"
        assert results["temp@example.net"] == TempFailure(
            f"{where} refused recipient: 450 4.2.0 Mailbox busy")
        assert results["perm@example.net"] == PermFailure(
            f"{where} refused recipient: 550 5.1.1 No such user")
        ok = results["ok@example.net"]
        assert isinstance(ok, Delivered) and ok.detail.startswith(f"{where}: 250 ")


async def test_no_accepted_recipient_sends_no_data() -> None:
    async with aiosmtpd_peer() as peer:
        results = await relay(peer.port).deliver(message(), ("perm@example.net",))
    assert isinstance(results["perm@example.net"], PermFailure)
    assert peer.handler.received == []


@pytest.mark.parametrize(
    ("marker", "kind", "code"),
    [(b"REJECT-PERM", PermFailure, "554 5.6.0"), (b"REJECT-TEMP", TempFailure, "451 4.3.0")],
)
async def test_reply_after_data_applies_to_every_accepted_recipient(
    marker: bytes, kind: type, code: str
) -> None:
    async with aiosmtpd_peer() as peer:
        results = await relay(peer.port).deliver(
            message(data=DATA + marker + b"\r\n"), ("a@example.net", "perm@example.net")
        )
    assert isinstance(results["a@example.net"], kind)
    assert code in results["a@example.net"].reply  # type: ignore[union-attr]
    assert isinstance(results["perm@example.net"], PermFailure)


async def test_refused_sender_fails_every_recipient() -> None:
    env = Envelope("blocked@example.org", ("a@example.net", "b@example.net"), None, "192.0.2.1",
                   "h", "l")
    async with aiosmtpd_peer() as peer:
        results = await relay(peer.port).deliver(message(env), env.rcpt_to)
    assert all(isinstance(r, PermFailure) and "553 5.7.1" in r.reply for r in results.values())


async def test_rfc6531_smtputf8_message_to_a_relay_without_it_bounces() -> None:
    env = Envelope("jöran@example.se", ("åsa@example.se",), None, "192.0.2.1", "h", "l",
                   smtputf8=True)
    async with aiosmtpd_peer() as peer:  # aiosmtpd does not offer SMTPUTF8 by default
        results = await relay(peer.port).deliver(message(env), env.rcpt_to)
    assert isinstance(results["åsa@example.se"], PermFailure)
    assert peer.handler.received == []


async def test_rfc6531_smtputf8_asked_for_but_not_needed_goes_to_a_relay_without_it() -> None:
    """Go's net/smtp and Jakarta Mail (mail.mime.allowutf8) put SMTPUTF8 on every
    MAIL FROM the server offers it on, ASCII or not. RFC 6531 §3.2 forbids only
    internationalized addresses and header fields to a hop without SMTPUTF8: a
    message with neither goes as it is (Postfix does the same), not bounced."""
    env = Envelope("alice@example.org", ("bob@example.net",), None, "192.0.2.1", "h", "l",
                   smtputf8=True, body_8bit=True)
    data = "Subject: hi\r\n\r\nGrüße in the body only\r\n".encode()
    async with aiosmtpd_peer() as peer:  # no SMTPUTF8, 8BITMIME offered
        results = await relay(peer.port).deliver(message(env, data), env.rcpt_to)
    assert isinstance(results["bob@example.net"], Delivered)
    assert "SMTPUTF8" not in peer.handler.received[0].mail_options


async def test_rfc6531_an_idn_domain_goes_to_a_relay_without_smtputf8_as_its_a_labels() -> None:
    """An address whose only non-ASCII is its domain (bob@bücher.example, typed so in
    a client that then asks for SMTPUTF8) has an ASCII spelling, the domain's
    A-labels, which DNS sees anyway: it bounced 5.6.7 at a relay without SMTPUTF8
    (found by the h29i18n review); it now goes there in that spelling. A UTF-8
    local part has no such spelling and still bounces (the test above)."""
    env = Envelope("jorg@M\u00dcnchen.example", ("bob@b\u00fccher.example", "carol@example.net"),
                   None, "192.0.2.1", "h", "l", smtputf8=True)
    data = b"From: jorg@xn--mnchen-3ya.example\r\nSubject: hi\r\n\r\nbody\r\n"
    async with aiosmtpd_peer() as peer:  # aiosmtpd does not offer SMTPUTF8 by default
        results = await relay(peer.port).deliver(message(env, data), env.rcpt_to)
    assert all(isinstance(r, Delivered) for r in results.values()), results
    (got,) = peer.handler.received
    assert got.mail_from == "jorg@xn--mnchen-3ya.example"
    assert got.rcpt_tos == ["bob@xn--bcher-kva.example", "carol@example.net"]
    assert "SMTPUTF8" not in got.mail_options


async def test_rfc6531_utf8_header_field_to_a_relay_without_smtputf8_bounces() -> None:
    env = Envelope("alice@example.org", ("bob@example.net",), None, "192.0.2.1", "h", "l",
                   smtputf8=True)
    data = "From: jöran@example.se\r\nSubject: hi\r\n\r\nbody\r\n".encode()
    async with aiosmtpd_peer() as peer:
        results = await relay(peer.port).deliver(message(env, data), env.rcpt_to)
    assert results["bob@example.net"] == PermFailure(
        f"5.6.7 relay 127.0.0.1:{peer.port} does not support SMTPUTF8")
    assert peer.handler.received == []


async def test_a_message_the_hop_announced_it_cannot_take_names_the_hop() -> None:
    """A bounce for a size over the hop's SIZE said 'exceeds relay limit 200', not
    which relay (with routes, one of several); it names the hop now."""
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 small.test ESMTP\r\n")
        await reader.readline()  # EHLO
        writer.write(b"250-small.test\r\n250 SIZE 20\r\n")
        await reader.readline()  # QUIT
        writer.write(b"221 bye\r\n")

    async with scripted(script) as port:
        results = await relay(port, timeouts=RelayTimeouts(command=5)).deliver(
            message(), ("a@example.net",))
    assert results["a@example.net"] == PermFailure(
        f"5.3.4 relay 127.0.0.1:{port}: message size {len(DATA)} exceeds its limit 20")


async def test_8bit_body_is_announced() -> None:
    env = Envelope("a@example.org", ("b@example.net",), None, "192.0.2.1", "h", "l",
                   body_8bit=True)
    async with aiosmtpd_peer() as peer:
        await relay(peer.port).deliver(message(env, "Grüße\r\n".encode()), env.rcpt_to)
    assert "BODY=8BITMIME" in peer.handler.received[0].mail_options


async def test_undeclared_8bit_body_is_announced_and_7bit_is_not() -> None:
    # RFC 6152 §3: 8-bit data its client sent without BODY=8BITMIME is still 8-bit;
    # the next hop is told so, and plain ASCII keeps no BODY parameter.
    env = Envelope("a@example.org", ("b@example.net",), None, "192.0.2.1", "h", "l")
    async with aiosmtpd_peer() as peer:
        await relay(peer.port).deliver(message(env, "Grüße\r\n".encode()), env.rcpt_to)
        await relay(peer.port).deliver(message(env, b"plain\r\n"), env.rcpt_to)
    eight, seven = peer.handler.received
    assert "BODY=8BITMIME" in eight.mail_options
    assert not any(o.startswith("BODY=") for o in seven.mail_options)


async def test_a_7bit_message_declared_8bitmime_goes_to_a_hop_without_8bitmime() -> None:
    """Postfix declares BODY=8BITMIME for any message whose Content-Transfer-Encoding
    says 8bit (PHPMailer's and many frameworks' default), ASCII or not. RFC 6152 §3
    keeps 8-bit *data* from a hop without 8BITMIME; an all-ASCII message has none and
    goes as it is, without the parameter. Until the h29mta review it was bounced
    (5.6.3 ... does not accept 8-bit data); a message with 8-bit octets still is."""
    mails: list[bytes] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 seven.test ESMTP\r\n")
        await reader.readline()  # EHLO
        writer.write(b"250-seven.test\r\n250 SIZE 100000\r\n")
        line = await reader.readline()
        if not line.startswith(b"MAIL"):  # QUIT: the 8-bit message is not sent
            writer.write(b"221 bye\r\n")
            return
        mails.append(line)
        writer.write(b"250 ok\r\n")
        await reader.readline()  # RCPT
        writer.write(b"250 ok\r\n")
        await reader.readline()  # DATA
        writer.write(b"354 go\r\n")
        await reader.readuntil(b"\r\n.\r\n")
        writer.write(b"250 2.0.0 stored\r\n")
        await reader.readline()  # QUIT
        writer.write(b"221 bye\r\n")

    env = Envelope("a@example.org", ("b@example.net",), None, "192.0.2.1", "h", "l",
                   body_8bit=True)
    ascii_data = b"Content-Transfer-Encoding: 8bit\r\n\r\nplain ascii\r\n"
    async with scripted(script) as port:
        seven = await relay(port).deliver(message(env, ascii_data), env.rcpt_to)
        eight = await relay(port).deliver(message(env, "\r\nGrüße\r\n".encode()),
                                          env.rcpt_to)
    assert isinstance(seven["b@example.net"], Delivered), seven
    assert mails == [f"MAIL FROM:<a@example.org> SIZE={len(ascii_data)}\r\n".encode()]
    assert eight["b@example.net"] == PermFailure(
        f"5.6.3 relay 127.0.0.1:{port} does not accept 8-bit data (8BITMIME)")


async def test_connection_refused_is_temporary() -> None:
    async with aiosmtpd_peer() as peer:
        port = peer.port
    # The server is closed now: nothing listens on that port.
    results = await relay(port).deliver(message(), ("a@example.net", "b@example.net"))
    assert all(isinstance(r, TempFailure) and "connect" in r.reply for r in results.values())


async def test_starttls_with_verified_certificate(pki: Pki) -> None:
    async with aiosmtpd_peer(tls=pki.server_context) as peer:
        results = await relay(peer.port, tls_mode="require", ca_file=pki.ca_file).deliver(
            message(), ("bob@example.net",)
        )
    assert isinstance(results["bob@example.net"], Delivered)
    assert peer.handler.received[0].tls


async def test_opportunistic_tls_is_used_when_offered(pki: Pki) -> None:
    async with aiosmtpd_peer(tls=pki.server_context) as peer:
        await relay(peer.port, tls_mode="opportunistic", ca_file=pki.ca_file).deliver(
            message(), ("bob@example.net",)
        )
    assert peer.handler.received[0].tls


async def test_opportunistic_tls_falls_back_to_clear_when_not_offered(pki: Pki) -> None:
    async with aiosmtpd_peer() as peer:
        results = await relay(peer.port, tls_mode="opportunistic", ca_file=pki.ca_file).deliver(
            message(), ("bob@example.net",)
        )
    assert isinstance(results["bob@example.net"], Delivered)
    assert not peer.handler.received[0].tls


async def test_required_tls_not_offered_is_temporary(pki: Pki) -> None:
    async with aiosmtpd_peer() as peer:
        results = await relay(peer.port, tls_mode="require", ca_file=pki.ca_file).deliver(
            message(), ("bob@example.net",)
        )
    result = results["bob@example.net"]
    assert isinstance(result, TempFailure) and "STARTTLS" in result.reply
    assert peer.handler.received == []


async def test_required_tls_not_offered_warns_naming_the_hop(
    pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    """Deferred, with the hop named and one WARNING record: a relay_tls = require
    the next hop cannot meet is for an operator to fix, as a refused relay AUTH is
    (it was only the INFO deferral, naming no hop)."""
    with caplog.at_level(logging.WARNING, logger="smtpgate.queue.relay"):
        async with aiosmtpd_peer() as peer:
            results = await relay(peer.port, tls_mode="require", ca_file=pki.ca_file).deliver(
                message(), ("bob@example.net",)
            )
    want = f"4.7.0 relay 127.0.0.1:{peer.port} does not offer STARTTLS (relay_tls = require)"
    assert results["bob@example.net"] == TempFailure(want)
    assert peer.handler.received == []
    assert [r.getMessage() for r in caplog.records] == [f"queue: {message().queue_id}: {want}"]


async def test_unverifiable_certificate_is_temporary_and_sends_nothing(pki: Pki) -> None:
    async with aiosmtpd_peer(tls=pki.server_context) as peer:
        # System CAs only: our test CA is unknown.
        results = await relay(peer.port, tls_mode="opportunistic").deliver(
            message(), ("bob@example.net",)
        )
    # RFC 3463 X.7.5, cryptographic failure (Postfix: 4.7.5 Server certificate
    # not verified), not 4.4.2, a network failure.
    failure = results["bob@example.net"]
    assert isinstance(failure, TempFailure)
    assert failure.reply.startswith(f"4.7.5 relay 127.0.0.1:{peer.port}: session failed "
                                   "during the TLS handshake: ")
    assert "CERTIFICATE_VERIFY_FAILED" in failure.reply
    assert peer.handler.received == []


async def test_relay_verify_cert_false_accepts_an_unknown_ca(pki: Pki) -> None:
    async with aiosmtpd_peer(tls=pki.server_context) as peer:
        results = await relay(peer.port, tls_mode="require", verify=False).deliver(
            message(), ("bob@example.net",)
        )
    assert isinstance(results["bob@example.net"], Delivered)


async def test_rfc4954_auth_plain_after_tls_and_auth_parameter(pki: Pki) -> None:
    async with aiosmtpd_peer(tls=pki.server_context, auth=True) as peer:
        results = await relay(
            peer.port, tls_mode="require", ca_file=pki.ca_file, password="relay-secret"
        ).deliver(message(), ("bob@example.net",))
    assert isinstance(results["bob@example.net"], Delivered)
    assert peer.handler.received[0].login == b"relayuser"
    # RFC 4954 §5 + RFC 3461 §4: the submitter, xtext-encoded ("+" is +2B).
    assert peer.handler.auth_params == ["ALICE+2BSALES@EXAMPLE.ORG"]  # aiosmtpd upper-cases


async def test_rfc4954_s5_unauthenticated_submission_is_auth_empty(pki: Pki) -> None:
    env = Envelope("a@example.org", ("b@example.net",), None, "192.0.2.1", "h", "l")
    async with aiosmtpd_peer(tls=pki.server_context, auth=True) as peer:
        await relay(peer.port, tls_mode="require", ca_file=pki.ca_file,
                    password="relay-secret").deliver(message(env), env.rcpt_to)
    assert peer.handler.auth_params == ["<>"]


async def test_wrong_relay_password_is_temporary(pki: Pki) -> None:
    async with aiosmtpd_peer(tls=pki.server_context, auth=True) as peer:
        results = await relay(
            peer.port, tls_mode="require", ca_file=pki.ca_file, password="wrong"
        ).deliver(message(), ("bob@example.net",))
    result = results["bob@example.net"]
    assert isinstance(result, TempFailure) and "535" in result.reply
    assert peer.handler.received == []


async def test_credentials_are_never_sent_in_clear() -> None:
    async with aiosmtpd_peer(auth=True, auth_require_tls=False) as peer:
        results = await relay(
            peer.port, tls_mode="opportunistic", ca_file=None, password="relay-secret"
        ).deliver(message(), ("bob@example.net",))
    result = results["bob@example.net"]
    assert isinstance(result, TempFailure) and "without TLS" in result.reply


async def test_worker_with_relay_end_to_end(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    try:
        await spool.store(ENV, DATA)
        async with aiosmtpd_peer() as peer:
            worker = DeliveryWorker(spool, relay(peer.port), QueueConfig())
            assert await worker.run_once() == 1
        assert spool.list_ids() == []
        assert peer.handler.received[0].content == DATA
    finally:
        await spool.close()


# --- scripted servers ------------------------------------------------------------------

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def scripted(script: Script) -> AsyncIterator[int]:
    async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await script(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(run, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def _lines(reader: asyncio.StreamReader, n: int) -> list[bytes]:
    return [await reader.readline() for _ in range(n)]


async def test_rfc2920_mail_and_rcpts_are_pipelined() -> None:
    seen: list[bytes] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 pipelined.test ESMTP\r\n")
        await reader.readline()  # EHLO
        writer.write(b"250-pipelined.test\r\n250 PIPELINING\r\n")
        # Reply to nothing until MAIL and both RCPTs are here: a client that
        # waits for the MAIL reply first would hang (and time out).
        seen.extend(await _lines(reader, 3))
        writer.write(b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n550 5.1.1 no\r\n")
        seen.extend(await _lines(reader, 1))  # DATA
        writer.write(b"354 go\r\n")
        body = await reader.readuntil(b"\r\n.\r\n")
        seen.append(body)
        writer.write(b"250 2.0.0 queued\r\n")
        seen.extend(await _lines(reader, 1))
        writer.write(b"221 bye\r\n")

    async with scripted(script) as port:
        results = await relay(port, timeouts=RelayTimeouts(command=5)).deliver(
            message(), ("a@example.net", "b@example.net")
        )
    assert isinstance(results["a@example.net"], Delivered)
    assert isinstance(results["b@example.net"], PermFailure)
    assert seen[0].startswith(b"MAIL FROM:<alice@example.org>")
    assert seen[1:3] == [b"RCPT TO:<a@example.net>\r\n", b"RCPT TO:<b@example.net>\r\n"]
    assert seen[3] == b"DATA\r\n"
    assert seen[4] == b"Subject: hi\r\n\r\nhello\r\n..a line with a leading dot\r\n...two\r\n.\r\n"
    assert seen[5] == b"QUIT\r\n"



async def test_rfc2920_refused_sender_then_close_bounces_every_recipient() -> None:
    """A pipelining relay that refuses MAIL with 5xx and hangs up without answering
    the RCPTs: the 550 is the outcome (found with a scripted relay: it was read as a
    dropped connection, a temporary failure retried until queue.max_age)."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 strict.test ESMTP\r\n")
        await reader.readline()  # EHLO
        writer.write(b"250-strict.test\r\n250 PIPELINING\r\n")
        await _lines(reader, 3)  # MAIL and two RCPTs, in one group
        writer.write(b"550 5.7.1 sender refused\r\n")
        await writer.drain()

    async with scripted(script) as port:
        results = await relay(port, timeouts=RelayTimeouts(command=5)).deliver(
            message(), ("a@example.net", "b@example.net")
        )
    for r in ("a@example.net", "b@example.net"):
        assert isinstance(results[r], PermFailure), results[r]
        assert "550 5.7.1 sender refused" in results[r].reply


async def _plain_hop_takes_mail(reader: asyncio.StreamReader,
                                writer: asyncio.StreamWriter) -> None:
    """A scripted hop without PIPELINING, up to its 250 to MAIL FROM."""
    writer.write(b"220 plain.test ESMTP\r\n")
    await reader.readline()  # EHLO
    writer.write(b"250 plain.test\r\n")
    await reader.readline()  # MAIL
    writer.write(b"250 2.1.0 ok\r\n")


async def test_refused_recipient_then_close_without_pipelining_bounces_that_one() -> None:
    """Without PIPELINING, a 550 to the first RCPT and a hang-up at the second: the
    550 was dropped with the connection, and the recipient retried as a temporary
    failure until the relay came back (the pipelined path kept it already)."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _plain_hop_takes_mail(reader, writer)
        await reader.readline()  # RCPT a
        writer.write(b"550 5.1.1 no such user\r\n")
        await reader.readline()  # RCPT b: no reply, the connection drops
        await writer.drain()

    async with scripted(script) as port:
        results = await relay(port, timeouts=RelayTimeouts(command=5)).deliver(
            message(), ("a@example.net", "b@example.net"))
    assert results["a@example.net"] == PermFailure(
        f"relay 127.0.0.1:{port} refused recipient: 550 5.1.1 no such user")
    assert isinstance(results["b@example.net"], TempFailure)


async def test_rfc5321_421_to_a_rcpt_without_pipelining_ends_the_transaction() -> None:
    """A 421 to a RCPT (RFC 5321 §3.8: the server is closing the channel) was taken
    as one recipient's temporary failure, and the next RCPT went to a hop that was
    closing. Nothing more goes after it but the QUIT, no DATA for the recipient it
    accepted before: every recipient without an outcome is deferred with the 421."""
    after: list[bytes] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _plain_hop_takes_mail(reader, writer)
        await reader.readline()  # RCPT a
        writer.write(b"250 2.1.5 ok\r\n")
        await reader.readline()  # RCPT b
        writer.write(b"550 5.1.1 no such user\r\n")
        await reader.readline()  # RCPT c
        writer.write(b"421 4.3.2 shutting down\r\n")
        await writer.drain()
        # What the client sends to a hop that said it is closing (bounded).
        with contextlib.suppress(TimeoutError):
            while line := await asyncio.wait_for(reader.readline(), 2):
                after.append(line)
                if line == b"QUIT\r\n":
                    writer.write(b"221 bye\r\n")
                    break

    async with scripted(script) as port:
        results = await relay(port, timeouts=RelayTimeouts(command=5)).deliver(
            message(), ("a@example.net", "b@example.net", "c@example.net", "d@example.net"))
    assert all(not line.startswith((b"RCPT", b"DATA")) for line in after), after
    assert results["b@example.net"] == PermFailure(
        f"relay 127.0.0.1:{port} refused recipient: 550 5.1.1 no such user")
    for r in ("a@example.net", "c@example.net", "d@example.net"):
        assert isinstance(results[r], TempFailure), results[r]
        assert "421 4.3.2 shutting down" in results[r].reply, results[r]


async def hop_until_the_dot(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                            name: bytes) -> bytes:
    """A scripted hop for one recipient: greeting, 250 to EHLO (or LHLO), MAIL and
    RCPT, 354 to DATA; the message up to its final dot, before any reply to it."""
    writer.write(b"220 " + name + b"\r\n")
    await reader.readline()  # EHLO or LHLO
    writer.write(b"250 " + name + b"\r\n")
    for _ in range(2):  # MAIL, RCPT
        await reader.readline()
        writer.write(b"250 ok\r\n")
    await reader.readline()
    writer.write(b"354 go\r\n")
    return await reader.readuntil(b"\r\n.\r\n")


async def test_connection_lost_after_data_is_temporary() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await hop_until_the_dot(reader, writer, b"flaky.test")
        # ... and the connection drops before the final reply.

    async with scripted(script) as port:
        results = await relay(port).deliver(message(), ("a@example.net",))
    assert isinstance(results["a@example.net"], TempFailure)


@pytest.mark.parametrize("greeting", [b"554 5.3.2 go away\r\n", b"421 4.3.2 busy\r\n"])
async def test_refusing_greeting_is_temporary(greeting: bytes) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(greeting)
        await reader.read(100)

    async with scripted(script) as port:
        results = await relay(port).deliver(message(), ("a@example.net",))
    assert isinstance(results["a@example.net"], TempFailure)


@pytest.mark.parametrize("tls_mode", ["opportunistic", "require"])
@pytest.mark.parametrize("at", ["EHLO", "STARTTLS"])
async def test_a_421_to_ehlo_or_starttls_defers_with_the_relays_words(
    at: str, tls_mode: TlsMode
) -> None:
    """RFC 5321 §3.8: a 421 is the relay closing the channel, as Postfix does after
    its 421s. Before, a 421 to EHLO was followed by HELO on the closed connection
    and a 421 to STARTTLS by MAIL in clear (relay_tls = "opportunistic"): the
    deferral said "server closed the connection" and the 421 was lost."""
    seen: list[bytes] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 hop ESMTP\r\n")
        while line := await reader.readline():
            seen.append(line)
            if line.upper().startswith(at.encode()):
                writer.write(b"421 4.3.2 Service shutting down\r\n")
                return  # and close, as Postfix does
            writer.write(b"250-hop\r\n250 STARTTLS\r\n")

    async with scripted(script) as port:
        results = await relay(port, tls_mode=tls_mode, verify=False).deliver(
            message(), ("a@example.net",))
    result = results["a@example.net"]
    assert isinstance(result, TempFailure)
    assert result.reply == (f"relay 127.0.0.1:{port} refused {at}: "
                            "421 4.3.2 Service shutting down"), result
    assert not any(line.upper().startswith((b"HELO", b"MAIL")) for line in seen), seen


async def test_garbage_instead_of_smtp_is_temporary() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        await reader.read(100)

    async with scripted(script) as port:
        results = await relay(port).deliver(message(), ("a@example.net",))
    assert isinstance(results["a@example.net"], TempFailure)


async def test_silent_server_times_out_as_temporary() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):  # the client gives up with a reset
            await reader.read(100)  # never greets

    async with scripted(script) as port:
        results = await relay(port, timeouts=RelayTimeouts(greeting=0.1)).deliver(
            message(), ("a@example.net",)
        )
    result = results["a@example.net"]
    assert isinstance(result, TempFailure)
    assert f"relay 127.0.0.1:{port}: timed out after 0.1 s waiting for the greeting" in (
        result.reply
    )


FAST = RelayTimeouts(connect=5, greeting=5, command=5, data=5)


async def _stalled(
    script: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
    timeouts: RelayTimeouts,
    *,
    data: bytes = DATA,
    tls: Pki | None = None,
) -> tuple[int, str]:
    """Deliver to a server that runs ``script`` and then stalls until the client has
    given up; returns the port and the (temporary) result's text."""
    given_up = asyncio.Event()

    async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await script(reader, writer)
        await given_up.wait()  # the stall: neither reading nor answering

    async with scripted(run) as port:
        deliverer = relay(port, timeouts=timeouts) if tls is None else relay(
            port, tls_mode="require", ca_file=tls.ca_file, timeouts=timeouts
        )
        results = await deliverer.deliver(message(data=data), ("a@example.net",))
        given_up.set()
    result = results["a@example.net"]
    assert isinstance(result, TempFailure), result
    return port, result.reply


async def _greet_and_accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                            commands: int) -> None:
    writer.write(b"220 stuck.test\r\n")
    for _ in range(commands):
        await reader.readline()
        writer.write(b"250 ok\r\n")


async def test_rfc5321_s4_5_3_2_stalled_ehlo_reply_defers_naming_step_and_host() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _greet_and_accept(reader, writer, 0)

    port, text = await _stalled(script, RelayTimeouts(greeting=5, command=0.2))
    assert text.startswith(f"4.4.2 relay 127.0.0.1:{port}: ")
    assert "timed out after 0.2 s waiting for the reply to EHLO" in text


async def test_rfc5321_s4_5_3_2_3_stalled_rcpt_reply_defers() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _greet_and_accept(reader, writer, 2)  # EHLO, MAIL; then silence at RCPT

    _, text = await _stalled(script, RelayTimeouts(greeting=5, command=0.2))
    assert "waiting for the reply to RCPT TO" in text


async def test_rfc5321_s4_5_3_2_6_stalled_final_reply_uses_the_data_timeout() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _greet_and_accept(reader, writer, 3)  # EHLO, MAIL, RCPT
        await reader.readline()
        writer.write(b"354 go\r\n")
        await reader.readuntil(b"\r\n.\r\n")  # ... and no reply to the final dot

    _, text = await _stalled(script, RelayTimeouts(greeting=5, command=5, data=0.2))
    assert "timed out after 0.2 s waiting for the reply to the final dot" in text


async def test_rfc5321_s4_5_3_2_5_relay_that_stops_reading_the_message_defers() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _greet_and_accept(reader, writer, 3)
        await reader.readline()
        writer.write(b"354 go\r\n")  # ... and never reads the message

    # Larger than the socket buffers on both sides, so the writes must stall.
    big = b"Subject: big\r\n\r\n" + b"x" * 998 + b"\r\n" * 1 + (b"y" * 78 + b"\r\n") * 400_000
    _, text = await _stalled(script, RelayTimeouts(greeting=5, command=0.3, data=5), data=big)
    assert "timed out after 0.3 s waiting for the relay to take the message" in text


async def test_stalled_tls_handshake_defers(pki: Pki) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 stuck.test\r\n")
        await reader.readline()
        writer.write(b"250-stuck.test\r\n250 STARTTLS\r\n")
        await reader.readline()
        writer.write(b"220 go ahead\r\n")  # ... and no TLS handshake follows

    _, text = await _stalled(script, RelayTimeouts(greeting=5, command=0.3), tls=pki)
    assert "waiting for the TLS handshake" in text


async def test_cancelled_delivery_raises_and_ends_the_connection() -> None:
    """A shutdown cancels deliveries: the cancellation reaches the caller and the
    connection is dropped, not left open."""
    connected = asyncio.Event()
    peer_saw_end = asyncio.Event()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connected.set()  # never greets
        try:
            await reader.read(100)
        except ConnectionError:
            pass
        peer_saw_end.set()

    async with scripted(script) as port:
        task = asyncio.create_task(relay(port, timeouts=FAST).deliver(message(), ("a@x.test",)))
        await asyncio.wait_for(connected.wait(), 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(peer_saw_end.wait(), 10)


async def test_helo_fallback_when_ehlo_is_refused() -> None:
    got: list[bytes] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 old.test\r\n")
        got.extend(await _lines(reader, 1))
        writer.write(b"502 5.5.1 what is EHLO\r\n")
        got.extend(await _lines(reader, 1))
        writer.write(b"250 old.test\r\n")
        got.extend(await _lines(reader, 1))
        writer.write(b"250 ok\r\n")
        await reader.readline()
        writer.write(b"250 ok\r\n")
        await reader.readline()
        writer.write(b"354 go\r\n")
        await reader.readuntil(b"\r\n.\r\n")
        writer.write(b"250 ok\r\n")
        await reader.readline()
        writer.write(b"221 bye\r\n")

    async with scripted(script) as port:
        results = await relay(port).deliver(message(), ("a@example.net",))
    assert isinstance(results["a@example.net"], Delivered)
    assert got[:2] == [b"EHLO smtpgate.test\r\n", b"HELO smtpgate.test\r\n"]
    assert got[2] == b"MAIL FROM:<alice@example.org>\r\n"  # no ESMTP parameters after HELO


# --- construction from the configuration --------------------------------------------------


def _config(tmp_path: Path, **delivery: Any) -> Config:
    return Config(
        listeners=[ListenerConfig(name="submission", address="127.0.0.1:0", tls="starttls")],
        delivery=DeliveryConfig(**delivery),
        base_dir=tmp_path,
    )


def test_make_deliverer_maildir_is_the_default(tmp_path: Path) -> None:
    deliverer = make_deliverer(_config(tmp_path))
    assert isinstance(deliverer, MaildirDeliverer)
    assert deliverer.path == tmp_path / "mail"
    assert (tmp_path / "mail" / "new").is_dir()


def test_make_deliverer_relay_reads_the_password_file(tmp_path: Path) -> None:
    (tmp_path / "relay.pw").write_text("s3cret\n")
    deliverer = make_deliverer(_config(
        tmp_path, mode="relay", relay_host="smarthost.test", relay_port=587,
        relay_user="me", relay_password_file=Path("relay.pw"),
    ))
    assert isinstance(deliverer, RelayDeliverer)
    assert (deliverer.host, deliverer.port) == ("smarthost.test", 587)


def test_make_deliverer_takes_the_relay_timeouts_from_the_config(tmp_path: Path) -> None:
    deliverer = make_deliverer(_config(
        tmp_path, mode="relay", relay_host="h", relay_tls="none", relay_connect_timeout=1,
        relay_greeting_timeout=2, relay_command_timeout=3, relay_data_timeout=4,
    ))
    assert isinstance(deliverer, RelayDeliverer)
    assert deliverer.timeouts == RelayTimeouts(connect=1, greeting=2, command=3, data=4)


def test_relay_timeout_defaults_keep_the_rfc5321_minimums() -> None:
    d = DeliveryConfig()
    assert (d.relay_greeting_timeout, d.relay_command_timeout, d.relay_data_timeout) == (
        300, 300, 600
    )
    assert d.relay_connect_timeout == 30


@pytest.mark.parametrize("content", [None, "", "two\nlines\n"])
def test_make_deliverer_refuses_a_bad_password_file(tmp_path: Path, content: str | None) -> None:
    if content is not None:
        (tmp_path / "relay.pw").write_text(content)
    with pytest.raises(DeliverySetupError, match="relay_password_file"):
        make_deliverer(_config(tmp_path, mode="relay", relay_host="h", relay_user="me",
                               relay_password_file=Path("relay.pw")))


async def test_worker_stop_cuts_a_stuck_relay_delivery_and_keeps_the_message(
    tmp_path: Path,
) -> None:
    connected = asyncio.Event()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connected.set()  # accepts, never greets
        with contextlib.suppress(ConnectionError):
            await reader.read(100)

    spool = Spool(tmp_path / "spool")
    try:
        qid = await spool.store(ENV, DATA)
        async with scripted(script) as port:
            # Default (RFC) timeouts: only the stop can end this delivery.
            worker = DeliveryWorker(spool, relay(port), QueueConfig(), stop_grace=3600)
            runner = asyncio.create_task(worker.run())
            await asyncio.wait_for(connected.wait(), 10)
            worker.stop(grace=0.05)
            await asyncio.wait_for(runner, 10)
        assert spool.list_ids() == [qid]
        assert spool.load_state(qid) is None  # as before the attempt
    finally:
        await spool.close()


async def test_rfc3030_binary_message_is_not_given_to_a_relay_or_lmtp_hop() -> None:
    # Accepted as BODY=BINARYMIME while delivery.mode was 'maildir', queued when the
    # mode changed: DATA cannot carry it, so it bounces and the hop gets nothing.
    env = Envelope("a@example.org", ("b@example.net",), None, "192.0.2.1", "h", "l",
                   body_8bit=True, body_binary=True)
    async with aiosmtpd_peer() as peer:
        results = await relay(peer.port).deliver(message(env, b"\xff\x00bin\r\n"), env.rcpt_to)
    assert isinstance(results["b@example.net"], PermFailure)
    assert "5.6.3" in results["b@example.net"].reply and "BINARYMIME" in results["b@example.net"].reply
    assert peer.handler.received == []


@pytest.mark.parametrize("lmtp", [False, True])
async def test_nul_in_the_body_reaches_the_next_hop_unchanged(lmtp: bool) -> None:
    """docs/smtp.md "NUL octets": the body passes as it came, over SMTP and LMTP."""
    data = b"Subject: nul\r\n\r\nbin\x00ary\r\n\x00\r\n"
    got: list[bytes] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        got.append(await hop_until_the_dot(reader, writer, b"hop.test"))
        writer.write(b"250 2.0.0 queued\r\n")
        await reader.readline()
        writer.write(b"221 bye\r\n")

    async with scripted(script) as port:
        hop = RelayDeliverer("127.0.0.1", port, helo_name="smtpgate.test", tls_mode="none",
                             lmtp=lmtp, timeouts=RelayTimeouts(command=5, data=5))
        results = await hop.deliver(message(data=data), ("a@example.net",))
    assert isinstance(results["a@example.net"], Delivered), results
    assert got == [data + b".\r\n"]


async def test_multiline_replies_arriving_a_byte_at_a_time_are_read_whole() -> None:
    """A hop (or a middlebox) that sends its multi-line replies in pieces: each
    reply is read whole, its last line deciding (checked with a real socket, one
    octet per write)."""
    got: list[bytes] = []

    async def dribble(writer: asyncio.StreamWriter, data: bytes) -> None:
        for i in range(len(data)):
            writer.write(data[i : i + 1])
            await writer.drain()
            await asyncio.sleep(0)

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await dribble(writer, b"220-pieces.test ESMTP\r\n220 welcome\r\n")
        await reader.readline()  # EHLO
        await dribble(writer, b"250-pieces.test\r\n250-PIPELINING\r\n250-SIZE 1000000\r\n"
                              b"250 8BITMIME\r\n")
        await _lines(reader, 2)  # MAIL and RCPT, pipelined
        await dribble(writer, b"250-2.1.0 sender\r\n250 2.1.0 ok\r\n250-2.1.5 rcpt\r\n"
                              b"250 2.1.5 ok\r\n")
        await reader.readline()  # DATA
        await dribble(writer, b"354-go\r\n354 ahead\r\n")
        got.append(await reader.readuntil(b"\r\n.\r\n"))
        await dribble(writer, b"250-2.0.0 queued\r\n250 2.0.0 as 4711\r\n")
        await reader.readline()
        await dribble(writer, b"221 bye\r\n")

    async with scripted(script) as port:
        results = await relay(port, timeouts=RelayTimeouts(command=5, data=5)).deliver(
            message(), ("a@example.net",))
    result = results["a@example.net"]
    assert isinstance(result, Delivered) and result.detail.endswith("250 2.0.0 queued as 4711")
    assert len(got) == 1
