"""SCRAM guesses cost the guesser whatever it answers after ``e=invalid-proof`` (issue 8).

Before the fix a client that read ``e=invalid-proof`` and answered ``*`` (as
``smtpgate test`` did) got ``501 Authentication cancelled``, was logged
"client cancelled", and the guard, ``smtpgate report`` and fail2ban saw nothing:
a guesser could try passwords over SCRAM for ever. Here an independent SCRAM
client (scramp) guesses against the real server, a default install plus the small
guard thresholds of test_protection.py, and answers the verdict in every way a
client can: ``*``, an empty line, garbage, a hang-up.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from scramp import ScramClient

from smtpgate.smtp import replies as R

from .conftest import PASSWORD, SMTPGATE, USER, Server, require_tool
from .test_protection import (
    BOB,
    BOB_PASSWORD,
    LOCKOUT,
    auth_log,
    connect,
    guard_blocks,
    make_guarded,
)
from .test_protection_fail2ban import FILTER


@pytest.fixture
def guarded(tmp_path: Path) -> Iterator[Server]:
    srv = make_guarded(tmp_path / "srv")
    yield srv
    if srv.proc is not None:
        srv.stop()


def scram_attempt(
    server: Server, source: str, user: str, password: str, answer: bytes | None
) -> tuple[str, str | None]:
    """SCRAM-SHA-256 from ``source``: (the server's final 334 payload, decoded, or the
    reply that came instead; the reply to ``answer``, None if we hung up)."""
    client = ScramClient(["SCRAM-SHA-256"], user, password)
    r = connect(server, source)
    try:
        first = base64.b64encode(client.get_client_first().encode()).decode()
        reply = r.cmd(f"AUTH SCRAM-SHA-256 {first}")
        if not reply.startswith("334 "):
            return reply, None
        server_first = base64.b64decode(reply[4:]).decode()
        if server_first.startswith("e="):
            verdict = server_first
        else:
            client.set_server_first(server_first)
            reply = r.cmd(base64.b64encode(client.get_client_final().encode()).decode())
            assert reply.startswith("334 "), reply
            verdict = base64.b64decode(reply[4:]).decode()
        if answer is None:
            return verdict, None  # hang up on the verdict
        final = r.cmd(answer)
        if final.startswith("334 "):  # after v=, a client that wants the 235
            final = r.cmd(b"\r\n")
        return verdict, final
    finally:
        r.close()


def wait_for_block(server: Server, kind: str) -> None:
    deadline = time.monotonic() + 10
    while kind not in {b["kind"] for b in guard_blocks(server)}:  # a hang-up counts async
        assert time.monotonic() < deadline, guard_blocks(server)
        time.sleep(0.1)


def test_scram_guesses_count_and_lock_whatever_the_client_answers(guarded: Server) -> None:
    answers: list[bytes | None] = [b"*\r\n", b"\r\n", b"QUIT\r\n", None][:LOCKOUT]
    assert len(answers) == LOCKOUT
    for i, answer in enumerate(answers):
        verdict, final = scram_attempt(guarded, "127.0.0.3", USER, f"guess{i}", answer)
        assert verdict == "e=invalid-proof"
        # The verdict stands: 535 5.7.8; a "*" is answered 501 (RFC 4954 §4: a cancel
        # MUST be), and is that failure all the same (counted below).
        expected = R.AUTH_CANCELLED if answer == b"*\r\n" else R.AUTH_FAILED
        assert final in (str(expected), None)
    wait_for_block(guarded, "account-new")
    # Locked for new addresses, as after PLAIN guesses: even the right password.
    verdict, final = scram_attempt(guarded, "127.0.0.4", USER, PASSWORD, b"\r\n")
    assert verdict == "e=other-error" and final == str(R.AUTH_ACCOUNT_LOCKED)
    # Other accounts are untouched, and SCRAM itself still works.
    verdict, final = scram_attempt(guarded, "127.0.0.4", BOB, BOB_PASSWORD, b"\r\n")
    assert verdict.startswith("v=") and final is not None and final.startswith("235")

    records = auth_log(guarded)
    failures = [x for x in records if x["result"] == "failure"]
    assert [x["client_ip"] for x in failures] == ["127.0.0.3"] * LOCKOUT
    assert all(str(x["reason"]).startswith("SCRAM-SHA-256: invalid proof") for x in failures)
    assert not any(x["result"] == "cancelled" for x in records)
    blocked = [x for x in records if x["result"] == "tempfail"]
    assert len(blocked) == 1 and str(blocked[0]["reason"]).startswith("blocked: account locked")

    report = json.loads(guarded.cli("report", "--since", "1h", "--json").stdout)
    assert report["totals"]["failure"] == LOCKOUT and report["totals"]["cancelled"] == 0
    assert report["accounts"][USER]["failure"] == LOCKOUT
    brute = [(e["address"], e["account"], e["failures"]) for e in report["episodes"]["brute_force"]]
    assert brute == [("127.0.0.3", USER, LOCKOUT)]

    tool = require_tool("fail2ban-regex")
    log = guarded.root / "auth.log"
    out = subprocess.run([tool, str(log), str(FILTER)], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    m = re.search(r"Lines: (\d+) lines, (\d+) ignored, (\d+) matched", out)
    assert m is not None, out
    assert int(m.group(3)) == LOCKOUT + 1, out  # the guesses and the blocked attempt
    ips = subprocess.run([tool, "-o", "ip", str(log), str(FILTER)], capture_output=True,
                         text=True, timeout=60, check=True).stdout.split()
    assert sorted(ips) == ["127.0.0.3"] * LOCKOUT + ["127.0.0.4"]


def test_scram_access_policy_refusal_is_a_failure_with_its_reason(guarded: Server) -> None:
    guarded.cli("user", "access", BOB, "--network", "127.0.0.10/32")
    verdict, final = scram_attempt(guarded, "127.0.0.11", BOB, BOB_PASSWORD, b"*\r\n")
    assert verdict == "e=invalid-proof" and final == str(R.AUTH_CANCELLED)  # RFC 4954 §4
    [record] = auth_log(guarded)
    assert (record["mechanism"], record["result"], record["reason"]) == (
        "SCRAM-SHA-256",
        "failure",
        "access policy: address 127.0.0.11 not in the account's networks",
    )
    # A refusal that does not depend on the password never locks the account.
    assert not any(str(b["kind"]).startswith("account") for b in guard_blocks(guarded))
    verdict, final = scram_attempt(guarded, "127.0.0.10", BOB, BOB_PASSWORD, b"\r\n")
    assert final is not None and final.startswith("235")


def test_smtpgate_test_reads_the_535_after_a_scram_error(guarded: Server) -> None:
    """The tester answers ``e=`` with the empty response (not "*") and reports the 535."""
    proc = subprocess.run(
        [SMTPGATE, "test", "--server", f"127.0.0.1:{guarded.submission}", "--ca",
         str(guarded.ca), "--ehlo", "client.test", "--auth", "SCRAM-SHA-256", "--user", USER,
         "--password-stdin", "--json", "--timeout", "15"],
        input="not the password", capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 5, proc.stdout + proc.stderr
    record = json.loads(proc.stdout)
    assert record["outcome"] == "auth-refused"
    assert record["auth"]["reply"] == str(R.AUTH_FAILED)
    assert "invalid-proof" in record["auth"]["detail"]
    sent = [e["text"] for e in record["transcript"] if e["kind"] == "send"]
    assert "*" not in sent and "" in sent
    [log] = auth_log(guarded)
    assert (log["result"], log["reason"]) == ("failure", "SCRAM-SHA-256: invalid proof")
