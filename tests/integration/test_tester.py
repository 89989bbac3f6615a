"""``smtpgate test`` against the real smtpgate server: every mechanism, both TLS modes,
the exit codes, and what the transcript and the JSON record show (and never show).

The server enables all nine mechanisms; CRAM-MD5 is opted in for the account with
``smtpgate user cram-md5 --enable``, and OAUTHBEARER/XOAUTH2 trust a local issuer
whose key set is a file written here (tokens minted with PyJWT).
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from .conftest import SMTPGATE, Server, free_port, make_server

pytestmark = pytest.mark.interop

USER = "alice@example.org"
PASSWORD = "correct horse battery"
ISSUER = "https://id.tester.test/"
DOWN_ISSUER = "https://down.tester.test/"
AUDIENCE = "smtp.tester.test"
ALL_MECHANISMS = [
    "SCRAM-SHA-256-PLUS", "SCRAM-SHA-256", "SCRAM-SHA-1-PLUS", "SCRAM-SHA-1",
    "OAUTHBEARER", "XOAUTH2", "PLAIN", "LOGIN", "CRAM-MD5",
]
MAX_MESSAGE = 4096


@dataclass
class Issuer:
    """A local OAuth issuer: an EC key and its JWKS file."""

    key: ec.EllipticCurvePrivateKey
    kid: str

    def jwks(self) -> str:
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.key.public_key()))
        jwk.update({"kid": self.kid, "use": "sig", "alg": "ES256"})
        return json.dumps({"keys": [jwk]})

    def token(self, email: str, issuer: str = ISSUER) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {"iss": issuer, "aud": AUDIENCE, "sub": "u1", "email": email,
                                  "email_verified": True, "iat": now, "nbf": now,
                                  "exp": now + 600}
        return jwt.encode(claims, self.key, algorithm="ES256", headers={"kid": self.kid})


def _configure(srv: Server, issuer: Issuer) -> None:
    (srv.root / "jwks.json").write_text(issuer.jwks())
    text = srv.config.read_text()
    mechs = ", ".join(f'"{m}"' for m in ALL_MECHANISMS)
    text = text.replace('log_file = "auth.log"', f'mechanisms = [{mechs}]\nlog_file = "auth.log"')
    # The second issuer's key set is on a port nobody listens on: verifying its
    # tokens fails for a reason that is not the token's, a temporary failure (454).
    text += (
        "\n[[auth.oauth_issuers]]\n"
        f'issuer = "{ISSUER}"\naudience = ["{AUDIENCE}"]\njwks_file = "jwks.json"\n'
        'algorithms = ["ES256"]\n'
        "\n[[auth.oauth_issuers]]\n"
        f'issuer = "{DOWN_ISSUER}"\naudience = ["{AUDIENCE}"]\n'
        f'jwks_url = "http://127.0.0.1:{free_port()}/jwks"\nalgorithms = ["ES256"]\n'
        f"\n[limits]\nmax_message_size = {MAX_MESSAGE}\n"
    )
    srv.config.write_text(text)


@pytest.fixture(scope="module")
def issuer() -> Issuer:
    return Issuer(ec.generate_private_key(ec.SECP256R1()), "k-" + secrets.token_hex(4))


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory, issuer: Issuer) -> Iterator[Server]:
    """smtpgate with every mechanism enabled and alice opted in to CRAM-MD5."""
    srv = make_server(tmp_path_factory.mktemp("tester") / "srv")
    _configure(srv, issuer)
    srv.add_user(USER, PASSWORD)
    srv.cli("user", "cram-md5", USER, "--enable", "--password-stdin", stdin=PASSWORD + "\n")
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def run_tester(*args: str, secret: str | None = None, env: dict[str, str] | None = None,
               ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SMTPGATE, "test", "--ehlo", "client.test", "--timeout", "15", *args],
        input=secret, capture_output=True, text=True, timeout=120,
        env={**os.environ, **(env or {})}, check=False)


def _json(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    record: dict[str, Any] = json.loads(proc.stdout)
    return record


def _secret_args(mech: str, srv: Server, issuer: Issuer) -> tuple[list[str], str | None]:
    if mech in ("OAUTHBEARER", "XOAUTH2"):
        token_file = srv.root / f"token-{secrets.token_hex(3)}"
        token_file.write_text(issuer.token(USER) + "\n")
        return ["--token-file", str(token_file)], None
    return ["--password-stdin"], PASSWORD


@pytest.mark.parametrize("mech", ALL_MECHANISMS)
def test_every_mechanism_sends_a_message(full: Server, issuer: Issuer, mech: str) -> None:
    extra, secret = _secret_args(mech, full, issuer)
    proc = run_tester("--server", f"127.0.0.1:{full.submission}", "--ca", str(full.ca),
                      "--auth", mech, "--user", USER, *extra, "--to", "bob@example.net",
                      "--json", secret=secret)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    record = _json(proc)
    assert record["outcome"] == "success" and record["stage"] == "data"
    assert record["auth"]["mechanism"] == mech and record["auth"]["result"] == "success"
    if mech.startswith("SCRAM-"):
        assert record["auth"]["server_verified"] is True  # RFC 5802 §5 "v=" checked
    assert record["message"]["queued"].startswith("250")
    assert mech in record["mechanisms_offered"]
    text = json.dumps(record)
    assert PASSWORD not in text
    if mech.endswith("-PLUS"):
        # TLS 1.3 by default: RFC 9266 tls-exporter.
        assert any(e["text"].startswith("p=tls-exporter,") for e in record["transcript"])


def test_scram_plus_over_tls12_binds_to_tls_unique(full: Server) -> None:
    proc = run_tester("--server", f"127.0.0.1:{full.submission}", "--ca", str(full.ca),
                      "--tls-version", "1.2", "--auth", "SCRAM-SHA-256-PLUS", "--user", USER,
                      "--password-stdin", "--quit-after", "auth", "--json", secret=PASSWORD)
    assert proc.returncode == 0, proc.stdout
    record = _json(proc)
    assert record["tls"]["version"] == "TLSv1.2"
    assert "tls-unique" in record["tls"]["channel_bindings"]
    assert any(e["text"].startswith("p=tls-unique,") for e in record["transcript"])


def test_implicit_tls_auto_picks_the_strongest(full: Server, issuer: Issuer) -> None:
    proc = run_tester("--server", f"127.0.0.1:{full.submissions}", "--tls", "--ca", str(full.ca),
                      "--user", USER, "--password-stdin", "--quit-after", "auth", "--json",
                      secret=PASSWORD)
    assert proc.returncode == 0, proc.stdout
    record = _json(proc)
    assert record["mode"] == "implicit"
    assert record["auth"]["mechanism"] == "SCRAM-SHA-256-PLUS"
    # With only a token, auto picks the strongest bearer mechanism.
    token_file = full.root / "token-auto"
    token_file.write_text(issuer.token(USER))
    proc = run_tester("--server", f"127.0.0.1:{full.submissions}", "--tls", "--ca", str(full.ca),
                      "--user", USER, "--token-file", str(token_file), "--quit-after", "auth",
                      "--json")
    assert proc.returncode == 0, proc.stdout
    assert _json(proc)["auth"]["mechanism"] == "OAUTHBEARER"


def test_text_transcript_shows_tls_and_decoded_steps_and_masks_secrets(
    full: Server, issuer: Issuer
) -> None:
    proc = run_tester("--server", f"127.0.0.1:{full.submission}", "--ca", str(full.ca),
                      "--auth", "SCRAM-SHA-256", "--user", USER, "--password-env", "SG_PW",
                      "--to", "bob@example.net", env={"SG_PW": PASSWORD})
    out = proc.stdout
    assert proc.returncode == 0, out
    for line in ("-> STARTTLS", "<- 220 2.0.0", "== TLS started: TLSv1.3",
                 "== certificate subject: CN=localhost", "== certificate issuer:  CN=localhost",
                 "== certificate expires:", "== chain verified: yes",
                 "== hostname '127.0.0.1' verified: yes", "-> AUTH SCRAM-SHA-256 ",
                 "  > n,,n=alice@example.org,r=", "  < r=", "p=********", "<- 334 ********",
                 "  < v=********",
                 "<- 235 2.7.0", "== result: success (exit 0)"):
        assert line in out, line
    assert PASSWORD not in out
    # The bearer token never shows either, in text or JSON.
    token = issuer.token(USER)
    token_file = full.root / "token-text"
    token_file.write_text(token)
    for json_flag in ([], ["--json"]):
        proc = run_tester("--server", f"127.0.0.1:{full.submission}", "--ca", str(full.ca),
                          "--auth", "XOAUTH2", "--user", USER, "--token-file", str(token_file),
                          "--quit-after", "auth", *json_flag)
        assert proc.returncode == 0, proc.stdout
        assert token not in proc.stdout
        assert base64.b64encode(f"user={USER}\x01auth=Bearer {token}\x01\x01".encode()).decode() \
            not in proc.stdout
        assert "auth=Bearer ********" in proc.stdout


def test_untrusted_certificate_is_a_tls_failure_unless_told_otherwise(full: Server) -> None:
    proc = run_tester("--server", f"127.0.0.1:{full.submission}", "--quit-after", "tls", "--json")
    assert proc.returncode == 4, proc.stdout
    record = _json(proc)
    assert record["outcome"] == "tls-failure"
    assert record["tls"]["chain_verified"] is False
    assert "self-signed" in record["tls"]["chain_error"]
    proc = run_tester("--server", f"127.0.0.1:{full.submission}", "--ca", str(full.ca),
                      "--tls-name", "mail.other.test", "--quit-after", "tls", "--json")
    assert proc.returncode == 4
    assert _json(proc)["tls"]["hostname_verified"] is False
    proc = run_tester("--server", f"127.0.0.1:{full.submission}", "--no-tls-verify",
                      "--quit-after", "tls", "--json")
    assert proc.returncode == 0, proc.stdout
    assert _json(proc)["stage"] == "tls"


def test_no_auth_in_clear_is_auth_refused(full: Server) -> None:
    proc = run_tester("--server", f"127.0.0.1:{full.submission}", "--plain", "--user", USER,
                      "--password-stdin", "--json", secret=PASSWORD)
    assert proc.returncode == 5, proc.stdout
    assert "offers no AUTH" in _json(proc)["error"]


def test_unreachable_key_set_is_auth_tempfail(full: Server, issuer: Issuer) -> None:
    token_file = full.root / "token-down"
    token_file.write_text(issuer.token(USER, issuer=DOWN_ISSUER))
    proc = run_tester("--server", f"127.0.0.1:{full.submission}", "--ca", str(full.ca),
                      "--auth", "OAUTHBEARER", "--user", USER, "--token-file", str(token_file),
                      "--json")
    assert proc.returncode == 6, proc.stdout
    record = _json(proc)
    assert record["outcome"] == "auth-tempfail"
    assert record["auth"]["reply"].startswith("454")


def test_oversized_message_is_message_refused(full: Server) -> None:
    data = full.root / "big.eml"
    data.write_bytes(b"Subject: big\r\n\r\n" + b"x" * 70 + b"\r\n" + b"y" * 76 * 100)
    proc = run_tester("--server", f"127.0.0.1:{full.submission}", "--ca", str(full.ca),
                      "--user", USER, "--password-stdin", "--to", "bob@example.net",
                      "--data", str(data), "--json", secret=PASSWORD)
    assert proc.returncode == 7, proc.stdout
    record = _json(proc)
    assert record["outcome"] == "message-refused"
    assert "552" in record["error"]


def test_message_arrives(full: Server) -> None:
    before = len(full.delivered())
    proc = run_tester("--server", f"127.0.0.1:{full.submission}", "--ca", str(full.ca),
                      "--user", USER, "--password-stdin", "--to", "bob@example.net",
                      "--body", "line one\n.starts with a dot", secret=PASSWORD)
    assert proc.returncode == 0, proc.stdout
    files = full.wait_for_mail(before + 1)
    body = files[-1].read_bytes()
    assert b"\n.starts with a dot" in body and b"User-Agent: smtpgate test" in body


def test_wrong_password_is_auth_refused(tmp_path: Path) -> None:
    # Its own server: failed logins must not make the guard block the shared one.
    srv = make_server(tmp_path / "srv")
    srv.add_user(USER, PASSWORD)
    srv.start()
    try:
        proc = run_tester("--server", f"127.0.0.1:{srv.submission}", "--ca", str(srv.ca),
                          "--auth", "PLAIN", "--user", USER, "--password-stdin", "--json",
                          secret="not the password")
    finally:
        srv.stop()
    assert proc.returncode == 5, proc.stdout
    record = _json(proc)
    assert record["outcome"] == "auth-refused"
    assert record["auth"]["reply"].startswith("535")
    assert "not the password" not in proc.stdout


def test_closed_port_is_a_connection_failure() -> None:
    proc = run_tester("--server", f"127.0.0.1:{free_port()}", "--to", "bob@example.net",
                      "--json")
    assert proc.returncode == 3
    assert _json(proc)["outcome"] == "connection-failure"
