"""``smtp.add_missing_headers``: a message without ``Date`` or ``Message-ID`` gets
them at the top of its header section (RFC 6409 §8.2, §8.3), added before the
spool file's first write; a message that has them is stored as it came.

The engine names what is missing once the header section ends (sans-IO); the
session's decisions (`server/decisions.py`) and the intake add the fields with
the Received header's clock reading and the queue id. These tests drive the real
engine, decisions, intake and spool, and read the message back from the spool
(which checks its size and checksum).
"""

from __future__ import annotations

import email.utils
import logging
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from smtpgate.auth.decoy import SECRET_BYTES
from smtpgate.config import parse_config
from smtpgate.queue.envelope import Envelope
from smtpgate.queue.incoming import FLUSH_AT
from smtpgate.queue.intake import Intake
from smtpgate.queue.spool import Spool
from smtpgate.server.app import engine_settings
from smtpgate.server.decisions import Decisions, Peer, Pending
from smtpgate.smtp.data import DATE, MAX_HEADER_SECTION, MESSAGE_ID, HeaderSection
from smtpgate.smtp.engine import ServerEngine
from smtpgate.smtp.events import (
    NEED_DATA,
    PAUSED,
    MailFrom,
    MessageData,
    MessageReceived,
    MessageStart,
    RcptTo,
)
from smtpgate.tls.certs import write_self_signed

from .engine_driver import TLS, Driver, settings

USER = "alice@example.org"
ENVELOPE = b"EHLO client.test\r\nMAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.net>\r\n"
BARE = b"From: alice@example.org\r\nTo: bob@example.net\r\nSubject: scan\r\n\r\nhello\r\n"
BOTH = ("Date", "Message-ID")


def data_command(message: bytes) -> bytes:
    """DATA with ``message`` dot-stuffed (every message here ends in CRLF)."""
    return b"DATA\r\n" + message.replace(b"\r\n.", b"\r\n..") + b".\r\n"


def bdat(data: bytes, *, last: bool = True) -> bytes:
    return b"BDAT %d%s\r\n" % (len(data), b" LAST" if last else b"") + data


# ---------------------------------------------------------------- the engine


@pytest.mark.parametrize(("header", "missing"), [
    (b"From: a@example.org\r\n", BOTH),
    (b"", BOTH),  # no header fields at all
    (b"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-ID: <a@b>\r\n", ()),
    (b"DATE: x\r\nmessage-id: <a@b>\r\n", ()),  # any letter case
    (b"date :x\r\nMESSAGE-ID\t: <a@b>\r\n", ()),  # RFC 5322 §4.5: WSP before the colon
    (b"Message-Id: <a@b>\r\n", ("Date",)),
    (b"dAtE: x\r\n", ("Message-ID",)),
    # Other fields and folded lines are not the fields themselves.
    (b"Resent-Date: x\r\nX-Message-ID: <a@b>\r\nSubject: a\r\n Date: b\r\n\tMessage-ID: c\r\n",
     BOTH),
    (b"Subject: Date: soon\r\nIn-Reply-To: <x@y>\r\n", BOTH),
])
def test_the_header_section_names_the_fields_it_lacks(
        header: bytes, missing: tuple[str, ...]) -> None:
    section = HeaderSection()
    assert section.feed(header + b"\r\nbody\r\n") is True and section.done
    assert section.missing() == missing
    assert (DATE, MESSAGE_ID) == BOTH


def test_the_header_section_says_once_when_it_ends() -> None:
    section = HeaderSection()
    ends = [section.feed(bytes([b])) for b in b"Subject: a\r\n\r\nbody\r\n\r\n"]
    assert ends.count(True) == 1 and ends.index(True) == len(b"Subject: a\r\n\r")


def logged_in(**kw: object) -> Driver:
    d = Driver.new(tls=True, **kw)
    d.engine.identity = USER  # logged in (AUTH is tested elsewhere)
    return d


@pytest.mark.parametrize("bytewise", [False, True])
def test_the_part_that_ends_the_header_section_names_what_it_lacks(bytewise: bool) -> None:
    d = logged_in(note_missing_fields=True)
    d.feed(ENVELOPE + data_command(BARE), bytewise=bytewise)
    named = [e.missing for e in d.events if isinstance(e, MessageData) and e.missing]
    assert named == [BOTH]
    assert d.messages[0].data == BARE and d.messages[0].event.missing == ()


@pytest.mark.parametrize("bytewise", [False, True])
def test_a_message_with_both_fields_in_any_letter_case_names_nothing(bytewise: bool) -> None:
    message = b"message-ID: <x@example.org>\r\nDATE: Mon, 1 Jan 2024 00:00:00 +0000\r\n" + BARE
    d = logged_in(note_missing_fields=True)
    d.feed(ENVELOPE + data_command(message), bytewise=bytewise)
    assert not any(isinstance(e, (MessageData, MessageReceived)) and e.missing for e in d.events)
    assert d.messages[0].data == message


def test_bdat_names_what_the_header_section_lacks_in_the_chunk_that_ends_it() -> None:
    d = logged_in(note_missing_fields=True)
    d.feed(ENVELOPE + bdat(b"Subject: a\r\nMessage-ID: <x@example.org>\r\n", last=False)
           + bdat(b"\r\nbody\r\n", last=False) + bdat(b"more\r\n"))
    data = [e for e in d.events if isinstance(e, MessageData)]
    assert [e.missing for e in data] == [(), ("Date",), ()]
    assert data[1].data == b"\r\nbody\r\n"


def test_a_message_that_is_all_header_names_what_it_lacks_at_its_end() -> None:
    d = logged_in(note_missing_fields=True)
    d.feed(ENVELOPE + data_command(b"Subject: no body\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n"))
    assert not any(isinstance(e, MessageData) and e.missing for e in d.events)
    assert d.messages[0].event.missing == ("Message-ID",)


def test_off_the_engine_names_nothing() -> None:
    d = logged_in()  # EngineSettings' default; the config's is on
    d.feed(ENVELOPE + data_command(BARE) + b"MAIL FROM:<alice@example.org>\r\n"
           b"RCPT TO:<bob@example.net>\r\n" + data_command(b"Subject: all header\r\n"))
    assert not any(isinstance(e, (MessageData, MessageReceived)) and e.missing for e in d.events)


@pytest.mark.parametrize(("smtp", "on"), [("", True), ("[smtp]\nadd_missing_headers = false\n", False)])
def test_the_config_key_turns_it_on_by_default(tmp_path: Path, smtp: str, on: bool) -> None:
    write_self_signed(tmp_path / "cert.pem", tmp_path / "key.pem", "mx.test")
    cfg = parse_config(
        '[[listeners]]\nname = "s"\naddress = "127.0.0.1:0"\ntls = "implicit"\n'
        '[tls]\ncert = "cert.pem"\nkey = "key.pem"\n' + smtp, tmp_path)
    assert cfg.smtp.add_missing_headers is on
    assert engine_settings(cfg, cfg.listeners[0], b"k" * SECRET_BYTES).note_missing_fields is on


# ------------------------------------------- the session: decisions, intake, spool


async def session(spool: Spool, parts: list[bytes], *, note: bool = True,
                  received: bool = True) -> tuple[str, Envelope, bytes]:
    """Send ``parts`` (the commands and data, each read at once) to one engine whose
    message events go to the session's real decisions and intake; the queue id,
    envelope and message of the one message stored."""
    engine = ServerEngine(settings(note_missing_fields=note), tls=TLS)
    rt = SimpleNamespace(intake=Intake(spool, lambda: None), hostname="mx.test",
                         add_received=received, received_login=False)
    decisions = Decisions(rt, Peer("s1", "submission", "192.0.2.7", 40000),  # type: ignore[arg-type]
                          engine, lambda: True)
    engine.greeting()
    engine.identity = USER
    replies = b""
    for part in parts:
        engine.receive_data(part)
        while (ev := engine.next_event()) not in (NEED_DATA, PAUSED):
            if isinstance(ev, (MailFrom, RcptTo)):
                engine.respond(None)
            elif isinstance(ev, MessageReceived):
                pending = decisions.handle(ev)
                assert isinstance(pending, Pending)
                engine.respond(await pending.work)
            else:
                assert decisions.handle(ev) is None
                if isinstance(ev, MessageStart):
                    assert decisions.receiving is not None
        replies += engine.data_to_send()
    assert replies.rstrip().endswith(b"queued as " + spool.list_ids()[0].encode()), replies
    [qid] = spool.list_ids()
    envelope, data = spool.load(qid)  # the size and the checksum are checked
    return qid, envelope, data


def split_received(data: bytes) -> tuple[bytes, bytes]:
    """The Received header smtpgate wrote, and the rest."""
    m = re.match(rb"Received: (?:[^\r\n]*\r\n[ \t])*[^\r\n]*\r\n", data)
    assert m is not None
    return m[0], data[m.end():]


@pytest.fixture
async def spool(tmp_path: Path):  # type: ignore[no-untyped-def]
    s = Spool(tmp_path / "spool", prefill=False)
    yield s
    await s.close()


@pytest.mark.parametrize("bdat_path", [False, True])
async def test_a_message_without_date_and_message_id_gets_both_at_the_top(
        spool: Spool, bdat_path: bool) -> None:
    body = (bdat(BARE[:30], last=False) + bdat(BARE[30:])) if bdat_path else data_command(BARE)
    qid, envelope, data = await session(spool, [ENVELOPE + body])
    received, rest = split_received(data)
    date_line, id_line, client = rest.split(b"\r\n", 2)
    assert client == BARE  # nothing the client wrote moved
    assert id_line == b"Message-ID: <%s@mx.test>" % qid.encode()
    assert date_line.startswith(b"Date: ") and date_line.isascii()
    # RFC 5322 §3.3 with a numeric zone; the clock reading of the Received header.
    stamp = email.utils.parsedate_to_datetime(date_line[6:].decode())
    assert stamp.utcoffset() is not None and re.search(rb" [+-]\d{4}$", date_line)
    assert stamp.timestamp() == int(envelope.received_at)
    received_date = received.rsplit(b";", 1)[1].strip().decode()
    assert email.utils.parsedate_to_datetime(received_date) == stamp


async def test_only_the_missing_field_is_added(spool: Spool) -> None:
    own = b"Message-Id: <own@example.org>\r\n" + BARE
    _, _, data = await session(spool, [ENVELOPE + data_command(own)])
    rest = split_received(data)[1]
    assert rest.startswith(b"Date: ") and rest.split(b"\r\n", 1)[1] == own


@pytest.mark.parametrize("message", [
    b"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-ID: <own@example.org>\r\n" + BARE,
    (b"MESSAGE-ID: <own@example.org>\r\nSubject: x\r\ndate: Mon, 1 Jan 2024 00:00:00 +0000\r\n"
     b"\r\nbody\r\n"),
])
async def test_a_message_with_both_is_stored_as_it_came(spool: Spool, message: bytes) -> None:
    _, _, data = await session(spool, [ENVELOPE + data_command(message)])
    assert split_received(data)[1] == message


@pytest.mark.parametrize("received", [True, False])
async def test_off_the_message_is_stored_byte_for_byte(spool: Spool, received: bool) -> None:
    _, _, data = await session(spool, [ENVELOPE + data_command(BARE)], note=False,
                               received=received)
    assert (split_received(data)[1] if received else data) == BARE


async def test_without_a_received_header_the_fields_are_the_first_lines(spool: Spool) -> None:
    qid, _, data = await session(spool, [ENVELOPE + data_command(BARE)], received=False)
    assert data.startswith(b"Date: ")
    assert data.split(b"\r\n", 2)[1:] == [b"Message-ID: <%s@mx.test>" % qid.encode(), BARE]


async def test_a_message_that_is_all_header_gets_them_too(spool: Spool) -> None:
    _, _, data = await session(spool, [ENVELOPE + data_command(b"Subject: cron\r\n")])
    rest = split_received(data)[1]
    assert rest.startswith(b"Date: ") and rest.split(b"\r\n", 2)[2] == b"Subject: cron\r\n"


async def test_a_5mb_message_read_in_parts_gets_them_before_its_first_write(spool: Spool) -> None:
    line = b"x" * 998 + b"\r\n"
    body = line * 5000  # 5 MB: many spool writes
    parts = [ENVELOPE + b"DATA\r\n" + BARE[:20], BARE[20:] + body[:100_000]]
    parts += [body[i:i + 300_000] for i in range(100_000, len(body), 300_000)]
    qid, _, data = await session(spool, [*parts, b".\r\n"])
    rest = split_received(data)[1]
    assert rest.split(b"\r\n", 2)[1] == b"Message-ID: <%s@mx.test>" % qid.encode()
    assert rest.split(b"\r\n", 2)[2] == BARE + body


def long_header(size: int) -> bytes:
    """A header section of ``size`` octets (empty line not counted), no Date or Message-ID."""
    pad = size - len(b"Subject: big\r\n")
    lines = b"".join(b"X-Pad: " + b"p" * 990 + b"\r\n" for _ in range(pad // 999))
    last = pad - len(lines)
    return b"Subject: big\r\n" + lines + b"X: " + b"q" * (last - 5) + b"\r\n"


#: Under the engine's limit (so accepted), but over what the spool file gathers
#: before its first write once the envelope and Received header (over 400 octets
#: here) are counted.
NEAR_LIMIT = MAX_HEADER_SECTION - 100
assert NEAR_LIMIT - 10 + 400 > FLUSH_AT


async def test_a_long_header_section_read_at_once_still_gets_them(spool: Spool) -> None:
    header = long_header(NEAR_LIMIT)
    assert len(header) == NEAR_LIMIT
    _, _, data = await session(spool, [ENVELOPE + data_command(header + b"\r\nbody\r\n")])
    rest = split_received(data)[1]
    assert rest.startswith(b"Date: ") and rest.split(b"\r\n", 2)[2] == header + b"\r\nbody\r\n"


async def test_a_header_section_that_ends_after_the_first_write_is_left_as_it_came(
        spool: Spool, caplog: pytest.LogCaptureFixture) -> None:
    header = long_header(NEAR_LIMIT)
    message = header + b"\r\nbody\r\n"
    # Its first 256 KiB are handed to a write before the empty line arrives.
    parts = [ENVELOPE + b"DATA\r\n" + header[:-10], header[-10:] + b"\r\nbody\r\n.\r\n"]
    with caplog.at_level(logging.INFO, logger="smtpgate.session"):
        _, _, data = await session(spool, parts)
    assert split_received(data)[1] == message
    assert "s1 no Date or Message-ID added: the header section ended after" in caplog.text


def test_a_header_section_over_256_kib_is_still_refused() -> None:
    d = logged_in(note_missing_fields=True)
    out = d.feed(ENVELOPE + data_command(long_header(MAX_HEADER_SECTION + 10) + b"\r\nbody\r\n"))
    assert b"552 5.3.4" in out and d.messages == []
    assert not any(isinstance(e, MessageData) and e.missing for e in d.events)


async def test_with_smtputf8_the_added_fields_are_ascii(spool: Spool) -> None:
    utf8 = ENVELOPE.replace(b"<alice@example.org>", b"<alice@example.org> SMTPUTF8")
    message = "From: Jörg <alice@example.org>\r\nSubject: grüße\r\n\r\nbody\r\n".encode()
    qid, envelope, data = await session(spool, [utf8 + data_command(message)])
    assert envelope.smtputf8
    date_line, id_line, client = split_received(data)[1].split(b"\r\n", 2)
    assert date_line.startswith(b"Date: ") and date_line.isascii()
    assert id_line == b"Message-ID: <%s@mx.test>" % qid.encode() and client == message
