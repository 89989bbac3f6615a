"""The messages one Postfix policy connection has reserved budget for and not yet
settled: a pure table, no I/O (the door, ``server/policy_door.py``, does that).

Why reservations: the door used to check the hourly budget at RCPT and count the
message at END-OF-MESSAGE. Postfix runs many smtpd processes, each with its own
connection to the door; N sessions of one account checking at once all saw the
same count and all passed, and the account sent up to N-1 messages past its
limit. Now the first RCPT of a message counts it (and each RCPT its recipient)
in one atomic step with the check (``RateLimiter.reserve``); END-OF-MESSAGE
settles the reservation (the recipients Postfix accepted in the end, which can
be fewer than those the door allowed); a message that never gets there gives it
back.

When a message never ends: a Postfix smtpd process runs one transaction at a
time and keeps its policy connection from one session to the next. So a request
for another transaction (``instance``) means the earlier ones ended without
END-OF-MESSAGE (RSET, a rejected DATA, a client gone); a closed connection ends
them all; and one older than ``RESERVATION_TIMEOUT`` is given back whatever
comes (a session stuck in a long DATA phase: if its END-OF-MESSAGE does come,
the message is counted whole then, as if never reserved).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from smtpgate.policy.rates import Held

#: Seconds after its first RCPT a reservation is given back if its message has
#: not ended: twice Postfix's idle limit on a policy connection
#: (``smtpd_policy_service_max_idle``, 300 s), well past a normal DATA phase.
RESERVATION_TIMEOUT = 600.0
#: Transactions one connection keeps (a Postfix smtpd runs one at a time; more
#: come only from a peer that is not Postfix, whose oldest are given back).
MAX_OPEN = 64


@dataclass(slots=True)
class OpenMessage:
    """One transaction between its first RCPT and its END-OF-MESSAGE."""

    keys: tuple[str, ...]
    bucket: int
    #: Counted already (by the reservations): 1 or 0 (nothing held, fail open).
    messages_held: int
    recipients_held: int
    #: Recipients the door answered DUNNO for.
    recipients: int
    #: The door's clock at the first RCPT.
    started: float

    def hold(self, more: Held) -> None:
        """Add a further reservation (a recipient's) of this transaction."""
        self.messages_held += more.messages
        self.recipients_held += more.recipients

    def settlement(self, recipient_count: int | None) -> tuple[int, int]:
        """(messages, recipients) to add at END-OF-MESSAGE so that the counters hold
        one message and the recipients Postfix accepted (``recipient_count``; this
        transaction's DUNNO answers if Postfix did not say)."""
        accepted = self.recipients if recipient_count is None else recipient_count
        return 1 - self.messages_held, accepted - self.recipients_held

    def release(self) -> tuple[int, int]:
        """(messages, recipients) to add to give the reservation back."""
        return -self.messages_held, -self.recipients_held


class OpenMessages:
    """One connection's open transactions, by Postfix's ``instance``."""

    def __init__(self) -> None:
        self._open: OrderedDict[str, OpenMessage] = OrderedDict()

    def __len__(self) -> int:
        return len(self._open)

    def get(self, instance: str) -> OpenMessage | None:
        return self._open.get(instance)

    def opened(self, instance: str, message: OpenMessage) -> list[OpenMessage]:
        """Keep ``message``; the transactions to give back because of it (over
        ``MAX_OPEN``)."""
        self._open[instance] = message
        self._open.move_to_end(instance)
        gone = []
        while len(self._open) > MAX_OPEN:
            gone.append(self._open.popitem(last=False)[1])
        return gone

    def ended(self, instance: str) -> OpenMessage | None:
        """END-OF-MESSAGE of ``instance``: its transaction, no longer open."""
        return self._open.pop(instance, None)

    def abandoned(self, instance: str, now: float) -> list[OpenMessage]:
        """A request of ``instance`` came at ``now``: the other transactions (they
        ended without END-OF-MESSAGE) and any past ``RESERVATION_TIMEOUT``, taken
        out to be given back."""
        gone = [k for k, m in self._open.items()
                if k != instance or now - m.started > RESERVATION_TIMEOUT]
        return [self._open.pop(k) for k in gone]

    def expired(self, now: float) -> list[OpenMessage]:
        """Those past ``RESERVATION_TIMEOUT``, taken out."""
        gone = [k for k, m in self._open.items() if now - m.started > RESERVATION_TIMEOUT]
        return [self._open.pop(k) for k in gone]

    def oldest_start(self) -> float | None:
        return min((m.started for m in self._open.values()), default=None)

    def all(self) -> list[OpenMessage]:
        """Every open transaction, taken out (the connection closed)."""
        out = list(self._open.values())
        self._open.clear()
        return out
