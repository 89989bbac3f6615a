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


def _default(port: int, *, reachable: bool) -> TargetReport:
    """A target from a bare HOST (its port one of the defaults, not written)."""
    target = Target("127.0.0.1", port, "starttls", port_given=False)
    if reachable:
        return TargetReport(target, reachable=True)
    return TargetReport(target, error="cannot connect: Connection refused")


def test_a_bare_host_offering_only_587_is_graded_on_587_not_failed_for_465() -> None:
    # Most servers offer 587 or 465, not both; `audit HOST` probes both. A default
    # port with nothing on it is no failure while another port of the host was
    # audited, so a clean 587-only server exits 0, not 3.
    report = AuditReport([_default(587, reachable=True), _default(465, reachable=False)])
    assert report.not_audited == []
    assert exit_code(report) == EXIT_CLEAN
    assert "overall grade: A\n" in _text(report)
    none = AuditReport([_default(587, reachable=False), _default(465, reachable=False)])
    assert exit_code(none) == EXIT_UNREACHABLE


def test_a_port_written_out_that_cannot_be_audited_is_exit_3() -> None:
    report = AuditReport([_default(587, reachable=True), _dead(465)])
    assert exit_code(report) == EXIT_UNREACHABLE


def test_parse_targets_marks_the_default_ports_of_a_bare_host() -> None:
    from smtpgate.tools.audit import parse_targets

    bare = parse_targets(["mail.example.org"])
    assert [(t.port, t.port_given) for t in bare] == [(587, False), (465, False)]
    assert [t.port_given for t in parse_targets(["mail.example.org:465"])] == [True]
    # The same target written out and by default is still one target.
    both = parse_targets(["mail.example.org", "mail.example.org:587"])
    assert [(t.port, t.port_given) for t in both] == [(587, True), (465, False)]
