"""A server that sends one reply more than it is asked for (answers EHLO twice, in
clear). The auditor read each reply as the answer to the command after: the extra
250 was "STARTTLS refused: 250 ..." (a false no-tls, high, grade D, for a server
with working STARTTLS), and the AUTH-in-clear probe took the 250 for its answer
and missed the 334 that followed (auth-accepted-in-clear not found). Every probe
now sets such a reply aside, as ``smtpgate test`` does, and a note names it. Real
TLS, the toy server's certificate made here and trusted with ``ca_file``.
"""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

from smtpgate.tls.certs import write_self_signed
from smtpgate.tools.audit import AuditOptions, Target, audit_target


def _server(context: ssl.SSLContext):  # type: ignore[no-untyped-def]
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
                    reply = (b"250-mx.test.local\r\n250 AUTH SCRAM-SHA-256\r\n" if tls else
                             b"250-mx.test.local\r\n250-STARTTLS\r\n250 AUTH PLAIN\r\n"
                             b"250 mx.test.local once more\r\n")
                elif verb == b"AUTH":
                    reply = b"334 \r\n" if not tls else b"535 5.7.8 no\r\n"
                elif verb == b"MAIL":
                    reply = b"530 5.7.0 Authentication required\r\n"
                elif verb == b"RCPT":
                    reply = b"503 5.5.1 MAIL first\r\n"
                elif verb == b"RSET":
                    reply = b"250 2.0.0 ok\r\n"
                elif verb == b"QUIT":
                    writer.write(b"221 2.0.0 bye\r\n")
                    break
                else:  # the dummy PLAIN response or "*"
                    reply = b"535 5.7.8 Authentication failed\r\n"
                writer.write(reply)
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    return handle


async def test_a_reply_nobody_asked_for_does_not_shift_the_audit(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    write_self_signed(cert, key, "localhost", days=90)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server = await asyncio.start_server(_server(context), "127.0.0.1", 0)
    port = int(server.sockets[0].getsockname()[1])
    try:
        t = await audit_target(Target("127.0.0.1", port, "starttls"),
                               AuditOptions(timeout=5.0, ehlo_name="client.test", ca_file=cert))
    finally:
        server.close()
    assert t.complete, t.error
    assert t.tls_error == "" and t.tls is not None
    assert t.mechanisms_tls == ("SCRAM-SHA-256",)
    assert t.auth_clear_accepted is True
    assert t.auth_clear_detail.startswith("AUTH PLAIN in clear got 334")
    ids = {f.id for f in t.findings}
    assert "no-tls" not in ids
    assert {"auth-accepted-in-clear", "auth-offered-in-clear"} <= ids
    # The toy keeps its input across STARTTLS, as asyncio's start_tls does: the
    # injection probe, which pipelines, still sees the answer inside TLS.
    assert t.injection == "vulnerable"
    assert t.relay and not any(a.accepted for a in t.relay)
    [note] = [n for n in t.notes if "nobody asked for" in n]
    assert note.endswith("first: 250 mx.test.local once more; set aside, not taken as the "
                         "answer to the next command")
