"""Real clients against the running server: Python smtplib and swaks."""

from __future__ import annotations

import base64
import email
import os
import smtplib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import LOGIN_IN_RECEIVED, PASSWORD, USER, Server, require_tool, serving_alice

pytestmark = pytest.mark.interop

MESSAGE = (
    f"From: {USER}\r\nTo: bob@example.net\r\nSubject: hello\r\n"
    "Message-ID: <t1@example.org>\r\n\r\nHello Bob.\r\n.leading dot\r\n"
)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    """Alice's server, whose Received header names the login it checks."""
    yield from serving_alice(tmp_path / "srv", LOGIN_IN_RECEIVED)


def _check_delivered(server: Server, count: int = 1) -> email.message.Message:
    files = server.wait_for_mail(count)
    msg = email.message_from_bytes(files[-1].read_bytes())
    received = msg.get_all("Received")
    assert received and "with ESMTPSA" in received[0], received
    assert f"Authenticated sender: {USER}" in received[0]
    return msg


@pytest.mark.parametrize("mech", ["PLAIN", "LOGIN"])
def test_smtplib_starttls(server: Server, mech: str) -> None:
    with smtplib.SMTP("127.0.0.1", server.submission, timeout=10) as s:
        s.ehlo("client.test")
        assert "auth" not in s.esmtp_features  # nothing offered in clear
        s.starttls(context=server.client_context())
        s.ehlo("client.test")
        assert mech in s.esmtp_features["auth"].split()
        if mech == "PLAIN":
            s.auth("PLAIN", lambda challenge=None: f"\0{USER}\0{PASSWORD}")
        else:
            s.user, s.password = USER, PASSWORD
            s.auth("LOGIN", s.auth_login)  # username as initial response, like smtplib does
        s.sendmail(USER, ["bob@example.net"], MESSAGE)
    msg = _check_delivered(server)
    assert msg["Subject"] == "hello"
    assert msg.get_payload().endswith(".leading dot\n") or ".leading dot" in msg.get_payload()


@pytest.mark.parametrize("mech", ["PLAIN", "LOGIN"])
def test_smtplib_implicit_tls(server: Server, mech: str) -> None:
    with smtplib.SMTP_SSL(
        "127.0.0.1", server.submissions, timeout=10, context=server.client_context()
    ) as s:
        s.ehlo("client.test")
        assert "STARTTLS" not in {k.upper() for k in s.esmtp_features}
        s.login(USER, PASSWORD) if mech == "PLAIN" else s.auth(
            "LOGIN", lambda challenge=None: USER if challenge is None or b"User" in challenge else PASSWORD,
            initial_response_ok=False,
        )
        s.sendmail(USER, ["bob@example.net"], MESSAGE)
    _check_delivered(server)


@pytest.mark.parametrize("mech", ["PLAIN", "LOGIN"])
@pytest.mark.parametrize("mode", ["-tls", "-tlsc"])
def test_swaks(server: Server, mech: str, mode: str) -> None:
    swaks = require_tool("swaks")
    port = server.submission if mode == "-tls" else server.submissions
    proc = subprocess.run(
        [swaks, "-s", "127.0.0.1", "-p", str(port), mode, "--tls-verify", "--tls-ca-path",
         str(server.ca), "-a", mech, "-au", USER, "-ap", PASSWORD, "-f", USER,
         "-t", "bob@example.net", "--helo", "client.test"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "235 2.7.0" in proc.stdout
    assert "250 2.0.0 OK queued as" in proc.stdout
    _check_delivered(server)


def test_swaks_wrong_password_535(server: Server) -> None:
    swaks = require_tool("swaks")
    proc = subprocess.run(
        [swaks, "-s", "127.0.0.1", "-p", str(server.submission), "-tls", "--tls-verify",
         "--tls-ca-path", str(server.ca), "-a", "PLAIN", "-au", USER, "-ap", "nope",
         "--quit-after", "AUTH"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode != 0
    assert "535 5.7.8" in proc.stdout


@pytest.mark.parametrize("implicit", [False, True])
def test_smtplib_large_attachments_then_more_commands(server: Server, implicit: bool) -> None:
    """Two messages of about 15 MB in one session, then NOOP and QUIT. When a
    message ended while the spool's disk writes were behind the client, the
    session stopped reading: the 250 came, but QUIT (or the next MAIL) was never
    read and the client hung until its own timeout (seen with Perl Net::SMTP,
    Ruby net-smtp and smtplib). The unit test is tests/unit/test_queue_incoming.py's
    test_the_end_of_the_message_reports_the_backlog_gone."""
    attachment = base64.encodebytes(os.urandom(11_000_000)).replace(b"\n", b"\r\n")
    message = (
        f"From: {USER}\r\nTo: bob@example.net\r\nSubject: big\r\nMIME-Version: 1.0\r\n"
        "Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    ).encode() + attachment
    if implicit:
        s: smtplib.SMTP = smtplib.SMTP_SSL(
            "127.0.0.1", server.submissions, timeout=30, context=server.client_context())
    else:
        s = smtplib.SMTP("127.0.0.1", server.submission, timeout=30)
        s.starttls(context=server.client_context())
    with s:
        s.login(USER, PASSWORD)
        for _ in range(2):
            s.sendmail(USER, ["bob@example.net"], message)
        assert s.noop()[0] == 250  # read, not left unread behind a paused socket
    files = server.wait_for_mail(2)
    assert all(attachment in f.read_bytes() for f in files)


@pytest.mark.parametrize("options", [["SMTPUTF8"], ["SMTPUTF8", "BODY=8BITMIME"]])
def test_smtplib_send_message_with_smtputf8_in_mail_options(
        server: Server, options: list[str]) -> None:
    """smtplib's send_message adds SMTPUTF8 and BODY=8BITMIME to the caller's
    mail_options for a UTF-8 address, so ``mail_options=["SMTPUTF8"]`` sent
    ``MAIL FROM:<...> SMTPUTF8 SMTPUTF8 BODY=8BITMIME``, refused with 501 Duplicate
    MAIL/RCPT parameter (Postfix takes it). An exact repeat is now taken once."""
    msg = email.message.EmailMessage()
    msg["From"] = USER
    msg["To"] = "jörg@example.net"
    msg["Subject"] = "grüße"
    msg.set_content("Hallo Jörg.\n")
    with smtplib.SMTP("127.0.0.1", server.submission, timeout=10) as s:
        s.starttls(context=server.client_context())
        s.login(USER, PASSWORD)
        assert s.send_message(msg, mail_options=options) == {}
    delivered = server.wait_for_mail(1)[-1].read_bytes()
    assert "Subject: grüße".encode() in delivered
