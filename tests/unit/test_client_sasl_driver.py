"""One client-side SASL driver for relay delivery and the tools.

RFC 5802 §5: a SCRAM client authenticates the server by its signature (``v=``).
Before issue 9 the tools refused a 235 that came without a verified signature and
the relay delivery took it as success and sent the mail. Both now run AUTH through
`smtpgate.client.auth.ClientAuthExchange` (by way of the one shell in
``queue/smtp_io.py``): a next hop or a tested server that says 235 to SCRAM
without proving itself is refused, the relay defers (nothing is sent) and says
why, the tester exits "auth refused". The honest hop is the control: the same
code then succeeds, so the refusal is about the signature.
"""

from __future__ import annotations

import ast
import asyncio
import logging
from pathlib import Path

import pytest

from smtpgate.client import auth as client_auth
from smtpgate.client.auth import UNVERIFIED_SERVER, AuthSend, ClientAuthExchange, ClientAuthResult
from smtpgate.client.engine import ClientEngine
from smtpgate.client.replies import ServerReply
from smtpgate.queue.delivery import Delivered, QueuedMessage, TempFailure
from smtpgate.queue.envelope import Envelope
from smtpgate.queue.relay import RelayDeliverer, RelayTimeouts
from smtpgate.sasl.base import ClientMechanism
from smtpgate.sasl.plain import PlainClient
from smtpgate.sasl.scram import ScramClient
from smtpgate.tools.tester import ExitCode, TesterOptions, run_test
from tests.peers.scram_hop import PASSWORD, USER, scram_hop

PKG = Path(__file__).resolve().parents[2] / "src" / "smtpgate"
LIARS = ("no-final", "bad-signature", "early")
ENV = Envelope(mail_from="alice@example.org", rcpt_to=("bob@example.net",),
               auth_identity="alice@example.org", client_ip="192.0.2.7",
               helo="laptop.example.org", listener="submission")
MESSAGE = QueuedMessage("18f00000000-1-0-00000001", ENV, b"Subject: hi\r\n\r\nhello\r\n")
FAST = RelayTimeouts(connect=5, greeting=5, command=5, data=5)


def _scram_relay(port: int, password: str = PASSWORD) -> RelayDeliverer:
    return RelayDeliverer(
        "127.0.0.1", port, helo_name="smtpgate.test", tls_mode="none",
        auth=lambda: ScramClient("sha256", USER, password), timeouts=FAST,
    )


def _tester(port: int, password: str = PASSWORD) -> TesterOptions:
    return TesterOptions(host="127.0.0.1", port=port, tls_mode="plain", auth="SCRAM-SHA-256",
                         user=USER, password=password, rcpt_to=("bob@example.net",),
                         timeout=5.0, ehlo_name="tester.test")


# --- the relay --------------------------------------------------------------------------


@pytest.mark.parametrize("mode", LIARS)
async def test_rfc5802_s5_relay_defers_a_235_without_the_server_signature(
    mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "smtpgate.queue.relay")
    async with scram_hop(mode) as hop:
        results = await _scram_relay(hop.port).deliver(MESSAGE, ENV.rcpt_to)
    result = results["bob@example.net"]
    assert isinstance(result, TempFailure), result
    assert f"relay 127.0.0.1:{hop.port}: AUTH SCRAM-SHA-256 abandoned" in result.reply
    # Never sent over a session whose peer did not prove itself:
    assert "MAIL" not in hop.verbs and hop.messages == []
    (record,) = [r for r in caplog.records if "AUTH SCRAM-SHA-256 abandoned" in r.getMessage()]
    assert record.levelno == logging.WARNING
    assert MESSAGE.queue_id in record.getMessage()


async def test_relay_without_server_signature_names_the_rule() -> None:
    async with scram_hop("no-final") as hop:
        results = await _scram_relay(hop.port).deliver(MESSAGE, ENV.rcpt_to)
    assert UNVERIFIED_SERVER in results["bob@example.net"].reply  # type: ignore[union-attr]


async def test_relay_with_a_wrong_server_signature_cancels_and_says_so() -> None:
    async with scram_hop("bad-signature") as hop:
        results = await _scram_relay(hop.port).deliver(MESSAGE, ENV.rcpt_to)
    assert "signature" in results["bob@example.net"].reply  # type: ignore[union-attr]
    assert b"*" in hop.lines  # RFC 4954 §4: the exchange was cancelled


async def test_relay_delivers_through_an_honest_scram_hop() -> None:
    """The control: the same path succeeds when the hop proves itself."""
    async with scram_hop("honest") as hop:
        results = await _scram_relay(hop.port).deliver(MESSAGE, ENV.rcpt_to)
    assert isinstance(results["bob@example.net"], Delivered), results
    assert len(hop.messages) == 1


async def test_relay_with_a_wrong_password_is_refused_by_the_honest_hop() -> None:
    async with scram_hop("honest") as hop:
        results = await _scram_relay(hop.port, "wrong").deliver(MESSAGE, ENV.rcpt_to)
    result = results["bob@example.net"]
    assert isinstance(result, TempFailure)
    assert f"relay 127.0.0.1:{hop.port} refused AUTH SCRAM-SHA-256: 535 5.7.8" in result.reply
    assert hop.messages == []


# --- the tester -------------------------------------------------------------------------


@pytest.mark.parametrize("mode", LIARS)
async def test_rfc5802_s5_tester_reports_a_235_without_the_server_signature(mode: str) -> None:
    async with scram_hop(mode) as hop:
        report = await run_test(_tester(hop.port))
    assert report.exit_code == ExitCode.AUTH_REFUSED, report.transcript.lines()
    assert report.auth is not None and not report.auth.ok
    assert report.auth.server_verified is False
    assert "MAIL" not in hop.verbs and hop.messages == []


async def test_tester_succeeds_against_the_honest_hop() -> None:
    async with scram_hop("honest") as hop:
        report = await run_test(_tester(hop.port))
    assert report.exit_code == ExitCode.SUCCESS, report.transcript.lines()
    assert report.auth is not None and report.auth.server_verified is True
    assert "(server signature verified)" in "\n".join(report.transcript.lines())


# --- one code path ----------------------------------------------------------------------


async def test_relay_and_tester_run_auth_through_the_same_exchange(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[ClientAuthResult] = []
    real = ClientAuthExchange.receive

    def spy(self: ClientAuthExchange, reply: ServerReply) -> AuthSend | ClientAuthResult:
        out = real(self, reply)
        if isinstance(out, ClientAuthResult):
            seen.append(out)
        return out

    monkeypatch.setattr(client_auth.ClientAuthExchange, "receive", spy)
    async with scram_hop("no-final") as hop:
        relayed = await _scram_relay(hop.port).deliver(MESSAGE, ENV.rcpt_to)
        tested = await run_test(_tester(hop.port))
    assert isinstance(relayed["bob@example.net"], TempFailure)
    assert tested.exit_code == ExitCode.AUTH_REFUSED
    assert [r.detail for r in seen] == [UNVERIFIED_SERVER, UNVERIFIED_SERVER]
    assert tested.auth is seen[1]


#: What only a SASL step loop calls: a mechanism's step(), a challenge decoded, a
#: response or cancel formatted. Outside the driver only the auditor's dummy probe
#: formats responses (no mechanism, nothing real in them).
_LOOP_CALLS = {"step", "challenge", "auth_response", "auth_cancel"}
_ALLOWED = {("tools/audit.py", "auth_response"), ("tools/audit.py", "auth_cancel")}


def test_there_is_one_client_sasl_loop() -> None:
    """relay.py, the tools and every other client-side module call the driver; none
    has a step loop of its own (issue 9: two loops drifted on the SCRAM rule)."""
    offenders = []
    files = [*(PKG / "queue").glob("*.py"), *(PKG / "tools").glob("*.py"),
             *(PKG / "cli").glob("*.py"), *(PKG / "client").glob("*.py")]
    for f in files:
        rel = f.relative_to(PKG).as_posix()
        if rel == "client/auth.py" or rel == "client/engine.py":
            continue
        for node in ast.walk(ast.parse(f.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in _LOOP_CALLS and (rel, node.func.attr) not in _ALLOWED):
                offenders.append(f"{rel}:{node.lineno}: .{node.func.attr}()")
    assert not offenders, "\n".join(offenders)
    # The check sees what it is looking for: the driver itself is full of it.
    driver = ast.parse((PKG / "client" / "auth.py").read_text())
    assert any(isinstance(n, ast.Attribute) and n.attr == "step" for n in ast.walk(driver))


# --- the sans-IO exchange ---------------------------------------------------------------


def _reply(code: int, text: str = "x") -> ServerReply:
    return ServerReply(code, None, (text,))


def test_plain_235_is_success_without_a_signature_question() -> None:
    ex = ClientAuthExchange(ClientEngine(expect_greeting=False), PlainClient("u", "p"))
    assert ex.start().command
    result = ex.receive(_reply(235))
    assert isinstance(result, ClientAuthResult) and result.ok and result.server_verified is None


class _Endless(ClientMechanism):
    """Answers every challenge, as a mechanism led on by a server would."""

    name = "X-ENDLESS"

    def start(self) -> bytes | None:
        return None

    def step(self, challenge: bytes) -> bytes:
        return b"more"

    @property
    def done(self) -> bool:
        return False


def test_plain_that_gets_a_challenge_after_its_message_cancels() -> None:
    ex = ClientAuthExchange(ClientEngine(expect_greeting=False), PlainClient("u", "p"))
    ex.start()
    out = ex.receive(_reply(334, ""))
    assert isinstance(out, AuthSend) and out.data == b"*\r\n" and "unexpected" in out.note
    result = ex.receive(_reply(501, "cancelled"))
    assert isinstance(result, ClientAuthResult) and result.outcome == "refused" and result.client_ended


def test_too_many_challenges_are_cancelled() -> None:
    ex = ClientAuthExchange(ClientEngine(expect_greeting=False), _Endless(), max_rounds=2)
    ex.start()
    out: AuthSend | ClientAuthResult = ex.receive(_reply(334, ""))
    out = ex.receive(_reply(334, ""))
    out = ex.receive(_reply(334, ""))
    assert isinstance(out, AuthSend) and out.data == b"*\r\n"
    result = ex.receive(_reply(501, "cancelled"))
    assert isinstance(result, ClientAuthResult) and result.outcome == "refused"
    assert result.client_ended and result.challenges == 3


async def test_a_relay_that_stalls_in_auth_defers_naming_the_step() -> None:
    """Issue 8's step names survive the move of the AUTH loop into the driver."""
    given_up = asyncio.Event()

    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 stuck.test\r\n")
        await reader.readline()
        writer.write(b"250-stuck.test\r\n250 AUTH SCRAM-SHA-256\r\n")
        await reader.readline()  # AUTH ... and then silence
        await given_up.wait()
        writer.close()

    server = await asyncio.start_server(stall, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        deliverer = RelayDeliverer(
            "127.0.0.1", port, helo_name="smtpgate.test", tls_mode="none",
            auth=lambda: ScramClient("sha256", USER, PASSWORD),
            timeouts=RelayTimeouts(connect=5, greeting=5, command=0.2, data=5),
        )
        results = await deliverer.deliver(MESSAGE, ENV.rcpt_to)
        given_up.set()
    result = results["bob@example.net"]
    assert isinstance(result, TempFailure)
    assert "timed out after 0.2 s waiting for the reply to AUTH" in result.reply


# --- a LOGIN prompt that is not base64 ------------------------------------------------


def test_login_answers_prompts_that_are_not_base64_and_says_so() -> None:
    """Before: "334 Username:" (a prompt in clear, as some old servers send) was
    "challenge is not valid base64", a protocol error, where swaks logs in: LOGIN
    ignores its prompts. It is answered now, with a warning note; any other
    mechanism still refuses such a challenge."""
    from smtpgate.client.errors import RemoteProtocolError
    from smtpgate.sasl.login import LoginClient

    exchange = ClientAuthExchange(ClientEngine(expect_greeting=False),
                                  LoginClient("bob", "s3cret"))
    first = exchange.start()
    assert isinstance(first, AuthSend) and first.data == b"AUTH LOGIN\r\n"
    user = exchange.receive(ServerReply(334, None, ("Username:",)))
    assert isinstance(user, AuthSend)
    assert user.data == b"Ym9i\r\n" and user.challenge == b"Username:"
    assert user.note == ("warning: the server's prompt 'Username:' is not base64 "
                         "(RFC 4954 §4); LOGIN does not read it, so answered anyway")
    password = exchange.receive(ServerReply(334, None, ("UGFzc3dvcmQ6",)))  # base64
    assert isinstance(password, AuthSend)
    assert password.data == b"czNjcmV0\r\n" and password.note == ""
    result = exchange.receive(ServerReply(235, "2.7.0", ("ok",)))
    assert isinstance(result, ClientAuthResult) and result.ok

    plain = ClientAuthExchange(ClientEngine(expect_greeting=False),
                               PlainClient("bob", "s3cret"), initial_response=False)
    plain.start()
    with pytest.raises(RemoteProtocolError, match="not valid base64"):
        plain.receive(ServerReply(334, None, ("Go ahead",)))
