"""Guesses sent at the same moment do not outrun the guard's per-address limit.

The attack (found by the red-team pass): open many connections from one address,
get each to the point of AUTH, then send all the wrong passwords at once. Each
attempt was checked against the record before any of the others' failures was
in it, so 15 simultaneous guesses were all verified (and answered 535) against
a limit of 6. Now the attempts from one address follow one another from the
guard's check to their committed failure (auth/attempt_gate.py), per process:
with W worker processes at most W - 1 guesses beyond the limit. Tried from a
new address and from one the account knows (an attacker behind the owner's
NAT), on the real server with the config init writes.
"""

from __future__ import annotations

import base64
import json
import smtplib
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from .conftest import PASSWORD, USER, Server, serving_alice

LIMIT = 4
GUESSES = 16
GUARD = f"""
[guard]
address_failure_limit = {LIMIT}
penalty_base = 0.01
penalty_max = 0.05
lockout_threshold = 1000
known_lockout_threshold = 1000
distributed_addresses = 1000
"""


def running(tmp_path_factory: pytest.TempPathFactory, guard: str) -> Iterator[Server]:
    """A server with alice and ``guard``'s settings, for one module-scoped fixture."""
    yield from serving_alice(tmp_path_factory.mktemp("concurrent") / "srv", guard)


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from running(tmp_path_factory, GUARD)


def plain(password: str) -> str:
    return base64.b64encode(f"\0{USER}\0{password}".encode()).decode()


def guesses_at_once(srv: Server, source: str | list[str]) -> Counter[int]:
    """GUESSES connections from ``source`` (or one from each of several), each ready
    for AUTH, then every wrong password sent at the same moment; the count of each
    reply code."""
    sources = source if isinstance(source, list) else [source] * GUESSES
    ready = threading.Barrier(GUESSES)

    def one(n: int) -> int:
        with smtplib.SMTP("127.0.0.1", srv.submission, timeout=60,
                          source_address=(sources[n], 0)) as s:
            s.ehlo("guess.test")
            s.starttls(context=srv.client_context())
            s.ehlo("guess.test")
            ready.wait(timeout=60)
            code, _ = s.docmd("AUTH", "PLAIN " + plain(f"wrong guess {n}"))
            return code

    assert len(sources) == GUESSES
    with ThreadPoolExecutor(GUESSES) as pool:
        return Counter(pool.map(one, range(GUESSES)))


def workers(srv: Server) -> int:
    doc = json.loads(srv.cli("status", "--json").stdout)
    return max(1, int(doc["server"]["workers"]))


def login(srv: Server, source: str) -> int:
    with smtplib.SMTP("127.0.0.1", srv.submission, timeout=30,
                      source_address=(source, 0)) as s:
        s.ehlo("owner.test")
        s.starttls(context=srv.client_context())
        s.ehlo("owner.test")
        return s.docmd("AUTH", "PLAIN " + plain(PASSWORD))[0]


@pytest.mark.parametrize("known", [False, True], ids=["new address", "known address"])
def test_simultaneous_guesses_stop_at_the_address_limit(srv: Server, known: bool) -> None:
    source = "127.0.0.61" if known else "127.0.0.62"
    if known:
        assert login(srv, source) == 235  # the address becomes known to the account
    replies = guesses_at_once(srv, source)
    bound = LIMIT + workers(srv) - 1
    assert set(replies) <= {535, 454}, replies
    assert 1 <= replies[535] <= bound, replies  # before the gate: all 16 were verified
    assert replies[454] == GUESSES - replies[535], replies
    # The address is now blocked, for the right password too: the guesses counted.
    assert login(srv, source) == 454


ACCOUNT_GUARD = f"""
[guard]
address_failure_limit = 1000
penalty_base = 0.01
penalty_max = 0.05
lockout_threshold = {LIMIT}
known_lockout_threshold = 1000
distributed_addresses = 1000
"""


@pytest.fixture(scope="module")
def srv_account(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from running(tmp_path_factory, ACCOUNT_GUARD)


def test_simultaneous_guesses_from_many_addresses_stop_at_the_account_lockout(
    srv_account: Server,
) -> None:
    """The same race one level up: one guess from each of 16 new addresses at once
    against one account, whose lockout (for new addresses) comes after 4."""
    srv = srv_account
    assert login(srv, "127.0.0.90") == 235  # the owner's address
    replies = guesses_at_once(srv, [f"127.0.1.{n + 1}" for n in range(GUESSES)])
    assert set(replies) <= {535, 454}, replies
    assert 1 <= replies[535] <= LIMIT + workers(srv) - 1, replies
    assert login(srv, "127.0.2.1") == 454  # locked for new addresses ...
    assert login(srv, "127.0.0.90") == 235  # ... not for the owner's
