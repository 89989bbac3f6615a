"""``smtp.received_login``: the Received header of a real server's mail names the
login only when asked to, and a reload (SIGHUP) changes it for the next message."""

from __future__ import annotations

import email
import re
import signal
import smtplib
import time

from .conftest import PASSWORD, USER, Server


def _send_and_read_received(server: Server, count: int, marker: str) -> str:
    with smtplib.SMTP("127.0.0.1", server.submission, timeout=10) as s:
        s.starttls(context=server.client_context())
        s.login(USER, PASSWORD)
        s.sendmail(USER, ["bob@example.net"],
                   f"From: {USER}\r\nTo: bob@example.net\r\nSubject: {marker}\r\n\r\nhi\r\n")
    files = server.wait_for_mail(count)
    msg = next(email.message_from_bytes(f.read_bytes()) for f in files
               if marker.encode() in f.read_bytes())
    received = msg.get_all("Received")
    assert received, msg
    return str(received[0])


def _reload(server: Server) -> None:
    done = r"reload complete in every process"
    before = len(re.findall(done, server.log_text()))
    assert server.proc is not None
    server.proc.send_signal(signal.SIGHUP)  # what `smtpgate reload` sends
    deadline = time.monotonic() + 20
    while len(re.findall(done, server.log_text())) <= before:
        assert time.monotonic() < deadline, server.log_text()
        time.sleep(0.05)


def test_the_login_is_named_in_received_only_with_received_login(server: Server) -> None:
    """Before: the login was in every message's Received header, and the only way
    to hide it was received_header = false, which drops the whole trace line.
    By default (as Postfix's smtpd_sasl_authenticated_header = no) the header keeps
    ESMTPSA, TLS and the queue id, and names no one."""
    hidden = _send_and_read_received(server, 1, "first")
    assert "with ESMTPSA" in hidden and "(using TLSv1.3" in hidden, hidden
    assert USER not in hidden and "Authenticated sender" not in hidden, hidden
    server.config.write_text(server.config.read_text() + "\n[smtp]\nreceived_login = true\n")
    _reload(server)
    shown = _send_and_read_received(server, 2, "second")
    assert f"(Authenticated sender: {USER})" in shown and "with ESMTPSA" in shown, shown
