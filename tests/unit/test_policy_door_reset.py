"""The Postfix policy door when Postfix goes away in the middle of a request (its
smtpd killed): the budget the request reserves is given back, not held for the hour."""

from __future__ import annotations

import asyncio
from typing import cast

from smtpgate.frontdoor.policy import DUNNO, PolicyRequest
from smtpgate.policy.open_messages import OpenMessage, OpenMessages
from smtpgate.server.policy_door import PolicyDecider, PolicyProtocol

RCPT = (b"request=smtpd_access_policy\nprotocol_state=RCPT\nsasl_username=alice@example.org\n"
        b"instance=a1\n\n")


class _Transport:
    def __init__(self) -> None:
        self.closing = False
        self.written: list[bytes] = []

    def get_extra_info(self, name: str) -> object:
        return ("127.0.0.1", 40000) if name == "peername" else None

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def write(self, data: bytes) -> None:
        self.written.append(data)


class _Decider:
    """Decides a RCPT as the real one does: the counters' write (in a thread,
    which a cancelled coroutine does not stop) reserves, then the transaction is
    recorded as open. ``held`` is the budget the counters hold."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.written = asyncio.Event()
        self.held = 0

    @staticmethod
    def clock() -> float:
        return 0.0

    async def decide(self, req: PolicyRequest, opens: OpenMessages) -> str:
        self.started.set()
        await self.written.wait()
        opens.opened(req.get("instance"), OpenMessage(("acct:alice",), 1, 1, 1, 1, 0.0))
        return DUNNO

    def give_back(self, messages: list[OpenMessage]) -> None:
        self.held -= sum(m.messages_held for m in messages)


async def test_a_request_whose_connection_drops_while_it_is_decided_gives_its_budget_back() -> None:
    """Postfix killed after sending a RCPT request: the worker deciding it was
    cancelled, the counters' write went on in its thread, and the reservation,
    never recorded as open, held a message of the account's hourly budget until
    the hour passed (20 such requests: "Message rate limit reached" with nothing
    sent). The request now runs to its end, and what it reserved is given back."""
    decider = _Decider()
    proto = PolicyProtocol(cast(PolicyDecider, decider))
    transport = _Transport()
    proto.connection_made(cast(asyncio.BaseTransport, transport))
    proto.data_received(RCPT)
    await asyncio.wait_for(decider.started.wait(), 10)
    transport.closing = True
    proto.connection_lost(ConnectionResetError())
    decider.held += 1  # the counters' write ends in its thread
    decider.written.set()
    worker = proto._worker
    assert worker is not None
    await asyncio.wait([worker], timeout=10)
    assert decider.held == 0
    assert transport.written == []  # no answer to a peer that is gone
