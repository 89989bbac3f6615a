"""Exim 4.96 with ``driver = dovecot`` authenticators (PLAIN, LOGIN, SCRAM-SHA-256,
OAUTHBEARER)
on smtpgate's auth listener, over a unix socket and over TCP (docs/integration.md).

Exim opens one connection per AUTH, waits for the whole handshake before it
speaks, and always sends ``resp=`` (empty without an initial response): the
other shape of the protocol next to Postfix's. One smtpgate and two Exim daemons
(one per socket type) for the module; ``make exim`` unpacks Exim (tests/peers/exim.py).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.peers import exim as exim_peer

from .conftest import IN_CI, Server, free_port, make_server, require_tool
from .oauth_issuer import SCOPE, LocalIssuer

PASSWORD = "Lantern-Quartz-Harbor-58"
ALICE, BOB = "alice@example.org", "bob@example.org"

#: Spraying is blocked after three accounts, so one test shows a guard refusal.
GUARD = """
[guard]
allowlist = []
penalty_base = 0.1
penalty_max = 0.4
spray_accounts = 3
"""


@dataclass
class Stack:
    smtpgate: Server
    exims: dict[str, exim_peer.Exim]
    issuer: LocalIssuer

    def records(self) -> list[dict[str, Any]]:
        path = self.smtpgate.root / "auth.log"
        return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []

    def wait_record(self, before: int, **match: object) -> dict[str, Any]:
        deadline = time.monotonic() + 10
        while True:
            for rec in self.records()[before:]:
                if all(rec.get(k) == v for k, v in match.items()):
                    return rec
            if time.monotonic() > deadline:
                raise AssertionError(f"no auth-log record {match}: {self.records()[before:]}")
            time.sleep(0.05)


def require_exim() -> None:
    """The unpacked Exim and its user (``make exim``); missing under CI is a failure."""
    if os.geteuid() != 0 or not exim_peer.available():
        why = "Exim is not unpacked or Debian-exim is missing (run make exim as root)"
        if IN_CI:
            pytest.fail(why)
        pytest.skip(why)


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    require_exim()
    sockdir = Path(tempfile.mkdtemp(prefix="sgdvx-", dir="/tmp"))
    sockdir.chmod(0o755)
    sock, tcp = sockdir / "auth", free_port()
    root = Path(tempfile.mkdtemp(prefix="sgdvx-srv-"))
    doors = (
        f'\n[[auth_listeners]]\nprotocol = "dovecot"\nname = "exim-unix"\n'
        f'address = "unix:{sock}"\nmode = "0660"\ngroup = "{exim_peer.USER}"\n'
        f'\n[[auth_listeners]]\nprotocol = "dovecot"\nname = "exim-tcp"\n'
        f'address = "127.0.0.1:{tcp}"\n'
    )
    srv: Server | None = None
    exims: dict[str, exim_peer.Exim] = {}
    issuer = LocalIssuer()
    try:
        srv = make_server(root / "srv", doors + GUARD + issuer.config("oauth/jwks.json"))
        mechs = '"SCRAM-SHA-256", "SCRAM-SHA-1", "OAUTHBEARER", "XOAUTH2", "PLAIN", "LOGIN"'
        srv.config.write_text(srv.config.read_text().replace(
            "\n[auth]\n", f'\n[auth]\nmechanisms = [{mechs}]\noauth_scope = "{SCOPE}"\n', 1))
        issuer.write_jwks(root / "srv" / "oauth" / "jwks.json")
        for name in (ALICE, BOB):
            srv.add_user(name, PASSWORD)
        srv.start()
        exims = {"unix": exim_peer.make_exim(str(sock)),
                 "tcp": exim_peer.make_exim(f"127.0.0.1 {tcp}")}
        for e in exims.values():
            e.start()
        yield Stack(srv, exims, issuer)
    finally:
        for e in exims.values():
            e.cleanup()
        if srv is not None and srv.proc is not None:
            srv.stop()
        shutil.rmtree(sockdir, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)


def run(cmd: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False,
                          input=stdin, stdin=None if stdin is not None else subprocess.DEVNULL)


def swaks(e: exim_peer.Exim, mech: str, user: str, password: str, source: str = "127.0.0.1"
          ) -> str:
    proc = run([require_tool("swaks"), "-s", "127.0.0.1", "-p", str(e.port), "-tls", "-li", source,
                "--tls-verify", "--tls-ca-path", str(e.ca), "-a", mech, "-au", user,
                "-ap", password, "--quit-after", "AUTH", "--helo", "client.test"])
    return proc.stdout + proc.stderr


@pytest.mark.parametrize(("service", "mech"), [
    ("unix", "PLAIN"), ("unix", "LOGIN"), ("tcp", "PLAIN"), ("tcp", "LOGIN")])
def test_swaks_through_exim(stack: Stack, service: str, mech: str) -> None:
    before = len(stack.records())
    e = stack.exims[service]
    out = swaks(e, mech, ALICE, PASSWORD)
    assert "235 Authentication succeeded" in out, out + e.log()
    rec = stack.wait_record(before, mechanism=mech, result="success")
    assert (rec["front_door"], rec["listener"], rec["client_ip"], rec["tls"]) == (
        "dovecot", f"exim-{service}", "127.0.0.1", "TLS")


@pytest.mark.parametrize("service", ["unix", "tcp"])
def test_gsasl_scram_sha256_through_exim(stack: Stack, service: str) -> None:
    e = stack.exims[service]
    before = len(stack.records())
    # gsasl sends STARTTLS before any EHLO, which Exim refuses: socat holds the
    # implicit TLS connection and runs gsasl on its plaintext side.
    gsasl = f"stdbuf -o0 {require_tool('gsasl')} --client --smtp -d --quiet --no-cb "
    gsasl += f"-m SCRAM-SHA-256 -a {ALICE} -p {PASSWORD}"
    proc = run([require_tool("socat"),
                f"OPENSSL:127.0.0.1:{e.tls_port},cafile={e.ca},commonname=localhost",
                f"EXEC:{gsasl},stderr"])
    assert proc.returncode == 0, proc.stdout + proc.stderr + e.log()
    stack.wait_record(before, mechanism="SCRAM-SHA-256", result="success", username=ALICE)


def test_msmtp_scram_sha256_through_exim(stack: Stack, tmp_path: Path) -> None:
    e = stack.exims["unix"]
    secret = tmp_path / "secret"
    secret.write_text(PASSWORD)
    before = len(stack.records())
    proc = run([require_tool("msmtp"), "-v", "--host=127.0.0.1", f"--port={e.port}", "--tls=on",
                "--tls-starttls=on", f"--tls-trust-file={e.ca}", "--auth=scram-sha-256",
                f"--user={ALICE}", f"--passwordeval=cat {secret}", f"--from={ALICE}",
                "bob@example.net"],
               stdin=f"From: {ALICE}\nTo: bob@example.net\nSubject: msmtp\n\nhello\n")
    assert proc.returncode == 0 and "<-- 235 Authentication succeeded" in proc.stdout, (
        proc.stdout + proc.stderr + e.log())
    stack.wait_record(before, mechanism="SCRAM-SHA-256", result="success")


def curl_oauthbearer(e: exim_peer.Exim, token: str) -> subprocess.CompletedProcess[str]:
    return run([require_tool("curl"), "-sS", "-v", "--max-time", "30", "--url",
                f"smtp://127.0.0.1:{e.port}/client.test", "--ssl-reqd", "--cacert", str(e.ca),
                "--user", ALICE, "--oauth2-bearer", token, "--mail-from", ALICE,
                "--mail-rcpt", "bob@example.net", "-T", "-"],
               stdin=f"From: {ALICE}\nTo: bob@example.net\nSubject: curl\n\nhello\n")


@pytest.mark.parametrize("service", ["unix", "tcp"])
def test_curl_oauthbearer_through_exim(stack: Stack, service: str) -> None:
    """A token from the issuer smtpgate trusts, relayed by Exim's dovecot driver; a
    token signed by another key is refused (535), never let through."""
    e = stack.exims[service]
    before = len(stack.records())
    proc = curl_oauthbearer(e, stack.issuer.token(ALICE))
    assert proc.returncode == 0, proc.stderr + e.log()
    assert "> AUTH OAUTHBEARER" in proc.stderr and "< 235 " in proc.stderr, proc.stderr
    rec = stack.wait_record(before, mechanism="OAUTHBEARER", result="success", username=ALICE)
    assert rec["listener"] == f"exim-{service}"
    forged = LocalIssuer().token(ALICE)  # the same issuer name, another key
    before = len(stack.records())
    proc = curl_oauthbearer(e, forged)
    assert proc.returncode != 0 and "< 235 " not in proc.stderr, proc.stderr
    assert "< 535 " in proc.stderr, proc.stderr
    stack.wait_record(before, mechanism="OAUTHBEARER", result="failure")


def test_wrong_password_fails_through_exim(stack: Stack) -> None:
    before = len(stack.records())
    out = swaks(stack.exims["unix"], "PLAIN", BOB, "not the password")
    assert "535 Incorrect authentication data" in out and "235 " not in out, out
    rec = stack.wait_record(before, result="failure", username=BOB)
    assert rec["reason"] == "bad password" and rec["listener"] == "exim-unix"


def test_guard_refusal_is_a_temporary_failure_through_exim(stack: Stack) -> None:
    """Spraying from 127.0.0.5 (the rip Exim passes) is blocked; the refusal closes the
    request, which Exim answers as a temporary failure, never 535."""
    e = stack.exims["tcp"]
    outs = [swaks(e, "PLAIN", f"nobody{i}@example.org", "Summer2024!", "127.0.0.5")
            for i in range(4)]
    assert all("535 Incorrect authentication data" in o for o in outs[:3]), outs
    assert "435 Unable to authenticate at present" in outs[3], outs[3]
    assert "235 " in swaks(e, "PLAIN", BOB, PASSWORD, "127.0.0.6")
