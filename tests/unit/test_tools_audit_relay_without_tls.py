"""The relay probe runs even when TLS fails: an open relay relays in clear, so a
server whose STARTTLS is broken must not hide one."""

from __future__ import annotations

import asyncio

import pytest

from tests.unit.test_tools_audit_broken import _audit as audit_of

REPLIES = {
    b"EHLO": b"250-relay.test\r\n250-STARTTLS\r\n250 PIPELINING\r\n",
    b"STAR": b"454 4.7.0 TLS not available due to local problem\r\n",
    b"MAIL": b"250 2.1.0 ok\r\n",
    b"RSET": b"250 2.0.0 ok\r\n",
    b"AUTH": b"503 5.5.1 no AUTH\r\n",
    b"QUIT": b"221 2.0.0 bye\r\n",
}


@pytest.mark.parametrize("relays", [True, False])
async def test_a_server_with_broken_starttls_is_still_probed_for_relaying(relays: bool) -> None:
    # It was: "STARTTLS refused" ended the main probe before the relay probe, and
    # an open relay behind a broken STARTTLS got no-tls alone (grade D, not F).
    rcpt = b"250 2.1.5 ok\r\n" if relays else b"554 5.7.1 Relay access denied\r\n"

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(b"220 relay.test ESMTP\r\n")
            while line := await reader.readline():
                verb = line[:4].upper()
                writer.write(rcpt if verb == b"RCPT" else REPLIES.get(verb, b"500 5.5.2 ?\r\n"))
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    [report] = (await audit_of(handle)).targets
    assert report.tls_error.startswith("STARTTLS refused: 454")
    assert len(report.relay) == 7
    ids = [f.id for f in report.findings]
    assert ids == (["no-tls", "open-relay"] if relays else ["no-tls"])
    assert report.grade == ("F" if relays else "D")
