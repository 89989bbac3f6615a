"""A SCRAM client that stalls holds up nobody else's login (auth/login.py).

The attack: start SCRAM exchanges for the owner's account and leave them, at the
salt (no proof sent) or at the ``e=`` verdict (no answer to it). Each held the
account's attempt gate for its 30 s, so each login of the owner from an address
the account did not know yet waited 30 s behind each such exchange. Now the gates
are let go when the salt goes out (the proof takes them again and is checked
again) and when a failure is announced (it is counted first). The real server,
one worker so that every connection meets the same gate.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from scramp import ScramClient

from smtpgate.smtp import replies as R

from .conftest import PASSWORD, USER, Server, serving_alice
from .test_attacks import Raw
from .test_protection import connect, login

GUARD = """
[server]
workers = 1

[guard]
penalty_base = 0.01
penalty_max = 0.05
lockout_threshold = 2
distributed_addresses = 1000
"""


@pytest.fixture
def srv(tmp_path: Path) -> Iterator[Server]:
    yield from serving_alice(tmp_path / "srv", GUARD)


def salt(server: Server, source: str, password: str) -> tuple[Raw, ScramClient]:
    """A SCRAM-SHA-256 exchange from ``source`` left at the server's salt."""
    client = ScramClient(["SCRAM-SHA-256"], USER, password)
    r = connect(server, source)
    first = base64.b64encode(client.get_client_first().encode()).decode()
    reply = r.cmd(f"AUTH SCRAM-SHA-256 {first}")
    if not reply.startswith("334 "):
        r.close()
        raise AssertionError(reply)
    client.set_server_first(base64.b64decode(reply[4:]).decode())
    return r, client


def timed_login(server: Server, source: str) -> tuple[str, float]:
    started = time.monotonic()
    reply = login(server, source, USER, PASSWORD)
    return reply, time.monotonic() - started


def test_exchanges_left_at_the_salt_hold_up_no_login(srv: Server) -> None:
    stalled = [salt(srv, f"127.0.0.{n}", "wrong guess") for n in (2, 3)]
    try:
        reply, took = timed_login(srv, "127.0.0.9")  # the owner, from a new address
        assert reply.startswith("235"), reply
        assert took < 10  # was 30 s behind each stalled exchange
        r, client = stalled[0]
        verdict = r.cmd(base64.b64encode(client.get_client_final().encode()).decode())
        assert base64.b64decode(verdict[4:]) == b"e=invalid-proof"  # judged, late as it is
    finally:
        for r, _ in stalled:
            r.close()


def test_exchanges_left_at_the_verdict_are_counted_and_hold_up_no_login(srv: Server) -> None:
    stalled: list[Raw] = []
    try:
        for n in (2, 3):  # two wrong proofs: lockout_threshold
            r, client = salt(srv, f"127.0.0.{n}", f"guess {n}")
            stalled.append(r)  # it never answers the e=
            verdict = r.cmd(base64.b64encode(client.get_client_final().encode()).decode())
            assert base64.b64decode(verdict[4:]) == b"e=invalid-proof"
        # Both failures are counted already (the account is locked for new
        # addresses), and the next new address is told so at once, not after
        # 30 s per stalled exchange.
        reply, took = timed_login(srv, "127.0.0.9")
        assert reply == str(R.AUTH_ACCOUNT_LOCKED)
        assert took < 10
        for r in stalled:
            # The announced failure stands (counted above); the "*" itself is
            # answered 501, as RFC 4954 §4 says a cancel MUST be.
            assert r.cmd("*") == str(R.AUTH_CANCELLED)
    finally:
        for r in stalled:
            r.close()
