"""contrib/fail2ban/filter.d/smtpgate.conf matches a real auth log (fail2ban-regex)."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import PASSWORD, USER, Server, require_tool
from .test_protection import BOB, connect, login, make_guarded

FILTER = Path(__file__).resolve().parents[2] / "contrib" / "fail2ban" / "filter.d" / "smtpgate.conf"


@pytest.fixture
def guarded(tmp_path: Path) -> Iterator[Server]:
    srv = make_guarded(tmp_path / "srv")
    yield srv
    if srv.proc is not None:
        srv.stop()


def test_fail2ban_regex_matches_failures_and_blocked_attempts_only(guarded: Server) -> None:
    tool = require_tool("fail2ban-regex")
    assert login(guarded, "127.0.0.2", USER, PASSWORD).startswith("235")
    for name in (USER, BOB, "nobody@example.org"):  # 3 failures: the address is blocked
        assert login(guarded, "127.0.0.3", name, "Autumn2024!").startswith("535")
    assert login(guarded, "127.0.0.3", USER, PASSWORD).startswith("454")  # 1 blocked attempt
    # A username crafted to name another address must not get that address banned.
    forged = 'x", "client_ip": "192.0.2.1", "client_port": 1, "result": "failure", "u": "'
    assert login(guarded, "127.0.0.4", forged, "y").startswith("535")
    log = guarded.root / "auth.log"
    assert len(log.read_text().splitlines()) == 6
    out = subprocess.run(
        [tool, "--print-all-matched", str(log), str(FILTER)],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout
    m = re.search(r"Lines: (\d+) lines, (\d+) ignored, (\d+) matched, (\d+) missed", out)
    assert m is not None, out
    assert m.groups() == ("6", "0", "5", "1"), out
    ips = subprocess.run(
        [tool, "-o", "ip", str(log), str(FILTER)],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout.split()
    # The real sources only: 4 from the sprayer (3 failures, 1 blocked), 1 from
    # the forger's own address, none for the success or the forged address.
    assert sorted(ips) == ["127.0.0.3"] * 4 + ["127.0.0.4"]


def test_fail2ban_regex_matches_scram_probes_the_guard_counts(guarded: Server) -> None:
    """A SCRAM probe (the salt read, then ``*`` or a hang-up, no proof) counts toward
    the address in the guard, as a guess does (docs/protection.md), and is logged as
    ``cancelled`` with ``(after the salt, without a proof: counted)``: the filter
    matched failures only, so salt harvesting never reached fail2ban. A cancel that
    the guard does not count (LOGIN's ``*`` at the password prompt) still does not."""
    from .test_scram_probes import probe

    tool = require_tool("fail2ban-regex")
    assert probe(guarded, "127.0.0.5", USER, "*")[1].startswith("501")
    probe(guarded, "127.0.0.5", BOB, "hang-up")
    r = connect(guarded, "127.0.0.6")
    try:
        assert r.cmd("AUTH LOGIN").startswith("334")
        assert r.cmd(base64.b64encode(USER.encode()).decode()).startswith("334")
        assert r.cmd("*").startswith("501")
    finally:
        r.close()
    log = guarded.root / "auth.log"
    deadline = time.monotonic() + 30
    while len(log.read_text().splitlines()) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)  # the hang-up's record is written when the server sees it
    results = [json.loads(x)["result"] for x in log.read_text().splitlines()]
    assert results == ["cancelled"] * 3, results
    ips = subprocess.run(
        [tool, "-o", "ip", str(log), str(FILTER)],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout.split()
    assert sorted(ips) == ["127.0.0.5"] * 2
