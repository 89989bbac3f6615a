"""``smtpgate app-password add|list|revoke``: per-device passwords.

An app password is generated here (about 99 random bits), printed once, and
stored only as a salted HMAC. Each has a name (logged at every login made with
it), an optional expiry, an optional scope (source networks, mechanisms), its
own sending rates and a last-used time. They work with PLAIN and LOGIN.
"""

from __future__ import annotations

import ipaddress
import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click
from rich.console import Console

from smtpgate.admin import MAX_RATE
from smtpgate.auth.admin_store import AccountExists
from smtpgate.auth.credentials import APP_PASSWORD_MECHANISMS
from smtpgate.auth.directory import AppPassword
from smtpgate.cli.common import (
    USER,
    NotFound,
    OperationalError,
    account_argument,
    admin_service,
    config_option,
    get_config,
    iso_time,
)
from smtpgate.cli.output import Table, echo, secret_shown_once
from smtpgate.policy.timespec import parse_duration


@click.group("app-password")
def app_password() -> None:
    """Manage app passwords (one per device or program)."""


def _scope(scopes: tuple[str, ...], networks: tuple[str, ...], mechanisms: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """The networks and mechanisms of --scope, --network and --mechanism; a bad one
    is refused naming its option (the admin service's own message named none:
    "Invalid value: '999.1.1.1/8' does not appear to be ...", until audit h21)."""
    nets, mechs = list(networks), [m.upper() for m in mechanisms]
    for net in networks:
        _network(net, "--network")
    for item in scopes:
        kind, sep, value = item.partition(":")
        if not sep or kind not in ("net", "network", "mech", "mechanism"):
            raise click.BadParameter(
                f"{item!r}: expected net:CIDR or mech:MECHANISM", param_hint="--scope"
            )
        if kind.startswith("net"):
            nets.append(_network(value, "--scope"))
        elif value.upper() not in APP_PASSWORD_MECHANISMS:
            raise click.BadParameter(
                f"{item!r}: app passwords work with {' and '.join(APP_PASSWORD_MECHANISMS)} "
                "only", param_hint="--scope")
        else:
            mechs.append(value.upper())
    return nets, mechs


def _network(value: str, hint: str) -> str:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint=hint) from None
    return value


@app_password.command("add")
@USER
@click.argument("name")
@click.option("--expires", default=None, help="Lifetime: 90d, 12h, 2w (default: none).")
@click.option("--scope", "scopes", multiple=True,
              help="net:CIDR or mech:PLAIN|LOGIN; repeat. Same as --network/--mechanism.")
@click.option("--network", "networks", multiple=True, help="Allowed source network (CIDR).")
@click.option("--mechanism", "mechanisms", multiple=True,
              type=click.Choice(APP_PASSWORD_MECHANISMS, case_sensitive=False),
              help="Allowed mechanism.")
@click.option("--messages-per-hour", type=click.IntRange(1, MAX_RATE), default=None,
              help="Own message rate (on top of the account's).")
@click.option("--recipients-per-hour", type=click.IntRange(1, MAX_RATE), default=None,
              help="Own recipient rate (on top of the account's).")
@config_option
def add(
    user: str, name: str, expires: str | None, scopes: tuple[str, ...], networks: tuple[str, ...],
    mechanisms: tuple[str, ...], messages_per_hour: int | None, recipients_per_hour: int | None,
    config_path: Path | None,
) -> None:
    """Create app password NAME for USER and print it (once)."""
    nets, mechs = _scope(scopes, networks, mechanisms)
    when = None
    if expires is not None:
        try:
            lifetime = parse_duration(expires)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--expires") from None
        if lifetime <= 0:
            # It would be printed (once) already expired: a secret no device can use.
            raise click.BadParameter(
                f"{expires!r} would make it expire at once; leave --expires out for an app "
                "password that does not expire", param_hint="--expires")
        when = datetime.now(UTC) + timedelta(seconds=lifetime)
    with admin_service(get_config(config_path)) as admin:
        try:
            record, secret = admin.add_app_password(
                user, name, expires=when, networks=nets or None, mechanisms=mechs or None,
                max_messages_per_hour=messages_per_hour, max_recipients_per_hour=recipients_per_hour,
            )
        except AccountExists as e:
            raise OperationalError(str(e), "revoke it first, or pick another name") from None
        except ValueError as e:  # what is left: the name (the rest is checked above)
            raise click.BadParameter(str(e), param_hint="NAME") from None
    def revoke() -> str:
        with admin_service(get_config(config_path)) as admin:
            admin.revoke_app_password(user, record.name)
        return f"app password {record.name!r} was revoked: it could not be shown"

    with secret_shown_once(revoke):
        echo(f"app password {record.name!r} for {user}: {secret}")
        echo(f"    (shown once; {works_with(record)})")


def works_with(p: AppPassword) -> str:
    """Where app password ``p`` logs in, for the line printed with its secret: the
    mechanisms and networks its scope allows, and its expiry. The line said "PLAIN
    and LOGIN" whatever the scope, so a device set up from it could get 535."""
    mechs = [m for m in APP_PASSWORD_MECHANISMS if p.mechanisms is None or m in p.mechanisms]
    text = "it works with " + (" and ".join(mechs) if len(mechs) > 1 else f"{mechs[0]} only"
                               if mechs else "no mechanism")
    if p.networks:
        text += ", from " + ", ".join(p.networks)
    if p.expires:
        text += f"; expires {p.expires.strftime('%Y-%m-%d %H:%M')} UTC"
    return text


def _row(p: AppPassword) -> dict[str, object]:
    def t(x: datetime | None) -> str | None:
        return None if x is None else iso_time(x)

    return {
        "account": p.account, "name": p.name, "created": t(p.created), "expires": t(p.expires),
        "networks": p.networks, "mechanisms": None if p.mechanisms is None else sorted(p.mechanisms),
        "max_messages_per_hour": p.max_messages_per_hour,
        "max_recipients_per_hour": p.max_recipients_per_hour,
        "last_used": t(p.last_used), "last_address": p.last_address,
    }


@app_password.command("list")
@account_argument(required=False)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@config_option
def list_(user: str | None, as_json: bool, config_path: Path | None) -> None:
    """List app passwords (of USER, or of every account); never the secrets."""
    with admin_service(get_config(config_path)) as admin:
        if user is not None:
            admin.require_account(user)
        records = admin.app_passwords(user)
    if as_json:
        for p in records:
            echo(json.dumps(_row(p), sort_keys=True))
        return
    if not records:
        echo("no app passwords")
        return
    now = datetime.now(UTC)
    table = Table(title="app passwords (times in UTC)", title_justify="left")
    for col in ("account", "name", "created", "expires", "scope", "rates/hour", "last used"):
        table.add_column(col, overflow="fold")
    for p in records:
        scope = "; ".join(x for x in (
            "net " + " ".join(p.networks) if p.networks else "",
            "mech " + " ".join(sorted(p.mechanisms)) if p.mechanisms else "",
        ) if x) or "any"
        exp = "never" if p.expires is None else p.expires.strftime("%Y-%m-%d %H:%M")
        if p.expired(now):
            exp = "EXPIRED " + exp
        rates = f"{p.max_messages_per_hour or '-'} msgs, {p.max_recipients_per_hour or '-'} rcpts"
        used = "never" if p.last_used is None else f"{p.last_used:%Y-%m-%d %H:%M} from {p.last_address}"
        table.add_row(p.account, p.name, f"{p.created:%Y-%m-%d %H:%M}", exp, scope, rates, used)
    Console(file=sys.stdout, highlight=False, width=None if sys.stdout.isatty() else 4096).print(table)


@app_password.command("revoke")
@USER
@click.argument("name")
@config_option
def revoke(user: str, name: str, config_path: Path | None) -> None:
    """Delete app password NAME of USER (logins with it fail from now on)."""
    with admin_service(get_config(config_path)) as admin:
        done = admin.revoke_app_password(user, name)
    if not done:
        raise NotFound(f"{user} has no app password named {name!r}",
                               "'smtpgate app-password list' shows them")
    echo(f"revoked app password {name!r} of {user}")


COMMANDS: list[click.Command] = [app_password]
