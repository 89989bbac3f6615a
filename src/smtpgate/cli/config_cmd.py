"""``smtpgate config check``: validate the config and name each problem's key."""

from __future__ import annotations

from pathlib import Path

import click

from smtpgate.cli.common import config_file, config_option
from smtpgate.config import ConfigError, load_config


@click.group()
def config() -> None:
    """Inspect the configuration."""


@config.command("check")
@config_option
def check(config_path: Path | None) -> None:
    """Validate the config file; print each problem with its key."""
    path = config_file(config_path)
    try:
        cfg = load_config(path)
    except ConfigError as e:
        for key, msg in e.problems:
            click.echo(f"{path}: {key}: {msg}", err=True)
        raise SystemExit(1) from None
    click.echo(f"{path}: OK ({len(cfg.listeners)} listeners, delivery {cfg.delivery.mode})")


@config.command("docs")
def docs() -> None:
    """Print the configuration reference (Markdown) generated from the schema."""
    from smtpgate.config import render_reference

    click.echo(render_reference(), nl=False)
