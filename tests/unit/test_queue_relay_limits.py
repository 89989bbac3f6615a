"""A next hop with a recipient limit per transaction (RFC 5321 §4.5.3.1.10):
the recipients its ``452 4.5.3`` turns away go in further transactions at once,
on the same connection or a new one, never in a loop.

The hop is a small scripted SMTP/LMTP server on 127.0.0.1 port 0 that keeps
what each transaction carried, so a test sees what a real hop would receive.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from smtpgate.config import QueueConfig
from smtpgate.queue.delivery import Delivered, PermFailure, QueuedMessage, TempFailure
from smtpgate.queue.envelope import Envelope
from smtpgate.queue.relay import RelayDeliverer, RelayTimeouts
from smtpgate.queue.spool import Spool
from smtpgate.queue.worker import DeliveryWorker
from tests.unit.test_queue_relay import hop_until_the_dot

RCPTS = tuple(f"r{i}@example.net" for i in range(5))
ENV = Envelope(
    mail_from="alice@example.org",
    rcpt_to=RCPTS,
    auth_identity="alice@example.org",
    client_ip="192.0.2.7",
    helo="laptop.example.org",
    listener="submission",
    received_at=1_700_000_000.0,
)
MESSAGE = QueuedMessage("18f00000000-1-0-00000000", ENV, b"Subject: hi\r\n\r\nhello\r\n")


@dataclass
class CappedHop:
    """Takes at most ``cap`` recipients per transaction (0: none at all, ever),
    answering the rest ``over``; ``close_after`` hangs up after each transaction's
    final reply (a hop that takes one transaction per connection); ``rcpt_421``:
    the first connection's RCPT of that number (counted over its transactions) is
    answered ``421`` and the connection closed (a hop shutting down)."""

    cap: int
    pipelining: bool = True
    close_after: bool = False
    lmtp: bool = False
    over: bytes = b"452 4.5.3 Too many recipients\r\n"
    connections: int = 0
    transactions: list[list[str]] = field(default_factory=list)
    mails: int = 0
    rcpt_421: int = 0
    #: Refused for good (550) when the cap would take them.
    refuse: frozenset[str] = frozenset()
    #: Every connection's second MAIL is answered ``421`` and the connection closed.
    mail_421_again: bool = False
    #: The MAIL of this number is never answered (``stalled`` is set).
    stall_mail: int = 0
    stalled: asyncio.Event = field(default_factory=asyncio.Event)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        writer.write(b"220 capped.test ESMTP\r\n")
        rcpts: list[str] = []
        rcpts_seen = 0
        mails_here = 0
        while line := await reader.readline():
            verb = line[:4].upper()
            if verb in (b"EHLO", b"LHLO"):
                ext = b"250-capped.test\r\n250-PIPELINING\r\n" if self.pipelining else \
                    b"250-capped.test\r\n"
                writer.write(ext + b"250 8BITMIME\r\n")
            elif verb == b"MAIL":
                self.mails += 1
                mails_here += 1
                if self.mail_421_again and mails_here == 2:
                    writer.write(b"421 4.3.2 System shutting down\r\n")
                    await writer.drain()
                    break
                if self.mails == self.stall_mail:
                    self.stalled.set()
                    await reader.read()
                    break
                rcpts = []
                writer.write(b"250 2.1.0 ok\r\n")
            elif verb == b"RCPT":
                rcpts_seen += 1
                if self.connections == 1 and rcpts_seen == self.rcpt_421:
                    writer.write(b"421 4.3.2 shutting down\r\n")
                    await writer.drain()
                    break
                rcpt = line[9:].strip().strip(b"<>").decode()
                if len(rcpts) < self.cap and rcpt in self.refuse:
                    writer.write(b"550 5.1.1 no such user\r\n")
                elif len(rcpts) < self.cap:
                    rcpts.append(rcpt)
                    writer.write(b"250 2.1.5 ok\r\n")
                else:
                    writer.write(self.over)
            elif verb == b"DATA":
                if not rcpts:
                    writer.write(b"503 5.5.1 no valid recipients\r\n")
                    continue
                writer.write(b"354 go\r\n")
                await reader.readuntil(b"\r\n.\r\n")
                self.transactions.append(rcpts)
                n = len(rcpts) if self.lmtp else 1
                writer.write(b"250 2.0.0 queued\r\n" * n)
                await writer.drain()
                if self.close_after:
                    break
            elif verb == b"QUIT":
                writer.write(b"221 bye\r\n")
                break
            else:
                writer.write(b"502 5.5.1 ?\r\n")
            await writer.drain()
        writer.close()


@asynccontextmanager
async def running(hop: CappedHop) -> AsyncIterator[int]:
    server = await asyncio.start_server(hop.serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


def deliverer(port: int, *, lmtp: bool = False) -> RelayDeliverer:
    return RelayDeliverer("127.0.0.1", port, helo_name="smtpgate.test", tls_mode="none",
                          lmtp=lmtp, timeouts=RelayTimeouts(command=5, data=5))


async def _all_delivered_two_at_a_time(hop: CappedHop) -> None:
    """Deliver the five recipients through ``hop``: every one delivered, in three
    transactions of two, two and one (whatever connections that took)."""
    async with running(hop) as port:
        results = await deliverer(port).deliver(MESSAGE, RCPTS)
    assert all(isinstance(results[r], Delivered) for r in RCPTS), results
    assert hop.transactions == [list(RCPTS[0:2]), list(RCPTS[2:4]), list(RCPTS[4:])]


@pytest.mark.parametrize("pipelining", [True, False])
async def test_rfc5321_s4_5_3_1_10_rest_goes_in_further_transactions_at_once(
        pipelining: bool) -> None:
    """A hop taking two recipients per transaction: five recipients go in three
    transactions on one connection, all in this one attempt (they waited for
    retry_initial, one transaction's worth at a time)."""
    hop = CappedHop(cap=2, pipelining=pipelining)
    await _all_delivered_two_at_a_time(hop)
    assert hop.connections == 1


async def test_rest_goes_over_a_new_connection_when_the_hop_hangs_up() -> None:
    """A hop that takes one transaction per connection: the rest goes over a new
    connection, each recipient delivered once."""
    hop = CappedHop(cap=2, close_after=True)
    await _all_delivered_two_at_a_time(hop)
    assert hop.connections == 3


@pytest.mark.parametrize("pipelining", [True, False])
async def test_a_421_to_rcpt_in_a_further_transaction_reconnects_at_once(
        pipelining: bool) -> None:
    """The hop took r0 and r1, turned r2-r4 away with 452 4.5.3, took r2 in the
    further transaction, then said 421 to r3 (RFC 5321 §3.8: it is closing the
    channel). As for a 421 to that MAIL, the rest goes over a new connection at
    once, not to the retry schedule: everything delivered in this attempt, once."""
    hop = CappedHop(cap=2, pipelining=pipelining, rcpt_421=7)  # 5 RCPTs, then r2, r3
    await _all_delivered_two_at_a_time(hop)
    assert hop.connections == 2


async def test_a_421_to_rcpt_keeps_the_refusals_given_before_it() -> None:
    """In the further transaction the hop took r2, refused r3 for good, then said
    421 to r4: r3's bounce stands and is not asked again; r2 and r4 go over the new
    connection."""
    hop = CappedHop(cap=2, rcpt_421=8, refuse=frozenset({RCPTS[3]}))
    async with running(hop) as port:
        results = await deliverer(port).deliver(MESSAGE, RCPTS)
    assert isinstance(results[RCPTS[3]], PermFailure), results
    assert "550 5.1.1" in results[RCPTS[3]].reply  # type: ignore[union-attr]
    assert all(isinstance(results[r], Delivered) for r in RCPTS if r != RCPTS[3]), results
    assert hop.transactions == [list(RCPTS[0:2]), [RCPTS[2], RCPTS[4]]]
    assert hop.connections == 2


async def test_lmtp_rest_goes_in_further_transactions() -> None:
    hop = CappedHop(cap=3, lmtp=True)
    async with running(hop) as port:
        results = await deliverer(port, lmtp=True).deliver(MESSAGE, RCPTS)
    assert all(isinstance(results[r], Delivered) for r in RCPTS), results
    assert hop.transactions == [list(RCPTS[0:3]), list(RCPTS[3:])]


async def test_hop_refusing_every_recipient_with_452_is_not_looped_on() -> None:
    """A 452 to the first recipient is no limit that another transaction gets
    past: one transaction, every recipient deferred to the retry."""
    hop = CappedHop(cap=0)
    async with running(hop) as port:
        results = await deliverer(port).deliver(MESSAGE, RCPTS)
    assert all(isinstance(results[r], TempFailure) for r in RCPTS), results
    assert "452 4.5.3" in results[RCPTS[0]].reply  # type: ignore[union-attr]
    assert hop.mails == 1 and hop.connections == 1


async def test_452_insufficient_storage_is_not_a_recipient_limit() -> None:
    """``452 4.3.1`` is the hop's disk, not a limit per transaction: the rest waits
    for the retry as before."""
    hop = CappedHop(cap=2, over=b"452 4.3.1 Insufficient system storage\r\n")
    async with running(hop) as port:
        results = await deliverer(port).deliver(MESSAGE, RCPTS)
    assert [type(results[r]) for r in RCPTS] == [Delivered] * 2 + [TempFailure] * 3
    assert hop.mails == 1


async def test_a_hop_that_keeps_hanging_up_costs_a_bounded_number_of_connections() -> None:
    """One recipient per connection and many recipients: at most 11 connections in
    one attempt; the rest wait for the retry with a reason that says why."""
    many = tuple(f"m{i}@example.net" for i in range(15))
    hop = CappedHop(cap=1, close_after=True)
    async with running(hop) as port:
        results = await deliverer(port).deliver(MESSAGE, many)
    delivered = [r for r in many if isinstance(results[r], Delivered)]
    assert delivered == list(many[:11])
    assert hop.connections == 11
    for r in many[11:]:
        assert isinstance(results[r], TempFailure), results[r]
        assert results[r].reply == (  # type: ignore[union-attr]
            f"4.4.2 relay 127.0.0.1:{port}: took part of the recipients on each of 11 "
            "connections in a row, turning the rest away (recipient limit, 452), then "
            "ended it: closed the connection at MAIL FROM 11 times; the rest wait for "
            "the next attempt")


async def test_reconnects_that_421_caused_say_so_when_they_run_out() -> None:
    """The reason said "recipient limit reached on 10 connections" whatever ended
    the connections; a hop answering 421 to every further MAIL is named as that,
    with its reply and its code."""
    many = tuple(f"m{i}@example.net" for i in range(15))
    hop = CappedHop(cap=1, mail_421_again=True)
    async with running(hop) as port:
        results = await deliverer(port).deliver(MESSAGE, many)
    assert [r for r in many if isinstance(results[r], Delivered)] == list(many[:11])
    assert hop.connections == 11
    reply = results[many[-1]].reply  # type: ignore[union-attr]
    assert reply == (
        f"4.3.2 relay 127.0.0.1:{port}: took part of the recipients on each of 11 "
        "connections in a row, turning the rest away (recipient limit, 452), then ended "
        "it: 421 to MAIL FROM 11 times (the last: 421 4.3.2 System shutting down); the "
        "rest wait for the next attempt"), reply


# --- a stop after the hop took the message ---------------------------------------------


@dataclass
class SilentAtQuit:
    """Takes the message (250 to the final dot), then never answers QUIT: the
    outcome is known while the session still waits."""

    took: asyncio.Event = field(default_factory=asyncio.Event)
    gone: asyncio.Event = field(default_factory=asyncio.Event)
    transactions: int = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await hop_until_the_dot(reader, writer, b"slow-quit.test ESMTP")
        self.transactions += 1
        writer.write(b"250 2.0.0 queued\r\n")
        await writer.drain()
        self.took.set()
        await reader.read()  # QUIT, and then nothing more
        writer.close()
        self.gone.set()


async def test_a_stop_while_waiting_for_quit_keeps_the_delivered_outcome(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The server stopping (its grace over) while the relay session waited for the
    reply to QUIT: the hop had taken the message, but the cancelled delivery
    dropped that outcome and the message stayed queued, to be sent again on the
    next start. The outcome the hop gave is now recorded, and the stop's log says
    so (it said 'they stay queued')."""
    hop = SilentAtQuit()
    server = await asyncio.start_server(hop.serve, "127.0.0.1", 0)
    spool = Spool(tmp_path / "spool")
    try:
        one = dataclasses.replace(ENV, rcpt_to=("bob@example.net",), received_at=time.time())
        await spool.store(one, MESSAGE.data)
        port = server.sockets[0].getsockname()[1]
        worker = DeliveryWorker(spool, deliverer(port), QueueConfig(), poll_interval=60.0)
        runner = asyncio.create_task(worker.run())
        await asyncio.wait_for(hop.took.wait(), 10)
        worker.stop(grace=0.05)
        with caplog.at_level("INFO", logger="smtpgate.queue"):
            await asyncio.wait_for(runner, 10)
        assert spool.list_ids() == []  # delivered: nothing to send again
        stop_lines = [r.getMessage() for r in caplog.records
                      if r.getMessage().startswith("queue: stopping")]
        assert stop_lines and not any("stay queued" in x for x in stop_lines), stop_lines
        assert any("every recipient has an outcome" in x for x in stop_lines), stop_lines
        assert hop.transactions == 1
        await asyncio.wait_for(hop.gone.wait(), 10)  # the session was dropped
    finally:
        await spool.close()
        server.close()
        await server.wait_closed()


async def test_a_stop_in_a_further_transaction_says_what_was_recorded(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The hop took r0 and r1, then never answered the further transaction's MAIL
    when the server stopped: r0 and r1 are recorded delivered, r2-r4 stay queued,
    and the stop's log says both, not 'they stay queued'."""
    hop = CappedHop(cap=2, stall_mail=2)
    server = await asyncio.start_server(hop.serve, "127.0.0.1", 0)
    spool = Spool(tmp_path / "spool")
    try:
        env = dataclasses.replace(ENV, received_at=time.time())
        qid = await spool.store(env, MESSAGE.data)
        port = server.sockets[0].getsockname()[1]
        worker = DeliveryWorker(spool, deliverer(port), QueueConfig(), poll_interval=60.0)
        runner = asyncio.create_task(worker.run())
        await asyncio.wait_for(hop.stalled.wait(), 10)
        worker.stop(grace=0.05)
        with caplog.at_level("INFO", logger="smtpgate.queue"):
            await asyncio.wait_for(runner, 10)
        state = spool.load_state(qid)
        assert state is not None and set(state.pending) == set(RCPTS[2:]), state
        (line,) = [r.getMessage() for r in caplog.records
                   if r.getMessage().startswith("queue: stopping")]
        assert line == (f"queue: stopping: cancelled 1 delivery in progress; {qid}: the "
                        "outcomes the next hop gave are recorded, the other recipients "
                        "stay queued")
    finally:
        await spool.close()
        server.close()
        await server.wait_closed()


async def test_a_cancel_before_the_hop_decided_anything_still_raises() -> None:
    """Nothing decided: the cancellation reaches the caller, which keeps the
    message queued as before."""
    started, gone = asyncio.Event(), asyncio.Event()

    async def greet_and_stall(reader: asyncio.StreamReader,
                              writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 stall.test ESMTP\r\n")
        started.set()
        await reader.read()
        writer.close()
        gone.set()

    server = await asyncio.start_server(greet_and_stall, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        task = asyncio.create_task(deliverer(port).deliver(MESSAGE, RCPTS))
        await asyncio.wait_for(started.wait(), 10)
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(gone.wait(), 10)  # the connection was dropped
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("over", [b"552 5.5.3 Too many recipients\r\n",
                                  b"552 Too many recipients\r\n"])
async def test_rfc5321_s4_5_3_1_10_a_552_for_too_many_recipients_is_a_limit_not_a_bounce(
        over: bytes) -> None:
    """RFC 821 named 552 for too many recipients and hops still send it; RFC 5321
    §4.5.3.1.10 says to treat it as temporary. Those recipients bounced (a 5xx);
    they now go in the next transaction like a 452's."""
    hop = CappedHop(cap=2, over=over)
    async with running(hop) as port:
        results = await deliverer(port).deliver(MESSAGE, RCPTS)
    assert all(isinstance(results[r], Delivered) for r in RCPTS), results
    assert len(hop.transactions) == 3


async def test_552_5_5_3_to_the_first_recipient_is_temporary() -> None:
    hop = CappedHop(cap=0, over=b"552 5.5.3 Too many recipients\r\n")
    async with running(hop) as port:
        results = await deliverer(port).deliver(MESSAGE, RCPTS)
    assert all(isinstance(results[r], TempFailure) for r in RCPTS), results
    assert hop.mails == 1


async def test_552_mailbox_full_after_an_accepted_recipient_still_bounces() -> None:
    hop = CappedHop(cap=2, over=b"552 5.2.2 Mailbox full\r\n")
    async with running(hop) as port:
        results = await deliverer(port).deliver(MESSAGE, RCPTS)
    assert [type(results[r]) for r in RCPTS] == [Delivered] * 2 + [PermFailure] * 3
    assert hop.mails == 1
