"""``smtpgate config show``: the configuration as the server will use it.

Scripts (``make run``, a firewall rule, a monitoring check) ask smtpgate for
what a config means instead of parsing the TOML themselves: defaults filled in
and relative paths resolved as the server resolves them.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
from pydantic import BaseModel

from smtpgate.cli.common import config_option, get_config
from smtpgate.cli.config_cmd import config


@config.command("show")
@click.option(
    "--listeners",
    is_flag=True,
    help="Only the listeners: one line each, NAME ADDRESS TLS (starttls or implicit); "
    "then the web admin and metrics endpoints when on, as admin|metrics ADDRESS http|https.",
)
@config_option
def show(listeners: bool, config_path: Path | None) -> None:
    """Print the effective configuration as JSON: every key with its default filled
    in and paths resolved against the config file's directory."""
    cfg = get_config(config_path)
    if listeners:
        for lst in cfg.listeners:
            click.echo(f"{lst.name} {lst.address} {lst.tls}")
        if cfg.admin.url:
            click.echo(f"admin {cfg.admin.listen} {cfg.admin.url.partition(':')[0]}")
        if cfg.metrics.url:
            click.echo(f"metrics {cfg.metrics.listen} http")
        return
    data = cfg.model_dump(mode="json")
    for section, value in cfg:
        if not isinstance(value, BaseModel):
            continue
        for key, field in type(value).model_fields.items():
            if field.annotation in (Path, Path | None) and getattr(value, key) is not None:
                data[section][key] = str(cfg.path(getattr(value, key)))
    click.echo(json.dumps(data, indent=2))
