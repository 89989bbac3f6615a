"""The policy door's open transactions (policy/open_messages.py): what a settlement
adds, and which reservations are given back when a transaction never ends."""

from __future__ import annotations

from smtpgate.policy.open_messages import MAX_OPEN, RESERVATION_TIMEOUT, OpenMessage, OpenMessages
from smtpgate.policy.rates import Held

KEYS = ("acct:alice@example.org",)


def opened(started: float = 0.0, held: int = 1) -> OpenMessage:
    return OpenMessage(KEYS, 100, held, held, 1, started)


def test_a_settlement_leaves_one_message_and_the_recipients_postfix_accepted() -> None:
    m = opened()
    for _ in range(3):
        m.hold(Held(KEYS, 100, 0, 1))
        m.recipients += 1
    assert (m.messages_held, m.recipients_held, m.recipients) == (1, 4, 4)
    assert m.settlement(4) == (0, 0)
    assert m.settlement(1) == (0, -3)  # later restrictions refused three
    assert m.settlement(None) == (0, 0)  # Postfix did not say: the door's count
    assert m.release() == (-1, -4)
    # Nothing held (the counters failed open): the whole message at the end.
    assert opened(held=0).settlement(2) == (1, 2)


def test_another_transaction_or_the_timeout_ends_the_open_ones() -> None:
    table = OpenMessages()
    table.opened("a", opened(0.0))
    assert table.abandoned("a", 10.0) == [] and len(table) == 1
    gone = table.abandoned("b", 11.0)
    assert len(gone) == 1 and len(table) == 0
    table.opened("b", opened(0.0))
    assert table.expired(RESERVATION_TIMEOUT) == []
    assert len(table.abandoned("b", RESERVATION_TIMEOUT + 1)) == 1  # too old, even its own


def test_a_peer_that_opens_too_many_gets_the_oldest_given_back() -> None:
    table = OpenMessages()
    evicted = [m for i in range(MAX_OPEN + 2) for m in table.opened(str(i), opened(float(i)))]
    assert [m.started for m in evicted] == [0.0, 1.0]
    assert table.oldest_start() == 2.0
    assert len(table.all()) == MAX_OPEN and len(table) == 0
