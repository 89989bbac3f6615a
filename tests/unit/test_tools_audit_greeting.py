"""The auditor on a port of unknown mode (neither 25, 587 nor 465): a server slow to
greet is still audited as the SMTP server it is, against a scripted loopback server."""

from __future__ import annotations

import asyncio

import pytest

from smtpgate.tools import audit
from tests.unit.test_tools_audit_broken import _audit as audit_of

REPLIES = {
    b"EHLO": b"250-slow.test\r\n250 PIPELINING\r\n",
    b"HELO": b"250 slow.test\r\n",
    b"MAIL": b"530 5.7.0 Authentication required\r\n",
    b"RCPT": b"503 5.5.1 MAIL first\r\n",
    b"RSET": b"250 2.0.0 ok\r\n",
    b"AUTH": b"503 5.5.1 no AUTH\r\n",
    b"QUIT": b"221 2.0.0 bye\r\n",
}


async def _slow_greeter(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A plain SMTP server with a greet pause (as anti-spam set-ups have)."""
    try:
        await asyncio.sleep(0.8)
        writer.write(b"220 slow.test ESMTP\r\n")
        while line := await reader.readline():
            writer.write(REPLIES.get(line[:4].upper(), b"500 5.5.2 what?\r\n"))
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


async def test_a_slow_greeting_is_not_taken_for_implicit_tls(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # It was: no greeting within the sniff time meant implicit TLS, the handshake
    # then met the 220, and the report said no-tls, "implicit TLS handshake failed:
    # wrong version number" (a false high finding, grade D, for a STARTTLS server
    # with a greet pause; a private Postfix behind a 5 s delay showed it).
    monkeypatch.setattr(audit, "GREETING_SNIFF_SECONDS", 0.3)
    [report] = (await audit_of(_slow_greeter, "auto")).targets
    assert report.mode_used == "plain"
    assert report.banner == "slow.test ESMTP"
    assert report.tls_error == ""
    assert [(f.id, f.detail) for f in report.findings] == [("no-tls", "STARTTLS is not offered")]
