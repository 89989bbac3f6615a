"""TLS session resumption on a default install (two workers): a client that
kept its session ticket resumes, on either worker, over STARTTLS and implicit
TLS, and logs in as usual afterwards (docs/security.md, "Session resumption")."""

from __future__ import annotations

import re
import smtplib
import socket
import ssl

from .conftest import PASSWORD, USER, Server


def _send(server: Server, port: int, implicit: bool, ctx: ssl.SSLContext,
          session: ssl.SSLSession | None, n: int) -> tuple[ssl.SSLSession | None, bool]:
    """One message over a new connection; the session to keep, and whether this
    connection resumed."""
    smtp: smtplib.SMTP
    if implicit:
        # smtplib's SMTP_SSL cannot be given a session: connect by hand.
        smtp = smtplib.SMTP(timeout=10)
        raw = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), 10),
                              server_hostname="localhost", session=session)
        smtp.sock = raw
        smtp.file = None
        code, _ = smtp.getreply()
        assert code == 220
    else:
        smtp = smtplib.SMTP("127.0.0.1", port, timeout=10)
        smtp.ehlo("client.test")
        code, _ = smtp.docmd("STARTTLS")
        assert code == 220
        raw = ctx.wrap_socket(smtp.sock, server_hostname="localhost", session=session)
        smtp.sock, smtp.file = raw, None
    smtp.ehlo("client.test")
    smtp.login(USER, PASSWORD)
    smtp.sendmail(USER, [USER], f"From: {USER}\r\nSubject: {n}\r\n\r\nhello\r\n")
    reused = raw.session_reused
    kept = raw.session
    smtp.quit()
    return kept, reused


def test_clients_resume_on_every_worker(server: Server) -> None:
    ctx = server.client_context()
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    for port, implicit in ((server.submission, False), (server.submissions, True)):
        session, reused = _send(server, port, implicit, ctx, None, 0)
        assert not reused and session is not None and session.has_ticket
        resumed = []
        for n in range(1, 13):
            session, reused = _send(server, port, implicit, ctx, session, n)
            resumed.append(reused)
        assert all(resumed), resumed
    # Both workers served resumed connections: the ticket key is the one the
    # parent made before the fork.
    pids = set(re.findall(r"smtpgate\.session\[(\d+)\]: \S+ queued", server.log_text()))
    assert len(pids) == 2, pids
    server.wait_for_mail(26)
