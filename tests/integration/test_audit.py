"""``smtpgate audit`` against the real smtpgate server.

The default configuration must get a clean report (grade A, no finding at all). The
findings smtpgate can be configured into are shown present on one listener and absent
on the default ones of the same server: CRAM-MD5 offered, PLAIN/LOGIN only, AUTH in
clear (``auth_in_clear = true``); and, with their own servers, the certificate
findings (untrusted, wrong name, expiring, expired) and the credential check.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from smtpgate.tls.certs import write_self_signed

from .conftest import SMTPGATE, Server, free_port, make_server

pytestmark = pytest.mark.interop

USER = "alice@example.org"
PASSWORD = "correct horse battery"
#: Each audit ends with a made-up login, refused, and the credentials probe may fail
#: too, all from 127.0.0.1: the guard's default penalties (0.5 s, doubling up to 4 s)
#: delayed every later login of the module's audits by seconds. No finding or note
#: of the audit comes from them, so they are cut short here.
QUICK_PENALTIES = "\n[guard]\npenalty_base = 0.01\npenalty_max = 0.05\n"


def audit(*args: str, stdin: str | None = None, timeout: int = 10) -> tuple[int, dict[str, Any]]:
    proc = subprocess.run(
        [SMTPGATE, "audit", "--json", "--timeout", str(timeout), "--ehlo", "auditor.test", *args],
        input=stdin, capture_output=True, text=True, timeout=180, check=False)
    assert proc.stdout, proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def by_target(report: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {t["port"]: t for t in report["targets"]}


def ids(target: dict[str, Any]) -> set[str]:
    return {f["id"] for f in target["findings"]}


def _extra_listeners(ports: dict[str, int]) -> str:
    return (
        "\n[[listeners]]\n"
        f'name = "cram"\naddress = "127.0.0.1:{ports["cram"]}"\ntls = "starttls"\n'
        'mechanisms = ["SCRAM-SHA-256", "PLAIN", "CRAM-MD5"]\n'
        "\n[[listeners]]\n"
        f'name = "plain-only"\naddress = "127.0.0.1:{ports["plain-only"]}"\ntls = "starttls"\n'
        'mechanisms = ["PLAIN", "LOGIN"]\n'
        "\n[[listeners]]\n"
        f'name = "clear"\naddress = "127.0.0.1:{ports["clear"]}"\ntls = "starttls"\n'
        "auth_in_clear = true\n"
    )


@pytest.fixture(scope="module")
def variants(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, dict[str, int]]]:
    ports = {"cram": free_port(), "plain-only": free_port(), "clear": free_port()}
    srv = make_server(tmp_path_factory.mktemp("audit") / "srv",
                      _extra_listeners(ports) + QUICK_PENALTIES)
    srv.add_user(USER, PASSWORD)
    srv.start()
    try:
        yield srv, ports
    finally:
        srv.stop()


def test_default_config_gets_a_clean_report(variants: tuple[Server, dict[str, int]]) -> None:
    srv, _ = variants
    rc, report = audit("--ca", str(srv.ca), f"127.0.0.1:{srv.submission}",
                       f"smtps://127.0.0.1:{srv.submissions}")
    assert rc == 0, report
    assert report["grade"] == "A" and report["worst_severity"] is None
    sub, subs = by_target(report)[srv.submission], by_target(report)[srv.submissions]
    for t in (sub, subs):
        assert t["findings"] == [] and t["notes"] == [] and t["grade"] == "A"
        assert t["tls"]["version"] == "TLSv1.3"
        assert t["tls"]["chain_verified"] and t["tls"]["hostname_verified"]
        assert t["legacy_versions_accepted"] == {"TLS 1.0": False, "TLS 1.1": False}
        assert "SCRAM-SHA-256-PLUS" in t["mechanisms_after_tls"]
        assert t["relay"]["attempts"] and not any(a["accepted"] for a in t["relay"]["attempts"])
    # Every probe ran on the STARTTLS port, and each found the safe answer.
    assert sub["mode"] == "starttls" and subs["mode"] == "implicit"
    assert sub["auth_before_tls"] == {
        "advertised": [], "accepted": False, "mechanism": "PLAIN",
        "detail": "AUTH PLAIN in clear got 530 5.7.0 Must issue a STARTTLS command first"}
    assert sub["starttls_injection"]["result"] == "not-vulnerable"
    tricks = {a["trick"] for a in sub["relay"]["attempts"]}
    assert tricks == {"plain", "percent-hack", "source-route", "quoted-local-part", "bang-path"}


def test_a_scheme_for_the_other_tls_mode_is_audited_as_the_port_speaks(
    variants: tuple[Server, dict[str, int]]
) -> None:
    # smtps:// for the STARTTLS port was "no-tls", grade D (though STARTTLS is
    # offered); smtp:// for the implicit port waited out the timeout and audited
    # nothing. The user's scheme was wrong, not the server: a note, no finding.
    # The audit waits its whole --timeout for the greeting the implicit port never
    # sends before it tries TLS: 5 s, as the audits of the test below have, not 10.
    srv, _ = variants
    rc, report = audit("--ca", str(srv.ca), f"smtps://127.0.0.1:{srv.submission}",
                       f"smtp://127.0.0.1:{srv.submissions}", timeout=5)
    assert rc == 0, report
    sub, subs = by_target(report)[srv.submission], by_target(report)[srv.submissions]
    assert sub["mode"] == "starttls" and subs["mode"] == "implicit"
    for t in (sub, subs):
        assert t["grade"] == "A" and t["findings"] == [], t
        assert t["tls"]["version"] == "TLSv1.3"
        assert t["notes"] == [t["mode_mismatch"]]
    assert sub["mode_mismatch"].startswith(
        "expected implicit TLS (RFC 8314) as its scheme asked, found an SMTP greeting")
    assert sub["starttls_injection"]["result"] == "not-vulnerable"
    assert subs["mode_mismatch"].startswith(
        "expected STARTTLS (an SMTP greeting first) as its scheme asked, found implicit TLS")


@pytest.mark.parametrize("expected", ["implicit", "starttls"])
def test_a_port_speaking_the_other_mode_than_its_number_is_a_finding(
    variants: tuple[Server, dict[str, int]], expected: str
) -> None:
    # As 465 (implicit by convention) greeting in clear, or 587 speaking implicit
    # TLS: clients set up by the port number cannot connect.
    import asyncio

    from smtpgate.tools.audit import AuditOptions, Target, audit_target

    srv, _ = variants
    port = srv.submission if expected == "implicit" else srv.submissions
    t = asyncio.run(audit_target(Target("127.0.0.1", port, expected),  # type: ignore[arg-type]
                                 AuditOptions(ca_file=srv.ca, timeout=5.0)))
    assert [f.id for f in t.findings] == ["tls-mode-mismatch"]
    assert t.grade == "C" and t.tls is not None  # medium
    assert t.mode_used == ("starttls" if expected == "implicit" else "implicit")


def test_findings_smtpgate_can_be_configured_into(
    variants: tuple[Server, dict[str, int]]
) -> None:
    srv, ports = variants
    rc, report = audit("--ca", str(srv.ca), *(f"smtp://127.0.0.1:{p}" for p in ports.values()))
    assert rc == 1
    t = by_target(report)
    assert ids(t[ports["cram"]]) == {"weak-mechanisms"}
    assert ids(t[ports["plain-only"]]) == {"no-scram"}
    assert t[ports["plain-only"]]["grade"] == "A"  # advice does not lower the grade
    assert ids(t[ports["clear"]]) == {"auth-offered-in-clear", "auth-accepted-in-clear"}
    clear = t[ports["clear"]]["auth_before_tls"]
    assert clear["accepted"] is True and "dummy identity" in clear["detail"]
    assert report["grade"] == "D"


def test_untrusted_chain_and_wrong_name(variants: tuple[Server, dict[str, int]]) -> None:
    srv, _ = variants
    rc, report = audit(f"127.0.0.1:{srv.submission}")  # no --ca: self-signed, untrusted
    assert rc == 1
    (t,) = report["targets"]
    assert ids(t) == {"cert-untrusted"}
    assert "self-signed" in t["findings"][0]["detail"]
    rc, report = audit("--ca", str(srv.ca), "--tls-name", "mail.other.test",
                       f"127.0.0.1:{srv.submission}")
    (t,) = report["targets"]
    assert ids(t) == {"cert-hostname"}


def test_text_report_has_tables_fixes_and_a_grade(variants: tuple[Server, dict[str, int]]) -> None:
    srv, ports = variants
    proc = subprocess.run(
        [SMTPGATE, "audit", "--ca", str(srv.ca), "--timeout", "10",
         f"127.0.0.1:{srv.submission}", f"smtp://127.0.0.1:{ports['clear']}"],
        capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 1
    out = proc.stdout
    assert f"127.0.0.1:{srv.submission}  grade A" in out
    assert f"127.0.0.1:{ports['clear']}  grade D" in out
    assert "auth-accepted-in-clear" in out and "smtpd_tls_auth_only = yes" in out
    assert "overall grade: D" in out and "summary" in out
    # Progress goes to stderr (one line per target when it is not a terminal).
    assert f"probed 127.0.0.1:{ports['clear']}: grade D" in proc.stderr


def test_credentials_are_checked_per_mechanism(tmp_path: Path) -> None:
    srv = make_server(tmp_path / "srv", QUICK_PENALTIES)
    srv.add_user(USER, PASSWORD)
    srv.start()
    try:
        rc, report = audit("--ca", str(srv.ca), "--user", USER, "--password-stdin",
                           f"127.0.0.1:{srv.submission}", stdin=PASSWORD)
        assert rc == 0, report
        (t,) = report["targets"]
        results = {c["mechanism"]: c["result"] for c in t["credentials"]}
        assert results == {m: "success" for m in t["mechanisms_after_tls"]}
        assert PASSWORD not in json.dumps(report)
        rc, report = audit("--ca", str(srv.ca), "--user", USER, "--password-stdin",
                           f"127.0.0.1:{srv.submission}", stdin="wrong password")
        assert rc == 1
        (t,) = report["targets"]
        assert ids(t) == {"credentials-refused"}
        assert not any(c["result"] == "success" for c in t["credentials"])
    finally:
        srv.stop()


def _expired_cert(cert: Path, key: Path) -> None:
    k = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    c = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(k.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=400))
        .not_valid_after(now - dt.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(k, hashes.SHA256())
    )
    cert.write_bytes(c.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(k.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))


@pytest.mark.parametrize(("kind", "finding"), [("expiring", "cert-expiring"),
                                                ("expired", "cert-expired")])
def test_certificate_dates(tmp_path: Path, kind: str, finding: str) -> None:
    srv = make_server(tmp_path / "srv")
    cert, key = srv.root / "tls" / "cert.pem", srv.root / "tls" / "key.pem"
    if kind == "expiring":
        write_self_signed(cert, key, "localhost", days=10)
    else:
        _expired_cert(cert, key)
    srv.start()
    try:
        rc, report = audit("--ca", str(cert), f"127.0.0.1:{srv.submission}",
                           f"smtps://127.0.0.1:{srv.submissions}")
    finally:
        srv.stop()
    assert rc == 1
    for t in report["targets"]:
        # An expired certificate is one finding, not also "untrusted".
        assert ids(t) == {finding}, t
    # serve starts on it (docs/cli.md) and names it at start-up.
    wording = "expires on" if kind == "expiring" else "expired on"
    assert "WARNING smtpgate[" in srv.log_text()
    assert f"tls.cert: the certificate {wording}" in srv.log_text()


def test_nothing_reachable_exits_3() -> None:
    rc, report = audit(f"127.0.0.1:{free_port()}", f"smtps://127.0.0.1:{free_port()}")
    assert rc == 3
    assert report["grade"] == "-"
    assert all(t["error"].startswith("cannot connect") for t in report["targets"])


def test_one_unreachable_target_of_several_exits_3(
        variants: tuple[Server, dict[str, int]]) -> None:
    """Found auditing a running server's submission port and a port where nothing
    listened: exit 0 and overall grade A, as if both were audited and clean."""
    srv, _ = variants
    dead = free_port()
    rc, report = audit("--ca", str(srv.ca), f"127.0.0.1:{srv.submission}",
                       f"127.0.0.1:{dead}")
    assert rc == 3, report
    assert by_target(report)[srv.submission]["grade"] == "A"
    assert by_target(report)[dead]["error"].startswith("cannot connect")
