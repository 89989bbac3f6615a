"""Shared CLI plumbing: finding and loading the config, errors and exit codes.

Every command exits with one of `ExitCode` (docs/cli.md lists them): 0 done, 1 an
error (printed on stderr with a hint), 2 bad input (click's usage error), 3 the
thing the command was asked to act on does not exist. ``smtpgate test`` and
``smtpgate audit`` report on a remote server and add codes of their own above 2.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from enum import IntEnum
from pathlib import Path
from typing import IO, Any

import click

from smtpgate.config import Config, ConfigError, load_config

CONFIG_ENV = "SMTPGATE_CONFIG"


class ExitCode(IntEnum):
    """The exit codes every command shares (docs/cli.md)."""

    OK = 0
    #: Anything else that went wrong: an unusable config, a database that cannot
    #: be opened, a refused password, a config check that found errors.
    ERROR = 1
    #: click's code for a bad option, argument or value (a malformed address, ...).
    USAGE = 2
    #: The account, alias, granted domain, app password, block, config file or log
    #: file the command was asked to act on does not exist.
    NOT_FOUND = 3


class OperationalError(click.ClickException):
    """Exit 1 with ``error: ...`` and a ``hint: ...`` line on stderr."""

    exit_code = ExitCode.ERROR

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)
        if self.hint:
            click.echo(f"hint: {self.hint}", err=True)


class NotFound(OperationalError):
    """Exit 3: what the command was asked to act on does not exist."""

    exit_code = ExitCode.NOT_FOUND


def iso_time(t: datetime | float) -> str:
    """A time for JSON output: ISO 8601 in UTC with its zone (``...Z``); a float is
    seconds since the epoch."""
    when = datetime.fromtimestamp(t, UTC) if isinstance(t, int | float) else t.astimezone(UTC)
    return when.isoformat().replace("+00:00", "Z")


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


def require_config_file(config_path: Path | None) -> Path:
    """The config path; exit 3 when there is no file there."""
    path = config_file(config_path)
    if not path.exists():
        raise NotFound(f"no config file {path}",
                       f"pass --config PATH or set {CONFIG_ENV}; `smtpgate init` writes one")
    return path


def get_config(config_path: Path | None) -> Config:
    """Load and validate the config, or exit 1 listing each problem with its key
    (3 when the file does not exist)."""
    path = require_config_file(config_path)
    try:
        return load_config(path)
    except ConfigError as e:
        for key, msg in e.problems:
            click.echo(f"config error: {key}: {msg}", err=True)
        raise SystemExit(ExitCode.ERROR) from None
