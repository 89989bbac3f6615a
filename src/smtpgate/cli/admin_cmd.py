"""``smtpgate admin-log`` and ``smtpgate guard ...``: what administrators changed,
and what the guard is blocking right now.

Every change made through the admin service (every ``smtpgate user ...``
command) is written to the account database's ``admin_log`` table in the same
transaction as the change: the OS user who ran the command, the time, the
command, the account, and what changed, never a secret.
"""

from __future__ import annotations

import ipaddress
import json
import sys
import time
from pathlib import Path

import click
from rich.console import Console

from smtpgate.admin import AccountAdmin, NotFoundError
from smtpgate.auth.guard_state import SUBNET
from smtpgate.auth.names import name_key
from smtpgate.auth.networks import client_keys, parse_ip
from smtpgate.cli.common import admin_service, config_option, get_config, iso_time, parse_since
from smtpgate.cli.output import Table, echo
from smtpgate.config import GuardConfig
from smtpgate.plural import count


def _console() -> Console:
    # Into a pipe, never fold: scripts grep these lines.
    return Console(file=sys.stdout, highlight=False, width=None if sys.stdout.isatty() else 4096)


#: SQLite's largest integer: a --limit above it was an OverflowError traceback.
MAX_LIMIT = 2**63 - 1


@click.command("admin-log")
@click.option("--since", default=None, help="Only changes newer than this (24h, 7d, ...).")
@click.option("--user", "target", default=None, help="Only changes to this account.")
@click.option("--limit", default=1000, show_default=True, type=click.IntRange(1, MAX_LIMIT),
              help="Newest N.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@config_option
def admin_log(
    since: str | None, target: str | None, limit: int, as_json: bool, config_path: Path | None
) -> None:
    """List administrative changes made through the CLI (oldest first)."""
    start = parse_since(since)
    with admin_service(get_config(config_path)) as admin:
        entries = admin.admin_log(since=start, target=target, limit=limit)
    if as_json:
        for e in entries:
            echo(json.dumps({
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
        echo("no administrative changes recorded")
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
    with admin_service(get_config(config_path)) as admin:
        blocks = admin.guard_blocks()
    if as_json:
        for b in blocks:
            echo(json.dumps({"kind": b.kind, "key": b.key, "since": iso_time(b.since),
                                   "until": iso_time(b.until), "reason": b.reason},
                                  sort_keys=True))
        return
    if not blocks:
        echo("no blocks or lockouts in force")
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
    """Lift the block of an address or subnet KEY (as `guard list` shows it, or a
    client address as the logs show it) and forget its failures; for a name `guard
    list` shows, its lockout and throttle (`smtpgate user unlock` also lifts an
    account's administrative lock)."""
    cfg = get_config(config_path)
    normal = guard_key(key, cfg.guard)
    with admin_service(cfg) as admin:
        try:
            n = admin.unblock(normal)
        except NotFoundError:
            _refused_by_its_subnet(admin, key, cfg.guard)
            lifted = _lift_lockout(admin, key) if normal == key else None
            if lifted is None:
                raise
            echo(f"lifted {count(lifted[1], 'lockout')} of {lifted[0]}")
            return
    echo(f"lifted {count(n, 'block')} of {normal}"
               + (f" (the guard's key of {key})" if normal != key else ""))


def _lift_lockout(admin: AccountAdmin, key: str) -> tuple[str, int] | None:
    """(the name, how many went) if ``key``, as given or in the one spelling the
    guard counts a name under (``name_key``), had a lockout or throttle to lift;
    None if neither had. A lockout of a name that is no account (the guard locks
    made-up names as it locks real ones) is listed by `guard list`, yet `guard
    unblock` said it "is not blocked" and `user unlock` "no account": nothing
    lifted it before it ran out."""
    for name in dict.fromkeys((key, name_key(key))):
        try:
            return name, admin.lift_lockout(name)
        except NotFoundError:
            continue
    return None


def _refused_by_its_subnet(admin: AccountAdmin, key: str, g: GuardConfig) -> None:
    """Raise NotFoundError naming the subnet block that refuses client address
    ``key``, if one does. Its address is not blocked, but "is not blocked" told an
    operator unblocking a refused client the opposite of what the client sees. The
    subnet is not lifted for it: the block covers the other addresses that sprayed."""
    if parse_ip(key) is None:
        return
    subnet = client_keys(key, ipv6_prefix=g.ipv6_prefix, v4_subnet=g.subnet_ipv4_prefix,
                         v6_subnet=g.subnet_ipv6_prefix).subnet
    for b in admin.guard_blocks():
        if b.kind == SUBNET and b.key == subnet:
            raise NotFoundError(
                f"{key} is not blocked by itself: its subnet {subnet} is, "
                f"until {_stamp(b.until)} UTC ({b.reason})",
                f"'smtpgate guard unblock {subnet}' lifts it, for every address in it",
            )


def guard_key(key: str, g: GuardConfig) -> str:
    """The key the guard blocks ``key`` under: a client address as the logs show
    it becomes its address key (an IPv6 address its /64, ``guard.ipv6_prefix``; an
    IPv4-mapped one its IPv4 address; any spelling the one ``guard list`` shows),
    a network its canonical form; anything else is taken as it is. An operator
    pasting ``2001:db8:1:2::5`` from the auth log was told it "is not blocked"."""
    if parse_ip(key) is not None:
        return client_keys(key, ipv6_prefix=g.ipv6_prefix, v4_subnet=g.subnet_ipv4_prefix,
                           v6_subnet=g.subnet_ipv6_prefix).address
    try:
        return str(ipaddress.ip_network(key, strict=False))
    except ValueError:
        return key


COMMANDS: list[click.Command] = [admin_log, guard]
