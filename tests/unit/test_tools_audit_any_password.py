"""A server that takes any password, but only after STARTTLS (AUTH neither offered
nor accepted in clear, as a careful set-up does, with a back end that checks
nothing: Dovecot's static passdb with nopassword left on). The made-up identity
was tried only in clear, where such a server says 530, so the audit graded it A.
It is now tried once after TLS too; a server that checks passwords is not flagged.
Real TLS: the toy server's certificate is made here, trusted with ``ca_file``.
"""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest

from smtpgate.tls.certs import write_self_signed
from smtpgate.tools.audit import AuditOptions, Target, audit_target


def _server(context: ssl.SSLContext, auth_reply: bytes,  # type: ignore[no-untyped-def]
            mechanisms: bytes = b"PLAIN LOGIN", auths: list[bytes] | None = None):
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tls = False
        try:
            writer.write(b"220 mx.test.local ESMTP\r\n")
            while line := await reader.readline():
                verb = line[:4].upper()
                if verb == b"STAR" and not tls:
                    writer.write(b"220 2.0.0 go ahead\r\n")
                    await writer.drain()
                    await writer.start_tls(context)
                    tls = True
                    continue
                if verb == b"EHLO":
                    reply = (b"250-mx.test.local\r\n250 AUTH " + mechanisms + b"\r\n" if tls
                             else b"250-mx.test.local\r\n250 STARTTLS\r\n")
                elif verb == b"AUTH":
                    if auths is not None and tls:
                        auths.append(line.split()[1])
                    reply = b"334 \r\n" if tls else b"530 5.7.0 Must issue STARTTLS first\r\n"
                elif verb == b"MAIL":
                    reply = b"530 5.7.0 Authentication required\r\n"
                elif verb in (b"RCPT", b"DATA"):
                    reply = b"503 5.5.1 MAIL first\r\n"
                elif verb in (b"RSET", b"NOOP"):
                    reply = b"250 2.0.0 ok\r\n"
                elif verb == b"QUIT":
                    writer.write(b"221 2.0.0 bye\r\n")
                    break
                elif tls:
                    reply = auth_reply  # the credentials line of the exchange
                else:
                    reply = b"500 5.5.2 what\r\n"
                writer.write(reply)
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    return handle


@pytest.mark.parametrize(("auth_reply", "flagged"), [
    (b"235 2.7.0 ok\r\n", True),
    (b"535 5.7.8 Authentication failed\r\n", False),
])
async def test_a_made_up_login_after_tls(tmp_path: Path, auth_reply: bytes,
                                         flagged: bool) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    write_self_signed(cert, key, "localhost", days=90)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server = await asyncio.start_server(_server(context, auth_reply), "127.0.0.1", 0)
    port = int(server.sockets[0].getsockname()[1])
    try:
        t = await audit_target(Target("127.0.0.1", port, "starttls"),
                               AuditOptions(timeout=5.0, ehlo_name="client.test", ca_file=cert))
    finally:
        server.close()
    assert t.complete, t.error
    assert t.auth_clear_accepted is False
    assert t.dummy_login_after_tls is flagged
    # (The toy also keeps its input across STARTTLS, as asyncio's start_tls does,
    # and offers no SCRAM: those findings are not this test's.)
    found = {f.id: f for f in t.findings}
    if flagged:
        assert found["auth-accepts-anything"].detail == (
            "a made-up identity got 235 2.7.0 ok to AUTH PLAIN after TLS")
        assert t.grade == "F"
    else:
        assert "auth-accepts-anything" not in found
    data = t.to_json()["auth_made_up_identity"]
    assert data == {"after_tls": flagged, "detail": data["detail"]}


async def test_wrong_credentials_are_not_tried_against_every_mechanism(tmp_path: Path) -> None:
    """With --user and a wrong password, every mechanism offered got a try: as many
    failed logins as mechanisms (nine against smtpgate with all of them), enough
    for fail2ban (maxretry 5) to ban the auditor, or two runs to lock the account
    for new addresses. PLAIN (or LOGIN) and the strongest other go first now, and
    when both refuse the password the others are not tried: a note says so."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    write_self_signed(cert, key, "localhost", days=90)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    auths: list[bytes] = []
    handler = _server(context, b"535 5.7.8 Authentication failed\r\n",
                      b"SCRAM-SHA-256 SCRAM-SHA-1 LOGIN PLAIN", auths)
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = int(server.sockets[0].getsockname()[1])
    try:
        t = await audit_target(Target("127.0.0.1", port, "starttls"),
                               AuditOptions(timeout=5.0, ehlo_name="client.test", ca_file=cert,
                                            user="alice@example.org", password="wrong-Pass1"))
    finally:
        server.close()
    assert [c.mechanism for c in t.credentials] == ["PLAIN", "SCRAM-SHA-256"]
    assert "credentials-refused" in {f.id for f in t.findings}
    assert any("with SCRAM-SHA-1, LOGIN not tried: PLAIN and SCRAM-SHA-256 refused" in n
               for n in t.notes), t.notes
    # The credentials twice, then the made-up login.
    assert auths == [b"PLAIN", b"SCRAM-SHA-256", b"PLAIN"]


def test_the_trial_order_puts_a_password_mechanism_and_the_strongest_first() -> None:
    from smtpgate.tools.audit import _trial_order

    assert _trial_order(["LOGIN", "PLAIN", "CRAM-MD5", "SCRAM-SHA-1", "SCRAM-SHA-256"]) == [
        "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-1", "LOGIN", "CRAM-MD5"]
    assert _trial_order(["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256", "LOGIN"]) == [
        "LOGIN", "SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]
