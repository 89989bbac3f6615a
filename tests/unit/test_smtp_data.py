"""The DATA reader: only CRLF.CRLF ends a message (SMTP smuggling defence)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smtpgate.smtp import replies as R
from smtpgate.smtp.data import DataReader

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


