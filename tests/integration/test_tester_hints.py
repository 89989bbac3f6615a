"""``smtpgate test`` against a default smtpgate when the user gets something wrong
(issue 8): a custom implicit-TLS port without --tls, and an app password, which
works with PLAIN and LOGIN only."""

from __future__ import annotations

import json
import re
import subprocess
import time
from typing import Any

import pytest

from .conftest import SMTPGATE, USER, Server

pytestmark = pytest.mark.interop


def run_tester(*args: str, secret: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SMTPGATE, "test", "--timeout", "20", *args], input=secret,
                          capture_output=True, text=True, timeout=120, check=False)


def test_implicit_tls_port_without_tls_says_use_tls(server: Server) -> None:
    # The port is not 465, so the tester cannot guess implicit TLS from it.
    started = time.monotonic()
    proc = run_tester("--server", f"127.0.0.1:{server.submissions}", "--greeting-wait", "1",
                      "--to", "bob@example.net", "--json")
    assert proc.returncode == 4, proc.stdout
    record: dict[str, Any] = json.loads(proc.stdout)
    assert record["outcome"] == "tls-failure"
    assert record["error"] == (f"127.0.0.1:{server.submissions} speaks implicit TLS (it "
                               "sent no greeting and answered a TLS ClientHello): use --tls")
    assert time.monotonic() - started < 20  # the probe answered, not the 20 s timeout


def _app_password(server: Server) -> str:
    out = server.cli("app-password", "add", USER, "laptop").stdout
    found = re.search(r"[a-z2-9]{4}(?:-[a-z2-9]{4}){4}", out)
    assert found, out
    return found.group(0)


def test_app_password_with_scram_is_refused_with_the_hint(server: Server) -> None:
    secret = _app_password(server)
    proc = run_tester("--server", f"127.0.0.1:{server.submission}", "--ca", str(server.ca),
                      "--user", USER, "--password-stdin", "--auth", "SCRAM-SHA-256",
                      "--quit-after", "auth", "--json", secret=secret + "\n")
    assert proc.returncode == 5, proc.stdout
    assert "app passwords work with PLAIN and LOGIN only, not SCRAM; try --auth PLAIN" in (
        json.loads(proc.stdout)["error"])
    assert secret not in proc.stdout


def test_app_password_with_auth_auto_logs_in_with_plain(server: Server) -> None:
    secret = _app_password(server)
    proc = run_tester("--server", f"127.0.0.1:{server.submission}", "--ca", str(server.ca),
                      "--user", USER, "--password-stdin", "--quit-after", "auth",
                      secret=secret + "\n")
    assert proc.returncode == 0, proc.stdout
    assert "--auth auto chose PLAIN" in proc.stdout
    assert "form of an smtpgate app password" in proc.stdout
