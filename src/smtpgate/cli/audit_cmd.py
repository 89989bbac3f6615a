"""``smtpgate audit``: probe servers' TLS and AUTH set-up, report findings and a grade.

Exit codes: 0 no findings (advice aside), 1 findings, 2 usage error, 3 no target
could be audited. See docs/audit.md.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn

from smtpgate.tools.audit import (
    AuditOptions,
    AuditReport,
    Target,
    TargetReport,
    parse_targets,
    run_audit,
)
from smtpgate.tools.findings import Severity
from smtpgate.tools.report import render, to_json
from smtpgate.tools.session import default_ehlo_name

EXIT_CLEAN = 0
EXIT_FINDINGS = 1
EXIT_UNREACHABLE = 3


@click.command("audit")
@click.argument("targets", nargs=-1, required=True, metavar="HOST[:PORT]...")
@click.option("--port25", is_flag=True, help="Also probe port 25 of hosts given without a port.")
@click.option("--user", "-u", default="", help="Also check which mechanisms accept this user.")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@click.option("--token-file", type=click.Path(dir_okay=False, path_type=Path),
              help="File holding an OAuth bearer token to try OAUTHBEARER/XOAUTH2 with.")
@click.option("--ca", "ca_file", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="Trust this PEM CA bundle instead of the system store.")
@click.option("--tls-name", metavar="NAME",
              help="Name the certificate must match (default: the host as given).")
@click.option("--relay-domain", metavar="DOMAIN",
              help="The server's own domain for the relay tricks (default: from its greeting).")
@click.option("--ehlo", "ehlo_name", default=None, metavar="NAME", help="Name to send in EHLO.")
@click.option("--timeout", default=15.0, show_default=True, type=click.FloatRange(min=0.1),
              help="Seconds to wait for each reply.")
@click.option("--max-time", default=300.0, show_default=True, type=click.FloatRange(min=1),
              help="Seconds for all the probes of one target (a tarpit cannot hold the "
              "audit longer).")
@click.option("--concurrency", default=4, show_default=True, type=click.IntRange(1, 32),
              help="Targets probed at the same time.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON record instead of tables.")
def audit(
    targets: tuple[str, ...],
    port25: bool,
    user: str,
    password_stdin: bool,
    token_file: Path | None,
    ca_file: Path | None,
    tls_name: str | None,
    relay_domain: str | None,
    ehlo_name: str | None,
    timeout: float,
    max_time: float,
    concurrency: int,
    as_json: bool,
) -> None:
    """Audit the SMTP AUTH and TLS set-up of HOST (ports 587 and 465 unless given).

    Prefix a target with smtps:// for implicit TLS or smtp:// for STARTTLS on an
    unusual port. Exit codes: 0 no findings, 1 findings, 3 a target could not be
    audited.
    """
    try:
        parsed = parse_targets(targets, port25=port25)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="HOST[:PORT]") from None
    if (password_stdin or token_file) and not user:
        raise click.UsageError("--password-stdin and --token-file need --user")
    password = ""
    if password_stdin:
        password = sys.stdin.read().removesuffix("\n").removesuffix("\r")
    token = ""
    if token_file is not None:
        try:
            token = token_file.read_text(encoding="utf-8").strip()
        except OSError as e:
            raise click.ClickException(f"cannot read {token_file}: {e.strerror}") from None
    if password_stdin and not password and not token:
        # Not "--user needs --password-stdin ...", which it was given.
        raise click.UsageError("--password-stdin: standard input is empty (no password)")
    if user and not password and not token:
        if not sys.stdin.isatty():
            raise click.UsageError("--user needs --password-stdin or --token-file")
        password = str(click.prompt("Password", hide_input=True))
    opts = AuditOptions(
        ca_file=ca_file,
        tls_name=tls_name,
        timeout=timeout,
        user=user,
        password=password,
        token=token,
        ehlo_name=ehlo_name or default_ehlo_name(),
        relay_domain=relay_domain,
        concurrency=concurrency,
        max_time=max_time,
    )
    err = Console(stderr=True)
    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        console=err, transient=True, disable=not err.is_terminal,
    ) as progress:
        task = progress.add_task("probing", total=len(parsed))
        running: list[str] = []

        def started(t: Target) -> None:
            running.append(t.label)
            progress.update(task, description=f"probing {', '.join(running)}")

        def finished(r: TargetReport) -> None:
            running.remove(r.target.label)
            progress.update(task, advance=1,
                            description=f"probing {', '.join(running)}" if running else "done")
            if not err.is_terminal and not as_json:
                err.print(f"probed {r.target.label}: grade {r.grade}", highlight=False)

        report = asyncio.run(run_audit(parsed, opts, on_start=started, on_done=finished))
    if as_json:
        click.echo(to_json(report))
    else:
        width = None if sys.stdout.isatty() else 160
        render(report, Console(file=sys.stdout, highlight=False, width=width))
    sys.exit(exit_code(report))


def exit_code(report: AuditReport) -> int:
    """3 when a target could not be audited, whatever the others showed: one of
    several unreachable exited 0 ("no findings") when the rest were clean, so a
    monitoring script took a closed or dead port for a clean one. Else 1 for a
    finding of severity low or worse, 0 for none."""
    if report.not_audited:
        return EXIT_UNREACHABLE
    if any(f.severity > Severity.ADVICE for f in report.findings):
        return EXIT_FINDINGS
    return EXIT_CLEAN


COMMANDS: list[click.Command] = [audit]
