"""Attacks tried against the running server; each must fail."""

from __future__ import annotations

import base64
import email
import email.utils
import json
import os
import socket
import ssl
import time

import pytest

from smtpgate.config import LimitsConfig
from smtpgate.smtp.engine import JUNK_COMMANDS

from .conftest import PASSWORD, USER, Server


class Raw:
    """A bare-bones SMTP connection for sending exactly the bytes an attack needs."""

    def __init__(self, port: int, ctx: ssl.SSLContext | None = None, implicit: bool = False):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.ctx = ctx
        self.sock: socket.socket = ctx.wrap_socket(sock, server_hostname="localhost") if implicit and ctx else sock
        self.buf = b""
        self.banner = self.reply()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> str:
        """One whole (possibly multi-line) reply."""
        lines = []
        while True:
            while b"\r\n" not in self.buf:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise EOFError("closed; got " + repr(lines))
                self.buf += chunk
            line, self.buf = self.buf.split(b"\r\n", 1)
            lines.append(line.decode())
            if line[3:4] != b"-":
                return "\r\n".join(lines)

    def cmd(self, line: str | bytes) -> str:
        self.send(line if isinstance(line, bytes) else line.encode() + b"\r\n")
        return self.reply()

    def starttls(self) -> None:
        assert self.cmd("STARTTLS").startswith("220")
        assert self.ctx is not None
        self.sock = self.ctx.wrap_socket(self.sock, server_hostname="localhost")

    def close(self) -> None:
        self.sock.close()


def plain(user: str, pw: str) -> str:
    return base64.b64encode(f"\0{user}\0{pw}".encode()).decode()


def tls_session(server: Server) -> Raw:
    r = Raw(server.submission, server.client_context())
    r.cmd("EHLO attacker.test")
    r.starttls()
    r.cmd("EHLO attacker.test")
    return r


def test_auth_in_clear_is_530_and_never_challenged(server: Server) -> None:
    r = Raw(server.submission)
    assert "AUTH" not in r.cmd("EHLO attacker.test")
    assert r.cmd(f"AUTH PLAIN {plain(USER, PASSWORD)}") == "530 5.7.0 Must issue a STARTTLS command first"
    assert r.cmd("AUTH LOGIN").startswith("530 5.7.0")
    r.close()


def test_wrong_password_and_unknown_user_same_reply(server: Server) -> None:
    r = tls_session(server)
    t0 = time.monotonic()
    a = r.cmd(f"AUTH PLAIN {plain(USER, 'wrong')}")
    t1 = time.monotonic()
    b = r.cmd(f"AUTH PLAIN {plain('nobody@example.org', 'wrong')}")
    t2 = time.monotonic()
    assert a == b == "535 5.7.8 Authentication credentials invalid"
    # Both are held to the failure floor (0.1 s in tests); neither is instant.
    assert t1 - t0 >= 0.1 and t2 - t1 >= 0.1
    r.close()
    records = [json.loads(x) for x in (server.root / "auth.log").read_text().splitlines()]
    reasons = {rec["username"]: rec["reason"] for rec in records if rec["result"] == "failure"}
    assert reasons[USER] != reasons["nobody@example.org"]  # the log knows why; the client does not


def test_mail_before_auth_is_530_and_relay_refused(server: Server) -> None:
    for port, implicit in ((server.submission, False), (server.submissions, True)):
        r = Raw(port, server.client_context(), implicit=implicit)
        if not implicit:
            r.cmd("EHLO attacker.test")
            r.starttls()
        r.cmd("EHLO attacker.test")
        assert r.cmd("MAIL FROM:<ceo@example.org>").startswith("530 5.7.0")
        for rcpt in ("victim@external.example", "victim%external.example@localhost",
                     '"victim@external.example"@localhost', "@localhost:victim@external.example"):
            assert r.cmd(f"RCPT TO:<{rcpt}>").startswith("530 5.7.0")
        assert r.cmd("DATA").startswith("530 5.7.0")
        r.close()
    assert server.delivered() == []


def test_commands_pipelined_behind_starttls_are_not_executed(server: Server) -> None:
    r = Raw(server.submission, server.client_context())
    r.cmd("EHLO attacker.test")
    # One write: STARTTLS plus injected commands, as a man in the middle would add.
    r.send(b"STARTTLS\r\nEHLO injected\r\nAUTH PLAIN " + plain(USER, PASSWORD).encode() + b"\r\n")
    assert r.reply().startswith("220")
    assert r.buf == b""
    r.sock = server.client_context().wrap_socket(r.sock, server_hostname="localhost")
    r.sock.settimeout(1.0)
    with pytest.raises(socket.timeout):
        r.sock.recv(1024)  # nothing was answered inside TLS on the injected lines
    r.sock.settimeout(10)
    # A fresh EHLO is required and the session is not authenticated.
    assert r.cmd("MAIL FROM:<alice@example.org>").startswith("530")
    assert "AUTH" in r.cmd("EHLO client.test")
    r.close()


SMUGGLING = [b"\n.\n", b"\r.\r", b"\n.\r\n", b"\r\n.\n", b"\r.\r\n", b"\r\n.\r", b"\n.\r", b"\r.\n"]


@pytest.mark.parametrize("fake_end", SMUGGLING, ids=repr)
def test_bare_lf_cr_end_of_data_does_not_split_a_message(server: Server, fake_end: bytes) -> None:
    r = tls_session(server)
    assert r.cmd(f"AUTH PLAIN {plain(USER, PASSWORD)}").startswith("235")
    r.cmd(f"MAIL FROM:<{USER}>")
    r.cmd("RCPT TO:<bob@example.net>")
    assert r.cmd("DATA").startswith("354")
    r.send(
        b"Subject: first\r\n\r\nhello" + fake_end
        + b"MAIL FROM:<ceo@example.org>\r\nRCPT TO:<victim@example.net>\r\nDATA\r\n"
        b"Subject: smuggled\r\n\r\nsmuggled\r\n.\r\n"
    )
    assert r.reply().startswith("550 5.6.11")
    assert r.cmd("NOOP").startswith("250")  # exactly one reply came for the whole blob
    r.close()
    time.sleep(0.3)
    assert server.delivered() == []
    # The refusal is in the log, with the session and the account: an
    # administrator can tell a smuggling probe from a broken client.
    assert f"user={USER} message refused: bare CR or LF" in server.log_text()
    assert "Traceback" not in server.log_text()


def test_a_quote_in_the_helo_does_not_break_the_received_header(server: Server) -> None:
    """``EHLO "client"`` went into Received as it came: a quoted string (RFC 5322
    §3.2.4) that a parser runs through the server's own words; with one quote,
    through the ";" before the date, and the field was no Received (§3.6.7)."""
    r = Raw(server.submission, server.client_context())
    r.cmd("EHLO attacker.test")
    r.starttls()
    assert r.cmd('EHLO "client').startswith("250")
    assert r.cmd(f"AUTH PLAIN {plain(USER, PASSWORD)}").startswith("235")
    assert r.cmd(f"MAIL FROM:<{USER}>").startswith("250")
    assert r.cmd("RCPT TO:<bob@example.net>").startswith("250")
    assert r.cmd("DATA").startswith("354")
    assert r.cmd(f"From: {USER}\r\nSubject: quote\r\n\r\nhi\r\n.".encode() + b"\r\n").startswith("250")
    r.close()
    (stored,) = server.wait_for_mail(1)
    received = str(email.message_from_bytes(stored.read_bytes())["Received"])
    assert received.startswith("from ?client ([127.0.0.1])"), received
    assert '"' not in received
    email.utils.parsedate_to_datetime(received.rpartition(";")[2].strip())


def test_a_utf8_recipient_with_a_line_separator_or_bidi_control_is_refused(server: Server) -> None:
    """With SMTPUTF8 any non-ASCII character was taken: a recipient holding NEL,
    U+2028 or U+202E went as it came into the delivery log line (where a line
    separator may end the line and U+202E shows the rest reversed), reports and the
    next hop (audit h19)."""
    r = tls_session(server)
    assert r.cmd(f"AUTH PLAIN {plain(USER, PASSWORD)}").startswith("235")
    assert r.cmd(f"MAIL FROM:<{USER}> SMTPUTF8").startswith("250")
    for bad in ("a\u0085b@example.net", "a\u2028b@example.net", "bob@exa\u202emple.net"):
        assert r.cmd(f"RCPT TO:<{bad}>") == "553 5.1.3 Address syntax error"
    assert r.cmd("RCPT TO:<j\u00f6rg@b\u00fccher.example>").startswith("250")
    r.close()
    assert all(c not in server.log_text() for c in "\u0085\u2028\u202e")


def test_a_session_closed_for_too_many_errors_is_logged(server: Server) -> None:
    """A client probing until ``limits.max_errors`` closes its session left no
    line in the log; now the close and its cause are there."""
    r = tls_session(server)
    reply = ""
    for line in ["AUTH SCRAM-SHA-256", "*"] * 30:  # above the fixture's max_errors
        if (reply := r.cmd(line)).startswith("421"):
            break
    assert reply == "421 4.7.0 Too many errors, closing connection"
    r.close()
    time.sleep(0.3)
    assert "closed: too many errors" in server.log_text()


def test_a_client_that_only_sends_noop_and_rset_is_closed_after_the_junk_limit(
        server: Server) -> None:
    """NOOP, RSET, VRFY, HELP, EHLO and HELO move no mail; a client that never
    logged in held its connection (and a slot of the per-address limit) for ever
    with a NOOP every few minutes. Past JUNK_COMMANDS each counts as an error, as
    Postfix's smtpd_junk_command_limit does."""
    r = Raw(server.submission)
    junk = ["EHLO probe.example", "NOOP", "RSET", "VRFY postmaster", "HELP", "HELO probe.example"]
    r.send("".join(junk[i % 6] + "\r\n" for i in range(JUNK_COMMANDS)).encode())
    assert [r.reply()[:3] for _ in range(JUNK_COMMANDS)] == [
        "252" if junk[i % 6].startswith("VRFY") else "214" if junk[i % 6] == "HELP" else "250"
        for i in range(JUNK_COMMANDS)]
    # The fixture's max_errors (the default) more: the last is answered, then 421.
    max_errors = LimitsConfig().max_errors
    r.send(b"NOOP\r\n" * max_errors)
    assert [r.reply() for _ in range(max_errors)] == ["250 2.0.0 OK"] * max_errors
    assert r.reply() == "421 4.7.0 Too many errors, closing connection"
    with pytest.raises(EOFError):
        r.reply()
    r.close()


@pytest.mark.parametrize("loop", ["BDAT 0", "RCPT TO:<overflow@example.net>"])
def test_a_logged_in_client_looping_on_a_command_that_moves_nothing_is_closed(
        server: Server, loop: str) -> None:
    """Found with 300 `BDAT 0` (no LAST) and 400 RCPT past limits.max_recipients on
    a server from `smtpgate init`: each got 250 or 452 and the loop went on for
    ever. Each now ends in 421 after a bound (the junk-command limit; Postfix's
    recipient overshoot limit), and no message is stored."""
    r = tls_session(server)
    assert r.cmd(f"AUTH PLAIN {plain(USER, PASSWORD)}").startswith("235")
    limits = LimitsConfig()
    rcpts = b"".join(b"RCPT TO:<r%d@example.net>\r\n" % i for i in range(limits.max_recipients))
    r.send(f"MAIL FROM:<{USER}>\r\n".encode() + rcpts)
    assert {r.reply()[:3] for _ in range(limits.max_recipients + 1)} == {"250"}
    bound = JUNK_COMMANDS + 2000  # more than either needs, fewer than for ever
    replies: list[str] = []
    while len(replies) < bound and not (replies and replies[-1].startswith("421")):
        r.send(f"{loop}\r\n".encode() * 100)
        for _ in range(100):
            replies.append(r.reply())
            if replies[-1].startswith("421"):
                break
    assert replies[-1] == "421 4.7.0 Too many errors, closing connection", replies[-3:]
    assert {x[:3] for x in replies[:-1]} == {"250" if loop == "BDAT 0" else "452"}
    with pytest.raises(EOFError):
        r.reply()
    r.close()


def test_a_client_that_half_closes_after_its_message_gets_the_250(server: Server) -> None:
    """A client that sends its message and QUIT, then shuts its side down (``nc
    -N``, a script) had its message stored but never saw the 250 or the 221: the
    connection closed at the EOF while the spool write was under way, so the
    client would send the message again. The replies now go out, then the close."""
    r = tls_session(server)
    assert r.cmd(f"AUTH PLAIN {plain(USER, PASSWORD)}").startswith("235")
    body = b"From: alice@example.org\r\nSubject: half-close\r\n\r\nbody\r\n"
    r.send(f"MAIL FROM:<{USER}>\r\nRCPT TO:<bob@example.net>\r\n".encode()
           + b"BDAT %d LAST\r\n" % len(body) + body + b"QUIT\r\n")
    # A TCP half-close under the TLS layer (SSLSocket.shutdown would drop it).
    dup = socket.socket(fileno=os.dup(r.sock.fileno()))
    dup.shutdown(socket.SHUT_WR)
    dup.close()
    replies = [r.reply() for _ in range(4)]
    assert [x[:3] for x in replies] == ["250", "250", "250", "221"], replies
    r.close()
    assert len(server.wait_for_mail(1)) == 1


def close_notify_with_commands(server: Server, version: ssl.TLSVersion) -> tuple[bytes, bool]:
    """Log in, send a message and QUIT, and the TLS close_notify in the same TCP
    write; what the server answered, and whether it closed with its close_notify."""
    ctx = server.client_context()
    ctx.maximum_version = version
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
    sock = socket.create_connection(("127.0.0.1", server.submissions), timeout=10)
    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            sock.sendall(outgoing.read())
            incoming.write(sock.recv(65536))
    sock.sendall(outgoing.read())
    # The greeting first: over TLS 1.2 it can come in the read that ends the
    # handshake, and the client's own shutdown would then meet it unread
    # (APPLICATION_DATA_AFTER_CLOSE_NOTIFY) instead of the server's answer.
    greeting = b""
    while not greeting.endswith(b"\r\n"):
        try:
            greeting += tls.read(65536)
        except ssl.SSLWantReadError:
            incoming.write(sock.recv(65536))
    body = b"From: alice@example.org\r\nSubject: close_notify\r\n\r\nbody\r\n"
    tls.write(f"EHLO client.example\r\nAUTH PLAIN {plain(USER, PASSWORD)}\r\n"
              f"MAIL FROM:<{USER}>\r\nRCPT TO:<bob@example.net>\r\n".encode()
              + b"BDAT %d LAST\r\n" % len(body) + body + b"QUIT\r\n")
    with pytest.raises(ssl.SSLWantReadError):
        tls.unwrap()  # the close_notify, sent with the commands
    sock.sendall(outgoing.read())
    got = b""
    while chunk := sock.recv(65536):
        got += chunk
    sock.close()
    incoming.write(got)
    text = greeting
    try:
        while chunk := tls.read(65536):
            text += chunk
    except ssl.SSLZeroReturnError:
        return text, True
    except ssl.SSLWantReadError:  # the connection ended without a close_notify
        pass
    return text, False


def test_a_client_whose_last_commands_come_with_its_close_notify_gets_the_replies(
        server: Server) -> None:
    """TLS 1.3 closes one direction: a client that writes its message, QUIT and
    its close_notify at once had all of it dropped unanswered (nothing stored, no
    reply), the close_notify ending the session before the commands that came
    with it were read. They are answered now, then the server closes, as after a
    TCP half-close."""
    text, closed = close_notify_with_commands(server, ssl.TLSVersion.TLSv1_3)
    finals = [line[:3] for line in text.decode().split("\r\n") if line[3:4] == " "]
    assert finals == ["220", "250", "235", "250", "250", "250", "221"], text
    assert closed
    assert len(server.wait_for_mail(1)) == 1


def test_a_tls12_close_notify_still_drops_the_commands_that_came_with_it(
        server: Server) -> None:
    """TLS 1.2 closes both directions (RFC 5246 §7.2.1): no reply could reach the
    client, so nothing it sent with its close_notify is run and no message is
    stored that it would never see acknowledged."""
    text, _ = close_notify_with_commands(server, ssl.TLSVersion.TLSv1_2)
    assert text == b"220 localhost ESMTP smtpgate\r\n"
    time.sleep(1)
    assert server.delivered() == []


def test_over_long_line_is_500(server: Server) -> None:
    r = tls_session(server)
    assert r.cmd(b"NOOP " + b"A" * 5000 + b"\r\n") == "500 5.5.2 Line too long"
    assert r.cmd("NOOP").startswith("250")
    r.close()


def test_locked_account_is_535_and_logged(server: Server) -> None:
    server.cli("user", "lock", USER)
    r = tls_session(server)
    assert r.cmd(f"AUTH PLAIN {plain(USER, PASSWORD)}") == "535 5.7.8 Authentication credentials invalid"
    r.close()
    records = [json.loads(x) for x in (server.root / "auth.log").read_text().splitlines()]
    assert records[-1]["result"] == "failure" and "lock" in records[-1]["reason"]
    server.cli("user", "unlock", USER)
    r = tls_session(server)
    assert r.cmd(f"AUTH PLAIN {plain(USER, PASSWORD)}").startswith("235")
    r.close()


def test_implicit_tls_port_speaks_tls_first(server: Server) -> None:
    sock = socket.create_connection(("127.0.0.1", server.submissions), timeout=5)
    sock.sendall(b"EHLO plaintext\r\n")
    sock.settimeout(5)
    try:
        data = sock.recv(100)
    except (TimeoutError, ConnectionResetError):
        data = b""
    assert not data.startswith(b"220") and not data.startswith(b"250")
    sock.close()
