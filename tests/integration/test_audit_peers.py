"""``smtpgate audit`` against third-party servers started here on loopback.

* Postfix 3.7 + Dovecot 2.3 SASL, one smtpd per configuration (tests/peers/): the
  good set-up (STARTTLS required for AUTH, SCRAM through Dovecot, TLS >= 1.2, no
  CRAM-MD5, relaying only when authenticated) gets no finding; each bad one gets
  exactly its own finding(s):
  ``smtpd_tls_auth_only = no`` -> AUTH advertised and accepted in clear;
  ``permit_mynetworks`` with loopback in mynetworks -> open relay;
  CRAM-MD5 not filtered -> weak mechanisms; TLS >= 1.0 -> legacy versions.
* aiosmtpd with ``auth_require_tls=False`` -> AUTH in clear (with and without TLS).
* A toy server that keeps its input across STARTTLS -> command injection; the same
  server discarding it (``--safe``) -> nothing.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from smtpgate.tls.certs import write_self_signed
from tests.peers.postfix_dovecot import SCRAM_PASSWORD, SCRAM_USER, PostfixDovecot
from tests.peers.python_peers import PeerProcess, start_peer

from .conftest import SMTPGATE

pytestmark = [pytest.mark.interop, pytest.mark.slow]

#: What each Postfix service must show: its findings and nothing else.
EXPECTED = {
    "good": set(),
    "good-implicit": set(),
    "auth-in-clear": {"auth-offered-in-clear", "auth-accepted-in-clear"},
    "open-relay": {"open-relay"},
    "cram-md5": {"weak-mechanisms"},
    "legacy-tls": {"tls-legacy-versions"},
}


def audit(*args: str, stdin: str | None = None) -> tuple[int, dict[str, Any]]:
    proc = subprocess.run(
        [SMTPGATE, "audit", "--json", "--timeout", "10", "--ehlo", "auditor.test", *args],
        input=stdin, capture_output=True, text=True, timeout=300, check=False)
    assert proc.stdout, proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def ids(target: dict[str, Any]) -> set[str]:
    return {f["id"] for f in target["findings"]}


@pytest.fixture(scope="module")
def postfix_report(mta: PostfixDovecot) -> tuple[int, dict[str, dict[str, Any]]]:
    """One audit of every Postfix service at once (several targets, concurrently)."""
    targets = [
        ("smtps" if name == "good-implicit" else "smtp") + f"://127.0.0.1:{port}"
        for name, port in mta.ports.items()
    ]
    rc, report = audit("--ca", str(mta.ca), "--concurrency", "3", *targets)
    by_port = {t["port"]: t for t in report["targets"]}
    return rc, {name: by_port[port] for name, port in mta.ports.items()}


@pytest.mark.parametrize("service", list(EXPECTED))
def test_postfix_findings_are_exactly_the_configured_ones(
    postfix_report: tuple[int, dict[str, dict[str, Any]]], service: str
) -> None:
    rc, targets = postfix_report
    t = targets[service]
    assert t["reachable"] and t["error"] is None
    assert ids(t) == EXPECTED[service], json.dumps(t, indent=1)
    assert t["notes"] == []
    assert t["banner"].startswith("mx.test.local ESMTP Postfix")
    assert rc == 1  # some services have findings


def test_postfix_good_config_details(
    postfix_report: tuple[int, dict[str, dict[str, Any]]]
) -> None:
    _, targets = postfix_report
    good = targets["good"]
    assert good["grade"] == "A"
    assert good["auth_before_tls"]["advertised"] == []
    assert good["auth_before_tls"]["accepted"] is False
    assert "SCRAM-SHA-256" in good["mechanisms_after_tls"]
    assert "CRAM-MD5" not in good["mechanisms_after_tls"]
    assert good["legacy_versions_accepted"] == {"TLS 1.0": False, "TLS 1.1": False}
    assert good["starttls_injection"]["result"] == "not-vulnerable"
    assert all("Client host rejected" in a["reply"] or "reject" in a["reply"].lower()
               for a in good["relay"]["attempts"])


def test_postfix_bad_configs_evidence(
    postfix_report: tuple[int, dict[str, dict[str, Any]]]
) -> None:
    _, targets = postfix_report
    clear = targets["auth-in-clear"]
    assert clear["auth_before_tls"]["advertised"] == ["PLAIN", "LOGIN", "SCRAM-SHA-1",
                                                      "SCRAM-SHA-256"]
    # Postfix passed the dummy identity to Dovecot, which refused it: accepted in clear.
    assert "535 5.7.8" in clear["auth_before_tls"]["detail"]
    relay = targets["open-relay"]
    accepted = {a["trick"] for a in relay["relay"]["attempts"] if a["accepted"]}
    assert {"plain", "source-route", "quoted-local-part", "bang-path"} <= accepted
    assert relay["grade"] == "F"
    # The control address in Postfix's own name was accepted as well, so the forms
    # ending in @mx.test.local prove nothing by themselves and are not counted.
    assert "inconclusive" in relay["relay"]["note"]
    assert targets["legacy-tls"]["legacy_versions_accepted"] == {"TLS 1.0": True,
                                                                 "TLS 1.1": True}
    assert "CRAM-MD5" in targets["cram-md5"]["mechanisms_after_tls"]


def test_postfix_credentials_per_mechanism(mta: PostfixDovecot) -> None:
    port = mta.ports["good"]
    rc, report = audit("--ca", str(mta.ca), "--user", SCRAM_USER, "--password-stdin",
                       f"smtp://127.0.0.1:{port}", stdin=SCRAM_PASSWORD)
    assert rc == 1, report
    (t,) = report["targets"]
    results = {c["mechanism"]: c["result"] for c in t["credentials"]}
    # Dovecot holds SCRAM-SHA-256 keys only: SHA-1 cannot work.
    assert results == {"PLAIN": "success", "LOGIN": "success", "SCRAM-SHA-1": "refused",
                       "SCRAM-SHA-256": "success"}
    assert t["scram_iterations"] == {"SCRAM-SHA-256": 4096}  # doveadm pw's count
    # Dovecot 2.3 refuses an unknown name's SCRAM before any salt, and gives an
    # account its salt: which names exist is plain to see (the h27tools review).
    assert ids(t) == {"user-enumeration"}
    assert t["scram_unknown_name"]["salt_given"] is False
    assert t["scram_unknown_name"]["reply"].startswith("535 5.7.8")
    assert t["grade"] == "B"
    rc, report = audit("--ca", str(mta.ca), "--user", SCRAM_USER, "--password-stdin",
                       f"smtp://127.0.0.1:{port}", stdin="wrong-pass")
    (t,) = report["targets"]
    # The account's salt came before the wrong proof was refused: the same tell.
    assert ids(t) == {"credentials-refused", "user-enumeration"}


@pytest.fixture
def certs(tmp_path: Path) -> tuple[Path, Path]:
    write_self_signed(tmp_path / "cert.pem", tmp_path / "key.pem", "localhost")
    return tmp_path / "cert.pem", tmp_path / "key.pem"


@pytest.fixture
def peers() -> Iterator[list[PeerProcess]]:
    started: list[PeerProcess] = []
    yield started
    for p in started:
        p.stop()


def test_aiosmtpd_auth_in_clear(tmp_path: Path, certs: tuple[Path, Path],
                                peers: list[PeerProcess]) -> None:
    with_tls = start_peer("aiosmtpd_server.py", tmp_path, "--cert", str(certs[0]),
                          "--key", str(certs[1]))
    peers.append(with_tls)
    without_tls = start_peer("aiosmtpd_server.py", tmp_path)
    peers.append(without_tls)
    rc, report = audit("--ca", str(certs[0]), f"smtp://127.0.0.1:{with_tls.port}",
                       f"smtp://127.0.0.1:{without_tls.port}")
    assert rc == 1
    t = {x["port"]: x for x in report["targets"]}
    tls_t, plain_t = t[with_tls.port], t[without_tls.port]
    # auth_require_tls=False: AUTH PLAIN/LOGIN advertised and run before STARTTLS.
    assert ids(tls_t) == {"auth-offered-in-clear", "auth-accepted-in-clear", "no-scram"}
    assert tls_t["auth_before_tls"]["advertised"] == ["LOGIN", "PLAIN"]
    assert tls_t["starttls_injection"]["result"] == "not-vulnerable"  # fixed in 1.4.6
    assert ids(plain_t) == {"no-tls", "auth-offered-in-clear", "auth-accepted-in-clear"}
    assert not any(a["accepted"] for x in (tls_t, plain_t) for a in x["relay"]["attempts"])


@pytest.mark.parametrize(("safe", "expected"), [(False, {"starttls-injection"}), (True, set())])
def test_starttls_command_injection(tmp_path: Path, certs: tuple[Path, Path],
                                    peers: list[PeerProcess], safe: bool,
                                    expected: set[str]) -> None:
    toy = start_peer("injectable_smtp.py", tmp_path, "--cert", str(certs[0]), "--key",
                     str(certs[1]), *(["--safe"] if safe else []))
    peers.append(toy)
    rc, report = audit("--ca", str(certs[0]), f"smtp://127.0.0.1:{toy.port}")
    (t,) = report["targets"]
    assert ids(t) == expected
    assert t["starttls_injection"]["result"] == ("not-vulnerable" if safe else "vulnerable")
    assert rc == (0 if safe else 1)
    if not safe:
        assert t["grade"] == "F"
        assert "XSMTPGATEAUDIT" in t["findings"][0]["detail"]
