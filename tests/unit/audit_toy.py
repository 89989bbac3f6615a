"""A toy STARTTLS server for the auditor's unit tests, with real TLS: its
certificate is made per test and trusted with ``ca_file``.

The toy greets, upgrades on STARTTLS (optionally writing ``after_starttls`` in
clear behind its 220, in the same segment) and answers QUIT; every other line
goes to the test's ``answer(verb, line, tls)``, which returns the reply bytes.
``answers`` makes one such function per connection, so a test can keep the state
of an exchange (an AUTH LOGIN's prompts) per connection. Like asyncio's
``start_tls``, the toy keeps what the client pipelined behind STARTTLS.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from smtpgate.tls.certs import write_self_signed
from smtpgate.tools.audit import AuditOptions, Target, TargetReport, audit_target

Answer = Callable[[bytes, bytes, bool], bytes]
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def plain_reply(verb: bytes) -> bytes | None:
    """The toys' replies to the commands a probe sends outside AUTH (None: others)."""
    if verb == b"MAIL":
        return b"530 5.7.0 Authentication required\r\n"
    if verb in (b"RCPT", b"DATA"):
        return b"503 5.5.1 MAIL first\r\n"
    if verb in (b"RSET", b"NOOP"):
        return b"250 2.0.0 ok\r\n"
    return None


def _handler(context: ssl.SSLContext, answers: Callable[[], Answer],
             after_starttls: bytes) -> Handler:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        answer = answers()
        tls = False
        try:
            writer.write(b"220 mx.test.local ESMTP\r\n")
            while line := await reader.readline():
                verb = line[:4].upper()
                if verb == b"STAR" and not tls:
                    writer.write(b"220 2.0.0 go ahead\r\n" + after_starttls)
                    await writer.drain()
                    await writer.start_tls(context)
                    tls = True
                    continue
                if verb == b"QUIT":
                    writer.write(b"221 2.0.0 bye\r\n")
                    break
                writer.write(answer(verb, line, tls))
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    return handle


@asynccontextmanager
async def toy_server(tmp_path: Path, answers: Callable[[], Answer],
                     after_starttls: bytes = b"") -> AsyncIterator[tuple[int, Path]]:
    """The toy on 127.0.0.1: (its port, its certificate to trust)."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    write_self_signed(cert, key, "localhost", days=90)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server = await asyncio.start_server(_handler(context, answers, after_starttls),
                                        "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1]), cert
    finally:
        server.close()
        await server.wait_closed()


async def audit_toy(tmp_path: Path, answers: Callable[[], Answer], *,
                    after_starttls: bytes = b"", **options: Any) -> TargetReport:
    """The auditor's report on a toy (STARTTLS), with ``options`` for AuditOptions."""
    async with toy_server(tmp_path, answers, after_starttls) as (port, cert):
        return await audit_target(Target("127.0.0.1", port, "starttls"), AuditOptions(
            timeout=5.0, ehlo_name="client.test", ca_file=cert, **options))
