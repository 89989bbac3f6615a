"""``smtpgate test`` against Postfix 3.7 with Dovecot 2.3 SASL, started here on loopback.

Dovecot stores the account as a SCRAM-SHA-256 hash (``doveadm pw``), so SCRAM-SHA-256,
PLAIN and LOGIN work and SCRAM-SHA-1 cannot (no SHA-1 keys): the tester must report
that as "auth refused", not as success. Dovecot 2.3 offers no -PLUS mechanism.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest

from tests.peers.postfix_dovecot import SCRAM_PASSWORD, SCRAM_USER, PostfixDovecot

from .conftest import SMTPGATE

pytestmark = [pytest.mark.interop, pytest.mark.slow]


def run_tester(mta: PostfixDovecot, service: str, *args: str, password: str = SCRAM_PASSWORD,
           ) -> tuple[int, dict[str, Any]]:
    proc = subprocess.run(
        [SMTPGATE, "test", "--server", f"127.0.0.1:{mta.ports[service]}", "--ca", str(mta.ca),
         "--user", SCRAM_USER, "--password-stdin", "--ehlo", "client.test", "--json", *args],
        input=password, capture_output=True, text=True, timeout=120, check=False)
    return proc.returncode, json.loads(proc.stdout)


def test_scram_sha256_through_postfix_to_dovecot(mta: PostfixDovecot) -> None:
    rc, record = run_tester(mta, "good", "--auth", "SCRAM-SHA-256", "--to", "bob@example.net")
    assert rc == 0, record["transcript"]
    assert record["banner"].startswith("mx.test.local ESMTP Postfix")
    assert record["auth"] == {
        "mechanism": "SCRAM-SHA-256", "result": "success",
        "reply": "235 2.7.0 Authentication successful", "detail": "",
        "server_verified": True,
    }
    # TLS seen, and AUTH only after it (smtpd_tls_auth_only = yes).
    assert record["tls"]["chain_verified"] and record["tls"]["hostname_verified"]
    assert record["message"]["queued"].startswith("250 2.0.0 Ok: queued as")
    texts = [e["text"] for e in record["transcript"]]
    # Postfix offers no -PLUS, so the client says "y" (RFC 5802 §6: it could bind).
    assert any(t.startswith("y,,n=scram@test.local,r=") for t in texts)
    assert SCRAM_PASSWORD not in json.dumps(record)


def test_implicit_tls_auto_picks_scram(mta: PostfixDovecot) -> None:
    rc, record = run_tester(mta, "good-implicit", "--tls", "--quit-after", "auth")
    assert rc == 0, record["transcript"]
    assert record["mode"] == "implicit"
    assert record["auth"]["mechanism"] == "SCRAM-SHA-256"  # the strongest Postfix offers


def test_what_dovecot_cannot_do_is_refused(mta: PostfixDovecot) -> None:
    # Only SHA-256 keys are stored: SCRAM-SHA-1 fails at Dovecot, Postfix says 535.
    rc, record = run_tester(mta, "good", "--auth", "SCRAM-SHA-1", "--quit-after", "auth")
    assert rc == 5 and record["auth"]["reply"].startswith("535 5.7.8")
    # Not offered at all.
    rc, record = run_tester(mta, "good", "--auth", "SCRAM-SHA-256-PLUS", "--quit-after", "auth")
    assert rc == 5 and "does not offer SCRAM-SHA-256-PLUS" in record["error"]
    # A wrong password.
    rc, record = run_tester(mta, "good", "--auth", "SCRAM-SHA-256", "--quit-after", "auth",
                        password="wrong-pass")
    assert rc == 5 and record["outcome"] == "auth-refused"


def test_postfix_requires_tls_before_mail(mta: PostfixDovecot) -> None:
    rc, record = run_tester(mta, "good", "--plain", "--quit-after", "auth")
    # smtpd_tls_security_level = encrypt: no AUTH in clear.
    assert rc == 5 and "offers no AUTH" in record["error"]
