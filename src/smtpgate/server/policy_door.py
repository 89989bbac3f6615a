"""The asyncio shell of the Postfix policy service (``check_policy_service``,
docs/integration.md): requests in (``frontdoor/policy.py`` parses them), actions out.

What it decides, for a request with a ``sasl_username`` (without one it answers
``DUNNO``: who did not log in is for Postfix's own restrictions):

- MAIL and RCPT states: the account's lock and conditional access (allowed
  networks against ``client_address``, allowed listeners against this auth
  listener's name, allowed mechanisms against ``sasl_method``) and its
  password's age (``AuthService.access_refusal``), then the
  envelope sender's ownership by the account
  (``policy/sender.py``, its aliases, granted domains and directory addresses),
  then its message budget (``RateLimiter``, the ``acct:NAME`` counters smtpgate's
  own listeners use): at MAIL a look, at RCPT a reservation, the message at the
  transaction's (``instance``) first RCPT and each recipient at its own, each
  checked and counted in one atomic step, so that Postfix sessions in parallel
  cannot pass the limit together (``policy/open_messages.py``);
- END-OF-MESSAGE (``smtpd_end_of_data_restrictions``): the reservation is
  settled to one message and its ``recipient_count``, before Postfix's 250, so
  the next MAIL anywhere (Postfix or smtpgate) sees them; a transaction that
  never gets there gives its reservation back;
- anything else: ``DUNNO``.

A fault of the account directory answers ``DEFER_IF_PERMIT`` (4.4.3); the rate
counters fail open, as for smtpgate's own sessions. Requests on one connection
are answered in order, one at a time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import cast

from smtpgate.auth.authlog import neutralize
from smtpgate.auth.directory import StoreError
from smtpgate.auth.sender_profile import SenderProfile
from smtpgate.auth.service import AuthContext
from smtpgate.frontdoor.policy import (
    DUNNO,
    PolicyParser,
    PolicyRequest,
    action_for,
    format_action,
)
from smtpgate.policy.open_messages import RESERVATION_TIMEOUT, OpenMessage, OpenMessages
from smtpgate.policy.rates import Budget, RateLimiter
from smtpgate.policy.sender import envelope_sender_refusal
from smtpgate.server.front_doors import UNFINISHED_TIMEOUT, FrontDoor, UnfinishedClock
from smtpgate.smtp import replies as R

log = logging.getLogger("smtpgate.policy")

#: Requests a peer may have waiting for their answer on one connection.
MAX_QUEUED = 100


class PolicyDecider:
    """Decides requests; shared by the connections of one front door."""

    def __init__(self, door: FrontDoor, clock: Callable[[], float] = time.monotonic) -> None:
        self.door = door
        self.clock = clock
        #: Reservations being given back, kept until done.
        self._giving_back: set[asyncio.Task[None]] = set()

    def give_back(self, messages: list[OpenMessage]) -> None:
        """Return the budget ``messages`` reserved (they will never be accepted), in
        the background (a connection closed, a timer): no answer waits for it."""
        if messages and self.door.runtime.rates is not None:
            task = asyncio.get_running_loop().create_task(self._give_back(messages))
            self._giving_back.add(task)
            task.add_done_callback(self._giving_back.discard)

    async def _give_back(self, messages: list[OpenMessage]) -> None:
        if not messages:
            return
        rates = self.door.runtime.rates
        if rates is None or rates.closed:
            return
        for m in messages:
            dm, dr = m.release()
            if dm or dr:
                await rates.count(m.keys, dm, dr, bucket=m.bucket)

    async def decide(self, req: PolicyRequest, opens: OpenMessages) -> str:
        # Any request of another transaction ends this connection's open ones
        # (policy/open_messages.py), whoever it is for; given back before this
        # request is decided, which may need that budget.
        await self._give_back(opens.abandoned(req.get("instance"), self.clock()))
        user = req.get("sasl_username")
        if not user:
            return DUNNO
        state = req.protocol_state
        if state not in ("MAIL", "RCPT", "END-OF-MESSAGE"):
            return DUNNO
        rt = self.door.runtime
        # What Postfix sends is escaped where it is logged: the values are its
        # client's (a sender, an SMTPUTF8 address) or whoever can reach the socket.
        session = req.get("queue_id") or req.get("instance") or "-"
        where = f"policy {neutralize(session, 64)} {neutralize(req.get('client_address'), 64)}"
        ctx = AuthContext(
            listener=self.door.listener.label,
            client_ip=req.get("client_address"),
            client_port=req.client_port,
            tls_version=req.get("encryption_protocol") or None,
            session_id=req.get("queue_id") or req.get("instance"),
            front_door="postfix_policy",
        )
        try:
            account = await rt.auth.login_identity(user)
            profile = await rt.auth.sender_profile(account)
            refusal = None
            if state != "END-OF-MESSAGE":
                refusal = await rt.auth.access_refusal(
                    account, req.get("sasl_method").upper(), ctx)
        except StoreError as e:
            log.error("%s: sending policy unavailable: %s", where, e)
            return action_for(R.ACCOUNTS_UNAVAILABLE)
        if refusal is not None:
            log.warning("%s: user=%s refused: %s", where, neutralize(profile.name),
                        neutralize(refusal))
            return action_for(R.ACCOUNT_MAY_NOT_SEND)
        instance = req.get("instance")
        rates = rt.rates
        if state == "END-OF-MESSAGE":
            if rates is not None:
                await _settle(rates, profile, opens.ended(instance), req.recipient_count or None)
            return DUNNO
        sender = req.get("sender")
        if sender and (todo := profile.by_grant_only([sender])):
            # Only a domain grant covers it: not if it is another account's.
            try:
                profile = profile.taken(await rt.auth.others_addresses(account, todo))
            except StoreError as e:
                log.error("%s: sending policy unavailable: %s", where, e)
                return action_for(R.ACCOUNTS_UNAVAILABLE)
        refused = envelope_sender_refusal(profile, sender, rt.policy, where=where)
        if refused is not None:
            return action_for(refused)
        if rates is None:
            return DUNNO
        if state == "MAIL":
            # A first look (smtpd_sender_restrictions): the RCPT reserves.
            budget = await rates.budget(profile, None)
            if budget.messages_left is not None and budget.messages_left <= 0:
                return _message_limit(where, profile.name, budget)
            return DUNNO
        open_ = opens.get(instance)
        got = await rates.reserve(profile, None, 1 if open_ is None else 0, 1)
        if isinstance(got, Budget):
            if open_ is None and got.messages_left is not None and got.messages_left < 1:
                return _message_limit(where, profile.name, got)
            log.warning("%s: user=%s recipient rate limit reached (%d left this hour)",
                        where, neutralize(profile.name), max(got.recipients_left or 0, 0))
            return action_for(R.RECIPIENT_RATE_EXCEEDED)
        if open_ is None:
            await self._give_back(opens.opened(instance, OpenMessage(
                got.keys, got.bucket, got.messages, got.recipients, 1, self.clock())))
        else:
            open_.hold(got)
            open_.recipients += 1
        return DUNNO


def _message_limit(where: str, name: str, budget: Budget) -> str:
    log.warning("%s: user=%s message rate limit: %s", where, neutralize(name),
                neutralize(budget.detail))
    return action_for(R.MESSAGE_RATE_EXCEEDED)


async def _settle(rates: RateLimiter, profile: SenderProfile, open_: OpenMessage | None,
                  recipient_count: int | None) -> None:
    """END-OF-MESSAGE: the counters hold one message and its accepted recipients,
    before Postfix's 250: what its RCPTs reserved, corrected, or (none reserved:
    no RCPT seen here, or given back as too old) the whole message now."""
    if open_ is None:
        keys = tuple(rates.limits_for(profile, None))
        await rates.count(keys, 1, recipient_count or 0)
        return
    messages, recipients = open_.settlement(recipient_count)
    if messages or recipients:
        await rates.count(open_.keys, messages, recipients, bucket=open_.bucket)


class PolicyProtocol(asyncio.Protocol):
    """One Postfix connection: requests answered in order."""

    def __init__(self, decider: PolicyDecider) -> None:
        self._decider = decider
        self._parser = PolicyParser()
        self._transport: asyncio.Transport | None = None
        #: Requests to answer in order; None: close once those before it are answered.
        self._queue: asyncio.Queue[PolicyRequest | None] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        #: The deadline of a request begun and not finished (never of silence).
        self._unfinished = UnfinishedClock(self._request_too_slow)
        self._peer = ""
        #: Transactions holding reserved budget (``policy/open_messages.py``).
        self._open = OpenMessages()
        #: Gives back reservations past their time (None: none open).
        self._sweep: asyncio.TimerHandle | None = None
        #: A request is being decided: the worker is not cancelled under it.
        self._deciding = False
        #: The peer is gone (``connection_lost``).
        self._lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses; trust the duck.
        self._transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self._peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "unix socket"
        self._worker = asyncio.get_running_loop().create_task(self._serve())

    def data_received(self, data: bytes) -> None:
        t = self._transport
        if t is None or t.is_closing() or self._parser.error is not None:
            return
        for req in self._parser.receive_data(data):
            if self._queue.qsize() >= MAX_QUEUED:
                log.warning("policy: more than %d requests waiting, closing the connection",
                            MAX_QUEUED)
                t.close()
                return
            self._queue.put_nowait(req)
        if self._parser.error is not None:
            log.warning("policy: protocol error, closing the connection: %s", self._parser.error)
            self._queue.put_nowait(None)
        self._unfinished.update(self._parser.request_unfinished)

    def _request_too_slow(self) -> None:
        t = self._transport
        if t is not None and not t.is_closing():
            log.warning("policy %s: a request begun %.0f s ago is still unfinished, closing "
                        "the connection", self._peer, UNFINISHED_TIMEOUT)
            t.close()

    async def _serve(self) -> None:
        while True:
            req = await self._queue.get()
            t = self._transport
            if req is None or self._lost:
                if t is not None:
                    t.close()
                return
            self._deciding = True
            try:
                action = await self._decider.decide(req, self._open)
            except Exception:
                log.exception("policy: request failed")
                action = action_for(R.INTERNAL_ERROR)
            finally:
                self._deciding = False
            if self._lost:
                # Postfix went away while this was decided: the budget it reserved
                # will never be used (connection_lost gave back the rest).
                self._decider.give_back(self._open.all())
                return
            self._schedule_sweep()
            t = self._transport
            if t is None or t.is_closing():
                return
            t.write(format_action(action))

    def pause_writing(self) -> None:
        """The peer does not read its answers: stop reading its requests until it
        does, so that what a peer that only writes costs us stays bounded."""
        t = self._transport
        if t is not None and not t.is_closing():
            t.pause_reading()

    def resume_writing(self) -> None:
        t = self._transport
        if t is not None and not t.is_closing():
            t.resume_reading()

    def eof_received(self) -> bool:
        """The peer has sent all it will (a half-close): answer what it asked, then
        close. Returning False let the transport close at once, and the answers
        still being decided (a counter write, a slow directory) were lost."""
        self._queue.put_nowait(None)
        return True

    def _schedule_sweep(self) -> None:
        """A reservation held by a connection on which nothing more comes is given
        back when it is ``RESERVATION_TIMEOUT`` old."""
        oldest = self._open.oldest_start()
        if oldest is None or self._sweep is not None:
            return
        wait = max(0.0, oldest + RESERVATION_TIMEOUT - self._decider.clock()) + 1.0
        self._sweep = asyncio.get_running_loop().call_later(wait, self._swept)

    def _swept(self) -> None:
        self._sweep = None
        self._decider.give_back(self._open.expired(self._decider.clock()))
        self._schedule_sweep()

    def connection_lost(self, exc: Exception | None) -> None:
        self._unfinished.stop()
        self._lost = True
        # A request being decided runs to its end and gives its reservation back
        # (``_serve``): cancelled, the counters' write went on in its thread and
        # the reservation, never recorded, held the budget for the hour (a Postfix
        # killed after sending RCPT requests left its account unable to send).
        if self._worker is not None and not self._deciding:
            self._worker.cancel()
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        # Postfix closed it (idle, or its smtpd process ended): no transaction
        # on it will end now.
        self._decider.give_back(self._open.all())


def protocol_factory(door: FrontDoor) -> Callable[[], asyncio.BaseProtocol]:
    decider = PolicyDecider(door)
    return lambda: PolicyProtocol(decider)
