"""The client engine's BDAT (RFC 3030), talking to the server engine in memory: the
chunks are framed by their size, sent unstuffed, and each gets one reply."""

from __future__ import annotations

import base64

from smtpgate.client.engine import ClientEngine
from smtpgate.client.replies import ServerReply
from smtpgate.smtp import replies as R

from .engine_driver import Driver


def replies(client: ClientEngine, server: Driver, wire: bytes) -> list[str]:
    client.receive_data(server.feed(wire))
    out = []
    while isinstance(ev := client.next_event(), ServerReply):
        out.append(f"{ev.code} {ev.enhanced} {ev.lines[-1]}" if ev.enhanced
                   else f"{ev.code} {ev.lines[-1]}")
    return out


def test_client_bdat_chunks_reach_the_server_engine_unchanged() -> None:
    server, client = Driver.new(tls=True, greet=False), ClientEngine()
    server.engine.greeting()
    assert replies(client, server, b"")[0].startswith("220 ")
    replies(client, server, client.ehlo("client.test"))
    assert client.extensions.chunking and client.extensions.binarymime
    plain = base64.b64encode(b"\0alice@example.org\0correct horse")
    assert replies(client, server, client.auth("PLAIN", base64.b64decode(plain)))[0].startswith("235")
    content = b"From: alice@example.org\r\n\r\n.dot\r\n.\r\nQUIT\r\n\xff\x00\r\n"
    wire = (client.mail("alice@example.org", ["BODY=BINARYMIME"]) + client.rcpt("bob@example.net")
            + client.bdat(content[:30]) + client.bdat(content[30:]) + client.bdat(b"", last=True))
    assert client.replies_due == 5
    assert replies(client, server, wire) == [str(R.SENDER_OK), str(R.RECIPIENT_OK),
                                             str(R.CHUNK_RECEIVED), str(R.CHUNK_RECEIVED),
                                             str(R.MESSAGE_ACCEPTED)]
    assert server.messages[0].data == content  # no dot-stuffing, no end marker
    assert client.replies_due == 0


def test_client_bdat_formats_size_and_last() -> None:
    client = ClientEngine(expect_greeting=False)
    assert client.bdat(b"abc") == b"BDAT 3\r\nabc"
    assert client.bdat(b"", last=True) == b"BDAT 0 LAST\r\n"
