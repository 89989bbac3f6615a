"""The DATA reader: only CRLF.CRLF ends a message (SMTP smuggling defence)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smtpgate.smtp import replies as R
from smtpgate.smtp.data import MAX_HEADER_SECTION, MAX_HOPS, DataReader, DataStream, unstuff
from smtpgate.smtp.events import MessageAborted, MessageData

from .test_smtp_engine import authed, codes

SMUGGLE_ENDINGS = [
    b"\n.\n",
    b"\r.\r",
    b"\n.\r\n",
    b"\r\n.\n",
    b"\r.\r\n",
    b"\r\n.\r",
    b"\n.\r",
    b"\r.\n",
]


@pytest.mark.parametrize("fake_end", SMUGGLE_ENDINGS, ids=repr)
def test_rfc5321_s4_1_1_4_bare_endings_never_split_a_message(fake_end: bytes) -> None:
    d = authed()
    d.feed(b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n")
    smuggled = (
        b"Subject: a\r\n\r\nfirst" + fake_end + b"MAIL FROM:<ceo@example.org>\r\n"
        b"RCPT TO:<victim@example.net>\r\nDATA\r\nsmuggled\r\n.\r\n"
    )
    out = d.feed(smuggled)
    # One reply for one message: the smuggled commands were message content.
    assert codes(out) == [str(R.BARE_LINE_ENDING)]
    assert not d.messages
    assert d.engine.state.value == "greeted"


@pytest.mark.parametrize("fake_end", SMUGGLE_ENDINGS, ids=repr)
def test_normalize_mode_still_never_ends_on_bare_endings(fake_end: bytes) -> None:
    d = authed(normalize_bare_lf=True)
    d.feed(b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n")
    out = d.feed(b"first" + fake_end + b"MAIL FROM:<ceo@example.org>\r\n.\r\n")
    assert len(codes(out)) == 1
    if b"\r" in fake_end.replace(b"\r\n", b""):
        assert codes(out) == [str(R.BARE_LINE_ENDING)]  # bare CR is refused in both modes
    else:
        assert codes(out) == [str(R.MESSAGE_ACCEPTED)]
        assert b"MAIL FROM:<ceo@example.org>" in d.messages[0].data
        assert d.messages[0].data.count(b"\n") == d.messages[0].data.count(b"\r\n")


def test_message_may_end_right_after_data() -> None:
    d = authed()
    out = d.feed(b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n.\r\n")
    assert codes(out)[-1] == str(R.MESSAGE_ACCEPTED)
    assert d.messages[0].data == b""


def test_rfc5321_s4_5_2_dot_unstuffing_every_line() -> None:
    r = DataReader(10_000)
    result, left = r.feed(b"..a\r\n.b\r\n...\r\nx.\r\n.\r\nQUIT\r\n")
    assert result is not None and left == b"QUIT\r\n"
    from smtpgate.smtp.data import unstuff

    assert result.data is not None
    assert unstuff(result.data, normalize_lf=False) == b".a\r\nb\r\n..\r\nx.\r\n"


def test_terminator_split_across_reads() -> None:
    r = DataReader(10_000)
    for part in (b"abc\r", b"\n", b".", b"\r", b""):
        res, _ = r.feed(part)
        assert res is None
    res, _ = r.feed(b"\n")
    assert res is not None


def test_oversize_mode_does_not_fake_a_line_start() -> None:
    r = DataReader(1024)
    res, _ = r.feed(b"y" * 3000 + b"abc.")
    assert res is None
    res, _ = r.feed(b"\r\nstill message\r\n")
    assert res is None  # "abc.\r\n" is not the end: no CRLF before the dot
    res, _ = r.feed(b".\r\n")
    assert res is not None and res.too_big


@given(st.lists(st.binary(max_size=40), max_size=20))
def test_reader_never_ends_before_crlf_dot_crlf(parts: list[bytes]) -> None:
    """Invariant: the reader ends exactly at the first CRLF.CRLF of the virtual
    CRLF-prefixed stream, whatever the chunking."""
    stream = b"".join(parts) + b"\r\n.\r\n"
    expected_end = (b"\r\n" + stream).find(b"\r\n.\r\n")
    r = DataReader(1 << 20)
    consumed = 0
    for chunk in [*parts, b"\r\n.\r\n"]:
        res, left = r.feed(chunk)
        consumed += len(chunk)
        if res is not None:
            assert consumed - len(left) == expected_end + 3  # index in stream of end+5-2
            return
    raise AssertionError("terminator never found")


def test_bytewise_feeding_same_message() -> None:
    msg = b"Subject: x\r\n\r\n.dot\r\nline\r\n.\r\n"
    a, b = authed(), authed()
    pre = b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n"
    a.feed(pre + msg)
    b.feed(pre + msg, bytewise=True)
    assert a.messages[0].data == b.messages[0].data == b"Subject: x\r\n\r\ndot\r\nline\r\n"




# --- Streaming (issue 16): DataStream hands the message on in parts --------------

#: Bytes that exercise every rule: line ends, bare CR/LF, dots, the terminator.
_PIECES = st.sampled_from([b"\r", b"\n", b".", b"a", b"\r\n", b"\r\n.", b"\r\n.\r\n", b"\n.\n"])


def _batch(stream: bytes, max_size: int, normalize: bool) -> tuple[object, ...]:
    """What the whole-message reader says of ``stream``: the reference."""
    res, left = DataReader(max_size).feed(stream)
    assert res is not None
    if res.too_big or res.data is None:
        return ("too big", left)
    if res.bare_cr or (res.bare_lf and not normalize):
        return ("refused", res.bare_lf, res.bare_cr, left)
    return (unstuff(res.data, normalize_lf=normalize and res.bare_lf), left)


def _streamed(
    stream: bytes, cuts: list[int], max_size: int, normalize: bool
) -> tuple[object, ...]:
    s = DataStream(max_size, normalize_lf=normalize)
    out = b""
    bounds = [0, *sorted(c % (len(stream) + 1) for c in cuts), len(stream)]
    for a, b in itertools.pairwise(bounds):
        got, end, left = s.feed(stream[a:b])
        out += got
        if end is not None:
            rest = left + stream[b:]
            if end.too_big:
                return ("too big", rest)
            if end.bare_cr or (end.bare_lf and not normalize):
                return ("refused", end.bare_lf, end.bare_cr, rest)
            assert end.size == len(out)
            return (out, rest)
    raise AssertionError("terminator never found")


@given(
    st.lists(_PIECES, max_size=30),
    st.lists(st.integers(min_value=0, max_value=200), max_size=8),
    st.integers(min_value=0, max_value=40),
    st.booleans(),
)
def test_any_chunking_streams_the_same_message_as_the_whole_reader(
    pieces: list[bytes], cuts: list[int], max_size: int, normalize: bool
) -> None:
    """The same bytes, split anywhere: the same unstuffed message, the same verdict
    (too big, bare CR/LF) and the same bytes left over after the terminator."""
    stream = b"".join(pieces) + b"\r\n.\r\nQUIT\r\n"
    assert _streamed(stream, cuts, max_size, normalize) == _batch(stream, max_size, normalize)


@pytest.mark.parametrize("fake_end", SMUGGLE_ENDINGS, ids=repr)
def test_smuggled_ending_split_at_every_byte_is_still_content(fake_end: bytes) -> None:
    """The smuggling defence across chunk boundaries: the fake ending fed one byte
    at a time never ends the message."""
    d = authed(normalize_bare_lf=True)
    d.feed(b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n")
    out = d.feed(b"first" + fake_end + b"MAIL FROM:<ceo@example.org>\r\n.\r\n", bytewise=True)
    assert len(codes(out)) == 1


@given(st.lists(st.integers(min_value=0, max_value=120), max_size=6))
def test_header_section_is_the_same_however_the_message_is_split(cuts: list[int]) -> None:
    msg = b"From: alice@example.org\r\nSubject: x\r\n folded\r\n\r\nbody\r\n\r\nmore\r\n.\r\n"
    pre = b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n"
    d = authed()
    d.feed(pre)
    bounds = [0, *sorted(c % (len(msg) + 1) for c in cuts), len(msg)]
    for a, b in itertools.pairwise(bounds):
        d.feed(msg[a:b])
    [m] = d.messages
    assert m.header == b"From: alice@example.org\r\nSubject: x\r\n folded\r\n"
    assert m.data == msg[:-3] and m.size == len(m.data)


def test_message_without_header_fields_has_an_empty_header_section() -> None:
    d = authed()
    d.feed(b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n"
           b"\r\nbody only\r\n.\r\n")
    assert d.messages[0].header == b""


def test_header_section_over_its_limit_is_552_and_never_handed_over() -> None:
    d = authed(max_message_size=10 * MAX_HEADER_SECTION)
    d.feed(b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n")
    line = b"X-Padding: " + b"p" * 985 + b"\r\n"
    out = d.feed(line * (MAX_HEADER_SECTION // len(line) + 1) + b"From: a@b\r\n\r\nx\r\n.\r\n")
    assert codes(out) == [str(R.HEADER_TOO_BIG)]
    assert not d.messages and d.writing is None
    assert any(isinstance(e, MessageAborted) for e in d.events)
    assert codes(d.feed(b"NOOP\r\n")) == [str(R.NOOP_OK)]


def test_a_doomed_message_is_aborted_at_once_and_written_no_further() -> None:
    """Bare LF (refused by default): the I/O layer is told to drop the message as
    soon as it shows, and gets no more data; the reply still waits for the end."""
    d = authed()
    d.feed(b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n")
    out = d.feed(b"Subject: a\r\n\r\nbare\nLF\r\n" + b"z" * 100)
    assert out == b""
    kinds = [type(e) for e in d.events]
    assert MessageAborted in kinds
    after = kinds[kinds.index(MessageAborted) + 1 :]
    d.feed(b"more\r\n" * 10)
    assert MessageData not in after + [type(e) for e in d.events[len(kinds):]]
    assert codes(d.feed(b".\r\n")) == [str(R.BARE_LINE_ENDING)]


def test_rfc1870_s4_quoting_dots_do_not_count_toward_the_size_limit() -> None:
    """A message of exactly limits.max_message_size octets whose lines start with
    a dot is accepted: SIZE counts the message without dot-stuffing's quoting
    dots (RFC 1870 §4), so a client that declared SIZE at the limit is not
    refused after sending it (found with a 2 MB message of dot lines: 552)."""
    body = b"From: alice@example.org\r\n\r\n" + b".dot line\r\n" * 50
    stuffed = body.replace(b"\r\n.", b"\r\n..")
    pre = f"MAIL FROM:<alice@example.org> SIZE={len(body)}\r\nRCPT TO:<b@example.net>\r\n"
    d = authed(max_message_size=len(body))
    out = d.feed(pre.encode() + b"DATA\r\n" + stuffed + b".\r\n")
    assert codes(out)[-1] == str(R.MESSAGE_ACCEPTED)
    assert d.messages[0].data == body
    d = authed(max_message_size=len(body) - 1)
    out = d.feed(b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n"
                 + stuffed + b".\r\n")
    assert codes(out)[-1] == str(R.MESSAGE_TOO_BIG)
    assert not d.messages


@pytest.mark.parametrize(("limit", "too_big"), [(5, False), (4, True)])
def test_a_quoting_dot_at_the_very_start_is_not_counted_either(limit: int, too_big: bool) -> None:
    """``..ab`` CRLF is the 5-octet message ``.ab`` CRLF, for both readers."""
    res, _ = DataReader(limit).feed(b"..ab\r\n.\r\n")
    assert res is not None and res.too_big is too_big
    out, end, _ = DataStream(limit).feed(b"..ab\r\n.\r\n")
    assert end is not None and end.too_big is too_big
    assert out == (b"" if too_big else b".ab\r\n")


# --- NUL octets (docs/smtp.md "NUL octets") --------------------------------------------

NUL_ENVELOPE = b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n"


@pytest.mark.parametrize("bytewise", [False, True])
@pytest.mark.parametrize("message", [
    b"Subject: a\x00b\r\nFrom: alice@example.org\r\n\r\nbody\r\n",
    b"X-Tag:\x00\r\n\r\nbody\r\n",
    b"Subject: all header, no body\x00\r\n",  # no empty line: all of it is header
])
def test_rfc5322_s2_2_nul_in_the_header_section_is_554_and_never_handed_over(
    message: bytes, bytewise: bool
) -> None:
    """A NUL in a header field was queued and delivered: each reader of the field
    (a C filter, a mail reader) sees it end at the NUL, or not. Refused after the
    final dot; the message is dropped, the session goes on."""
    d = authed()
    d.feed(NUL_ENVELOPE)
    out = d.feed(message + b".\r\nNOOP\r\n", bytewise=bytewise)
    assert codes(out) == [str(R.NUL_IN_HEADER), str(R.NOOP_OK)]
    assert not d.messages and d.writing is None
    assert any(isinstance(e, MessageAborted) for e in d.events)


@pytest.mark.parametrize("bytewise", [False, True])
def test_nul_in_the_body_passes_unchanged(bytewise: bool) -> None:
    """The body is the sender's data: a NUL there is kept as it came (as Postfix
    does); only the header section is read by smtpgate and by filters."""
    body = b"Subject: a\r\n\r\nbin\x00ary\r\n\x00\r\n"
    d = authed()
    d.feed(NUL_ENVELOPE)
    out = d.feed(body + b".\r\n", bytewise=bytewise)
    assert codes(out) == [str(R.MESSAGE_ACCEPTED)]
    assert d.messages[0].data == body


# --- A mail loop: too many Received fields (docs/smtp.md) -----------------------------


def received(n: int) -> bytes:
    return b"".join(b"Received: from hop%d.example (hop%d.example [192.0.2.1])\r\n"
                    b"\tby mx.example; Fri, 4 Dec 2026 23:50:00 +0000\r\n" % (i, i)
                    for i in range(n))


@pytest.mark.parametrize("bytewise", [False, True])
def test_rfc5321_s6_3_a_message_with_over_100_received_fields_is_a_loop_554(
        bytewise: bool) -> None:
    """A mail loop through smtpgate (the MTA that submits to it, a relay that sends
    the mail back to that MTA) went round for ever, a Received field more and a
    copy each time: smtpgate counted no hops. Over MAX_HOPS it is refused for good
    after the final dot, as Postfix's hopcount_limit does (554 5.4.6), whatever the
    letter case; the session goes on, and 100 still pass."""
    d = authed()
    d.feed(NUL_ENVELOPE)
    message = received(MAX_HOPS).replace(b"Received:", b"RECEIVED :", 1) + received(1)
    out = d.feed(message + b"From: alice@example.org\r\n\r\nx\r\n.\r\nNOOP\r\n",
                 bytewise=bytewise)
    assert codes(out) == [str(R.TOO_MANY_HOPS), str(R.NOOP_OK)]
    assert str(R.TOO_MANY_HOPS).startswith("554 5.4.6 ")
    assert not d.messages and d.writing is None
    assert any(isinstance(e, MessageAborted) for e in d.events)
    out = d.feed(NUL_ENVELOPE + received(MAX_HOPS) + b"From: alice@example.org\r\n\r\n"
                 + b"Received: in the body, not counted\r\n" * 5 + b".\r\n")
    assert codes(out)[-1] == str(R.MESSAGE_ACCEPTED)


# --- A message that begins with white space (docs/smtp.md) --------------------------


@pytest.mark.parametrize("bytewise", [False, True])
@pytest.mark.parametrize("message", [
    b"\t(Authenticated sender: ceo@bank.example)\r\nFrom: alice@example.org\r\n\r\nx\r\n",
    b" x\r\nFrom: alice@example.org\r\n\r\nx\r\n",
    b"  disk usage report, no header at all\r\n",
])
def test_a_message_beginning_with_white_space_is_554_and_never_handed_over(
    message: bytes, bytewise: bool
) -> None:
    """Found by audit h24: a message whose first line began with SP or HTAB was
    queued, and that line, a folded continuation (RFC 5322 §2.2.3), joined the field
    prepended above it: smtpgate's Received header (``;<date>`` then ``(Authenticated
    sender: ceo@bank.example)``, read as the server's words), a Message-ID added,
    Return-Path, the next hop's Received. Refused after the final dot; the session
    goes on."""
    d = authed()
    d.feed(NUL_ENVELOPE)
    out = d.feed(message + b".\r\nNOOP\r\n", bytewise=bytewise)
    assert codes(out) == [str(R.FOLDED_FIRST_LINE), str(R.NOOP_OK)]
    assert not d.messages and d.writing is None
    assert any(isinstance(e, MessageAborted) for e in d.events)
    # White space later in the header section folds into the client's own field.
    out = d.feed(NUL_ENVELOPE + b"From: alice@example.org\r\n\tand more\r\n\r\n x\r\n.\r\n")
    assert codes(out)[-1] == str(R.MESSAGE_ACCEPTED)
