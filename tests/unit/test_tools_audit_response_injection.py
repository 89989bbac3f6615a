"""STARTTLS response injection (the client side of RFC 3207 §4.2, "NO STARTTLS",
USENIX Security 2021): bytes that come in clear after the server's 220 to STARTTLS,
before the handshake. The auditor discards them, as every client must, but until
2026-12 it said nothing of them, so a server (or something on its path: a
firewall's SMTP inspection, a man in the middle) that sends them graded A. They
are now the finding ``starttls-response-injection``; a server that sends nothing
more after its 220 is not flagged. Real TLS, the toy server's certificate made
here and trusted with ``ca_file``.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from pathlib import Path

import pytest

from smtpgate.tls.certs import write_self_signed
from smtpgate.tools.audit import AuditOptions, Target, audit_target

INJECTED = b"250-mx.test.local\r\n250 AUTH PLAIN\r\n"


def _server(context: ssl.SSLContext, extra: bytes):  # type: ignore[no-untyped-def]
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tls = False
        try:
            writer.write(b"220 mx.test.local ESMTP\r\n")
            while line := await reader.readline():
                verb = line[:4].upper()
                if verb == b"STAR" and not tls:
                    writer.write(b"220 2.0.0 go ahead\r\n" + extra)  # one segment
                    await writer.drain()
                    await writer.start_tls(context)
                    tls = True
                    continue
                if verb == b"EHLO":
                    reply = (b"250-mx.test.local\r\n250 AUTH SCRAM-SHA-256\r\n" if tls
                             else b"250-mx.test.local\r\n250 STARTTLS\r\n")
                elif verb == b"MAIL":
                    reply = b"530 5.7.0 Authentication required\r\n"
                elif verb == b"RCPT":
                    reply = b"503 5.5.1 MAIL first\r\n"
                elif verb == b"RSET":
                    reply = b"250 2.0.0 ok\r\n"
                elif verb == b"QUIT":
                    writer.write(b"221 2.0.0 bye\r\n")
                    break
                else:
                    reply = b"530 5.7.0 Must issue STARTTLS first\r\n" if not tls \
                        else b"502 5.5.2 what\r\n"
                writer.write(reply)
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    return handle


@pytest.mark.parametrize("extra", [INJECTED, b""])
async def test_bytes_after_the_220_to_starttls_are_a_finding(tmp_path: Path,
                                                             extra: bytes) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    write_self_signed(cert, key, "localhost", days=90)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server = await asyncio.start_server(_server(context, extra), "127.0.0.1", 0)
    port = int(server.sockets[0].getsockname()[1])
    try:
        t = await audit_target(Target("127.0.0.1", port, "starttls"),
                               AuditOptions(timeout=5.0, ehlo_name="client.test", ca_file=cert))
    finally:
        server.close()
        await server.wait_closed()
    assert t.complete, t.error
    # The injected EHLO reply was not taken: AUTH after TLS is what TLS said.
    assert t.mechanisms_tls == ("SCRAM-SHA-256",)
    found = [f for f in t.findings if f.id == "starttls-response-injection"]
    data = json.loads(json.dumps(t.to_json()))
    if extra:
        assert [f.detail for f in found] == [
            (f"main probe: {len(extra)} bytes in clear after the 220 to STARTTLS, before "
             "the handshake (discarded)")]
        assert found[0].severity.label == "high"
        assert data["starttls_response_injection"] == [found[0].detail]
    else:
        assert found == []
        assert data["starttls_response_injection"] == []
