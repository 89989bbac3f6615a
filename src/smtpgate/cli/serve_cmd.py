"""``smtpgate serve``: run in the foreground, log to stderr, stop on SIGTERM/SIGINT."""

from __future__ import annotations

from pathlib import Path

import click

from smtpgate.cli.common import config_option, get_config


@click.command()
@config_option
@click.option("--debug", is_flag=True, help="Log at DEBUG level.")
def serve(config_path: Path | None, debug: bool) -> None:
    """Run the server in the foreground."""
    import logging

    from smtpgate.server.app import run, setup_logging
    from smtpgate.tls.session import TlsError

    setup_logging(logging.DEBUG if debug else logging.INFO)
    cfg = get_config(config_path)
    try:
        raise SystemExit(run(cfg))
    except TlsError as e:
        click.echo(f"tls: {e}", err=True)
        raise SystemExit(1) from None
