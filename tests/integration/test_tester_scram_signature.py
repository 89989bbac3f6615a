"""``smtpgate test`` (the installed command) against a server that says 235 to SCRAM
without proving itself (tests/peers/scram_hop.py, in its own process).

RFC 5802 §5: the client authenticates the server by its signature ``v=``. The
tester runs AUTH through the same driver as relay delivery
(tests/unit/test_client_sasl_driver.py shows the relay side against the same hop):
a 235 with no signature, a wrong one, or one before any proof exchange is "auth
refused" (exit 5), and nothing is sent after it. The honest hop is the control.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.peers.scram_hop import PASSWORD, USER

from .conftest import SMTPGATE, free_port

HOP = Path(__file__).resolve().parents[1] / "peers" / "scram_hop.py"


def _greets(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            ok = s.recv(100).startswith(b"220 ")
            s.sendall(b"QUIT\r\n")
            return ok
    except OSError:
        return False


@pytest.fixture
def hop(request: pytest.FixtureRequest) -> Iterator[int]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(HOP), "--port", str(port),
                             "--mode", request.param], stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while not _greets(port):
            assert proc.poll() is None and time.monotonic() < deadline, "hop did not start"
            time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _test(port: int) -> tuple[int, dict[str, Any]]:
    proc = subprocess.run(
        [SMTPGATE, "test", "--server", f"127.0.0.1:{port}", "--plain", "--ehlo", "client.test",
         "--auth", "SCRAM-SHA-256", "--user", USER, "--password-stdin",
         "--to", "bob@example.net", "--timeout", "15", "--json"],
        input=PASSWORD + "\n", capture_output=True, text=True, timeout=120, check=False,
    )
    record: dict[str, Any] = json.loads(proc.stdout)
    return proc.returncode, record


@pytest.mark.parametrize("hop", ["no-final", "early", "bad-signature"], indirect=True)
def test_rfc5802_s5_a_235_without_a_verified_signature_is_auth_refused(hop: int) -> None:
    code, record = _test(hop)
    assert code == 5, record
    assert record["outcome"] == "auth-refused" and record["stage"] != "auth"
    assert record["auth"]["result"] == "refused"
    assert record["auth"]["server_verified"] is False
    assert record["auth"]["reply"].startswith("235")  # the server said yes; we did not
    sent = [e["text"] for e in record["transcript"] if e["kind"] == "send"]
    assert not any(t.startswith("MAIL") for t in sent)
    assert PASSWORD not in json.dumps(record)


@pytest.mark.parametrize("hop", ["honest"], indirect=True)
def test_an_honest_scram_server_is_verified(hop: int) -> None:
    code, record = _test(hop)
    assert code == 0, record
    assert record["auth"]["server_verified"] is True
    assert record["message"]["queued"].startswith("250")
