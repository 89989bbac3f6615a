"""What a SCRAM login with ``--user`` tells the auditor: the iteration count the
server announces for a real account, and whether an unknown name is told apart.

RFC 7677 §4 (and RFC 5802 §5.1) say a server SHOULD announce at least 4096: the
count is what a stolen account database costs to crack. The auditor logged in
with SCRAM, saw ``i=``, and said nothing of it, so a server storing keys with
1,000 iterations (or one) was graded A. The toy here runs a real SCRAM-SHA-256
exchange, with its keys derived at the count under test.

SCRAM's salt comes before any proof: a server that refuses an unknown name right
there, and gives an existing account its salt, tells anyone which accounts exist
(Dovecot 2.3 does so, seen through Postfix); the auditor tried its made-up name
with PLAIN only, where every server answers alike, and said nothing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from pathlib import Path

import pytest

from smtpgate.sasl.scram import scram_credentials_from_password
from tests.unit.audit_toy import Answer, audit_toy, plain_reply

USER = "alice@example.org"
PASSWORD = "Alice-Pass-123"


def _scram_server(iterations: int, unknown: bytes = b"") -> Answer:
    """One connection's SCRAM-SHA-256 server (no -PLUS, AUTH only after TLS). An
    unknown name gets ``unknown`` at once, or (empty) a salt as an account would."""
    creds = scram_credentials_from_password(PASSWORD, "sha256", iterations)
    state: dict[str, str] = {}

    def answer(verb: bytes, line: bytes, tls: bool) -> bytes:
        if verb == b"EHLO":
            return (b"250-mx.test.local\r\n250 AUTH SCRAM-SHA-256\r\n" if tls
                    else b"250-mx.test.local\r\n250 STARTTLS\r\n")
        if not tls:
            return plain_reply(verb) or b"530 5.7.0 Must issue STARTTLS first\r\n"
        if verb == b"AUTH":
            parts = line.split()
            if len(parts) < 3:
                return b"334 \r\n"
            first = base64.b64decode(parts[2]).decode()
            bare = first.split(",", 2)[2]
            if unknown and bare.split(",")[0] != f"n={USER}":
                return unknown
            nonce = bare.split("r=", 1)[1] + "server-nonce"
            server_first = (f"r={nonce},s={base64.b64encode(creds.salt).decode()},"
                            f"i={creds.iterations}")
            state["auth"] = f"{bare},{server_first}"
            return b"334 " + base64.b64encode(server_first.encode()) + b"\r\n"
        if reply := plain_reply(verb):
            return reply
        if line.strip() == b"*":
            state.clear()
            return b"501 5.7.0 Authentication cancelled\r\n"
        if "auth" in state:
            final = base64.b64decode(line.strip()).decode()
            without_proof = final.rsplit(",p=", 1)[0]
            message = f"{state.pop('auth')},{without_proof}".encode()
            signature = hmac.new(creds.server_key, message, hashlib.sha256).digest()
            return b"334 " + base64.b64encode(b"v=" + base64.b64encode(signature)) + b"\r\n"
        return b"235 2.7.0 Authentication successful\r\n"

    return answer


@pytest.mark.parametrize(("iterations", "flagged"), [(1000, True), (4096, False)])
async def test_a_low_scram_iteration_count_is_a_finding(tmp_path: Path, iterations: int,
                                                        flagged: bool) -> None:
    t = await audit_toy(tmp_path, lambda: _scram_server(iterations), user=USER,
                        password=PASSWORD)
    assert t.complete, t.error
    assert [(c.mechanism, c.outcome, c.server_verified) for c in t.credentials] == [
        ("SCRAM-SHA-256", "success", True)]
    assert t.scram_iterations == {"SCRAM-SHA-256": iterations}
    assert t.to_json()["scram_iterations"] == {"SCRAM-SHA-256": iterations}
    found = {f.id: f for f in t.findings}
    if flagged:
        assert found["scram-iterations-low"].detail == (
            "SCRAM-SHA-256: i=1000 (RFC 7677: at least 4096)")
        assert found["scram-iterations-low"].severity.label == "low"
    else:
        assert "scram-iterations-low" not in found


@pytest.mark.parametrize(("unknown", "flagged"), [
    (b"535 5.7.8 Authentication failed\r\n", True),
    (b"", False),  # a made-up salt, as smtpgate's decoy
])
async def test_an_unknown_name_refused_before_its_salt_is_user_enumeration(
        tmp_path: Path, unknown: bytes, flagged: bool) -> None:
    t = await audit_toy(tmp_path, lambda: _scram_server(4096, unknown), user=USER,
                        password=PASSWORD)
    assert t.complete, t.error
    # (The toy also keeps its input across STARTTLS, as asyncio's start_tls does:
    # that finding is not this test's.)
    assert t.scram_unknown_name is not None
    mech, name, reply = t.scram_unknown_name
    # A made-up name in the account's domain, with the mechanism that gave the salt.
    assert mech == "SCRAM-SHA-256" and name.endswith("@example.org") and name != USER
    data = t.to_json()["scram_unknown_name"]
    assert data == {"mechanism": mech, "name": name, "reply": str(reply),
                    "salt_given": not flagged}
    found = {f.id: f for f in t.findings}
    if flagged:
        assert found["user-enumeration"].detail == (
            f"SCRAM-SHA-256: {USER} got its salt (334), the made-up {name} got "
            "535 5.7.8 Authentication failed at once")
        assert found["user-enumeration"].severity.label == "low"
    else:
        assert reply.code == 334
        assert "user-enumeration" not in found


async def test_no_unknown_name_probe_without_a_scram_login(tmp_path: Path) -> None:
    # Without --user there is no account's answer to compare with: no probe, no
    # failed login spent on it.
    t = await audit_toy(tmp_path, lambda: _scram_server(4096, b"535 5.7.8 no\r\n"))
    assert t.complete, t.error
    assert t.scram_unknown_name is None
    assert "user-enumeration" not in {f.id for f in t.findings}
