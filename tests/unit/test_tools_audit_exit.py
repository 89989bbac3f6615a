"""`smtpgate audit`'s exit code and overall line when some targets could not be
audited (docs/audit.md, "Grades and exit codes")."""

from __future__ import annotations

import io

from rich.console import Console

from smtpgate.cli.audit_cmd import EXIT_CLEAN, EXIT_FINDINGS, EXIT_UNREACHABLE, exit_code
from smtpgate.tools.audit import AuditReport, Target, TargetReport
from smtpgate.tools.findings import finding
from smtpgate.tools.report import render


def _clean(port: int) -> TargetReport:
    return TargetReport(Target("127.0.0.1", port, "starttls"), reachable=True)


def _dead(port: int) -> TargetReport:
    return TargetReport(Target("127.0.0.1", port, "starttls"),
                        error="cannot connect: Connection refused")


def _text(report: AuditReport) -> str:
    out = io.StringIO()
    render(report, Console(file=out, width=160, highlight=False))
    return out.getvalue()


def test_one_unreachable_target_of_several_is_exit_3_not_clean() -> None:
    # Found auditing a running server's 587 and a port where nothing listened: grade
    # A overall and exit 0, as if both had been audited and found clean.
    report = AuditReport([_clean(587), _dead(465)])
    assert exit_code(report) == EXIT_UNREACHABLE
    assert "overall grade: A (1 of 2 targets not audited)" in _text(report)
    with_findings = _clean(587)
    with_findings.findings.append(finding("auth-accepted-in-clear", "PLAIN accepted"))
    assert exit_code(AuditReport([with_findings, _dead(465)])) == EXIT_UNREACHABLE


def test_exit_codes_when_every_target_or_none_was_audited() -> None:
    assert exit_code(AuditReport([_clean(587), _clean(465)])) == EXIT_CLEAN
    assert "overall grade: A\n" in _text(AuditReport([_clean(587), _clean(465)]))
    bad = _clean(587)
    bad.findings.append(finding("auth-accepted-in-clear", "PLAIN accepted"))
    assert exit_code(AuditReport([bad, _clean(465)])) == EXIT_FINDINGS
    none = AuditReport([_dead(587), _dead(465)])
    assert exit_code(none) == EXIT_UNREACHABLE
    assert "overall grade: -\n" in _text(none)
