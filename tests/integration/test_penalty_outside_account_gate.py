"""A penalised guesser holds up no other new-address login to the account it
guesses (auth/login.py, the account's attempt gate).

The attack: an address with failures (so a penalty, up to ``penalty_max``)
guesses the owner's password. Its attempt waited out the penalty while it held
the account's gate, so every login to that account from an address it did not
know yet (the owner on a hotel's network) waited behind each penalised guess.
Now the penalty is waited inside the address's gate only; the account's gate is
taken after it, and the guard asked again, so it covers the check, the
verification and the committed failure. The real server, one worker, so every
connection meets the same gates.
"""

from __future__ import annotations

import select
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from smtpgate.smtp import replies as R

from .conftest import PASSWORD, USER, Server, serving_alice
from .test_attacks import Raw, plain
from .test_protection import connect, login

PENALTY = 6.0
GUARD = f"""
[server]
workers = 1

[guard]
penalty_base = {PENALTY}
penalty_max = {PENALTY}
lockout_threshold = 3
distributed_addresses = 1000
address_failure_limit = 1000
spray_accounts = 1000
subnet_spray_accounts = 1000
"""

ATTACKER = "127.0.0.2"


@pytest.fixture
def srv(tmp_path: Path) -> Iterator[Server]:
    yield from serving_alice(tmp_path / "srv", GUARD)


def penalised_guess(server: Server) -> Raw:
    """The attacker's second guess, sent and not yet answered: its first failure
    gives the address a penalty of ``PENALTY`` seconds, which this one waits."""
    assert login(server, ATTACKER, USER, "guess 1").startswith("535")
    r = connect(server, ATTACKER)
    r.send(f"AUTH PLAIN {plain(USER, 'guess 2')}\r\n".encode())
    time.sleep(1.0)  # into its penalty (which is PENALTY s long)
    return r


def unanswered(r: Raw) -> bool:
    return not r.buf and not select.select([r.sock], [], [], 0)[0]


def test_the_owner_from_a_new_address_does_not_wait_for_a_guessers_penalty(srv: Server) -> None:
    attacker = penalised_guess(srv)
    try:
        started = time.monotonic()
        reply = login(srv, "127.0.0.9", USER, PASSWORD)  # the owner, travelling
        took = time.monotonic() - started
        assert reply.startswith("235"), reply
        assert unanswered(attacker)  # answered before the guess behind its penalty
        assert took < PENALTY / 2  # was the rest of the penalty, about 5 s
        assert attacker.reply().startswith("535")  # still judged, after its penalty
    finally:
        attacker.close()


def test_a_failure_counted_during_the_penalty_is_read_after_it(srv: Server) -> None:
    """The guard is asked again once the penalty is over: another address's
    failure meanwhile locked the account, so the penalised guess is refused
    (454) and not verified on the record read before its penalty."""
    attacker = penalised_guess(srv)
    try:
        # The second and third new-address failures (lockout_threshold), counted
        # at once.
        for source in ("127.0.0.3", "127.0.0.4"):
            assert login(srv, source, USER, f"guess {source}").startswith("535")
        assert unanswered(attacker)
        assert attacker.reply() == str(R.AUTH_ACCOUNT_LOCKED)
    finally:
        attacker.close()
