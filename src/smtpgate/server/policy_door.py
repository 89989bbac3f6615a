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
  own listeners use), and at RCPT its recipient budget, counting the recipients
  Postfix was told DUNNO for in this transaction (``instance``);
- END-OF-MESSAGE (``smtpd_end_of_data_restrictions``): the message and its
  ``recipient_count`` are counted, before Postfix's 250, so the next MAIL anywhere
  (Postfix or smtpgate) sees them;
- anything else: ``DUNNO``.

A fault of the account directory answers ``DEFER_IF_PERMIT`` (4.4.3); the rate
counters fail open, as for smtpgate's own sessions. Requests on one connection
are answered in order, one at a time.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import cast

from smtpgate.auth.authlog import neutralize
from smtpgate.auth.directory import StoreError
from smtpgate.auth.service import AuthContext
from smtpgate.frontdoor.policy import (
    DUNNO,
    PolicyParser,
    PolicyRequest,
    action_for,
    format_action,
)
from smtpgate.policy.sender import envelope_sender_refusal
from smtpgate.server.front_doors import UNFINISHED_TIMEOUT, FrontDoor, UnfinishedClock
from smtpgate.smtp import replies as R

log = logging.getLogger("smtpgate.policy")

#: Transactions whose recipients one connection remembers (a Postfix smtpd runs
#: one transaction at a time; the rest are ones that ended without END-OF-MESSAGE).
MAX_OPEN_TRANSACTIONS = 64
#: Requests a peer may have waiting for their answer on one connection.
MAX_QUEUED = 100


class PolicyDecider:
    """Decides requests; shared by the connections of one front door."""

    def __init__(self, door: FrontDoor) -> None:
        self.door = door

    async def decide(self, req: PolicyRequest, recipients: OrderedDict[str, int]) -> str:
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
            counted = recipients.pop(instance, 0)
            if rates is not None:
                keys = tuple(rates.limits_for(profile, None))
                await rates.count(keys, 1, req.recipient_count or counted)
            return DUNNO
        refused = envelope_sender_refusal(profile, req.get("sender"), rt.policy, where=where)
        if refused is not None:
            return action_for(refused)
        if rates is None:
            return DUNNO
        budget = await rates.budget(profile, None)
        if budget.messages_left is not None and budget.messages_left <= 0:
            log.warning("%s: user=%s message rate limit: %s", where, neutralize(profile.name),
                        neutralize(budget.detail))
            return action_for(R.MESSAGE_RATE_EXCEEDED)
        if state == "RCPT":
            so_far = recipients.get(instance, 0)
            left = budget.recipients_left
            if left is not None and so_far >= left:
                log.warning("%s: user=%s recipient rate limit reached (%d left this hour)",
                            where, neutralize(profile.name), max(left, 0))
                return action_for(R.RECIPIENT_RATE_EXCEEDED)
            recipients[instance] = so_far + 1
            recipients.move_to_end(instance)
            while len(recipients) > MAX_OPEN_TRANSACTIONS:
                recipients.popitem(last=False)
        return DUNNO


class PolicyProtocol(asyncio.Protocol):
    """One Postfix connection: requests answered in order."""

    def __init__(self, decider: PolicyDecider) -> None:
        self._decider = decider
        self._parser = PolicyParser()
        self._transport: asyncio.Transport | None = None
        #: Requests to answer in order; None: close once those before it are answered.
        self._queue: asyncio.Queue[PolicyRequest | None] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        #: Recipients answered DUNNO so far, per transaction (``instance``).
        self._recipients: OrderedDict[str, int] = OrderedDict()
        #: The deadline of a request begun and not finished (never of silence).
        self._unfinished = UnfinishedClock(self._request_too_slow)
        self._peer = ""

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
            if req is None:
                if t is not None:
                    t.close()
                return
            try:
                action = await self._decider.decide(req, self._recipients)
            except Exception:
                log.exception("policy: request failed")
                action = action_for(R.INTERNAL_ERROR)
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

    def connection_lost(self, exc: Exception | None) -> None:
        self._unfinished.stop()
        if self._worker is not None:
            self._worker.cancel()


def protocol_factory(door: FrontDoor) -> Callable[[], asyncio.BaseProtocol]:
    decider = PolicyDecider(door)
    return lambda: PolicyProtocol(decider)
