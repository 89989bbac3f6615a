"""SCRAM probes are not free (issue 16, docs/protection.md "SCRAM probes").

The attack: AUTH SCRAM-SHA-256 with a client-first message, read the salt and
iteration count in the 334, then give up (``*``, an empty line, garbage, QUIT as
the answer, or a hang-up), and again with the next name. Before the fix every
probe got its 334 and nothing was counted: a free oracle for enumerating names
(with a decoy salt that then gave unknown names away, test_decoy_salt.py).

Now each probe is a failed attempt for the address (penalty, spraying and
flooding blocks) but not for the account: probes cannot lock the owner out.
The guard's thresholds are the protection suite's (test_protection.GUARDED), its
penalties shorter (``QUICK_PENALTIES``).
"""

from __future__ import annotations

import base64
import itertools
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from smtpgate.smtp import replies as R

from .conftest import PASSWORD, USER, Server
from .test_protection import BOB, CAROL, LOCKOUT, connect, guard_blocks, login, make_guarded

#: How a prober leaves after the 334 that carries the salt.
ENDINGS = ("*", "", "garbage!", "QUIT", "hang-up")
#: Probes under way at once (a refused one is answered after penalty_max).
PROBERS = 10
#: penalty_base and penalty_max. What is asserted here is what is counted, blocked
#: and logged, never how long a reply took; but the guard answers a refusal after
#: penalty_max and takes an address's attempts one at a time (in each worker), so with
#: the protection suite's 0.8 s the 57 refused probes of one address took over 20 s.
QUICK_PENALTIES = (0.05, 0.1)


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = make_guarded(tmp_path_factory.mktemp("probes") / "srv", penalties=QUICK_PENALTIES)
    yield srv
    if srv.proc is not None:
        srv.stop()


def probe(server: Server, source: str, name: str, ending: str) -> tuple[str, str]:
    """One SCRAM probe from ``source``, leaving as ``ending`` says: what the 334 to the
    client-first message carried (the salt, or the guard's refusal as SCRAM's
    ``e=``), and the final reply ("" after a hang-up)."""
    r = connect(server, source)
    try:
        first = base64.b64encode(f"n,,n={name},r=probeNonce0123".encode()).decode()
        reply = r.cmd(f"AUTH SCRAM-SHA-256 {first}")
        assert reply.startswith("334 "), reply
        final = ""
        if ending != "hang-up":
            final = r.cmd(ending)  # 501 for "*" and garbage; an e= 334 for the others
            if final.startswith("334 "):
                final = r.cmd("*")
        return base64.b64decode(reply[4:]).decode(), final
    finally:
        r.close()


def records(server: Server, source: str) -> list[dict[str, object]]:
    lines = (server.root / "auth.log").read_text().splitlines()
    return [x for x in map(json.loads, lines) if x["client_ip"] == source]


@pytest.mark.slow
def test_probing_many_names_from_one_address_is_blocked(guarded: Server) -> None:
    names = [USER, BOB, CAROL] + [f"user{i}@example.org" for i in range(57)]
    endings = itertools.cycle(ENDINGS)
    jobs = [(name, next(endings)) for name in names]
    # A few at a time, as a prober would; the guard's refusals each take penalty_max.
    with ThreadPoolExecutor(PROBERS) as pool:
        replies = list(pool.map(lambda j: probe(guarded, "127.0.0.3", *j), jobs))
    salts = [x for x, _ in replies if x.startswith("r=")]
    # The guard refuses before any look-up: SCRAM announces it, the reply is 454.
    blocked = [(x, f) for x, f in replies if x == "e=other-error"]
    assert len(salts) + len(blocked) == 60, replies
    refusals = {str(R.AUTH_BLOCKED), ""}
    if "guard database writes not answering" in guarded.log_text():
        # A disk too slow for the guard's 0.25 s (a loaded machine) fails closed:
        # 454 tempfail for addresses the account does not know (docs/protection.md).
        refusals.add(str(R.AUTH_TEMPFAIL))
    # A "*" is answered 501 whatever was announced (RFC 4954 §4: a cancel MUST be).
    for (_, ending), (x, f) in zip(jobs, replies, strict=True):
        if x == "e=other-error":
            assert f in ({str(R.AUTH_CANCELLED), ""} if ending == "*" else refusals), (ending, f)
    # spray_accounts = 3: the fourth name is refused, bar probes already under way.
    assert len(salts) <= 3 + PROBERS and len(blocked) >= 60 - 3 - PROBERS
    kinds = {(b["kind"], b["key"]) for b in guard_blocks(guarded)}
    assert ("address", "127.0.0.3") in kinds
    # Each probe that read a salt is in the auth log as counted, whatever its ending.
    counted = [x for x in records(guarded, "127.0.0.3") if "counted" in str(x["reason"])]
    assert len(counted) == len(salts)
    # The accounts probed are not locked: their owners log in from elsewhere.
    assert login(guarded, "127.0.0.2", USER, PASSWORD).startswith("235")


def test_probing_one_account_does_not_lock_it(guarded: Server) -> None:
    """Twice the lockout threshold of probes against one account from one new
    address: penalised there, but the owner (from another new address) gets in."""
    replies = [
        probe(guarded, "127.0.0.4", USER, ending)
        for ending in itertools.islice(itertools.cycle(ENDINGS), 2 * LOCKOUT)
    ]
    assert all(x.startswith("r=") for x, _ in replies), replies
    assert not [b for b in guard_blocks(guarded) if b["key"] == USER]
    assert login(guarded, "127.0.0.5", USER, PASSWORD).startswith("235")
    counted = [x for x in records(guarded, "127.0.0.4") if "counted" in str(x["reason"])]
    assert len(counted) == 2 * LOCKOUT


def test_a_cancel_before_the_salt_is_not_counted(guarded: Server) -> None:
    """mutt's first try on -PLUS (AUTH, the empty 334, ``*``) shows nothing and costs
    nothing: many of them from one address block nothing."""
    for _ in range(5):
        r = connect(guarded, "127.0.0.6")
        try:
            assert r.cmd("AUTH SCRAM-SHA-256") == "334 "
            assert r.cmd("*") == str(R.AUTH_CANCELLED)
        finally:
            r.close()
    assert not [b for b in guard_blocks(guarded) if b["key"] == "127.0.0.6"]
    mine = records(guarded, "127.0.0.6")
    assert len(mine) == 5
    assert all(x["result"] == "cancelled" and "counted" not in str(x["reason"]) for x in mine)
