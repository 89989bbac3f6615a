"""Session limits of the running server: timeouts, connection caps, size."""

from __future__ import annotations

import smtplib
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import PASSWORD, USER, Server, make_server
from .test_attacks import Raw, plain

LIMITS = """
[server]
workers = 1      # the idle and size limits do not depend on it; test_processes has workers = 2

[limits]
command_timeout = 1.0
max_connections_per_ip = 3
max_message_size = 2048
max_recipients = 3
max_errors = 3

[tls]
cert = "tls/cert.pem"
key = "tls/key.pem"
handshake_timeout = 1.0
"""


@pytest.fixture
def limited(tmp_path: Path) -> Iterator[Server]:
    srv = make_server(tmp_path / "srv")
    text = srv.config.read_text().replace('[tls]\ncert = "tls/cert.pem"\nkey = "tls/key.pem"\n', "")
    srv.config.write_text(text + LIMITS)
    srv.add_user(USER, PASSWORD)
    srv.start()
    yield srv
    if srv.proc is not None:
        srv.stop()


def test_idle_client_gets_421_timeout(limited: Server) -> None:
    r = Raw(limited.submission)
    t0 = time.monotonic()
    assert r.reply().startswith("421 4.4.2")
    assert time.monotonic() - t0 < 5
    r.close()


def test_silent_tls_handshake_is_dropped(limited: Server) -> None:
    sock = socket.create_connection(("127.0.0.1", limited.submissions), timeout=10)
    t0 = time.monotonic()
    assert sock.recv(100) == b""  # closed without a ClientHello ever being sent
    assert time.monotonic() - t0 < 5
    sock.close()


def test_per_ip_connection_limit_421(limited: Server) -> None:
    held = [Raw(limited.submission) for _ in range(3)]
    sock = socket.create_connection(("127.0.0.1", limited.submission), timeout=5)
    assert sock.recv(200).startswith(b"421 4.7.0")
    sock.close()
    for r in held:
        r.close()


def test_too_many_errors_421(limited: Server) -> None:
    r = Raw(limited.submission)
    r.cmd("FOO")
    r.cmd("BAR")
    assert r.cmd("BAZ").startswith("500 5.5.2")
    assert r.reply().startswith("421 4.7.0")
    with pytest.raises(EOFError):
        r.reply()
    r.close()


def test_size_and_recipient_limits(limited: Server) -> None:
    with smtplib.SMTP_SSL("127.0.0.1", limited.submissions, context=limited.client_context()) as s:
        s.login(USER, PASSWORD)
        assert "2048" in s.esmtp_features["size"]
        # Declared SIZE over the limit: refused at MAIL (RFC 1870 §6).
        with pytest.raises(smtplib.SMTPSenderRefused) as e:
            s.sendmail(USER, ["b@example.net"], "Subject: big\r\n\r\n" + "x" * 3000)
        assert e.value.smtp_code == 552
        # Undeclared: refused after the end of data.
        s.mail(USER)
        s.rcpt("b@example.net")
        code, text = s.data("Subject: big\r\n\r\n" + "x" * 3000)
        assert (code, text[:5]) == (552, b"5.3.4")
        s.mail(USER)
        for i in range(3):
            assert s.rcpt(f"r{i}@example.net")[0] == 250
        code, text = s.rcpt("r4@example.net")
        assert (code, text[:5]) == (452, b"4.5.3")


def test_auth_line_limit_over_the_wire(limited: Server) -> None:
    r = Raw(limited.submission, limited.client_context())
    r.cmd("EHLO c")
    r.starttls()
    r.cmd("EHLO c")
    assert r.cmd("AUTH PLAIN").startswith("334")
    assert r.cmd(b"A" * 100_000 + b"\r\n").startswith("500 5.5.6")
    assert r.cmd(f"AUTH PLAIN {plain(USER, PASSWORD)}").startswith("235")
    r.close()
