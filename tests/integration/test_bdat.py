"""BDAT (RFC 3030) against the real ``smtpgate serve``: a 20 MB message in several
chunks over STARTTLS lands byte-exact in the Maildir, a chunk carrying an
end-of-data and commands is message data only, and the framing edge cases get
the codes docs/smtp.md ("BDAT") lists, next to what Postfix answers to the same
session (the differences are recorded there)."""

from __future__ import annotations

import itertools
import smtplib
import ssl
from collections.abc import Iterator

import pytest

from smtpgate.smtp import replies as R
from tests.peers.postfix_dovecot import SCRAM_PASSWORD, SCRAM_USER, PostfixDovecot

from .conftest import PASSWORD, USER, Server, make_server

MB = 1_000_000


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = make_server(tmp_path_factory.mktemp("bdat") / "srv")
    server.add_user(USER, PASSWORD)
    server.start()
    yield server
    if server.proc is not None:
        server.stop()


def login(port: int, context: ssl.SSLContext, user: str, password: str) -> smtplib.SMTP:
    s = smtplib.SMTP("127.0.0.1", port, timeout=120)
    s.starttls(context=context)
    s.login(user, password)
    return s


def bdat(data: bytes, *, last: bool = True) -> bytes:
    return b"BDAT %d%s\r\n" % (len(data), b" LAST" if last else b"") + data


def exchange(s: smtplib.SMTP, wire: bytes, replies: int) -> list[int]:
    """Send ``wire`` in one write and read ``replies`` reply codes; 0 for a reply
    that did not come within 3 s."""
    s.send(wire)
    codes = []
    for _ in range(replies):
        try:
            codes.append(s.getreply()[0])
        except (TimeoutError, smtplib.SMTPServerDisconnected):
            codes.append(0)
            break
    return codes


def test_ehlo_offers_chunking_and_binarymime(srv: Server) -> None:
    s = login(srv.submission, srv.client_context(), USER, PASSWORD)
    assert s.has_extn("chunking") and s.has_extn("binarymime")
    s.quit()


def test_20mb_in_chunks_over_tls_lands_byte_exact_in_the_maildir(srv: Server) -> None:
    head = f"From: {USER}\r\nTo: bob@example.net\r\nSubject: bdat\r\n\r\n".encode()
    # Lines that DATA would have to stuff or that end DATA, a bare-dot line among them.
    block = (b".leading dot\r\n" + b"x" * 998 + b"\r\n.\r\n" + bytes(range(128, 256)) + b"\r\n") * 800
    body = head + block * (20 * MB // len(block))
    s = login(srv.submission, srv.client_context(), USER, PASSWORD)
    s.mail(USER, ["BODY=8BITMIME"])
    s.rcpt("bob@example.net")
    cuts = [0, 7 * MB + 3, 13 * MB + 1, 19 * MB, len(body)]  # uneven chunk sizes
    for a, b in itertools.pairwise(cuts):
        last = b == len(body)
        s.send(b"BDAT %d%s\r\n" % (b - a, b" LAST" if last else b""))
        s.send(body[a:b])
        code, text = s.getreply()
        assert code == 250
        assert text.startswith(b"2.0.0 OK queued as ") if last else text == b"2.0.0 Chunk received"
    queue_id = text.split()[-1]
    s.quit()
    (stored,) = srv.wait_for_mail(1, timeout=120)
    content = stored.read_bytes()
    assert content.endswith(body)
    received = content[: -len(body)]
    assert received.startswith(b"Return-Path: <" + USER.encode() + b">\r\nReceived: from ")
    assert received.count(b"\r\n\r\n") == 0
    assert b" id " + queue_id in received  # the queue id, as for DATA


def test_end_of_data_and_commands_inside_a_chunk_are_message_data(srv: Server) -> None:
    before = len(srv.delivered())
    smuggled = (f"From: {USER}\r\n\r\nhello\r\n.\r\nMAIL FROM:<{USER}>\r\n"
                "RCPT TO:<victim@example.net>\r\nDATA\r\nFrom: x\r\n\r\nsmuggled\r\n.\r\n").encode()
    s = login(srv.submission, srv.client_context(), USER, PASSWORD)
    codes = exchange(s, f"MAIL FROM:<{USER}>\r\nRCPT TO:<bob@example.net>\r\n".encode()
                     + bdat(smuggled) + b"NOOP\r\n", 4)
    assert codes == [250, 250, 250, 250]
    s.quit()
    files = srv.wait_for_mail(before + 1)
    assert len(files) == before + 1  # one message, not two
    assert any(f.read_bytes().endswith(smuggled) for f in files)


def test_chunks_pipelined_behind_a_refused_one_are_discarded_and_the_session_goes_on(
        srv: Server) -> None:
    """RFC 3030 §2: the chunks a pipelining client sent behind a refused one are
    read and discarded. They were each 503 Send MAIL first and an error, and the
    tenth closed the session: 421 Too many errors, a temporary failure, for a
    message refused for good (reproduced with 12 chunks behind a bare LF)."""
    before = len(srv.delivered())
    envelope = f"MAIL FROM:<{USER}>\r\nRCPT TO:<bob@example.net>\r\n".encode()
    behind = b"".join(bdat(b"line %d\r\n" % i, last=False) for i in range(11))
    s = login(srv.submission, srv.client_context(), USER, PASSWORD)
    codes = exchange(s, envelope + bdat(f"From: {USER}\r\n\r\na\nb\r\n".encode(), last=False)
                     + behind + bdat(b"end\r\n") + b"NOOP\r\n", 16)
    assert codes == [250, 250, 550, *[503] * 12, 250], codes
    good = exchange(s, envelope + bdat(f"From: {USER}\r\n\r\nfine\r\n".encode()), 3)
    assert good == [250, 250, 250]
    s.quit()
    assert len(srv.wait_for_mail(before + 1)) == before + 1


@pytest.mark.parametrize("size", [b"xyz", b"-1", b"99999999999999999999", b"+5", b"0x10",
                                  b"5 MORE", b""])
def test_an_unreadable_chunk_size_closes_before_the_chunk_is_read_as_commands(
    srv: Server, size: bytes
) -> None:
    """Without a size the chunk's end is unknown: a server that answered and went
    on would read the chunk's octets as commands (a second, smuggled message).
    smtpgate answers 501 and closes; nothing after the BDAT line is a command."""
    before = len(srv.delivered())
    smuggled = (f"MAIL FROM:<{USER}>\r\nRCPT TO:<victim@example.net>\r\nDATA\r\n"
                f"From: <{USER}>\r\n\r\nsmuggled\r\n.\r\nNOOP\r\n").encode()
    s = login(srv.submission, srv.client_context(), USER, PASSWORD)
    assert s.sock is not None
    s.sock.settimeout(3)
    codes = exchange(s, f"MAIL FROM:<{USER}>\r\nRCPT TO:<bob@example.net>\r\n".encode()
                     + b"BDAT " + size + b"\r\n" + smuggled, 8)
    assert codes == [250, 250, 501, 0], codes  # and then the connection is closed
    with pytest.raises((smtplib.SMTPServerDisconnected, OSError)):
        s.noop()
    s.close()
    assert len(srv.delivered()) == before  # neither message


def cases(user: str) -> list[tuple[str, bytes, int]]:
    """(name, wire after the login, replies to read): the edge cases of the issue."""
    u = user.encode()
    envelope = b"MAIL FROM:<" + u + b">\r\nRCPT TO:<bob@example.net>\r\n"
    head = b"From: <" + u + b">\r\n\r\n"
    return [
        ("bdat-without-mail", bdat(b"x\r\n") + b"NOOP\r\n", 2),
        ("bdat-without-rcpt", b"MAIL FROM:<" + u + b">\r\n" + bdat(b"x\r\n") + b"NOOP\r\n", 3),
        ("data-after-bdat", envelope + bdat(head, last=False) + b"DATA\r\n" + bdat(b"b\r\n"), 5),
        ("bare-lf-in-chunk", envelope + bdat(head + b"a\nb\r\n") + b"NOOP\r\n", 4),
        ("binarymime-with-data", b"MAIL FROM:<" + u + b"> BODY=BINARYMIME\r\n"
         b"RCPT TO:<bob@example.net>\r\nDATA\r\n", 3),
        ("rset-between-chunks", envelope + bdat(head, last=False) + b"RSET\r\n"
         + bdat(b"b\r\n") + b"NOOP\r\n", 6),
        ("size-not-a-number", envelope + b"BDAT x\r\n", 3),
        # Declared over every limit, octets not sent: is a reply due before them?
        ("chunk-declared-too-big", envelope + b"BDAT 900000000 LAST\r\nNOOP\r\n", 3),
        # RFC 3030 §2: the chunks pipelined behind a refused one are discarded.
        ("chunks-behind-a-refused-one", bdat(b"x\r\n", last=False) + bdat(b"y\r\n", last=False)
         + bdat(b"z\r\n") + b"NOOP\r\n", 4),
    ]


#: What each server answered (smtpgate: this project's replies; Postfix 3.x on
#: the reference, docs/smtp.md "BDAT").
SMTPGATE = {
    "bdat-without-mail": [503, 250],
    "bdat-without-rcpt": [250, 503, 250],
    "data-after-bdat": [250, 250, 250, 503, 250],
    "bare-lf-in-chunk": [250, 250, 550, 250],
    "binarymime-with-data": [250, 250, 503],
    "rset-between-chunks": [250, 250, 250, 250, 503, 250],
    "size-not-a-number": [250, 250, 501],
    "chunk-declared-too-big": [250, 250, 0],  # the octets are awaited, then 552
    "chunks-behind-a-refused-one": [503, 503, 503, 250],  # Send MAIL first, 2 discarded
}


def run_cases(port: int, context: ssl.SSLContext, user: str, password: str) -> dict[str, list[int]]:
    seen: dict[str, list[int]] = {}
    for name, wire, n in cases(user):
        s = login(port, context, user, password)
        assert s.sock is not None
        s.sock.settimeout(3)
        seen[name] = exchange(s, wire, n)
        s.close()
    return seen


def test_bdat_edge_cases_get_the_documented_codes(srv: Server) -> None:
    assert run_cases(srv.submission, srv.client_context(), USER, PASSWORD) == SMTPGATE
    assert str(R.BDAT_SYNTAX).startswith("501 ")


def test_bdat_edge_cases_against_postfix(mta: PostfixDovecot) -> None:
    context = ssl.create_default_context(cafile=str(mta.ca))
    context.check_hostname = False
    seen = run_cases(mta.ports["good"], context, SCRAM_USER, SCRAM_PASSWORD)
    assert seen == POSTFIX


#: Postfix 3.7 on the reference (Debian bookworm), same sessions; the five
#: differences are explained in docs/smtp.md ("BDAT", "Compared with Postfix").
POSTFIX: dict[str, list[int]] = {
    **SMTPGATE,
    "bdat-without-rcpt": [250, 554, 250],  # 554 5.5.1 no valid recipients
    "bare-lf-in-chunk": [250, 250, 250, 250],  # accepted
    "binarymime-with-data": [555, 503, 503],  # BINARYMIME not supported
    "size-not-a-number": [250, 250, 521],  # 521, then the connection closes
    "chunks-behind-a-refused-one": [503, 551, 551, 250],  # 551 5.0.0 Discarded
}
