"""``smtpgate admin-log`` and ``smtpgate guard ...``: what administrators changed,
and what the guard is blocking right now.

Every change made through the CLI is written to the account database's
``admin_log`` table by the store, in the same transaction as the change:
the OS user who ran the command, the time, the command, the account, and what
changed, never a secret.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from smtpgate.auth.store import AuditActor, default_actor
from smtpgate.cli.common import NotFound, config_option, get_config, iso_time


def cli_actor() -> AuditActor:
    """The admin-log actor of the running command: OS user and command path."""
    actor = default_actor()
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return actor
    words = ctx.command_path.split()
    return AuditActor(actor.os_user, " ".join(["smtpgate", *words[1:]]))


def _console() -> Console:
    # Into a pipe, never fold: scripts grep these lines.
    return Console(file=sys.stdout, highlight=False, width=None if sys.stdout.isatty() else 4096)


def parse_since(value: str | None) -> datetime | None:
    from smtpgate.policy.timespec import parse_duration

    if value is None:
        return None
    try:
        return datetime.now(UTC) - timedelta(seconds=parse_duration(value))
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--since") from None


@click.command("admin-log")
@click.option("--since", default=None, help="Only changes newer than this (24h, 7d, ...).")
@click.option("--user", "target", default=None, help="Only changes to this account.")
@click.option("--limit", default=1000, show_default=True, type=click.IntRange(1), help="Newest N.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@config_option
def admin_log(
    since: str | None, target: str | None, limit: int, as_json: bool, config_path: Path | None
) -> None:
    """List administrative changes made through the CLI (oldest first)."""
    from smtpgate.auth.names import lookup_key
    from smtpgate.cli.user_cmd import _store

    start = parse_since(since)
    with _store(config_path) as store:
        entries = store.admin_log(
            since=start, target=None if target is None else lookup_key(target), limit=limit
        )
    if as_json:
        for e in entries:
            click.echo(json.dumps({
                "id": e.id,
                "time": iso_time(e.time),
                "os_user": e.os_user,
                "command": e.command,
                "action": e.action,
                "target": e.target,
                "details": e.details,
            }, sort_keys=True))
        return
    if not entries:
        click.echo("no administrative changes recorded")
        return
    table = Table(title="administrative changes (times in UTC)", title_justify="left")
    for col in ("time", "os user", "command", "action", "account", "details"):
        table.add_column(col, overflow="fold")
    for e in entries:
        details = ", ".join(f"{k}={v}" for k, v in sorted(e.details.items()) if v is not None)
        table.add_row(e.time.strftime("%Y-%m-%d %H:%M:%S"), e.os_user, e.command, e.action,
                      e.target, details or "-")
    _console().print(table)


@click.group("guard")
def guard() -> None:
    """Inspect and lift the guard's blocks and lockouts."""


def _stamp(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t))


@guard.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@config_option
def guard_list(as_json: bool, config_path: Path | None) -> None:
    """Blocks and lockouts in force now."""
    from smtpgate.cli.user_policy_cmd import open_guard_store

    cfg = get_config(config_path)
    store = open_guard_store(cfg)
    try:
        blocks = store.active_blocks(time.time())
    finally:
        store.close()
    if as_json:
        for b in blocks:
            click.echo(json.dumps({"kind": b.kind, "key": b.key, "since": iso_time(b.since),
                                   "until": iso_time(b.until), "reason": b.reason},
                                  sort_keys=True))
        return
    if not blocks:
        click.echo("no blocks or lockouts in force")
        return
    table = Table(title="blocks and lockouts in force (times in UTC)", title_justify="left")
    for col in ("kind", "address, subnet or account", "since", "until", "reason"):
        table.add_column(col, overflow="fold")
    for b in blocks:
        table.add_row(b.kind, b.key, _stamp(b.since), _stamp(b.until), b.reason)
    _console().print(table)


@guard.command("unblock")
@click.argument("key")
@config_option
def guard_unblock(key: str, config_path: Path | None) -> None:
    """Lift the block of an address or subnet KEY (as `guard list` shows it) and
    forget its failures. For an account, use `smtpgate user unlock`."""
    from smtpgate.cli.user_cmd import _store
    from smtpgate.cli.user_policy_cmd import open_guard_store

    cfg = get_config(config_path)
    gstore = open_guard_store(cfg)
    try:
        n = gstore.unblock(key)
    finally:
        gstore.close()
    if not n:
        raise NotFound(f"{key} is not blocked",
                       "'smtpgate guard list' shows the blocks in force; for an account, "
                       "'smtpgate user unlock' lifts its lockout")
    with _store(config_path) as store:
        store.audit("guard block lifted", key, {"blocks": n})
    click.echo(f"lifted {n} block(s) of {key}")


COMMANDS: list[click.Command] = [admin_log, guard]
