"""Entry point of the ``smtpgate`` command: a click group of noun-verb commands."""

from __future__ import annotations

import click

from smtpgate import __version__
from smtpgate.cli import config_cmd, init_cmd, serve_cmd, user_cmd


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="smtpgate")
def cli() -> None:
    """smtpgate: authenticated SMTP submission server."""


cli.add_command(init_cmd.init)
cli.add_command(serve_cmd.serve)
cli.add_command(config_cmd.config)
cli.add_command(user_cmd.user)


def main() -> None:
    cli()
