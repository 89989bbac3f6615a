"""``smtpgate test`` against scripted servers: each way a session can stop, its exit code.

The scripted server answers each line it reads with the next reply of its script
(reading a whole message after a 354), so every stage can be made to fail in
turn. The real servers are in tests/integration/test_tester*.py.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
import ssl
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from smtpgate.cli.main import cli
from smtpgate.cli.tester_cmd import parse_server
from smtpgate.tools.tester import ExitCode, TesterOptions, run_test

PASSWORD = "pass-Word-123"
EHLO_PLAIN = b"250-fake.test\r\n250-PIPELINING\r\n250 AUTH PLAIN LOGIN SCRAM-SHA-256\r\n"
EHLO_NO_AUTH = b"250-fake.test\r\n250 PIPELINING\r\n"


class Scripted:
    """Greets, then answers each line with the next reply; after a 354 it reads the
    message up to the final dot first."""

    def __init__(self, greeting: bytes, replies: Sequence[bytes]) -> None:
        self.greeting = greeting
        self.replies = list(replies)
        self.received: list[bytes] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(self.greeting)
        previous = b""
        try:
            for reply in self.replies:
                if previous.startswith(b"354"):
                    while (line := await reader.readline()) not in (b".\r\n", b""):
                        self.received.append(line)
                else:
                    line = await reader.readline()
                    if not line:
                        break
                    self.received.append(line)
                writer.write(reply)
                await writer.drain()
                previous = reply
            await reader.read(1024)  # wait for the client to close
        finally:
            writer.close()


Serve = Callable[[Scripted], Awaitable[int]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    servers: list[asyncio.Server] = []

    async def start(script: Scripted) -> int:
        server = await asyncio.start_server(script.handle, "127.0.0.1", 0)
        servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    yield start
    for s in servers:
        s.close()
        await s.wait_closed()


def _opts(port: int, **kw: object) -> TesterOptions:
    base: dict[str, object] = {"host": "127.0.0.1", "port": port, "tls_mode": "plain",
                               "timeout": 5.0, "rcpt_to": ("bob@example.net",)}
    base.update(kw)
    return TesterOptions(**base)  # type: ignore[arg-type]


def _plain_session() -> Scripted:
    """A server that takes AUTH PLAIN and one message, without TLS."""
    return Scripted(b"220 fake.test ESMTP\r\n", [
        EHLO_PLAIN, b"235 2.7.0 ok\r\n", b"250 2.1.0 ok\r\n", b"250 2.1.5 ok\r\n",
        b"354 go\r\n", b"250 2.0.0 queued as X\r\n", b"221 bye\r\n",
    ])


async def test_full_session_without_tls_succeeds_and_masks(serve: Serve) -> None:
    script = _plain_session()
    port = await serve(script)
    report = await run_test(_opts(port, auth="PLAIN", user="alice@example.org",
                                  password=PASSWORD, body="hello\n.dot"))
    assert report.exit_code == ExitCode.SUCCESS, report.error
    assert report.stage == "data"
    assert report.queued == "250 2.0.0 queued as X"
    # The password really went to the server (PLAIN initial response) ...
    assert script.received[1] == b"AUTH PLAIN " + base64.b64encode(
        f"\0alice@example.org\0{PASSWORD}".encode()) + b"\r\n"
    # ... dot-stuffed message, and never appears in the transcript or the JSON.
    assert b"..dot\r\n" in script.received
    text = "\n".join(report.transcript.lines())
    assert PASSWORD not in text and PASSWORD not in json.dumps(report.to_json())
    assert "-> AUTH PLAIN ********" in text
    assert "warning: PLAIN sends the secret itself" in text


async def test_json_envelope_is_what_was_sent_when_from_and_to_default(serve: Serve) -> None:
    # No --from, no --to: MAIL and RCPT use the --user address; the JSON record must
    # say so, not null and [] (docs/tester.md's example shows the addresses).
    script = _plain_session()
    port = await serve(script)
    report = await run_test(_opts(port, auth="PLAIN", user="alice@example.org",
                                  password=PASSWORD, rcpt_to=()))
    assert report.exit_code == ExitCode.SUCCESS, report.error
    assert script.received[2:4] == [b"MAIL FROM:<alice@example.org>\r\n",
                                    b"RCPT TO:<alice@example.org>\r\n"]
    message = report.to_json()["message"]
    assert isinstance(message, dict)
    assert message["from"] == "alice@example.org"
    assert message["to"] == ["alice@example.org"]
    assert message["accepted"] == ["alice@example.org"]


@pytest.mark.parametrize(
    ("greeting", "replies", "opts", "code", "message"),
    [
        (b"554 go away\r\n", [], {}, ExitCode.CONNECTION, "refused the session"),
        (b"HTTP/1.1 400 Bad Request\r\n", [], {}, ExitCode.PROTOCOL, "does not speak SMTP"),
        (b"220 x\r\n", [b"500 no\r\n", b"500 no\r\n"], {}, ExitCode.PROTOCOL, "EHLO and HELO"),
        (b"220 x\r\n", [EHLO_NO_AUTH], {"tls_mode": "starttls"}, ExitCode.TLS,
         "does not offer STARTTLS"),
        (b"220 x\r\n", [b"250-x\r\n250 STARTTLS\r\n", b"454 4.7.0 no TLS\r\n"],
         {"tls_mode": "starttls"}, ExitCode.TLS, "STARTTLS refused"),
        (b"220 x\r\n", [EHLO_PLAIN, b"535 5.7.8 bad\r\n"], {"auth": "PLAIN"},
         ExitCode.AUTH_REFUSED, "PLAIN refused"),
        (b"220 x\r\n", [EHLO_PLAIN, b"454 4.7.0 later\r\n"], {"auth": "auto"},
         ExitCode.AUTH_TEMPFAIL, "temporary failure"),
        (b"220 x\r\n", [EHLO_NO_AUTH], {"auth": "auto"}, ExitCode.AUTH_REFUSED,
         "offers no AUTH"),
        (b"220 x\r\n", [EHLO_PLAIN], {"auth": "CRAM-MD5"}, ExitCode.AUTH_REFUSED,
         "does not offer CRAM-MD5"),
        (b"220 x\r\n", [EHLO_PLAIN], {"auth": "DIGEST-MD5"}, ExitCode.ERROR, "not implemented"),
        # A SCRAM server that says 235 without proving it knows the keys (RFC 5802 §5).
        (b"220 x\r\n", [EHLO_PLAIN, b"235 2.7.0 ok\r\n"], {"auth": "SCRAM-SHA-256"},
         ExitCode.AUTH_REFUSED, "not authenticated"),
        (b"220 x\r\n", [EHLO_PLAIN, b"235 ok\r\n", b"550 5.7.1 not you\r\n"], {"auth": "PLAIN"},
         ExitCode.MESSAGE_REFUSED, "MAIL refused"),
        (b"220 x\r\n", [EHLO_PLAIN, b"235 ok\r\n", b"250 ok\r\n", b"550 5.1.1 no such\r\n"],
         {"auth": "PLAIN"}, ExitCode.MESSAGE_REFUSED, "RCPT refused"),
        (b"220 x\r\n", [EHLO_PLAIN, b"235 ok\r\n", b"250 ok\r\n", b"250 ok\r\n",
                        b"354 go\r\n", b"552 5.3.4 too big\r\n"],
         {"auth": "PLAIN"}, ExitCode.MESSAGE_REFUSED, "refused after DATA"),
        (b"220 x\r\n", [EHLO_PLAIN, b"235 ok\r\n", b"250 ok\r\n", b"250 ok\r\n",
                        b"451 4.3.0 later\r\n"],
         {"auth": "PLAIN"}, ExitCode.MESSAGE_REFUSED, "DATA refused"),
    ],
)
async def test_where_it_stops_is_the_exit_code(
    serve: Serve, greeting: bytes, replies: list[bytes], opts: dict[str, object], code: ExitCode,
    message: str,
) -> None:
    port = await serve(Scripted(greeting, replies))
    if "auth" in opts:
        opts = {"user": "alice@example.org", "password": PASSWORD, **opts}
    report = await run_test(_opts(port, **opts))
    assert report.exit_code == code, report.transcript.lines()
    assert message in report.error
    assert report.to_json()["outcome"] == report.outcome


async def test_connection_refused_is_a_connection_failure() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connections are refused
        report = await run_test(_opts(port))
    assert report.exit_code == ExitCode.CONNECTION
    # It was "Connect call failed ('127.0.0.1', PORT)", asyncio's words, which do
    # not say why; the reason is what an administrator acts on.
    assert report.error == f"cannot connect to 127.0.0.1:{port}: Connection refused"


async def test_silent_server_times_out(serve: Serve) -> None:
    port = await serve(Scripted(b"", []))
    report = await run_test(_opts(port, timeout=0.3))
    assert report.exit_code == ExitCode.CONNECTION
    assert "timed out" in report.error


@pytest.mark.parametrize(("stage", "sent"), [("connect", 1), ("ehlo", 2), ("auth", 3),
                                             ("mail", 4), ("rcpt", 5)])
async def test_quit_after(serve: Serve, stage: str, sent: int) -> None:
    script = Scripted(b"220 x\r\n", [EHLO_PLAIN, b"235 ok\r\n", b"250 ok\r\n", b"250 ok\r\n",
                                     b"221 bye\r\n"][: sent - 1] + [b"221 bye\r\n"])
    port = await serve(script)
    report = await run_test(_opts(port, auth="PLAIN", user="u@example.org", password=PASSWORD,
                                  quit_after=stage))
    assert report.exit_code == ExitCode.SUCCESS, report.error
    assert report.stage == stage
    assert script.received[-1] == b"QUIT\r\n"
    assert len(script.received) == sent


async def test_quit_after_auth_without_user_sends_no_message(serve: Serve) -> None:
    # Without --user there is no AUTH stage; --quit-after auth went on to MAIL,
    # RCPT and DATA and delivered the test message the user had asked not to send.
    script = Scripted(b"220 x\r\n", [EHLO_PLAIN, b"221 bye\r\n", b"250 ok\r\n",
                                     b"250 ok\r\n", b"354 go\r\n", b"250 queued\r\n"])
    port = await serve(script)
    report = await run_test(_opts(port, quit_after="auth"))
    assert report.exit_code == ExitCode.SUCCESS, report.error
    assert script.received[-1] == b"QUIT\r\n", script.received
    assert len(script.received) == 2
    assert report.stage == "ehlo"


EHLO_INTL = b"250-fake.test\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n"


def _accepting_intl() -> Scripted:
    """A server offering 8BITMIME and SMTPUTF8 that takes one message."""
    return Scripted(b"220 x\r\n", [EHLO_INTL, b"250 ok\r\n", b"250 ok\r\n",
                                   b"354 go\r\n", b"250 queued\r\n", b"221 bye\r\n"])


async def test_a_utf8_address_is_sent_with_smtputf8_when_offered(serve: Serve) -> None:
    # It was "cannot send that: non-ASCII address without SMTPUTF8" (exit 1) before
    # MAIL, against a server offering SMTPUTF8: the tester never declared it.
    script = _accepting_intl()
    port = await serve(script)
    report = await run_test(_opts(port, mail_from="a@example.org",
                                  rcpt_to=("jürgen@example.net",), body="grüße"))
    assert report.exit_code == ExitCode.SUCCESS, report.error
    mail = script.received[1].decode()
    assert mail.startswith("MAIL FROM:<a@example.org>")
    assert "SMTPUTF8" in mail and "BODY=8BITMIME" in mail
    assert "RCPT TO:<jürgen@example.net>\r\n" == script.received[2].decode()
    message = b"".join(script.received[4:])
    assert b"Content-Transfer-Encoding: 8bit\r\n" in message
    assert "grüße".encode() in message


async def test_a_utf8_address_to_a_server_without_smtputf8_says_so(serve: Serve) -> None:
    script = Scripted(b"220 x\r\n", [EHLO_NO_AUTH, b"221 bye\r\n"])
    port = await serve(script)
    report = await run_test(_opts(port, mail_from="a@example.org",
                                  rcpt_to=("jürgen@example.net",)))
    assert report.exit_code == ExitCode.ERROR
    assert "does not offer SMTPUTF8" in report.error
    assert not any(line.startswith(b"MAIL") for line in script.received)


async def test_an_ascii_message_gets_no_parameters(serve: Serve) -> None:
    script = _accepting_intl()
    port = await serve(script)
    report = await run_test(_opts(port, mail_from="a@example.org"))
    assert report.exit_code == ExitCode.SUCCESS, report.error
    assert script.received[1] == b"MAIL FROM:<a@example.org>\r\n"


async def test_an_ipv6_server_is_shown_in_brackets() -> None:
    # It was "cannot connect to ::1:587", which reads as host ::1:587 or ::1 port 587.
    with socket.socket(socket.AF_INET6) as s:
        try:
            s.bind(("::1", 0))
        except OSError:
            pytest.skip("no IPv6 loopback")
        port = s.getsockname()[1]  # bound, never listening: connections are refused
        report = await run_test(_opts(port, host="::1"))
    assert report.exit_code == ExitCode.CONNECTION
    assert report.transcript.lines()[0] == f"== connecting to [::1]:{port} (plain)"
    assert report.error == f"cannot connect to [::1]:{port}: Connection refused"


def test_parse_server() -> None:
    assert parse_server("mail.example.org", False) == ("mail.example.org", 587)
    assert parse_server("mail.example.org", True) == ("mail.example.org", 465)
    assert parse_server("mail.example.org:2525", False) == ("mail.example.org", 2525)
    assert parse_server("[::1]:25", False) == ("::1", 25)
    assert parse_server("::1", False) == ("::1", 587)
    assert parse_server("[::1]", True) == ("::1", 465)
    assert parse_server("[IPv6:2001:db8::1]:2587", False) == ("2001:db8::1", 2587)


@pytest.mark.parametrize(("value", "why"), [
    ("[::1]2587", "'2587' after ']'"),  # the colon forgotten: was [::1] on 587
    ("[::1", "no ']' after '::1'"),
    ("[::1]:", "no port after ':'"),
    ("mail.example.org:", "no port after ':'"),
])
def test_a_server_typo_is_a_usage_error_not_the_default_port(value: str, why: str) -> None:
    """Until 2026-12 each of these tested the default port (587, or 465 with --tls)
    of the host: the verdict of another port than the one typed."""
    result = CliRunner().invoke(cli, ["test", "--server", value, "--quit-after", "connect"])
    assert result.exit_code == ExitCode.USAGE, result.output
    assert f"Invalid value for --server: {why}" in result.output, result.output


@pytest.mark.parametrize(
    "args",
    [
        ["--server", "x:99999"],
        ["--server", "x", "--auth", "PLAIN"],  # --auth needs --user
        ["--server", "x", "--password-stdin", "--password-env", "P"],
        ["--server", "x", "--data", "f", "--body", "b"],
        ["--server", "x", "--quit-after", "data"],
        ["--server", "x", "-u", "a@b", "--password-env", "NOT_SET_ANYWHERE_X"],
        ["--server", "x", "--starttls", "--tls"],  # not the last one silently winning
        ["--server", "x", "--tls", "--plain"],
        ["--server", "x", "--starttls", "--tls-on-connect"],
        # Both would read standard input.
        ["--server", "x", "-u", "a@b", "--data", "-", "--password-stdin"],
        # Not a header field: no colon, a space in the name, a line break in the value.
        ["--server", "x", "--to", "b@c", "--header", "Subject hello"],
        ["--server", "x", "--to", "b@c", "--header", "X Bad: 1"],
        ["--server", "x", "--to", "b@c", "--header", "X-Ok: 1\r\nBcc: evil@example.net"],
    ],
)
def test_usage_errors_exit_2(args: list[str]) -> None:
    result = CliRunner().invoke(cli, ["test", *args])
    assert result.exit_code == ExitCode.USAGE, result.output


def test_cli_json_for_a_refused_connection() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        result = CliRunner().invoke(cli, ["test", "--server", f"127.0.0.1:{port}", "--json",
                                          "--to", "bob@example.net"])
    assert result.exit_code == ExitCode.CONNECTION
    record = json.loads(result.output)
    assert record["outcome"] == "connection-failure" and record["exit_code"] == 3
    assert record["transcript"][-1]["dir"] == "**"


# --- issue 8: wrong TLS mode, app passwords, the EHLO name ------------------------------------


@pytest.fixture
def tls_server_context(tmp_path_factory: pytest.TempPathFactory) -> ssl.SSLContext:
    from smtpgate.tls.certs import write_self_signed

    d = tmp_path_factory.mktemp("tls")
    write_self_signed(d / "cert.pem", d / "key.pem", "localhost")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(d / "cert.pem", d / "key.pem")
    return ctx


async def test_implicit_tls_port_without_tls_says_use_tls(
    serve: Serve, tls_server_context: ssl.SSLContext
) -> None:
    class ImplicitTls(Scripted):
        """An implicit-TLS server: sends nothing until a ClientHello arrives, then
        answers it with a real handshake (OpenSSL over memory BIOs)."""

        async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
            tls = tls_server_context.wrap_bio(incoming, outgoing, server_side=True)
            try:
                data = await reader.read(65536)
                if data:
                    incoming.write(data)
                    try:
                        tls.do_handshake()
                    except ssl.SSLWantReadError:
                        pass
                    writer.write(outgoing.read())
                    await writer.drain()
                    await reader.read(65536)
            finally:
                writer.close()

    port = await serve(ImplicitTls(b"", []))
    report = await run_test(_opts(port, tls_mode="starttls", timeout=30.0, greeting_wait=0.3))
    assert report.exit_code == ExitCode.TLS
    # Said once (it was "... speaks implicit TLS (...): this port speaks implicit
    # TLS, use --tls").
    assert report.error == (f"127.0.0.1:{port} speaks implicit TLS (it sent no greeting "
                            "and answered a TLS ClientHello): use --tls")
    assert report.elapsed < 30  # stopped by the probe, not by the timeout


async def test_a_late_greeting_on_a_plain_port_is_still_waited_for(serve: Serve) -> None:
    class Late(Scripted):
        connections = 0

        async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            if self.connections > 1:  # the probe: a plain server has no answer to a ClientHello
                writer.close()
                return
            await asyncio.sleep(0.8)  # a deliberate greeting delay (anti-spam "greet pause")
            await super().handle(reader, writer)

    late = Late(b"220 slow.test\r\n", [EHLO_PLAIN, b"221 bye\r\n"])
    port = await serve(late)
    report = await run_test(_opts(port, quit_after="ehlo", greeting_wait=0.2))
    assert report.exit_code == ExitCode.SUCCESS, report.error
    assert late.connections == 2
    text = "\n".join(report.transcript.lines())
    assert "no TLS answer either; still waiting for the greeting" in text


APP_PASSWORD = "abcd-efgh-jkmn-pqrs-tuvw"
EHLO_SCRAM_FIRST = b"250-fake.test\r\n250 AUTH SCRAM-SHA-256 PLAIN LOGIN\r\n"


def test_app_password_form_is_the_stores() -> None:
    from smtpgate.auth.credentials import APP_PASSWORD_RE, generate_app_password
    from smtpgate.tools.tester import APP_PASSWORD_FORM

    assert APP_PASSWORD_FORM.pattern == APP_PASSWORD_RE.pattern
    assert APP_PASSWORD_FORM.fullmatch(generate_app_password())


async def test_auto_picks_plain_for_an_app_password(serve: Serve) -> None:
    script = Scripted(b"220 x\r\n", [EHLO_SCRAM_FIRST, b"235 2.7.0 ok\r\n", b"221 bye\r\n"])
    port = await serve(script)
    report = await run_test(_opts(port, auth="auto", user="a@example.org",
                                  password=APP_PASSWORD, quit_after="auth"))
    assert report.exit_code == ExitCode.SUCCESS, report.error
    assert script.received[1].startswith(b"AUTH PLAIN ")
    assert "the password has the form of an smtpgate app password" in "\n".join(
        report.transcript.lines())


async def test_auto_keeps_scram_for_an_ordinary_password(serve: Serve) -> None:
    script = Scripted(b"220 x\r\n", [EHLO_SCRAM_FIRST, b"535 5.7.8 no\r\n", b"221 bye\r\n"])
    port = await serve(script)
    report = await run_test(_opts(port, auth="auto", user="a@example.org", password=PASSWORD,
                                  quit_after="auth"))
    assert script.received[1].startswith(b"AUTH SCRAM-SHA-256 ")
    assert report.exit_code == ExitCode.AUTH_REFUSED
    # Before: every SCRAM refusal blamed app passwords; this password cannot be one
    # (the server takes only their form as one), so it is refused, no more.
    assert report.error == "SCRAM-SHA-256 refused: 535 5.7.8 no"
    assert "app password" not in "\n".join(report.transcript.lines())


ONLY_PLAIN_AND_LOGIN = "app passwords work with PLAIN and LOGIN only, not SCRAM"


@pytest.mark.parametrize(("ehlo", "hint"), [
    (EHLO_SCRAM_FIRST, f"{ONLY_PLAIN_AND_LOGIN}; try --auth PLAIN"),
    (b"250-x\r\n250 AUTH SCRAM-SHA-256\r\n",
     f"{ONLY_PLAIN_AND_LOGIN}, and the server offers neither here"),
])
async def test_a_refused_scram_login_with_an_app_password_gets_the_hint(
    serve: Serve, ehlo: bytes, hint: str,
) -> None:
    """Where it applies: a password of the app passwords' form, sent with SCRAM
    (asked for by name, or all --auth auto had), and refused by the server."""
    script = Scripted(b"220 x\r\n", [ehlo, b"535 5.7.8 no\r\n", b"221 bye\r\n"])
    port = await serve(script)
    report = await run_test(_opts(port, auth="SCRAM-SHA-256", user="a@example.org",
                                  password=APP_PASSWORD, quit_after="auth"))
    assert report.exit_code == ExitCode.AUTH_REFUSED
    assert report.error == f"SCRAM-SHA-256 refused: 535 5.7.8 no (if this is an smtpgate app password: {hint})"


async def test_a_reply_nobody_asked_for_is_reported_and_the_rest_stay_aligned(
    serve: Serve,
) -> None:
    """Before: a server that answered EHLO twice had every later reply read one
    off, as swaks does: MAIL took the extra 250, RCPT took MAIL's, and DATA
    took RCPT's 250 for a refusal of DATA. The extra reply is now taken out before
    MAIL is sent, named in the transcript and the JSON, and the session goes on."""
    script = Scripted(b"220 fake.test ESMTP\r\n", [
        EHLO_NO_AUTH + b"250 2.0.0 and once more\r\n", b"250 2.1.0 sender ok\r\n",
        b"250 2.1.5 rcpt ok\r\n", b"354 go\r\n", b"250 2.0.0 queued as X\r\n",
        b"221 bye\r\n",
    ])
    port = await serve(script)
    report = await run_test(_opts(port, mail_from="a@example.org"))
    assert report.exit_code == ExitCode.SUCCESS, report.error
    assert report.queued == "250 2.0.0 queued as X"
    assert report.unsolicited == ["250 2.0.0 and once more"]
    assert report.to_json()["unsolicited_replies"] == ["250 2.0.0 and once more"]
    text = "\n".join(report.transcript.lines())
    assert ("warning: the server sent a reply nobody asked for: 250 2.0.0 and once more "
            "(not taken as the answer to the next command)") in text


@contextlib.asynccontextmanager
async def _greeted_session() -> AsyncIterator[tuple[Any, socket.socket]]:
    """The tester's session watching for replies nobody asked for, over a socket
    pair, past its 220: (the session, the server's end)."""
    from smtpgate.tools.session import SmtpSession
    from smtpgate.tools.wire import Wire

    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    session = SmtpSession(Wire(ours), timeout=5.0)
    session.watch_unsolicited = True
    try:
        theirs.sendall(b"220 x\r\n")
        assert (await session.read_reply()).code == 220
        yield session, theirs
    finally:
        theirs.close()
        await session.close()


async def test_a_reply_nobody_asked_for_still_on_the_socket_is_found_before_sending() -> None:
    """The extra reply came in a packet of its own, after the one read: it is read
    from the socket (without waiting) before the next command goes out."""
    async with _greeted_session() as (session, theirs):
        theirs.sendall(b"421 4.3.2 going away soon\r\n")
        await asyncio.sleep(0.05)
        loop = asyncio.get_running_loop()
        answer = loop.run_in_executor(None, lambda: (theirs.recv(100), theirs.sendall(
            b"250 2.0.0 ok\r\n")))
        reply = await session.command(session.engine.noop())
        await answer
        assert str(reply) == "250 2.0.0 ok"
        assert [str(r) for r in session.unsolicited] == ["421 4.3.2 going away soon"]
        assert await session.wire.recv_available() is None  # nothing more there
        theirs.close()
        await asyncio.sleep(0.05)
        assert await session.wire.recv_available() == b""  # closed


def test_default_ehlo_name_is_the_machines_name() -> None:
    from smtpgate.tools.session import default_ehlo_name

    def name(value: str) -> Callable[[], str]:
        return lambda: value

    assert default_ehlo_name(name("mx.example.org"), name("mx")) == "mx.example.org"
    # /etc/hosts mapping the host name to 127.0.0.1 makes getfqdn() say "localhost".
    assert default_ehlo_name(name("localhost"), name("box1")) == "box1"
    assert default_ehlo_name(name("localhost.localdomain"), name("box1")) == "box1"
    assert default_ehlo_name(name("localhost"), name("bad name")) == "localhost"


def test_cli_ehlo_default_is_what_help_says() -> None:
    """`--ehlo` defaults to this machine's name: the EHLO sent is default_ehlo_name()."""
    from smtpgate.tools.session import default_ehlo_name

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        received: list[bytes] = []

        def answer() -> None:
            conn, _ = listener.accept()
            with conn, conn.makefile("rb") as f:
                conn.sendall(b"220 x\r\n")
                received.append(f.readline())
                conn.sendall(b"250 x\r\n")
                received.append(f.readline())
                conn.sendall(b"221 bye\r\n")

        thread = threading.Thread(target=answer)
        thread.start()
        result = CliRunner().invoke(cli, ["test", "--server", f"127.0.0.1:{port}", "--plain",
                                          "--quit-after", "ehlo"])
        thread.join(10)
    assert result.exit_code == 0, result.output
    assert received[0] == f"EHLO {default_ehlo_name()}\r\n".encode()
    help_text = CliRunner().invoke(cli, ["test", "--help"]).output
    assert "this machine's fully qualified name, else its host name" in " ".join(
        help_text.split())


async def test_certificate_hints_fit_the_problem(tmp_path: Path) -> None:
    # A name mismatch with a trusted CA: "--ca FILE to trust it" cannot help
    # (it was the hint for every verification failure); --tls-name can.
    from smtpgate.tls.certs import write_self_signed

    write_self_signed(tmp_path / "cert.pem", tmp_path / "key.pem", "localhost")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    script = Scripted(b"220 x\r\n", [EHLO_PLAIN, b"221 bye\r\n"])
    server = await asyncio.start_server(script.handle, "127.0.0.1", 0, ssl=ctx)
    port = int(server.sockets[0].getsockname()[1])
    try:
        named = await run_test(_opts(port, tls_mode="implicit", quit_after="ehlo",
                                     ca_file=tmp_path / "cert.pem",
                                     tls_name="mail.other.test"))
        untrusted = await run_test(_opts(port, tls_mode="implicit", quit_after="ehlo"))
    finally:
        server.close()
    assert named.exit_code == ExitCode.TLS
    assert "does not match the name 'mail.other.test'" in named.error
    assert "--tls-name NAME" in named.error and "--ca FILE" not in named.error
    assert untrusted.exit_code == ExitCode.TLS
    assert "--ca FILE to trust it" in untrusted.error and "--tls-name" not in untrusted.error


async def test_implicit_tls_to_a_port_that_greets_in_clear_says_so(serve: Serve) -> None:
    # It was "handshake failed: wrong version number" (OpenSSL's words for a
    # record that is not TLS): now the greeting that came instead, and the option.
    port = await serve(Scripted(b"220 plain.test ESMTP\r\n", []))
    report = await run_test(_opts(port, tls_mode="implicit"))
    assert report.exit_code == ExitCode.TLS
    assert report.error == (
        "TLS handshake failed: the server answered in clear, not with TLS: "
        "'220 plain.test ESMTP': this port speaks SMTP without TLS first, use --starttls")


async def test_a_server_that_echoes_the_password_never_shows_it(serve: Serve) -> None:
    """The transcript masked what the tester sent, not what came back: a server
    answering ``535 5.7.8 bad password 'pass-Word-123'`` (or a 334 challenge
    holding it) put the password in the output a user pastes into a ticket."""
    echoed = base64.b64encode(f"you said {PASSWORD}".encode())
    script = Scripted(b"220 fake.test ESMTP\r\n", [
        EHLO_PLAIN, b"334 " + echoed + b"\r\n",
        f"535 5.7.8 bad password '{PASSWORD}'\r\n".encode(), b"221 bye\r\n",
    ])
    port = await serve(script)
    report = await run_test(_opts(port, auth="LOGIN", user="alice@example.org",
                                  password=PASSWORD))
    assert report.exit_code != ExitCode.SUCCESS
    text = "\n".join(report.transcript.lines())
    assert "bad password '********'" in text
    assert PASSWORD not in text and PASSWORD not in json.dumps(report.to_json())


async def test_a_server_that_echoes_the_password_in_base64_never_shows_it(
        serve: Serve) -> None:
    """Only the password as sent was masked: a 334 holding it in base64, or a 535
    quoting the base64 line it got (the PLAIN blob), put it in the transcript for
    anyone to decode, though the decoded line below was masked."""
    blob = base64.b64encode(f"\0alice@example.org\0{PASSWORD}".encode())
    echoed = base64.b64encode(f"you said {PASSWORD}".encode())
    for mech, replies in (
        ("PLAIN", [EHLO_PLAIN, b"535 5.7.8 cannot decode '" + blob + b"'\r\n"]),
        ("LOGIN", [EHLO_PLAIN, b"334 VXNlcm5hbWU6\r\n", b"334 " + echoed + b"\r\n",
                   b"535 5.7.8 no " + blob.rstrip(b"=") + b"\r\n"]),
    ):
        port = await serve(Scripted(b"220 fake.test ESMTP\r\n", [*replies, b"221 bye\r\n"]))
        report = await run_test(_opts(port, auth=mech, user="alice@example.org",
                                      password=PASSWORD))
        assert report.exit_code == ExitCode.AUTH_REFUSED, report.error
        out = "\n".join(report.transcript.lines()) + json.dumps(report.to_json())
        for secret in (blob.decode(), blob.decode().rstrip("="), echoed.decode(), PASSWORD):
            assert secret not in out, (mech, secret, report.transcript.lines())
    assert "<- 334 VXNlcm5hbWU6" in out  # base64 without a secret stays (LOGIN's last)


async def test_a_421_to_ehlo_is_not_called_a_refused_helo(serve: Serve) -> None:
    """The session sends no HELO after a 421 (the server is closing); the error said
    "EHLO and HELO refused" all the same."""
    script = Scripted(b"220 fake.test ESMTP\r\n", [b"421 4.3.2 shutting down\r\n"])
    port = await serve(script)
    report = await run_test(_opts(port))
    assert report.exit_code == ExitCode.PROTOCOL
    assert report.error == "EHLO refused, the server is closing: 421 4.3.2 shutting down"
    assert [line for line in script.received if line.upper().startswith(b"HELO")] == []


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("args", [[], ["--from", ""], ["--user", "alice", "--password-env",
                                                        "SG_NO_SUCH_VAR_EITHER"]])
def test_a_missing_recipient_is_a_usage_error_before_connecting(args: list[str]) -> None:
    """It was found at MAIL, after connecting and logging in (exit 1): a port that
    refuses connections shows that nothing was tried (that would be exit 3)."""
    result = CliRunner().invoke(cli, ["test", "--server", f"127.0.0.1:{_closed_port()}",
                                      "--plain", *args])
    assert result.exit_code == 2, result.output
    assert "no recipient: pass --to ADDRESS" in result.output
    assert "connecting to" not in result.output


@pytest.mark.parametrize("stage", ["connect", "ehlo", "tls", "auth", "mail"])
def test_quit_before_rcpt_needs_no_recipient(stage: str) -> None:
    result = CliRunner().invoke(cli, ["test", "--server", f"127.0.0.1:{_closed_port()}",
                                      "--plain", "--quit-after", stage])
    assert result.exit_code == ExitCode.CONNECTION, result.output  # it tried


async def test_quit_after_mail_sends_mail_without_a_recipient(serve: Serve) -> None:
    script = Scripted(b"220 x\r\n", [EHLO_NO_AUTH, b"250 ok\r\n", b"221 bye\r\n"])
    port = await serve(script)
    report = await run_test(_opts(port, rcpt_to=(), mail_from="", quit_after="mail"))
    assert report.exit_code == ExitCode.SUCCESS, report.error
    assert script.received[1] == b"MAIL FROM:<>\r\n"


@pytest.mark.parametrize(("user", "ehlo", "want"), [
    ("", "client.example.org", "MAILER-DAEMON@client.example.org"),
    ("", "laptop", "MAILER-DAEMON@smtpgate.invalid"),  # no domain in the EHLO name
    ("alice@example.org", "client.example.org", "alice@example.org"),
])
def test_null_sender_message_has_a_from_mailbox(user: str, ehlo: str, want: str) -> None:
    """--from '': the generated message said "From: <>", no mailbox, which RFC 5322
    §3.6.2 requires and a strict parser flags."""
    import email
    import email.policy

    from smtpgate.tools.tester import build_message

    opts = TesterOptions(host="127.0.0.1", port=25, user=user, mail_from="", ehlo_name=ehlo)
    data = build_message(opts, "", ("bob@example.net",))
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert data.startswith(f"From: <{want}>\r\n".encode())
    assert message["From"].addresses[0].addr_spec == want
    assert not message["From"].defects


async def test_a_server_that_never_stops_sending_replies_is_a_protocol_error(
    serve: Serve,
) -> None:
    """Before: every reply nobody asked for was taken out and the session went on,
    however many came; a server writing "250 ok" without pause kept the tester
    reading (and its memory growing) for ever. Past MAX_UNSOLICITED_REPLIES the
    session ends as a protocol error."""
    from smtpgate.tools.session import MAX_UNSOLICITED_REPLIES

    extra = b"250 ok\r\n" * (MAX_UNSOLICITED_REPLIES + 5)
    script = Scripted(b"220 fake.test ESMTP\r\n", [EHLO_NO_AUTH + extra, b"250 2.1.0 ok\r\n"])
    port = await serve(script)
    report = await run_test(_opts(port, mail_from="a@example.org"))
    assert report.exit_code == ExitCode.PROTOCOL
    assert report.error == (f"the server does not speak SMTP: more than {MAX_UNSOLICITED_REPLIES} "
                            "replies nobody asked for (RFC 5321 §4.2: one reply to each "
                            "command); given up")
    assert script.received == [b"EHLO localhost\r\n"]  # no MAIL went out


async def test_replies_nobody_asked_for_are_read_a_step_at_a_time() -> None:
    """What is on the socket is read in steps, and the count checked after each: a
    flood is stopped after a few kilobytes, with the rest left unread."""
    from smtpgate.client.errors import RemoteProtocolError
    from smtpgate.tools.session import MAX_UNSOLICITED_REPLIES

    async with _greeted_session() as (session, theirs):
        theirs.sendall(b"250 ok\r\n" * 4000)  # 32 000 bytes, all there at once
        with pytest.raises(RemoteProtocolError, match="nobody asked for"):
            await session.take_unsolicited()
        assert len(session.unsolicited) == MAX_UNSOLICITED_REPLIES + 1
        assert await session.wire.recv_available() is not None  # the rest is unread


async def test_a_server_that_closes_in_the_middle_of_a_reply_is_a_lost_connection() -> None:
    """Before: "the server does not speak SMTP: connection closed in the middle of a
    reply", exit 8, for a server that had spoken SMTP until it was killed or cut
    off mid-reply; it is a lost connection (exit 3), as docs/tester.md says."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 fake.test ESMTP\r\n")
        await reader.readline()
        writer.write(b"250-fake.test\r\n250-PIPELINING\r\n")  # and no last line
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        port = int(server.sockets[0].getsockname()[1])
        report = await run_test(_opts(port, quit_after="ehlo"))
    finally:
        server.close()
        await server.wait_closed()
    assert report.exit_code == ExitCode.CONNECTION
    assert report.error == "connection lost: connection closed in the middle of a reply"
    assert "<- 250-PIPELINING" in report.transcript.lines()


async def test_login_prompts_in_clear_text_are_answered_with_a_warning(serve: Serve) -> None:
    """A server whose LOGIN prompts are "334 Username:" and "334 Password:" (not
    base64) was exit 8; LOGIN does not read its prompts, so the login goes on."""
    script = Scripted(b"220 fake.test ESMTP\r\n", [
        b"250-fake.test\r\n250 AUTH LOGIN\r\n", b"334 Username:\r\n", b"334 Password:\r\n",
        b"235 2.7.0 ok\r\n", b"221 bye\r\n",
    ])
    port = await serve(script)
    report = await run_test(_opts(port, auth="LOGIN", user="alice@example.org",
                                  password=PASSWORD, quit_after="auth"))
    assert report.exit_code == ExitCode.SUCCESS, report.error
    assert script.received[2:4] == [base64.b64encode(b"alice@example.org") + b"\r\n",
                                    base64.b64encode(PASSWORD.encode()) + b"\r\n"]
    text = "\n".join(report.transcript.lines())
    assert "** warning: the server's prompt 'Password:' is not base64" in text
    assert PASSWORD not in text


def _chain_pki(d: Path) -> tuple[Path, Path, Path, Path]:
    """A root, an intermediate and a localhost leaf it issued: (root.pem, leaf.pem,
    fullchain.pem, leaf.key)."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC)

    def cert(subject: str, issuer: str, key: ec.EllipticCurvePrivateKey,
             signer: ec.EllipticCurvePrivateKey, ca: int | None) -> x509.Certificate:
        b = (x509.CertificateBuilder()
             .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
             .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - dt.timedelta(days=1))
             .not_valid_after(now + dt.timedelta(days=90))
             .add_extension(x509.BasicConstraints(ca=ca is not None, path_length=ca),
                            critical=True))
        if ca is not None:
            b = b.add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        else:
            b = b.add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False).add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        return b.sign(signer, hashes.SHA256())

    keys = [ec.generate_private_key(ec.SECP256R1()) for _ in range(3)]
    root = cert("Chain Test Root", "Chain Test Root", keys[0], keys[0], 1)
    inter = cert("Chain Test Intermediate", "Chain Test Root", keys[1], keys[0], 0)
    leaf = cert("localhost", "Chain Test Intermediate", keys[2], keys[1], None)
    pem = serialization.Encoding.PEM
    paths = (d / "root.pem", d / "leaf.pem", d / "fullchain.pem", d / "leaf.key")
    paths[0].write_bytes(root.public_bytes(pem))
    paths[1].write_bytes(leaf.public_bytes(pem))
    paths[2].write_bytes(leaf.public_bytes(pem) + inter.public_bytes(pem))
    paths[3].write_bytes(keys[2].private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    return paths


@pytest.mark.parametrize("sent", ["leaf", "fullchain"])
async def test_a_missing_intermediate_is_named(tmp_path: Path, sent: str) -> None:
    """The most common certificate mistake, a server sending its certificate without
    the intermediate CA's, was "unable to get local issuer certificate (depth 0)
    (--ca FILE to trust it ...)": the CA was trusted already (--ca), and the fix is
    on the server. The error now says the server sent its certificate alone and
    names the issuer it lacks; the full chain verifies."""
    root, leaf, fullchain, key = _chain_pki(tmp_path)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(leaf if sent == "leaf" else fullchain, key)
    script = Scripted(b"220 x\r\n", [EHLO_PLAIN, b"221 bye\r\n"])
    server = await asyncio.start_server(script.handle, "127.0.0.1", 0, ssl=ctx)
    port = int(server.sockets[0].getsockname()[1])
    try:
        report = await run_test(_opts(port, tls_mode="implicit", quit_after="ehlo",
                                      ca_file=root))
    finally:
        server.close()
    if sent == "fullchain":
        assert report.exit_code == ExitCode.SUCCESS, report.error
        return
    assert report.exit_code == ExitCode.TLS
    assert report.error == (
        "certificate not accepted: certificate chain does not verify: unable to get local "
        "issuer certificate (depth 0); the server sent its certificate alone, without the "
        "certificate of its issuer CN=Chain Test Intermediate: if that is an intermediate "
        "CA, the server must send it too (configure the full chain) (--ca FILE if that "
        "issuer is a private root CA, --no-tls-verify to go on anyway)")
    assert report.tls is not None
    assert report.tls.missing_issuer == "CN=Chain Test Intermediate"


@pytest.mark.parametrize(("command", "args", "env", "said"), [
    ("test", ["--server", "127.0.0.1:9", "-u", "a@b", "--password-stdin"], {},
     "--password-stdin: standard input is empty (no password)"),
    ("audit", ["127.0.0.1:9", "-u", "a@b", "--password-stdin"], {},
     "--password-stdin: standard input is empty (no password)"),
    ("test", ["--server", "127.0.0.1:9", "-u", "a@b", "--password-env", "SMTPGATE_PW_X"],
     {"SMTPGATE_PW_X": ""}, "environment variable SMTPGATE_PW_X is empty"),
])
def test_an_empty_secret_source_is_named(command: str, args: list[str], env: dict[str, str],
                                         said: str) -> None:
    """An empty standard input with --password-stdin said "--user needs a secret:
    --password-stdin, --password-env VAR or --token-file F" (audit: "--user needs
    --password-stdin or --token-file"), naming the option just given; an empty
    --password-env variable said the same. Each now says what was empty."""
    result = CliRunner().invoke(cli, [command, *args], input="", env=env)
    assert result.exit_code == ExitCode.USAGE, result.output
    assert said in " ".join(result.output.split())


@pytest.mark.parametrize(("server_max", "pinned", "hint"), [
    (ssl.TLSVersion.TLSv1_2, "1.3", ": the server does not speak TLS 1.3 (--tls-version)"),
    (ssl.TLSVersion.TLSv1_1, None, (": the server speaks neither TLS 1.2 nor 1.3, the versions "
                                    "offered (TLS 1.0 and 1.1 never are, RFC 8996); smtpgate "
                                    "audit says which old one it speaks")),
])
async def test_no_tls_version_in_common_is_said_in_words(
    tmp_path: Path, server_max: ssl.TLSVersion, pinned: str | None, hint: str
) -> None:
    """OpenSSL's "tlsv1 alert protocol version" alone was the error for a server
    that speaks none of the versions offered (an old one speaking TLS 1.0 only, or
    --tls-version 1.3 against TLS 1.2): it now says so."""
    import warnings

    from smtpgate.tls.certs import write_self_signed

    write_self_signed(tmp_path / "cert.pem", tmp_path / "key.pem", "localhost")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    with warnings.catch_warnings():  # TLS 1.0/1.1 are deprecated: the point here
        warnings.simplefilter("ignore", DeprecationWarning)
        if server_max < ssl.TLSVersion.TLSv1_2:
            ctx.minimum_version = ssl.TLSVersion.TLSv1
            ctx.set_ciphers("ALL:@SECLEVEL=0")  # OpenSSL 3 refuses them otherwise
        ctx.maximum_version = server_max
    # A blocking server in a thread: asyncio's closes without sending its alert.
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve_once() -> None:
        conn, _ = listener.accept()
        with conn:
            try:
                ctx.wrap_socket(conn, server_side=True)
            except (ssl.SSLError, OSError):
                pass  # the alert has gone out

    thread = threading.Thread(target=serve_once, daemon=True)
    thread.start()
    try:
        report = await run_test(_opts(port, tls_mode="implicit", quit_after="ehlo",
                                      ca_file=tmp_path / "cert.pem", tls_version=pinned))
    finally:
        thread.join(10)
        listener.close()
    assert report.exit_code == ExitCode.TLS
    assert report.error.endswith("protocol version" + hint), report.error


@pytest.mark.parametrize(("greeting", "replies", "awaited"), [
    (b"", [], "the greeting"),
    (b"220 x\r\n", [], "the reply to EHLO"),
    (b"220 x\r\n", [EHLO_PLAIN], "a reply in the AUTH exchange"),
    (b"220 x\r\n", [EHLO_PLAIN, b"235 2.7.0 ok\r\n"], "the reply to MAIL"),
    (b"220 x\r\n", [EHLO_PLAIN, b"235 2.7.0 ok\r\n", b"250 ok\r\n"], "the reply to RCPT"),
    (b"220 x\r\n", [EHLO_PLAIN, b"235 2.7.0 ok\r\n", b"250 ok\r\n", b"250 ok\r\n"],
     "the reply to DATA"),
    (b"220 x\r\n", [EHLO_PLAIN, b"235 2.7.0 ok\r\n", b"250 ok\r\n", b"250 ok\r\n", b"354 go\r\n"],
     "the reply to the message (after DATA)"),
])
async def test_a_timeout_names_what_did_not_come(greeting: bytes, replies: list[bytes],
                                                 awaited: str) -> None:
    """Every timeout was "timed out waiting for the server", in the error line and
    the JSON's error that monitoring reads; it now names what was due, and the
    --timeout that ran out."""
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # The script, then silence: read until the client hangs up, answer nothing.
        writer.write(greeting)
        try:
            for reply in replies:  # one line each: no script goes past a 354
                await reader.readline()
                writer.write(reply)
            while await reader.read(1024):
                pass
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = int(server.sockets[0].getsockname()[1])
    try:
        report = await run_test(_opts(port, auth="PLAIN", user="alice@example.org",
                                      password=PASSWORD, timeout=0.5, greeting_wait=0,
                                      body="QUIT\nMAIL FROM:<x@example.org>"))
    finally:
        server.close()
    assert report.exit_code == ExitCode.CONNECTION
    assert report.error == f"timed out waiting for {awaited} (0.5 s, --timeout)"


async def test_a_long_sasl_challenge_is_read(serve: Serve) -> None:
    """A 334 challenge line over 4096 octets (an OAUTHBEARER error with long URLs;
    RFC 4954 §4 names 12288 octets as enough) was "reply line too long", exit 8:
    the limit for other reply lines. Challenges are read up to 12288 octets now;
    the server's 535 decides, and another reply line that long is still refused."""
    from smtpgate.client.errors import RemoteProtocolError
    from smtpgate.client.replies import ReplyParser

    error = ('{"status":"invalid_token","scope":"mail","openid-configuration":"https://'
             + "x" * 6000 + '"}').encode()
    script = Scripted(b"220 fake.test ESMTP\r\n", [
        b"250-fake.test\r\n250 AUTH OAUTHBEARER\r\n",
        b"334 " + base64.b64encode(error) + b"\r\n", b"535 5.7.8 token refused\r\n",
        b"221 bye\r\n",
    ])
    port = await serve(script)
    report = await run_test(_opts(port, auth="OAUTHBEARER", user="alice@example.org",
                                  token="t0ken", quit_after="auth"))
    assert report.exit_code == ExitCode.AUTH_REFUSED, report.error
    assert report.error.endswith("535 5.7.8 token refused")
    parser = ReplyParser()
    parser.feed(b"250 " + b"x" * 8000 + b"\r\n")
    with pytest.raises(RemoteProtocolError, match="too long"):
        parser.next_reply()
    parser = ReplyParser()
    parser.feed(b"334 " + b"A" * 12289)  # no line end yet, already past the limit
    with pytest.raises(RemoteProtocolError, match="too long"):
        parser.next_reply()


async def test_an_untrusted_implicit_tls_server_gets_no_quit_before_its_greeting(
    tls_server_context: ssl.SSLContext,
) -> None:
    # The certificate did not verify right after the handshake, before the
    # greeting was read: the tester sent QUIT anyway, and the greeting that came
    # was shown as "a reply nobody asked for" (or as the answer to QUIT).
    script = Scripted(b"220 x ESMTP\r\n", [b"221 bye\r\n"])
    server = await asyncio.start_server(script.handle, "127.0.0.1", 0, ssl=tls_server_context)
    port = int(server.sockets[0].getsockname()[1])
    try:
        report = await run_test(_opts(port, tls_mode="implicit", quit_after="connect"))
    finally:
        server.close()
        await server.wait_closed()
    assert report.exit_code == ExitCode.TLS
    assert "certificate not accepted" in report.error
    assert report.unsolicited == []
    assert script.received == []
    text = "\n".join(report.transcript.lines())
    assert "QUIT" not in text and "nobody asked for" not in text


@contextlib.contextmanager
def _scripted_in_a_thread(script: Scripted, tls: ssl.SSLContext | None = None,
                          ) -> Iterator[int]:
    """``script`` served on a loop of its own thread while the block runs (the
    CLI under test runs its own loop): its port."""

    async def serve(ready: threading.Event, port: list[int], stop: asyncio.Event) -> None:
        server = await asyncio.start_server(script.handle, "127.0.0.1", 0, ssl=tls)
        port.append(int(server.sockets[0].getsockname()[1]))
        ready.set()
        await stop.wait()
        server.close()

    loop = asyncio.new_event_loop()
    ready, port, stop = threading.Event(), [], asyncio.Event()
    thread = threading.Thread(target=loop.run_until_complete, args=(serve(ready, port, stop),))
    thread.start()
    try:
        assert ready.wait(10)
        yield port[0]
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        loop.close()


def test_data_dash_reads_the_message_from_standard_input() -> None:
    # swaks's "--data -": it was "cannot read -: No such file or directory", exit 1.
    script = Scripted(b"220 x\r\n", [EHLO_NO_AUTH, b"250 ok\r\n", b"250 ok\r\n",
                                     b"354 go\r\n", b"250 2.0.0 queued\r\n", b"221 bye\r\n"])
    with _scripted_in_a_thread(script) as port:
        result = CliRunner().invoke(
            cli, ["test", "--server", f"127.0.0.1:{port}", "--plain", "--greeting-wait",
                  "0", "--from", "a@example.org", "--to", "b@example.net", "--data", "-"],
            input=b"Subject: piped\n\nfrom a pipe\n")
    assert result.exit_code == ExitCode.SUCCESS, result.output
    assert b"Subject: piped\r\n" in script.received
    assert b"from a pipe\r\n" in script.received


def test_header_replaces_or_adds_a_field() -> None:
    # swaks's --header: the field of that name replaced (with its folded lines,
    # every occurrence), else added at the end of the header section.
    from smtpgate.tools.tester import apply_headers

    lf = b"From: a@b\nSubject: old\n  folded\nsubject: again\nTo: c@d\n\nbody\n"
    assert apply_headers(lf, ("SUBJECT: new", "X-Test: 1")) == (
        b"From: a@b\nSUBJECT: new\nTo: c@d\nX-Test: 1\n\nbody\n")
    crlf = b"From: a@b\r\nTo: c@d\r\n\r\nline\r\n"
    assert apply_headers(crlf, ("X-Test: 1",)) == (
        b"From: a@b\r\nTo: c@d\r\nX-Test: 1\r\n\r\nline\r\n")
    assert apply_headers(b"From: a@b\r\n", ("X-A: 1",)) == b"From: a@b\r\nX-A: 1\r\n\r\n"
    assert apply_headers(b"\nbody only\n", ("X-A: 1",)) == b"X-A: 1\n\nbody only\n"
    assert apply_headers(crlf, ()) is crlf


async def test_header_reaches_the_generated_message(serve: Serve) -> None:
    # There was no --header: a swaks user's --header "Subject: ..." was a usage
    # error ("No such option").
    script = _plain_session()
    port = await serve(script)
    report = await run_test(_opts(port, auth="PLAIN", user="alice@example.org",
                                  password=PASSWORD,
                                  headers=("Subject: chosen", "X-Ticket: 42")))
    assert report.exit_code == ExitCode.SUCCESS, report.error
    sent = b"".join(script.received)
    assert b"Subject: chosen\r\n" in sent and b"X-Ticket: 42\r\n" in sent
    assert b"Subject: smtpgate test" not in sent
    head = sent.split(b"\r\n\r\n", 1)[0]
    assert head.count(b"Subject:") == 1 and b"X-Ticket: 42" in head


def test_tls_on_connect_is_swaks_spelling_of_tls(tls_server_context: ssl.SSLContext) -> None:
    # swaks's --tls-on-connect was "No such option" (exit 2); it is --tls.
    script = Scripted(b"220 x ESMTP\r\n", [b"221 bye\r\n"])
    with _scripted_in_a_thread(script, tls_server_context) as port:
        result = CliRunner().invoke(cli, ["test", "--server", f"127.0.0.1:{port}",
                                          "--tls-on-connect", "--no-tls-verify", "--json",
                                          "--quit-after", "connect"])
    assert result.exit_code == ExitCode.SUCCESS, result.output
    record = json.loads(result.output)
    assert record["mode"] == "implicit" and record["tls"]["version"]
