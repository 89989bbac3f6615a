"""Render an audit for people (rich tables) and for programs (JSON)."""

from __future__ import annotations

import json

from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from smtpgate.plural import count
from smtpgate.tools.audit import AuditReport, TargetReport
from smtpgate.tools.findings import Severity
from smtpgate.visible import visible

SEVERITY_STYLE = {
    Severity.CRITICAL: "bold red",
    Severity.HIGH: "red",
    Severity.MEDIUM: "yellow",
    Severity.LOW: "cyan",
    Severity.ADVICE: "dim",
}
GRADE_STYLE = {"A": "bold green", "B": "green", "C": "yellow", "D": "red", "F": "bold red"}


def _yes_no(value: bool | None, good: bool) -> Text:
    if value is None:
        return Text("not tested", style="dim")
    ok = value == good
    return Text("yes" if value else "no", style="green" if ok else "red")


class _Rows(Table):
    """A two-column table whose cells are plain text, never rich markup (server
    replies and banners contain "[...]")."""

    def __init__(self) -> None:
        super().__init__(show_header=False, box=None, pad_edge=False)
        self.add_column("what", style="bold", no_wrap=True)
        self.add_column("seen", overflow="fold")

    def row(self, what: str, seen: str | Text) -> None:
        # A string is the server's (a banner, a certificate's subject): escaped.
        self.add_row(Text(what), seen if isinstance(seen, Text) else Text(visible(seen)))


def observations(t: TargetReport) -> Table:
    """What was seen on one target, finding or not."""
    table = _Rows()
    mode = {"starttls": "STARTTLS", "implicit": "implicit TLS", "plain": "no TLS"}.get(
        t.mode_used, "?"
    )
    table.row("banner", t.banner or "-")
    table.row("transport", mode + (f" ({t.tls_error})" if t.tls_error else ""))
    if t.tls is not None:
        tls = t.tls
        table.row("TLS", f"{tls.version}, {tls.cipher} ({tls.bits} bits)")
        leaf = tls.leaf
        if leaf is not None:
            days = tls.days_left() or 0.0
            table.row("certificate", f"{leaf.subject} (issuer {leaf.issuer})")
            table.row("expires", f"{leaf.not_after:%Y-%m-%d} ({count(round(days), 'day')})")
        v = tls.verification
        table.row("chain verified", _yes_no(v.chain_ok, True))
        table.row(f"name {v.hostname} verified", _yes_no(v.hostname_ok, True))
    if t.legacy_versions:
        legacy = ", ".join(f"{n}: {'accepted' if ok else 'refused'}"
                           for n, ok in t.legacy_versions.items())
        table.row("legacy TLS", legacy)
    if t.mechanisms_clear is not None:
        table.row("AUTH before TLS", " ".join(t.mechanisms_clear) or "not advertised")
        table.row("AUTH in clear accepted", _yes_no(t.auth_clear_accepted, False))
    if t.mechanisms_tls is not None:
        table.row("AUTH after TLS", " ".join(t.mechanisms_tls) or "not advertised")
    if t.dummy_login_after_tls is not None:
        table.row("made-up login accepted", _yes_no(t.dummy_login_after_tls, False))
    if t.scram_unknown_name is not None:
        mech, _, reply = t.scram_unknown_name
        table.row(f"unknown name's {mech}",
                  Text("salt given, as for an account", style="green") if reply.code == 334
                  else Text(f"refused at once: {visible(str(reply))}",
                            style="red" if reply.code // 100 == 5 else "dim"))
    if t.injection != "not-tested":
        table.row("STARTTLS injection", t.injection)
    if t.response_injection:
        table.row("after 220 to STARTTLS", Text("bytes in clear (discarded)", style="red"))
    if t.relay:
        accepted = [a for a in t.relay if a.accepted]
        table.row(
            "relay without AUTH",
            Text(f"accepted: {', '.join(sorted({a.trick for a in accepted}))}", style="red")
            if accepted else Text(f"refused ({len(t.relay)} forms tried)", style="green"),
        )
    for c in t.credentials:
        rounds = t.scram_iterations.get(c.mechanism)
        table.row(f"credentials {c.mechanism}",
                      Text(c.outcome + (f" (i={rounds})" if rounds is not None else ""),
                           style="green" if c.ok else "red"))
    for note in t.notes:
        table.row("note", Text(visible(note), style="dim"))  # notes quote the server
    return table


def findings_table(t: TargetReport) -> Table | Text:
    if not t.findings:
        return Text("no findings", style="green")
    table = Table(show_lines=False, expand=False)
    table.add_column("severity", no_wrap=True)
    table.add_column("finding", overflow="fold")
    table.add_column("evidence", overflow="fold")
    table.add_column("fix", overflow="fold")
    for f in sorted(t.findings, key=lambda f: -f.severity):
        # Text, not str: rich would read "[...]" in server replies as markup.
        table.add_row(
            Text(f.severity.label, style=SEVERITY_STYLE[f.severity]),
            Text(f"{f.kind.title} [{f.id}]"),
            Text(visible(f.detail)),
            Text(f.kind.fix),
        )
    return table


def target_block(t: TargetReport) -> RenderableType:
    title = Text(f"{t.target.label}  ", style="bold")  # Text: never markup
    if not t.complete:
        title.append(f"not audited: {visible(t.error or 'unreachable')}", style="red")
        return title
    title.append(f"grade {t.grade}", style=GRADE_STYLE.get(t.grade, ""))
    return Group(title, observations(t), findings_table(t), Text(""))


def summary(report: AuditReport) -> Table:
    table = Table(title="summary", title_justify="left")
    table.add_column("target", no_wrap=True)
    table.add_column("grade", justify="center")
    for sev in sorted(Severity, reverse=True):
        table.add_column(sev.label, justify="right")
    for t in report.targets:
        counts = [str(sum(1 for f in t.findings if f.severity == sev) or "")
                  for sev in sorted(Severity, reverse=True)]
        table.add_row(Text(t.target.label), Text(t.grade, style=GRADE_STYLE.get(t.grade, "")),
                      *counts)
    return table


def render(report: AuditReport, console: Console) -> None:
    for t in report.targets:
        console.print(target_block(t))
    console.print(summary(report))
    g = report.grade
    missing = len(report.not_audited)
    # The grade is of the targets audited only: say that others were not.
    but = (f" ({missing} of {count(len(report.targets), 'target')} not audited)"
           if missing and missing < len(report.targets) else "")
    console.print(Text(f"overall grade: {g}{but}", style=GRADE_STYLE.get(g, "bold")))


def to_json(report: AuditReport) -> str:
    return json.dumps(report.to_json(), indent=2)
