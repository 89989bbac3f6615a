"""``smtpgate config check``: validate the config and everything ``serve`` checks
before binding (`smtpgate.preflight`), naming each problem's key."""

from __future__ import annotations

import json
from pathlib import Path

import click

from smtpgate.cli.common import ExitCode, config_file, config_missing, config_option
from smtpgate.config import ConfigError, load_config
from smtpgate.plural import count
from smtpgate.preflight import Problem, run_checks
from smtpgate.server import privileges


@click.group()
def config() -> None:
    """Inspect the configuration."""


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


@config.command("check")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of lines.")
@config_option
def check(as_json: bool, config_path: Path | None) -> None:
    """Validate the config file and what it points at (certificate and key,
    databases, directories, delivery, OAuth key sets), and list every loosening of
    a secure default in force. Exit 0 when there are only warnings, 1 on any error,
    3 when the config file does not exist.

    Run it as the user the server runs as: file permissions are checked for the
    user running the check.
    """
    path = config_file(config_path)
    problems: list[Problem]
    summary = ""
    if config_missing(path):
        problems = [Problem("error", "(file)", f"{path} does not exist; `smtpgate init` writes one")]
        code = ExitCode.NOT_FOUND
    else:
        try:
            cfg = load_config(path)
        except ConfigError as e:
            problems = [Problem("error", key, msg) for key, msg in e.problems]
        else:
            problems = run_checks(cfg) + privileges.problems(cfg)
            summary = f"{count(len(cfg.listeners), 'listener')}, delivery {cfg.delivery.mode}"
        code = ExitCode.ERROR if any(p.severity == "error" for p in problems) else ExitCode.OK
    n_errors = sum(p.severity == "error" for p in problems)
    n_warnings = len(problems) - n_errors
    if as_json:
        click.echo(json.dumps({
            "config": str(path),
            "ok": code == ExitCode.OK,
            "errors": n_errors,
            "warnings": n_warnings,
            "problems": [p.to_json() for p in problems],
        }, indent=2))
        raise SystemExit(code)
    for p in problems:
        click.echo(f"{path}: {p.severity}: {p.key}: {p.message}", err=True)
    if code == ExitCode.OK:
        tail = f", {_count(n_warnings, 'warning')}" if n_warnings else ""
        click.echo(f"{path}: OK ({summary}){tail}")
    else:
        click.echo(f"{path}: {_count(n_errors, 'error')}, {_count(n_warnings, 'warning')}",
                   err=True)
    raise SystemExit(code)


@config.command("docs")
def docs() -> None:
    """Print the configuration reference (Markdown) generated from the schema."""
    from smtpgate.config import render_reference

    click.echo(render_reference(), nl=False)
