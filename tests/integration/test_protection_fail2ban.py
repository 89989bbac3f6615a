"""contrib/fail2ban/filter.d/smtpgate.conf matches a real auth log (fail2ban-regex)."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import PASSWORD, USER, Server, require_tool
from .test_protection import BOB, login, make_guarded

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
