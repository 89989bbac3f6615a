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
from .test_attacks import plain
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


def test_auth_refused_before_any_exchange_is_logged_banned_and_reported(
        guarded: Server) -> None:
    """Found by the h27authlog review: a scanner sending AUTH in clear, with a
    mechanism not offered or malformed got its 530/504/501 and left no auth-log
    record, so fail2ban never banned it and ``smtpgate report`` never showed it.
    Each is a ``refused`` record now, by real clients (smtplib in clear, openssl
    s_client asking for CRAM-MD5 that is not enabled, raw lines); fail2ban counts them but
    not the 503 a logged-in client gets, and the report counts them apart."""
    import smtplib
    import socket

    tool = require_tool("fail2ban-regex")
    tool_openssl = require_tool("openssl")
    # smtplib in clear on the STARTTLS port: AUTH is not offered, so force it.
    with socket.create_connection(("127.0.0.1", guarded.submission), timeout=20,
                                  source_address=("127.0.0.7", 0)) as sock:
        s = smtplib.SMTP()
        s.sock, s.file = sock, None
        assert s.getreply()[0] == 220
        s.ehlo("scanner.test")
        assert s.docmd("AUTH", f"PLAIN {plain(USER, 'Autumn2024!')}")[0] == 530
        assert s.docmd("AUTH", "LOGIN")[0] == 530
        s.close()
    # openssl s_client after STARTTLS: CRAM-MD5 is not enabled.
    out = subprocess.run(
        [tool_openssl, "s_client", "-connect", f"127.0.0.1:{guarded.submission}",
         "-bind", "127.0.0.7:0", "-starttls", "smtp", "-CAfile", str(guarded.ca), "-crlf",
         "-quiet", "-ign_eof"],
        input="EHLO scanner.test\nAUTH CRAM-MD5\nQUIT\n", capture_output=True, text=True,
        timeout=60, check=False)
    assert "504 5.5.4" in out.stdout, out.stdout + out.stderr
    r = connect(guarded, "127.0.0.7")
    try:
        assert r.cmd("AUTH").startswith("501 5.5.4")
        assert r.cmd("AUTH X\x1b[31mY").startswith("504 5.5.4")
    finally:
        r.close()
    # A logged-in client's second AUTH: logged, not banned.
    r = connect(guarded, "127.0.0.8")
    try:
        assert r.cmd(f"AUTH PLAIN {plain(USER, PASSWORD)}").startswith("235")
        assert r.cmd(f"AUTH PLAIN {plain(USER, PASSWORD)}").startswith("503 5.5.1")
    finally:
        r.close()
    records = [json.loads(x) for x in (guarded.root / "auth.log").read_text().splitlines()]
    refused = [(x["client_ip"], x["mechanism"], x["reason"]) for x in records
               if x["result"] == "refused"]
    assert refused == [
        ("127.0.0.7", "PLAIN", "AUTH before STARTTLS"),
        ("127.0.0.7", "LOGIN", "AUTH before STARTTLS"),
        ("127.0.0.7", "CRAM-MD5", "mechanism not offered"),
        ("127.0.0.7", "", "malformed AUTH command"),
        ("127.0.0.7", "X\x1b[31MY", "mechanism not offered"),  # upper-cased as a name
        ("127.0.0.8", "PLAIN", "already authenticated"),
    ], refused
    assert "\x1b" not in (guarded.root / "auth.log").read_text()  # escaped by JSON
    ips = subprocess.run(
        [tool, "-o", "ip", str(guarded.root / "auth.log"), str(FILTER)],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout.split()
    assert sorted(ips) == ["127.0.0.7"] * 5
    report = json.loads(guarded.cli("report", "--json", "--since", "all").stdout)
    assert report["totals"]["refused"] == 6 and report["totals"]["failure"] == 0
    assert report["top_failing_addresses"] == []
    assert report["top_refused_addresses"][0] == {
        "address": "127.0.0.7", "refused": 5,
        "reasons": {"AUTH before STARTTLS": 2, "malformed AUTH command": 1,
                    "mechanism not offered": 2}}
