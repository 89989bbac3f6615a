"""BDAT (RFC 3030 CHUNKING) and BINARYMIME in the engine: framing by length only,
the same content rules and limits as DATA, and refused chunks dropped, never run."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smtpgate.smtp import replies as R
from smtpgate.smtp.bdat import BdatSyntaxError, ChunkStream, parse_bdat
from smtpgate.smtp.data import MAX_HOPS
from smtpgate.smtp.engine import JUNK_COMMANDS
from smtpgate.smtp.events import MessageAborted, MessageData, MessageReceived, MessageStart
from smtpgate.smtp.states import State

from .test_smtp_engine import authed, codes

ENVELOPE = b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.net>\r\n"
OK2 = [str(R.SENDER_OK), str(R.RECIPIENT_OK)]


def bdat(data: bytes, *, last: bool = True) -> bytes:
    return b"BDAT %d%s\r\n" % (len(data), b" LAST" if last else b"") + data


@pytest.mark.parametrize("bytewise", [False, True])
def test_rfc3030_chunks_make_one_message_each_answered(bytewise: bool) -> None:
    d = authed()
    out = d.feed(ENVELOPE + bdat(b"From: alice@example.org\r\n", last=False)
                 + bdat(b"\r\nbody\r\n", last=False) + bdat(b"", last=True), bytewise=bytewise)
    assert codes(out) == [*OK2, str(R.CHUNK_RECEIVED), str(R.CHUNK_RECEIVED),
                          str(R.MESSAGE_ACCEPTED)]
    assert d.messages[0].data == b"From: alice@example.org\r\n\r\nbody\r\n"
    assert d.messages[0].header == b"From: alice@example.org\r\n"
    assert d.engine.state is State.GREETED


def test_ehlo_advertises_chunking_and_binarymime() -> None:
    d = authed()
    out = d.feed(b"EHLO client.test\r\n").decode()
    assert "250-CHUNKING\r\n" in out and "250-BINARYMIME\r\n" in out


def test_smuggling_end_of_data_and_commands_inside_a_chunk_are_message_data() -> None:
    inner = b"Subject: x\r\n\r\nhi\r\n.\r\nMAIL FROM:<evil@example.com>\r\nRCPT TO:<v@example.net>\r\n"
    d = authed()
    out = d.feed(ENVELOPE + bdat(inner) + b"NOOP\r\n", bytewise=True)
    assert codes(out) == [*OK2, str(R.MESSAGE_ACCEPTED), str(R.NOOP_OK)]
    assert len(d.messages) == 1 and d.messages[0].data == inner


def test_pipelined_command_right_after_the_chunk_octets_is_a_command() -> None:
    d = authed()
    out = d.feed(ENVELOPE + bdat(b"x\r\n", last=False) + b"RSET\r\n")
    assert codes(out) == [*OK2, str(R.CHUNK_RECEIVED), str(R.RESET_OK)]
    assert isinstance(d.events[-1], MessageAborted)  # the message written so far goes
    assert d.messages == [] and d.engine.state is State.GREETED


@pytest.mark.parametrize(("before", "reply"), [
    (b"", R.NEED_MAIL),
    (b"MAIL FROM:<alice@example.org>\r\n", R.NEED_RCPT),
])
def test_bdat_out_of_sequence_is_503_and_its_octets_are_dropped(before: bytes, reply: R.Reply) -> None:
    d = authed()
    out = d.feed(before + bdat(b"RCPT TO:<x@example.net>\r\nNOOP\r\n") + b"NOOP\r\n", bytewise=True)
    assert codes(out)[-2:] == [str(reply), str(R.NOOP_OK)]  # one NOOP: the real one
    assert not any(isinstance(e, MessageStart) for e in d.events)


def test_bdat_before_auth_is_refused_and_octets_dropped() -> None:
    from .engine_driver import Driver
    d = Driver.new(tls=True)
    out = d.feed(b"EHLO c.test\r\n" + bdat(b"QUIT\r\n") + b"NOOP\r\n")
    assert codes(out)[-2:] == [str(R.AUTH_REQUIRED), str(R.NOOP_OK)]
    assert not d.closed


#: A message in 13 chunks, pipelined in one write as RFC 3030 §4.2 shows: what
#: follows a refused first chunk is 11 chunks and the LAST.
CHUNKS_BEHIND = b"".join(bdat(b"line %d\r\n" % i, last=False) for i in range(11)) + bdat(b"end\r\n")


@pytest.mark.parametrize(("first", "refusal"), [
    (b"From: alice@example.org\r\n\r\na\nb\r\n", R.BARE_LINE_ENDING),
    (b"From: alice@example.org\r\nX: a\x00b\r\n\r\n", R.NUL_IN_HEADER),
    (b"From: alice@example.org\r\n\r\n" + b"x" * 200, R.MESSAGE_TOO_BIG),
])
def test_chunks_pipelined_behind_a_refused_one_are_discarded_not_errors(
        first: bytes, refusal: R.Reply) -> None:
    # RFC 3030 §2: a server offering PIPELINING "MUST be prepared to accept and
    # discard additional BDAT chunks already in the pipeline after the failed BDAT".
    # Each was 503 Send MAIL first and an error: the tenth closed the session with
    # 421 Too many errors, a temporary failure, as the answer to a message refused
    # for good (Postfix answers them 551 5.0.0 Discarded and goes on).
    d = authed(max_message_size=100)
    out = d.feed(ENVELOPE + bdat(first, last=False) + CHUNKS_BEHIND + b"NOOP\r\n")
    assert codes(out) == [*OK2, str(refusal), *[str(R.CHUNK_DISCARDED)] * 12, str(R.NOOP_OK)]
    assert not d.closed and d.engine.errors == 0 and d.messages == []
    out = d.feed(ENVELOPE + bdat(b"From: alice@example.org\r\n\r\nok\r\n"))
    assert codes(out) == [*OK2, str(R.MESSAGE_ACCEPTED)]


def test_a_run_of_discarded_chunks_ends_at_its_last_or_at_another_command() -> None:
    # A BDAT refused outside a transaction (no RCPT: its recipients were refused)
    # starts the run as a refused chunk does, as in Postfix.
    d = authed()
    refused = b"MAIL FROM:<alice@example.org>\r\n" + bdat(b"x\r\n", last=False)
    out = d.feed(refused + bdat(b"y\r\n") + bdat(b"z\r\n", last=False) + b"NOOP\r\n")
    # The LAST ends the run: a BDAT after it is the client's error again.
    assert codes(out) == [str(R.SENDER_OK), str(R.NEED_RCPT), str(R.CHUNK_DISCARDED),
                          str(R.NEED_RCPT), str(R.NOOP_OK)]
    # So does any other command: the client has read the refusal.
    out = d.feed(bdat(b"x\r\n", last=False) + b"NOOP\r\n" + bdat(b"y\r\n"))
    assert codes(out) == [str(R.NEED_RCPT), str(R.NOOP_OK), str(R.NEED_RCPT)]
    assert d.engine.errors == 4 and d.messages == []


def test_discarded_chunks_move_nothing_so_an_endless_run_is_cut_off() -> None:
    # Each counts as a NOOP does: past JUNK_COMMANDS, as an error.
    d = authed()
    free = JUNK_COMMANDS - d.engine._junk  # what the EHLO left
    out = d.feed(ENVELOPE + bdat(b"a\nb\r\n", last=False) + bdat(b"x", last=False) * 200)
    assert codes(out).count(str(R.CHUNK_DISCARDED)) == free + d.engine.settings.max_errors
    assert codes(out)[-1] == str(R.TOO_MANY_ERRORS) and d.closed


def test_before_a_login_chunks_stay_errors() -> None:
    from .engine_driver import Driver
    d = Driver.new(tls=True)
    out = d.feed(b"EHLO c.test\r\n" + bdat(b"x\r\n", last=False) * 12)
    assert codes(out)[1:] == [str(R.AUTH_REQUIRED)] * 10 + [str(R.TOO_MANY_ERRORS)]
    assert d.closed


@pytest.mark.parametrize("arg", [b"", b"abc", b"-1", b"10 MORE", b"1 LAST x", b"1" * 19, b"\xc2\xb2"])
def test_bdat_without_a_readable_size_is_501_and_closes(arg: bytes) -> None:
    d = authed()
    out = d.feed(ENVELOPE + b"BDAT " + arg + b"\r\nNOOP\r\n")
    assert codes(out)[-1] == str(R.BDAT_SYNTAX)
    assert d.closed


def test_data_after_bdat_is_503_and_binarymime_with_data_is_503() -> None:
    d = authed()
    out = d.feed(ENVELOPE + bdat(b"a\r\n", last=False) + b"DATA\r\n" + bdat(b"b\r\n"))
    assert codes(out) == [*OK2, str(R.CHUNK_RECEIVED), str(R.DATA_AFTER_BDAT),
                          str(R.MESSAGE_ACCEPTED)]
    assert d.messages[0].data == b"a\r\nb\r\n"
    out = d.feed(b"MAIL FROM:<alice@example.org> BODY=BINARYMIME\r\nRCPT TO:<b@example.net>\r\n"
                 b"DATA\r\n" + bdat(b"\r\n\xff\x00\r\n"))  # binary body, no header field
    assert codes(out) == [*OK2, str(R.BINARYMIME_NEEDS_BDAT), str(R.MESSAGE_ACCEPTED)]
    assert d.messages[1].data == b"\r\n\xff\x00\r\n" and d.messages[1].body_8bit


@pytest.mark.parametrize("body", ["7BIT", "8BITMIME", "BINARYMIME", "binarymime"])
def test_mail_accepts_body_values(body: str) -> None:
    d = authed()
    out = d.feed(f"MAIL FROM:<alice@example.org> BODY={body}\r\n".encode())
    assert codes(out) == [str(R.SENDER_OK)]


def test_size_limit_across_chunks_is_552_and_the_rest_of_the_chunk_is_drained() -> None:
    d = authed(max_message_size=100)
    out = d.feed(ENVELOPE + bdat(b"a" * 60, last=False) + bdat(b"b" * 50 + b"\r\nQUIT\r\n", last=False)
                 + bdat(b"c", last=True) + b"NOOP\r\n", bytewise=True)
    assert codes(out) == [*OK2, str(R.CHUNK_RECEIVED), str(R.MESSAGE_TOO_BIG),
                          str(R.CHUNK_DISCARDED), str(R.NOOP_OK)]
    assert any(isinstance(e, MessageAborted) for e in d.events)
    assert d.messages == [] and not d.closed


def test_declared_chunk_size_over_the_limit_is_552_after_its_octets() -> None:
    d = authed(max_message_size=100)
    out = d.feed(ENVELOPE + bdat(b"z" * 500) + b"NOOP\r\n")
    assert codes(out) == [*OK2, str(R.MESSAGE_TOO_BIG), str(R.NOOP_OK)]


def test_header_section_over_256_kib_is_552_5_3_4() -> None:
    d = authed()
    header = b"X-Long: " + b"h" * 70 + b"\r\n"
    out = d.feed(ENVELOPE + bdat(header * 4000, last=False) + bdat(b"\r\nbody\r\n"))
    assert codes(out)[-2:] == [str(R.HEADER_TOO_BIG), str(R.CHUNK_DISCARDED)]
    assert d.messages == []


@pytest.mark.parametrize("content", [b"a\nb\r\n", b"a\rb\r\n", b"a\r\n\r", b"x\r"])
def test_bare_cr_or_lf_in_bdat_is_refused_as_in_data(content: bytes) -> None:
    d = authed()
    out = d.feed(ENVELOPE + bdat(content[:2], last=False) + bdat(content[2:]) + b"NOOP\r\n")
    assert str(R.BARE_LINE_ENDING) in codes(out)
    assert codes(out)[-1] == str(R.NOOP_OK) and d.messages == []


def test_bare_lf_normalized_with_the_leniency() -> None:
    d = authed(normalize_bare_lf=True)
    d.feed(ENVELOPE + bdat(b"a\n", last=False) + bdat(b"\nb\r", last=False) + bdat(b"\n"))
    assert d.messages[0].data == b"a\r\n\r\nb\r\n"


def test_cr_at_a_chunk_end_pairs_with_lf_of_the_next_chunk() -> None:
    d = authed()
    d.feed(ENVELOPE + bdat(b"a\r", last=False) + bdat(b"\nb\r\n"))
    assert d.messages[0].data == b"a\r\nb\r\n"


def test_rset_between_chunks_drops_the_message_and_bdat_then_needs_mail() -> None:
    d = authed()
    out = d.feed(ENVELOPE + bdat(b"a\r\n", last=False) + b"RSET\r\n" + bdat(b"b\r\n"))
    assert codes(out)[-2:] == [str(R.RESET_OK), str(R.NEED_MAIL)]
    assert d.messages == []


@pytest.mark.parametrize("arg", ["10", "10 LAST", "0 last", "0"])
def test_parse_bdat(arg: str) -> None:
    size, last = parse_bdat(arg)
    assert size == int(arg.split()[0]) and last == ("LAST" in arg.upper())


@pytest.mark.parametrize("arg", [b"26 ", b"26  LAST", b" 26 LAST ", b"26 LAST "])
def test_bdat_with_extra_spaces_is_read_not_a_closed_session(arg: bytes) -> None:
    # Every other command has its trailing spaces stripped; a BDAT that had them
    # got 501 and the session closed, though its size was plain to read.
    d = authed()
    content = b"From: a@example.org\r\n\r\nx\r\n"
    assert len(content) == 26
    out = d.feed(ENVELOPE + b"BDAT " + arg + b"\r\n" + content
                 + (b"" if b"LAST" in arg else b"BDAT 0 LAST\r\n"))
    expected = [] if b"LAST" in arg else [str(R.CHUNK_RECEIVED)]
    assert codes(out) == [*OK2, *expected, str(R.MESSAGE_ACCEPTED)]
    assert not d.closed and len(d.messages) == 1


def test_parse_bdat_refuses_a_sign() -> None:
    with pytest.raises(BdatSyntaxError):
        parse_bdat("+5")


SESSION = (ENVELOPE + bdat(b"From: a@example.org\r\n\r\n", last=False)
           + bdat(b"x\r\n.\r\nQUIT\r\n", last=False) + bdat(b"tail\r\n")
           + b"MAIL FROM:<alice@example.org>\r\n" + bdat(b"no rcpt\r\n")
           + b"RCPT TO:<c@example.net>\r\n" + bdat(b"y" * 300, last=False) + bdat(b"\r\n")
           + b"NOOP\r\n")


def _run(cuts: list[int]) -> tuple[bytes, list[object]]:
    d = authed(max_message_size=200)
    out, prev = b"", 0
    for cut in [*sorted(cuts), len(SESSION)]:
        out += d.feed(SESSION[prev:cut])
        prev = cut
    events: list[object] = []
    for e in d.events:
        if isinstance(e, MessageAborted):
            while isinstance(events[-1], MessageData):  # written, then discarded: moot
                events.pop()
        if isinstance(e, MessageData) and events and isinstance(events[-1], MessageData):
            events[-1] = MessageData(events[-1].data + e.data)  # split data is the same data
        else:
            events.append(e)
    return out, events


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(SESSION)), max_size=12))
def test_any_chunking_of_a_bdat_session_gives_the_same_replies_and_events(cuts: list[int]) -> None:
    assert _run(cuts) == _run([])


def test_the_reference_session_has_the_expected_outcome() -> None:
    out, events = _run([])
    received = [e for e in events if isinstance(e, MessageReceived)]
    assert len(received) == 1 and received[0].size == len(b"From: a@example.org\r\n\r\nx\r\n.\r\nQUIT\r\ntail\r\n")
    assert codes(out)[-11:] == [
        *OK2, str(R.CHUNK_RECEIVED), str(R.CHUNK_RECEIVED), str(R.MESSAGE_ACCEPTED),
        str(R.SENDER_OK), str(R.NEED_RCPT), str(R.RECIPIENT_OK), str(R.MESSAGE_TOO_BIG),
        str(R.CHUNK_DISCARDED), str(R.NOOP_OK)]


@given(st.binary(max_size=300), st.lists(st.integers(min_value=0, max_value=300), max_size=6))
def test_chunk_stream_verdict_does_not_depend_on_the_split(data: bytes, cuts: list[int]) -> None:
    def run(parts: list[bytes]) -> tuple[bytes | None, object]:
        s = ChunkStream(1000)
        out = b"".join(s.feed(p) for p in parts)
        end = s.end()
        if end.bare_cr or end.bare_lf:
            # Refused: what was passed on before the bare octet showed (and so `size`)
            # depends on where the chunks end, and nothing of it is kept.
            return None, (end.too_big, end.bare_lf, end.bare_cr, end.raw_size)
        return out, end
    bounds = [0, *sorted(c for c in cuts if c <= len(data)), len(data)]
    assert run([data[a:b] for a, b in itertools.pairwise(bounds)]) == run([data])


def test_starttls_auth_and_mail_between_chunks_are_503_and_the_message_goes_on() -> None:
    # Exim's 2026 BDAT use-after-free came from STARTTLS x CHUNKING: never mixed here.
    d = authed()
    out = d.feed(ENVELOPE + bdat(b"a\r\n", last=False) + b"STARTTLS\r\nAUTH PLAIN\r\n"
                 b"MAIL FROM:<alice@example.org>\r\n" + bdat(b"b\r\n"))
    assert codes(out) == [*OK2, str(R.CHUNK_RECEIVED), str(R.BAD_SEQUENCE),
                          str(R.AUTH_IN_TRANSACTION), str(R.NESTED_MAIL), str(R.MESSAGE_ACCEPTED)]
    assert d.messages[0].data == b"a\r\nb\r\n" and not d.starttls_pending


def test_octets_of_a_chunk_are_data_for_the_io_layer_timeouts() -> None:
    d = authed()
    d.feed(ENVELOPE + b"BDAT 10\r\nabc")
    assert d.engine.in_data and not d.engine.idle  # the data deadlines apply
    d.feed(b"defghij")
    assert not d.engine.in_data and not d.engine.idle  # between chunks: a command
    d.feed(b"RSET\r\nBDAT 5\r\nab")  # refused (no MAIL): its octets are still data
    assert d.engine.in_data
    d.feed(b"cde")
    assert not d.engine.in_data and d.engine.idle


def test_shutdown_between_chunks_waits_for_the_last_chunk() -> None:
    d = authed()
    d.feed(ENVELOPE + bdat(b"a\r\n", last=False))
    d.engine.shutdown()
    assert not d.closed
    out = d.feed(bdat(b"b\r\n"))
    assert codes(out)[0] == str(R.MESSAGE_ACCEPTED) and d.engine.closed


def test_binarymime_is_marked_on_the_message_start() -> None:
    d = authed()
    d.feed(b"MAIL FROM:<alice@example.org> BODY=BINARYMIME\r\nRCPT TO:<b@example.net>\r\n"
           + bdat(b"\xff\x00\r\n"))
    starts = [e for e in d.events if isinstance(e, MessageStart)]
    assert len(starts) == 1 and starts[0].body_binary and starts[0].body_8bit
    d.feed(ENVELOPE + bdat(b"plain\r\n"))
    starts = [e for e in d.events if isinstance(e, MessageStart)]
    assert not starts[-1].body_binary


def test_where_binarymime_is_not_offered_it_is_refused_and_chunking_stays() -> None:
    # delivery.mode 'relay' or 'lmtp' (server/app.py): the next hop may lack it.
    d = authed(binarymime=False)
    out = d.feed(b"EHLO client.test\r\n").decode()
    assert "250-CHUNKING\r\n" in out and "BINARYMIME" not in out
    out = d.feed(b"MAIL FROM:<alice@example.org> BODY=BINARYMIME\r\nRSET\r\n"
                 b"MAIL FROM:<alice@example.org> BODY=8BITMIME\r\nRCPT TO:<b@example.net>\r\n"
                 + bdat(b"caf\xc3\xa9\r\n"))
    assert codes(out) == [str(R.BINARYMIME_NOT_OFFERED), str(R.RESET_OK), *OK2,
                          str(R.MESSAGE_ACCEPTED)]
    assert str(R.BINARYMIME_NOT_OFFERED).startswith("555 5.5.4")
    assert len(d.messages) == 1 and d.messages[0].body_8bit


@pytest.mark.parametrize("body", ["", " BODY=BINARYMIME"])
def test_nul_in_the_header_section_is_refused_as_in_data(body: str) -> None:
    """BINARYMIME lets the body carry any octet (RFC 3030 §3), not the header."""
    d = authed(binarymime=True)
    envelope = f"MAIL FROM:<alice@example.org>{body}\r\nRCPT TO:<b@example.net>\r\n".encode()
    out = d.feed(envelope + bdat(b"Subject: a\x00", last=False) + bdat(b"\r\n\r\nx\r\n")
                 + b"NOOP\r\n")
    assert codes(out)[-2:] == [str(R.NUL_IN_HEADER), str(R.NOOP_OK)]
    assert d.messages == []
    out = d.feed(envelope + bdat(b"Subject: a\r\n\r\n\x00\x01\x02") + b"NOOP\r\n")
    assert codes(out)[-2:] == [str(R.MESSAGE_ACCEPTED), str(R.NOOP_OK)]
    # BINARYMIME is kept as sent; other content gets the CRLF it lacked.
    tail = b"" if body else b"\r\n"
    assert d.messages[0].data == b"Subject: a\r\n\r\n\x00\x01\x02" + tail


def test_a_mail_loop_is_refused_as_in_data() -> None:
    """RFC 5321 §6.3: over MAX_HOPS Received fields, the header section split across
    chunks, is 554 5.4.6 after the LAST chunk; nothing is stored."""
    d = authed()
    envelope = b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<b@example.net>\r\n"
    fields = b"Received: from a.example by b.example; Fri, 4 Dec 2026 23:50:00 +0000\r\n"
    out = d.feed(envelope + bdat(fields * 60, last=False)
                 + bdat(fields * (MAX_HOPS - 59) + b"From: alice@example.org\r\n\r\nx\r\n")
                 + b"NOOP\r\n")
    assert codes(out)[-2:] == [str(R.TOO_MANY_HOPS), str(R.NOOP_OK)]
    assert d.messages == []


def test_a_message_beginning_with_white_space_is_refused_as_in_data() -> None:
    """Audit h24: its first line would fold into the Received header above it. Known
    from the first octet, so refused after the chunk that holds it, as a bare LF
    is: the transaction ends, the chunk pipelined behind it is 503 and dropped."""
    d = authed()
    envelope = b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<b@example.net>\r\n"
    out = d.feed(envelope + bdat(b"\t", last=False)
                 + bdat(b"x\r\nFrom: a@b.example\r\n\r\nx\r\n") + b"NOOP\r\n")
    assert codes(out)[-3:] == [str(R.FOLDED_FIRST_LINE), str(R.CHUNK_DISCARDED),
                               str(R.NOOP_OK)]
    assert d.messages == []


@pytest.mark.parametrize(("chunks", "stored"), [
    ([b"Subject: x\r\n\r\nS"], b"Subject: x\r\n\r\nS\r\n"),
    ([b"x\r\n", b"S"], b"x\r\nS\r\n"),
    ([b"Subject: x"], b"Subject: x\r\n"),  # all header, no line end
    ([b"x\r\n.\r\nMAIL F", b"S"], b"x\r\n.\r\nMAIL FS\r\n"),  # found by the fuzzer
    ([b"a\r\n", b""], b"a\r\n"),  # ends in CRLF already: nothing added
])
def test_a_message_whose_last_chunk_lacks_crlf_gets_one(chunks: list[bytes],
                                                       stored: bytes) -> None:
    # The engine fuzzer's invariant (every message ends in CRLF, as DATA's must)
    # failed: BDAT content ending "...MAIL FS" was stored so, and a Maildir file or
    # a filter then read a last line without its end. Postfix's cleanup adds it.
    d = authed()
    *first, last = chunks
    out = d.feed(ENVELOPE + b"".join(bdat(c, last=False) for c in first) + bdat(last))
    assert codes(out)[-1] == str(R.MESSAGE_ACCEPTED)
    (message,) = d.messages
    assert message.data == stored
    assert message.size == len(stored)


def test_binarymime_content_is_kept_as_sent_without_a_crlf_added() -> None:
    d = authed(binarymime=True)
    d.feed(b"MAIL FROM:<alice@example.org> BODY=BINARYMIME\r\nRCPT TO:<b@example.net>\r\n"
           + bdat(b"Subject: a\r\n\r\n\x89PNG"))
    assert d.messages[0].data == b"Subject: a\r\n\r\n\x89PNG"
