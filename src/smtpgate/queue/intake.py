"""Intake: a message the session accepted becomes a spooled message with its envelope.

The session hands over the message bytes and how they arrived (`Arrival`); the
intake prepends the Received trace header (RFC 5321 §4.4, ``smtp/received.py``),
writes the envelope, and waits for the spool's group commit. The reply it
returns is the one the client gets: 250 with the queue id only once the message
is durable, 451 if the spool could not take it.

A message arrives in parts (`begin`, then `Incoming.write` as DATA comes in,
then `finish`): it is written to the spool as it arrives, so a session never
holds it in memory (`queue/incoming.py`). ``accept`` takes a whole message.

Work that must be committed with the message (the sending-rate count) runs
alongside the spool write and is awaited before the reply too, so a counter
survives a crash as the message does. If the spool then fails, the account is
charged for a message it may resend: the conservative side.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from smtpgate import metrics
from smtpgate.auth.principal import Principal
from smtpgate.queue.envelope import Envelope, RcptDsn
from smtpgate.queue.incoming import Incoming
from smtpgate.queue.space import out_of_space
from smtpgate.queue.spool import Spool, SpoolError, new_queue_id
from smtpgate.smtp import replies as R
from smtpgate.smtp.data import DATE, MESSAGE_ID
from smtpgate.smtp.dsn_params import NO_DSN, TransactionDsn
from smtpgate.smtp.received import received_header

log = logging.getLogger("smtpgate.session")


@dataclass(frozen=True, slots=True)
class Arrival:
    """How one message arrived: what its Received header and envelope record."""

    session_id: str
    listener: str
    client_ip: str
    helo: str
    #: The session said EHLO (ESMTP), not HELO.
    esmtp: bool
    #: Who submitted it (None: a listener without AUTH).
    principal: Principal | None
    tls_version: str | None = None
    tls_cipher: str | None = None


@dataclass(frozen=True, slots=True)
class Message:
    """The envelope the client gave and the message bytes (dot-unstuffed, CRLF)."""

    sender: str
    recipients: tuple[str, ...]
    data: bytes
    smtputf8: bool = False
    body_8bit: bool = False
    #: RFC 3461 parameters, kept with the envelope for the reports (queue/dsn.py).
    dsn: TransactionDsn = NO_DSN
    #: BODY=BINARYMIME: kept so that no hop without it is given the message.
    body_binary: bool = False


@dataclass(frozen=True, slots=True)
class Receiving:
    """A message on its way in: where its content goes (``incoming.write``) and
    what `Intake.finish` logs."""

    incoming: Incoming
    sender: str
    recipients: tuple[str, ...]
    arrival: Arrival
    account: str
    #: The Received header's clock reading (DATA's start) and the server's host
    #: name: an added Date and Message-ID are made of them and the queue id.
    received_at: float = 0.0
    hostname: str = ""

    def add_missing(self, missing: tuple[str, ...]) -> bool:
        """Add the fields the message lacks (``Date``, ``Message-ID``; RFC 6409
        §8.2, §8.3) at the top of its header section, before any of it is written
        (`Incoming.insert_at_top`); False, logged, if some already was (a header
        section near the 256 KiB limit): the message stays as the client wrote it."""
        fields = missing_fields(missing, qid=self.incoming.qid, hostname=self.hostname,
                                now=self.received_at)
        if self.incoming.insert_at_top(fields):
            return True
        log.info("%s no %s added: the header section ended after the spool file's first "
                 "write", self.arrival.session_id, " or ".join(missing))
        return False


@functools.lru_cache(maxsize=4)
def _local_date(second: int) -> bytes:
    """The ``Date:`` value of a whole second in local time: email.utils takes ~10 µs
    (it asks the time zone each call), and messages arrive many to a second."""
    return email.utils.formatdate(second, localtime=True).encode()


def missing_fields(missing: tuple[str, ...], *, qid: str, hostname: str, now: float) -> bytes:
    """The header fields an MSA adds (RFC 6409 §8.2, §8.3), ASCII, in the order of
    ``missing``: ``Date:`` the time ``now`` in the server's local time zone, as an
    RFC 5322 §3.3 date-time with a numeric offset; ``Message-ID: <QUEUEID@HOSTNAME>``
    (the queue id is unique, the host name the server's own)."""
    out = []
    for name in missing:
        if name == DATE:
            out.append(b"Date: %s\r\n" % _local_date(int(now)))
        elif name == MESSAGE_ID:
            out.append(b"Message-ID: <%s@%s>\r\n" % (qid.encode(), hostname.encode()))
    return b"".join(out)


class Intake:
    """Takes accepted messages into the spool; one per process."""

    def __init__(self, spool: Spool, on_stored: Callable[[], None]) -> None:
        self._spool = spool
        self._on_stored = on_stored

    def begin(
        self,
        message: Message,
        arrival: Arrival,
        *,
        hostname: str,
        add_received: bool = True,
        received_login: bool = False,
    ) -> Receiving:
        """DATA started: the spool file of ``message`` (its ``data`` is ignored),
        with its envelope and Received header (stamped now, as Postfix does when
        DATA starts). Its content is then written with ``incoming.write``; the
        fields the message lacks are added with `Receiving.add_missing`."""
        now = time.time()
        account, envelope = self._envelope(message, arrival, now)
        qid = new_queue_id()  # named in the Received header: the client's copy finds it
        received = (self._received(message, arrival, hostname, now, qid, received_login)
                    if add_received else b"")
        incoming = self._spool.receive(envelope, received, qid)
        return Receiving(incoming, message.sender, message.recipients, arrival, account,
                         received_at=now, hostname=hostname)

    async def finish(
        self, receiving: Receiving, *, alongside: Coroutine[Any, Any, None] | None = None
    ) -> R.Reply:
        """The end of DATA: make the message durable; the reply for the client (as
        `accept`)."""
        beside = asyncio.get_running_loop().create_task(alongside) if alongside else None
        arrival = receiving.arrival
        started = time.monotonic()
        try:
            qid = await self._spool.publish(receiving.incoming)
        except SpoolError as e:
            log.error("%s spool write failed: %s", arrival.session_id, e)
            metrics.spool_failed()
            reply = R.INSUFFICIENT_STORAGE if out_of_space(e) else R.QUEUE_FAILED
        except Exception:
            log.exception("%s unexpected error while spooling", arrival.session_id)
            metrics.spool_failed()
            reply = R.QUEUE_FAILED
        else:
            reply = R.MESSAGE_ACCEPTED.with_text(f"OK queued as {qid}")
            # The message is durable: its 250 goes out first, the bookkeeping on
            # the loop's next turn (a fifth of the time from the seal to the 250 in
            # workload A, bench/README.md).
            asyncio.get_running_loop().call_soon(
                self._stored, receiving, qid, time.monotonic() - started)
        if beside is not None:
            await beside
        return reply

    def _stored(self, receiving: Receiving, qid: str, seconds: float) -> None:
        """Count, log and announce a message `finish` made durable."""
        arrival = receiving.arrival
        metrics.message_accepted(arrival.listener, receiving.incoming.size, seconds)
        log.info(
            "%s queued %s from=<%s> rcpts=%d size=%d user=%s",
            arrival.session_id, qid, receiving.sender, len(receiving.recipients),
            receiving.incoming.size, receiving.account,
        )
        self._on_stored()

    @staticmethod
    def _envelope(message: Message, arrival: Arrival, now: float) -> tuple[str, Envelope]:
        account = arrival.principal.account if arrival.principal is not None else ""
        return account, Envelope(
            mail_from=message.sender,
            rcpt_to=message.recipients,
            auth_identity=account or None,
            client_ip=arrival.client_ip,
            helo=arrival.helo,
            listener=arrival.listener,
            smtputf8=message.smtputf8,
            body_8bit=message.body_8bit,
            body_binary=message.body_binary,
            received_at=now,
            dsn_ret=message.dsn.ret,
            dsn_envid=message.dsn.envid,
            dsn_rcpts=tuple(RcptDsn(a, p.notify, p.orcpt) for a, p in message.dsn.rcpts),
        )

    @staticmethod
    def _received(
        message: Message, arrival: Arrival, hostname: str, now: float, qid: str,
        show_login: bool,
    ) -> bytes:
        account = arrival.principal.account if arrival.principal is not None else ""
        return received_header(
            helo=arrival.helo,
            client_ip=arrival.client_ip,
            hostname=hostname,
            esmtp=arrival.esmtp,
            tls_version=arrival.tls_version,
            cipher=arrival.tls_cipher,
            identity=account,
            queue_hint=qid,
            timestamp=now,
            smtputf8=message.smtputf8,
            show_login=show_login,
        )

    async def accept(
        self,
        message: Message,
        arrival: Arrival,
        *,
        hostname: str,
        add_received: bool = True,
        received_login: bool = False,
        alongside: Coroutine[Any, Any, None] | None = None,
    ) -> R.Reply:
        """Spool ``message``; the reply for the client. ``alongside`` (which must not
        raise) is awaited before the reply whatever the spool did."""
        now = time.time()
        account, envelope = self._envelope(message, arrival, now)
        data = message.data
        qid = new_queue_id()
        if add_received:
            data = self._received(message, arrival, hostname, now, qid, received_login) + data
        beside = asyncio.get_running_loop().create_task(alongside) if alongside else None
        try:
            qid = await self._spool.store(envelope, data, qid)
        except SpoolError as e:
            log.error("%s spool write failed: %s", arrival.session_id, e)
            reply = R.INSUFFICIENT_STORAGE if out_of_space(e) else R.QUEUE_FAILED
        except Exception:
            log.exception("%s unexpected error while spooling", arrival.session_id)
            reply = R.QUEUE_FAILED
        else:
            reply = R.MESSAGE_ACCEPTED.with_text(f"OK queued as {qid}")
            log.info(
                "%s queued %s from=<%s> rcpts=%d size=%d user=%s",
                arrival.session_id, qid, message.sender, len(message.recipients), len(data),
                account,
            )
            self._on_stored()
        if beside is not None:
            await beside
        return reply
