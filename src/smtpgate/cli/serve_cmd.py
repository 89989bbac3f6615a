"""``smtpgate serve``: run in the foreground, log to stderr (or ``server.log_file``),
stop on SIGTERM/SIGINT, reload on SIGHUP. Exit status: 0 after a clean stop, 1 when
the server cannot start or its worker processes keep failing (docs/operations.md)."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from smtpgate.cli.common import config_file, config_option, get_config


@click.command()
@config_option
@click.option(
    "--debug",
    is_flag=True,
    help="Log at DEBUG level: connections, TLS handshakes, SMTP command verbs (never "
    "AUTH data), deliveries.",
)
def serve(config_path: Path | None, debug: bool) -> None:
    """Run the server in the foreground."""
    from smtpgate.server.app import run
    from smtpgate.server.logs import setup_logging

    setup_logging(logging.DEBUG if debug else logging.INFO)
    cfg = get_config(config_path)
    raise SystemExit(run(cfg, config_file(config_path).resolve()))
