"""A password spray from many addresses of one subnet at once does not outrun
``subnet_spray_accounts`` (auth/login.py, the subnet's gate).

The attack: one guess against each of many accounts, each from its own address in
one /24, all sent at the same moment. Each attempt read the subnet's count before
any of the others' failures was in it, so 33 distinct accounts were tried against
a limit of 30. Now an attempt from an address the account does not know waits for
the subnet's other such attempts from its guard check to its committed failure
(after its penalty), and the limit holds exactly. The real server, one worker
(the gate is per process, as the address's and the account's are).
"""

from __future__ import annotations

import base64
import smtplib
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from .conftest import Server, serving_alice

LIMIT = 5
GUESSES = 14
GUARD = f"""
[server]
workers = 1

[guard]
penalty_base = 0.01
penalty_max = 0.05
subnet_spray_accounts = {LIMIT}
spray_accounts = 1000
address_failure_limit = 1000
lockout_threshold = 1000
distributed_addresses = 1000
"""


@pytest.fixture
def srv(tmp_path: Path) -> Iterator[Server]:
    yield from serving_alice(tmp_path / "srv", GUARD)


def test_a_spray_at_once_from_one_subnet_stops_at_the_limit(srv: Server) -> None:
    ready = threading.Barrier(GUESSES)

    def one(n: int) -> int:
        with smtplib.SMTP("127.0.0.1", srv.submission, timeout=60,
                          source_address=(f"127.0.0.{n + 10}", 0)) as s:
            s.ehlo("spray.test")
            s.starttls(context=srv.client_context())
            s.ehlo("spray.test")
            secret = base64.b64encode(f"\0user{n}@example.org\0Spring2026!".encode()).decode()
            ready.wait(timeout=60)
            code, _ = s.docmd("AUTH", "PLAIN " + secret)
            return code

    with ThreadPoolExecutor(GUESSES) as pool:
        codes = Counter(pool.map(one, range(GUESSES)))
    # Exactly LIMIT accounts tried (535); the subnet is blocked for the rest (454).
    assert codes == Counter({535: LIMIT, 454: GUESSES - LIMIT})
