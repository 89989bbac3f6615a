"""Fuzz the client side's reply parsing (client/replies.py, client/engine.py and the
EHLO keyword parser client/extensions.py) with hostile server bytes.

Input: byte 0 seeds the random cut points; the rest is what the server sends
(``_common.expand`` applies), followed by its end of stream. The client has sent
EHLO, so the second reply is parsed as the EHLO answer. Invariants, beyond "only
RemoteProtocolError":

* the same bytes cut differently give the same replies, extensions and error;
* each reply has a code 200-599 (RFC 5321 §4.2: 2yz-5yz), 1-MAX_REPLY_LINES
  lines without LF, an enhanced code only of the code's class (RFC 2034 §4);
* a reply written back in wire form parses to the same reply;
* every EHLO property answers (SIZE is an int) and a 334 challenge decodes or
  raises RemoteProtocolError.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

with C.instrument(__name__ == "__main__"):
    from smtpgate.client.engine import CLOSED, NEED_DATA, ClientEngine
    from smtpgate.client.errors import RemoteProtocolError
    from smtpgate.client.replies import MAX_REPLY_LINES, ReplyParser, ServerReply

_ENHANCED = re.compile(r"[245]\.\d{1,3}\.\d{1,3}\Z")


def run(chunks: list[bytes]) -> tuple[list[ServerReply], tuple[object, ...], str]:
    engine = ClientEngine()
    engine.ehlo("client.test")
    replies: list[ServerReply] = []
    ehlo: tuple[object, ...] = ()
    try:
        for chunk in [*chunks, b""]:
            engine.receive_data(chunk)
            while True:
                ev = engine.next_event()
                if ev is NEED_DATA or ev is CLOSED:
                    break
                assert isinstance(ev, ServerReply)
                replies.append(ev)
                if len(replies) == 2:
                    x = engine.extensions
                    ehlo = (dict(x.keywords), x.size, x.auth_mechanisms, x.auth_mechanism_list,
                            x.starttls, x.pipelining, x.eightbitmime, x.smtputf8, engine.esmtp)
            if ev is CLOSED:
                break
    except RemoteProtocolError as e:
        return replies, ehlo, str(e)
    return replies, ehlo, ""


def check_reply(r: ServerReply) -> None:
    if not 200 <= r.code <= 599:
        C.fail("reply code out of range", r)
    if not 1 <= len(r.lines) <= MAX_REPLY_LINES:
        C.fail("reply line count", r)
    if any("\n" in t for t in r.lines):
        C.fail("LF inside a reply line", r)
    if r.enhanced is not None and (
        not _ENHANCED.match(r.enhanced) or r.enhanced[0] != str(r.code)[0]
    ):
        C.fail("enhanced code malformed or of another class", r)
    str(r)
    _ = (r.text, r.is_positive, r.is_temporary, r.is_permanent)
    # Round trip through the wire form.
    wire = b"".join(
        b"%d%s%s%s\r\n" % (r.code, b"-" if i < len(r.lines) - 1 else b" ",
                           (r.enhanced + " ").encode() if r.enhanced else b"", t.encode())
        for i, t in enumerate(r.lines)
    )
    p = ReplyParser(max_line_length=1 << 20)
    p.feed(wire)
    again = p.next_reply()
    if again != r:
        C.fail("reply does not survive its wire form", (r, wire, again))
    if r.code == 334:
        try:
            ClientEngine.challenge(r)
        except RemoteProtocolError:
            pass


def TestOneInput(data: bytes) -> None:
    if not data:
        return
    stream = C.expand(data[1:])
    results = [run(chunks) for chunks in C.chunkings(stream, data[0], bytewise_limit=512)]
    if any(res != results[0] for res in results[1:]):
        C.fail("chunking changes the replies", results)
    for r in results[0][0]:
        check_reply(r)


if __name__ == "__main__":
    C.main(TestOneInput)
