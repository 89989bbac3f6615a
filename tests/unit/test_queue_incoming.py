"""A message received in parts (queue/incoming.py, Spool.receive/publish): written
to a temp file as it arrives, in the queue only once sealed and fsynced, and
nothing left behind when it is dropped."""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from smtpgate.queue import incoming as incoming_mod
from smtpgate.queue import tmpfiles
from smtpgate.queue.envelope import Envelope
from smtpgate.queue.spool import Spool, SpoolError

ENV = Envelope(mail_from="a@example.org", rcpt_to=("b@example.net",), auth_identity="a@example.org",
               client_ip="192.0.2.1", helo="client.test", listener="submission")


@pytest.fixture
async def spool(tmp_path: Path) -> AsyncIterator[Spool]:
    sp = Spool(tmp_path / "spool", prefill=False)  # every temp file is the message's own
    yield sp
    await sp.close()


def temp_files(sp: Spool) -> list[str]:
    return os.listdir(sp.directory / "tmp")


async def settle() -> None:
    """Let background writes and removals (threads) finish."""
    for _ in range(50):
        await asyncio.sleep(0.01)


async def test_parts_become_one_message_in_the_queue_only_when_published(spool: Spool) -> None:
    inc = spool.receive(ENV, b"Received: by test\r\n")
    parts = [bytes([65 + i % 26]) * (incoming_mod.FLUSH_AT // 3 + i) for i in range(10)]
    for p in parts:
        inc.write(p)
        await asyncio.sleep(0)
    await settle()
    assert spool.list_ids() == []  # written, not yet published
    assert temp_files(spool) != []
    qid = await spool.publish(inc)
    assert spool.list_ids() == [qid] and temp_files(spool) == []
    envelope, data = spool.load(qid)
    assert data == b"Received: by test\r\n" + b"".join(parts)
    assert envelope.rcpt_to == ENV.rcpt_to and envelope.received_at > 0
    assert inc.size == len(data)
    # The header line's length field was filled in (fixed width, zero-padded).
    first = (spool.directory / "queue" / f"{qid}.msg").read_bytes().split(b"\n", 1)[0]
    assert int(first.split(b" ")[3]) == len(data)
    assert spool.load_envelope(qid) == (envelope, len(data))


async def test_an_empty_message_is_published_too(spool: Spool) -> None:
    qid = await spool.publish(spool.receive(ENV))
    assert spool.load(qid)[1] == b""


@pytest.mark.parametrize("written", [0, 10, 3 * incoming_mod.FLUSH_AT])
async def test_discarded_message_leaves_no_temp_file(spool: Spool, written: int) -> None:
    inc = spool.receive(ENV)
    inc.write(b"x" * written)
    await asyncio.sleep(0)  # a write may be in flight: the removal waits for it
    inc.discard()
    inc.write(b"ignored after discard")
    await settle()
    assert temp_files(spool) == [] and spool.list_ids() == []


async def test_a_failed_write_is_a_spool_error_and_leaves_nothing(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(path: str) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tmpfiles, "open_new", full)
    inc = spool.receive(ENV)
    inc.write(b"y" * 2 * incoming_mod.FLUSH_AT)
    await settle()
    with pytest.raises(SpoolError, match="No space left"):
        await spool.publish(inc)
    assert temp_files(spool) == [] and spool.list_ids() == []


async def test_backlog_is_bounded_by_background_writes(spool: Spool) -> None:
    """What the connection's flow control reads: the octets not yet on their way."""
    inc = spool.receive(ENV)
    flushed = asyncio.Event()
    inc.on_flushed = flushed.set
    inc.write(b"z" * 2 * incoming_mod.FLUSH_AT)  # over FLUSH_AT: handed to a write
    assert inc.backlog > 2 * incoming_mod.FLUSH_AT  # with the envelope ahead of it
    await asyncio.wait_for(flushed.wait(), 5)
    assert inc.backlog == 0
    inc.write(b"z")
    assert inc.backlog == 1  # under FLUSH_AT: gathered, not written yet
    inc.discard()
    await settle()


async def test_a_failed_background_write_drops_the_backlog(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection waits for the backlog to fall before reading on: after a
    write error it must fall too (the message is then answered 451)."""

    def full(path: str) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tmpfiles, "open_new", full)
    inc = spool.receive(ENV)
    flushed = asyncio.Event()
    inc.on_flushed = flushed.set
    inc.write(b"w" * incoming_mod.FLUSH_AT)
    inc.write(b"w" * 5 * incoming_mod.FLUSH_AT)  # gathered while the write fails
    await asyncio.wait_for(flushed.wait(), 5)
    assert inc.backlog == 0
    with pytest.raises(SpoolError):
        await spool.publish(inc)


@pytest.mark.parametrize("outcome", ["sealed", "discarded"])
async def test_the_end_of_the_message_reports_the_backlog_gone(spool: Spool, outcome: str) -> None:
    """The connection stops reading while the backlog is over its mark and reads on
    only when `on_flushed` reports it fallen. Sealing writes the rest itself: it must
    report that too, or a client whose message ended while the disk was behind (a
    large attachment, seen with Perl Net::SMTP and smtplib) never has its next
    command (QUIT, the next MAIL) read."""
    inc = spool.receive(ENV)
    seen: list[int] = []
    inc.on_flushed = lambda: seen.append(inc.backlog)
    inc.write(b"v" * incoming_mod.FLUSH_AT)  # handed to a background write
    inc.write(b"v" * 5 * incoming_mod.FLUSH_AT)  # gathered behind it
    if outcome == "sealed":
        await spool.publish(inc)
    else:
        await asyncio.sleep(0)  # the write is in flight
        inc.discard()
        await settle()
    assert seen and seen[-1] == 0
    assert inc.backlog == 0
