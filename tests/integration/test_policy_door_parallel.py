"""The Postfix policy door against a real ``smtpgate serve`` (two workers), fed by
several connections at once as Postfix's smtpd processes feed it.

The door checked the hourly message budget at RCPT and counted the message at
END-OF-MESSAGE: N sessions of one account at their RCPT together all saw the
same count, and the account sent up to N-1 messages past its limit. It now
reserves at RCPT (the check and the count in one step of the counters) and
settles at END-OF-MESSAGE; a transaction that never ends gives its reservation
back. No Postfix needed: the requests are what Postfix 3.7 sends
(``test_frontdoor_postfix_policy.py`` has the whole stack).
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator

import pytest

from .conftest import PolicyDoor, Server, serving_policy_door

LIMIT = 3
DUNNO = "action=DUNNO"


def _dave_limited(srv: Server) -> None:
    srv.cli("user", "limits", "dave@example.org", "--recipients-per-hour", "4")


@pytest.fixture(scope="module")
def door() -> Iterator[PolicyDoor]:
    yield from serving_policy_door(
        "sgpolpar-", f"\n[server]\nworkers = 2\n\n[limits]\nmessages_per_hour = {LIMIT}\n",
        ("alice@example.org", "bob@example.org", "carol@example.org", "dave@example.org",
         "erin@example.org"),
        _dave_limited)


class Smtpd:
    """One Postfix smtpd process's connection to the policy service."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.file = self.sock.makefile("rb")

    def ask(self, user: str, state: str, instance: str, **more: str) -> str:
        attrs = {"request": "smtpd_access_policy", "protocol_state": state,
                 "sasl_username": user, "sasl_method": "PLAIN", "sender": user,
                 "recipient": "x@example.net", "client_address": "127.0.0.9",
                 "instance": instance, **more}
        self.sock.sendall(("".join(f"{k}={v}\n" for k, v in attrs.items()) + "\n").encode())
        answer = self.file.readline().decode().strip()
        assert self.file.readline() == b"\n"
        return answer

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def rcpt_at_once(door: PolicyDoor, user: str, n: int) -> list[tuple[Smtpd, str, str]]:
    """``n`` sessions of ``user`` ask for their first RCPT at the same moment."""
    sessions = [Smtpd(door.port) for _ in range(n)]
    answers: list[tuple[Smtpd, str, str]] = []
    start = threading.Barrier(n)
    lock = threading.Lock()

    def one(i: int) -> None:
        start.wait()
        answer = sessions[i].ask(user, "RCPT", f"{user}-{i}")
        with lock:
            answers.append((sessions[i], f"{user}-{i}", answer))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return answers


def test_parallel_sessions_cannot_pass_the_message_limit_together(door: PolicyDoor) -> None:
    user = "alice@example.org"
    answers = rcpt_at_once(door, user, 8)
    passed = [(s, i) for s, i, a in answers if a == DUNNO]
    assert len(passed) == LIMIT, [a for _, _, a in answers]
    assert all("Message rate limit" in a for _, _, a in answers if a != DUNNO)
    for s, instance in passed:
        assert s.ask(user, "END-OF-MESSAGE", instance, recipient_count="1") == DUNNO
    for s, _, _ in answers:
        s.close()
    # Settled at the limit: the next message is deferred, on any connection.
    late = Smtpd(door.port)
    try:
        assert "Message rate limit" in late.ask(user, "RCPT", "late")
    finally:
        late.close()


def _eventually_dunno(door: PolicyDoor, user: str, instance: str) -> str:
    """A reservation given back in the background (a closed connection): the next
    RCPT passes once that write is done (bounded)."""
    deadline = time.monotonic() + 10
    while True:
        s = Smtpd(door.port)
        try:
            answer = s.ask(user, "RCPT", instance)
        finally:
            s.close()
        if answer == DUNNO or time.monotonic() > deadline:
            return answer
        time.sleep(0.1)


def test_a_transaction_that_never_ends_gives_its_reservation_back(door: PolicyDoor) -> None:
    user = "bob@example.org"
    answers = rcpt_at_once(door, user, LIMIT)
    assert [a for _, _, a in answers] == [DUNNO] * LIMIT
    # The clients went away before DATA: Postfix closes (or reuses) the connections.
    for s, _, _ in answers:
        s.close()
    assert _eventually_dunno(door, user, "after") == DUNNO


def test_a_request_reset_while_it_is_decided_gives_its_reservation_back(
        door: PolicyDoor) -> None:
    """Postfix killed right after sending RCPT requests (its connections reset):
    a request still being decided then reserved a message of the budget and
    never gave it back, so after a few such resets the account could not send
    for the hour (unit test_policy_door_reset has the exact order of events)."""
    user = "erin@example.org"
    for i in range(30):
        s = Smtpd(door.port)
        s.sock.sendall(("request=smtpd_access_policy\nprotocol_state=RCPT\n"
                        f"sasl_username={user}\nsasl_method=PLAIN\nsender={user}\n"
                        f"recipient=x@example.net\ninstance=reset-{i}\n\n").encode())
        s.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()  # a reset, not a close: no answer is read
    assert _eventually_dunno(door, user, "after-reset") == DUNNO


def test_the_next_transaction_on_a_connection_ends_the_one_before(door: PolicyDoor) -> None:
    """An smtpd process runs one transaction at a time: a request for another one
    means the earlier one ended without END-OF-MESSAGE (RSET, a refused DATA)."""
    user = "carol@example.org"
    s = Smtpd(door.port)
    try:
        for i in range(LIMIT + 2):
            assert s.ask(user, "RCPT", f"t{i}") == DUNNO, i
        assert s.ask(user, "END-OF-MESSAGE", f"t{LIMIT + 1}", recipient_count="1") == DUNNO
    finally:
        s.close()


def test_recipients_are_reserved_and_settled_to_those_accepted(door: PolicyDoor) -> None:
    """dave may have 4 recipients an hour. Two sessions ask for 3 each at once: 4
    pass, never more. One message ends with Postfix accepting only 1 of its
    recipients: the rest go back to the budget."""
    user = "dave@example.org"
    a, b = Smtpd(door.port), Smtpd(door.port)
    try:
        got: dict[str, list[str]] = {"a": [], "b": []}

        def three(name: str, s: Smtpd) -> None:
            for _ in range(3):
                got[name].append(s.ask(user, "RCPT", f"d-{name}"))

        ts = [threading.Thread(target=three, args=(n, s)) for n, s in (("a", a), ("b", b))]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        answers = got["a"] + got["b"]
        assert answers.count(DUNNO) == 4, answers
        assert all("Recipient rate limit" in x for x in answers if x != DUNNO)
        # a's message: Postfix accepted one recipient (a later restriction refused
        # the others); b's never ends.
        assert a.ask(user, "END-OF-MESSAGE", "d-a", recipient_count="1") == DUNNO
    finally:
        a.close()
        b.close()
    # 1 recipient counted; b's reservations given back: 3 more fit, not 4.
    c = Smtpd(door.port)
    try:
        deadline = time.monotonic() + 10
        while (first := c.ask(user, "RCPT", "d-c")) != DUNNO and time.monotonic() < deadline:
            time.sleep(0.1)
        assert first == DUNNO
        more = [c.ask(user, "RCPT", "d-c") for _ in range(3)]
        assert more[:2] == [DUNNO, DUNNO] and "Recipient rate limit" in more[2], more
    finally:
        c.close()
