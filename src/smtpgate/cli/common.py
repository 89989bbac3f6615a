"""Shared CLI plumbing: finding and loading the config, errors with exit codes."""

from __future__ import annotations

import os
from pathlib import Path

import click

from smtpgate.config import Config, ConfigError, load_config

CONFIG_ENV = "SMTPGATE_CONFIG"

config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help=f"Config file (default: ${CONFIG_ENV}).",
)


def config_file(config_path: Path | None) -> Path:
    if config_path is not None:
        return config_path
    env = os.environ.get(CONFIG_ENV)
    if env:
        return Path(env)
    raise click.UsageError(f"no config: pass --config PATH or set {CONFIG_ENV}")


def get_config(config_path: Path | None) -> Config:
    """Load and validate the config, or exit 1 listing each problem with its key."""
    path = config_file(config_path)
    try:
        return load_config(path)
    except ConfigError as e:
        for key, msg in e.problems:
            click.echo(f"config error: {key}: {msg}", err=True)
        raise SystemExit(1) from None
