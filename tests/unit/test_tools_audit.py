"""The auditor's logic without a network: targets, the finding rules, grades, the report.

Each rule of ``_Auditor.evaluate`` is checked with the evidence that triggers it and
with the evidence that must not (the same present/absent pairs run against real
servers in tests/integration/test_audit*.py).
"""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import pytest
from rich.console import Console

from smtpgate.client.replies import ServerReply
from smtpgate.tls.client import CertificateInfo, Verification
from smtpgate.tools.audit import (
    EXPIRY_WARNING_DAYS,
    AuditOptions,
    AuditReport,
    RelayAttempt,
    Target,
    TargetReport,
    _Auditor,
    parse_targets,
)
from smtpgate.tools.findings import CATALOGUE, Severity, finding, grade
from smtpgate.tools.report import render
from smtpgate.tools.session import AuthResult
from smtpgate.tools.tlsreport import TlsReport

NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
DOCS = Path(__file__).resolve().parents[2] / "docs" / "audit.md"


def test_parse_targets_defaults_and_schemes() -> None:
    assert parse_targets(["mx.example.org"]) == [
        Target("mx.example.org", 587, "starttls"), Target("mx.example.org", 465, "implicit")]
    assert [t.port for t in parse_targets(["mx.example.org"], port25=True)] == [587, 465, 25]
    assert parse_targets(["a:2525", "smtps://a:2465", "smtp://[::1]:10025/"]) == [
        Target("a", 2525, "auto"), Target("a", 2465, "implicit", scheme_given=True),
        Target("::1", 10025, "starttls", scheme_given=True)]
    assert parse_targets(["a:25", "a:25"]) == [Target("a", 25, "starttls")]
    assert Target("::1", 25, "starttls").label == "[::1]:25"
    for bad in (":25", "a:0", "a:x", "a:70000"):
        with pytest.raises(ValueError):
            parse_targets([bad])
    assert parse_targets(["smtp://[IPv6:::1]:2525"]) == [
        Target("::1", 2525, "starttls", scheme_given=True)]


@pytest.mark.parametrize(("spec", "why"), [
    ("[::1]2587", "'2587' after ']'"), ("smtps://[::1", "no ']' after '::1'"),
    ("[::1]:", "no port after ':'"), ("mx.example.org:", "no port after ':'"),
])
def test_a_target_typo_is_refused_not_audited_on_the_default_ports(spec: str, why: str) -> None:
    """Until 2026-12 each of these audited 587 and 465 (or 465) of the host, not
    the port meant."""
    with pytest.raises(ValueError, match=f"^{re.escape(repr(spec))}: {re.escape(why)}"):
        parse_targets([spec])


def _tls(*, chain_ok: bool = True, hostname_ok: bool = True, days: float = 365,
         not_before_days: float = -1) -> TlsReport:
    leaf = CertificateInfo("CN=mx", "CN=ca", NOW + dt.timedelta(days=not_before_days),
                           NOW + dt.timedelta(days=days), ("mx.example.org",), (), "00")
    v = Verification(chain_ok, "" if chain_ok else "self-signed certificate (depth 0)",
                     "mx.example.org", hostname_ok)
    return TlsReport("TLSv1.3", "TLS_AES_128_GCM_SHA256", 128, (leaf,), v, (), NOW)


def _clean(**changes: object) -> TargetReport:
    """A target with nothing to find; ``changes`` adds the evidence under test."""
    r = TargetReport(Target("mx.example.org", 587, "starttls"), reachable=True,
                     mode_used="starttls", starttls_offered=True, tls=_tls(),
                     mechanisms_clear=(), mechanisms_tls=("SCRAM-SHA-256", "PLAIN"),
                     auth_clear_accepted=False,
                     legacy_versions={"TLS 1.0": False, "TLS 1.1": False},
                     injection="not-vulnerable",
                     relay=[RelayAttempt("plain", "x@example.net", "554 no", False)])
    for key, value in changes.items():
        setattr(r, key, value)
    return r


def _ids(r: TargetReport) -> list[str]:
    auditor = _Auditor(r.target, AuditOptions())
    auditor.r = r
    auditor.evaluate()
    return sorted(f.id for f in r.findings)


def _cred(ok: bool) -> AuthResult:
    reply = ServerReply(235 if ok else 535, None, ("x",))
    return AuthResult("PLAIN", "success" if ok else "refused", reply)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({}, []),
        ({"tls": None, "mode_used": "plain", "starttls_offered": False}, ["no-tls"]),
        ({"tls": None, "tls_error": "STARTTLS refused: 454"}, ["no-tls"]),
        ({"tls": _tls(chain_ok=False)}, ["cert-untrusted"]),
        ({"tls": _tls(hostname_ok=False)}, ["cert-hostname"]),
        ({"tls": _tls(days=-2)}, ["cert-expired"]),
        ({"tls": _tls(not_before_days=3)}, ["cert-expired"]),
        ({"tls": _tls(days=EXPIRY_WARNING_DAYS - 1)}, ["cert-expiring"]),
        ({"tls": _tls(days=EXPIRY_WARNING_DAYS + 1)}, []),
        ({"legacy_versions": {"TLS 1.0": True, "TLS 1.1": False}}, ["tls-legacy-versions"]),
        ({"legacy_versions": {"TLS 1.0": None}}, []),  # not tested is not a finding
        ({"mechanisms_clear": ("PLAIN",)}, ["auth-offered-in-clear"]),
        ({"auth_clear_accepted": True}, ["auth-accepted-in-clear"]),
        ({"auth_clear_accepted": True, "auth_dummy_accepted": True},
         ["auth-accepted-in-clear", "auth-accepts-anything"]),
        ({"mechanisms_tls": ("SCRAM-SHA-256", "CRAM-MD5")}, ["weak-mechanisms"]),
        ({"mechanisms_tls": ("DIGEST-MD5", "PLAIN")}, ["weak-mechanisms"]),
        ({"mechanisms_tls": ("PLAIN", "LOGIN")}, ["no-scram"]),
        ({"mechanisms_tls": ("PLAIN", "OAUTHBEARER")}, []),
        ({"mechanisms_tls": ()}, []),
        ({"injection": "vulnerable"}, ["starttls-injection"]),
        ({"injection": "inconclusive"}, []),
        ({"relay": [RelayAttempt("bang-path", "n!x", "250 ok", True)]}, ["open-relay"]),
        ({"credentials": [_cred(False), _cred(False)]}, ["credentials-refused"]),
        ({"credentials": [_cred(False), _cred(True)]}, []),
    ],
)
def test_finding_rules(changes: dict[str, object], expected: list[str]) -> None:
    assert _ids(_clean(**changes)) == expected


def test_without_tls_the_clear_mechanisms_are_judged() -> None:
    r = _clean(tls=None, mode_used="plain", starttls_offered=False, mechanisms_tls=None,
               mechanisms_clear=("CRAM-MD5",))
    assert _ids(r) == ["auth-offered-in-clear", "no-tls", "weak-mechanisms"]


def test_unreachable_targets_have_no_findings_and_no_grade() -> None:
    r = TargetReport(Target("x", 587, "starttls"), error="cannot connect")
    assert _ids(r) == [] and r.grade == "-"
    assert AuditReport([r]).grade == "-"


def test_every_finding_has_a_fix_and_one_line_texts() -> None:
    for kind in CATALOGUE.values():
        assert kind.title and kind.fix
        assert "\n" not in kind.title and "\n" not in kind.fix
    assert CATALOGUE["starttls-injection"].severity is Severity.CRITICAL
    assert CATALOGUE["no-scram"].severity is Severity.ADVICE


def test_grade_is_the_worst_severity_and_advice_is_free() -> None:
    assert grade([]) == "A"
    assert grade([finding("no-scram", "x")]) == "A"
    assert grade([finding("credentials-refused", "x")]) == "B"
    assert grade([finding("no-scram", "x"), finding("weak-mechanisms", "x")]) == "C"
    assert grade([finding("cert-untrusted", "x")]) == "D"
    assert grade([finding("cert-untrusted", "x"), finding("open-relay", "x")]) == "F"


def test_docs_list_every_finding_with_its_severity() -> None:
    rows = dict(re.findall(r"^\| `([a-z0-9-]+)` \| (\w+) \|", DOCS.read_text(), re.MULTILINE))
    assert rows == {k.id: k.severity.label for k in CATALOGUE.values()}


def test_report_renders_tables_and_json() -> None:
    bad = _clean(mechanisms_clear=("PLAIN",), auth_clear_accepted=True)
    auditor = _Auditor(bad.target, AuditOptions())
    auditor.r = bad
    auditor.evaluate()
    report = AuditReport([bad, TargetReport(Target("y", 465, "implicit"), error="refused")])
    console = Console(width=200, record=True)
    render(report, console)
    text = console.export_text()
    assert "grade D" in text and "overall grade: D" in text
    assert "auth-accepted-in-clear" in text and "smtpd_tls_auth_only = yes" in text
    assert "y:465  not audited: refused" in text
    data = json.loads(json.dumps(report.to_json()))
    assert data["grade"] == "D" and data["worst_severity"] == "high"
    assert {f["id"] for f in data["targets"][0]["findings"]} == {
        "auth-offered-in-clear", "auth-accepted-in-clear"}
    assert data["targets"][1]["grade"] == "-"


@pytest.mark.parametrize(
    ("offered", "opts", "note"),
    [
        (("LOGIN", "PLAIN"), {"token": "tok"}, "(LOGIN PLAIN) can be used with a token"),
        ((), {"password": "pw"}, "(no AUTH) can be used with a password"),
    ],
)
async def test_credentials_that_no_mechanism_can_use_are_noted(
    offered: tuple[str, ...], opts: dict[str, str], note: str
) -> None:
    # `audit --user U --token-file F` against a PLAIN/LOGIN server said nothing at
    # all about the credentials asked for: no row, no note, no finding.
    auditor = _Auditor(Target("127.0.0.1", 1, "starttls"), AuditOptions(user="u", **opts))
    auditor.r.mechanisms_tls = offered
    await auditor.credentials()  # nothing to try: no connection is opened
    assert auditor.r.credentials == []
    assert len(auditor.r.notes) == 1
    assert auditor.r.notes[0].startswith("credentials not tried: no mechanism offered")
    assert auditor.r.notes[0].endswith(note)


@pytest.mark.parametrize(
    ("host", "banner", "domain"),
    [
        ("::1", "localhost ESMTP smtpgate", "localhost"),  # was "::1": relay-probe-x@::1
        ("127.0.0.1", "192.0.2.25 ESMTP", "localhost"),  # was the IP from the banner
        ("127.0.0.1", "mx.test.local ESMTP Postfix", "mx.test.local"),
        ("mail.example.org", "localhost ESMTP", "mail.example.org"),
    ],
)
def test_relay_domain_is_never_an_ip_address(host: str, banner: str, domain: str) -> None:
    auditor = _Auditor(Target(host, 587, "starttls"), AuditOptions())
    auditor.r.banner = banner
    assert auditor._relay_domain() == domain


@pytest.mark.parametrize(
    ("tls", "note"),
    [
        (_tls(chain_ok=False), "certificate chain does not verify: self-signed certificate"),
        (_tls(hostname_ok=False), "certificate does not match the name 'mx.example.org'"),
    ],
)
async def test_credentials_never_go_to_a_certificate_that_did_not_verify(
    tls: TlsReport, note: str
) -> None:
    # It was: `audit --user U --password-stdin` against a self-signed or wrongly named
    # certificate sent the real password with PLAIN and LOGIN to whoever answered
    # (the report then said cert-untrusted, too late), where `smtpgate test` stops.
    auditor = _Auditor(Target("127.0.0.1", 1, "starttls"),
                       AuditOptions(user="u", password="real secret"))
    auditor.r = _clean(tls=tls)
    await auditor._credentials_if_safe()  # nothing is tried: no connection is opened
    assert auditor.r.credentials == []
    (only,) = auditor.r.notes
    assert only.startswith("credentials not tried: the certificate did not verify")
    assert note in only and "--ca FILE" in only


def test_a_leaf_sent_without_its_intermediate_is_named_in_the_evidence() -> None:
    """cert-untrusted said "unable to get local issuer certificate (depth 0)" for a
    server whose certificate file lacks the intermediate CA's: the evidence now
    says the server sent its certificate alone and names the issuer."""
    from smtpgate.tls.client import X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY

    leaf = CertificateInfo("CN=mx", "CN=R11", NOW - dt.timedelta(days=1),
                           NOW + dt.timedelta(days=60), ("mx.example.org",), (), "00")
    v = Verification(False, "unable to get local issuer certificate (depth 0)",
                     "mx.example.org", True, X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY)
    r = _clean(tls=TlsReport("TLSv1.3", "TLS_AES_128_GCM_SHA256", 128, (leaf,), v, (), NOW))
    auditor = _Auditor(r.target, AuditOptions())
    auditor.r = r
    auditor.evaluate()
    assert [(f.id, f.detail) for f in r.findings] == [(
        "cert-untrusted",
        ("unable to get local issuer certificate (depth 0); the server sent its certificate "
         "alone, without the certificate of its issuer CN=R11: if that is an intermediate "
         "CA, the server must send it too (configure the full chain)"))]
    # A self-signed one has no issuer to send: no such words.
    r = _clean(tls=_tls(chain_ok=False))
    auditor.r = r
    auditor.evaluate()
    assert [(f.id, f.detail) for f in r.findings] == [
        ("cert-untrusted", "self-signed certificate (depth 0)")]
