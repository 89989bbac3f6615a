"""``smtpgate user alias|domain|access|limits|max-age|rotate|show``: account policy.

These add subcommands to the ``user`` group of ``user_cmd`` on import. Each is a
thin shell over one operation of the admin service, which records every change
in the admin log, in the transaction that makes it.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import click

from smtpgate.admin import (
    MAX_RATE,
    AccessChange,
    AnyListener,
    AnyNetwork,
    MessageRate,
    RateChange,
    RecipientRate,
    RequireOAuth,
    RestrictListeners,
    RestrictNetworks,
)
from smtpgate.auth.admin_store import AccountExists, AliasTaken
from smtpgate.auth.directory import Account
from smtpgate.auth.names import InvalidAccountName, canonical_name, lookup_key
from smtpgate.cli.app_password_cmd import works_with
from smtpgate.cli.common import (
    USER,
    NotFound,
    OperationalError,
    admin_service,
    config_option,
    get_config,
    iso_time,
)
from smtpgate.cli.output import echo, name_shown, secret_shown_once
from smtpgate.cli.user_cmd import password_age, password_expiry, user
from smtpgate.config import Config
from smtpgate.policy.timespec import parse_duration


def _duration(value: str, hint: str) -> float:
    try:
        return parse_duration(value)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint=hint) from None


# --- aliases --------------------------------------------------------------------


@user.group("alias")
def alias() -> None:
    """Addresses an account may send as, besides its own."""


@alias.command("add")
@USER
@click.argument("address")
@config_option
def alias_add(user: str, address: str, config_path: Path | None) -> None:
    """Let USER send as ADDRESS (MAIL FROM and From header)."""
    with admin_service(get_config(config_path)) as admin:
        try:
            added = admin.add_alias(user, address)
        except InvalidAccountName as e:
            raise click.BadParameter(str(e), param_hint="ADDRESS") from None
        except AliasTaken as e:
            raise OperationalError(str(e), "'smtpgate user show' lists an account's aliases") from None
    echo(f"{user} may {'now' if added else 'already'} send as {canonical_name(address)}")


@alias.command("remove")
@USER
@click.argument("address")
@config_option
def alias_remove(user: str, address: str, config_path: Path | None) -> None:
    """Stop USER from sending as ADDRESS."""
    with admin_service(get_config(config_path)) as admin:
        removed = admin.remove_alias(user, address)
    stored = lookup_key(address)  # the spelling removed, as `alias list` shows it
    if not removed:
        raise NotFound(f"{stored} is not an alias of {user}",
                       f"'smtpgate user alias list {user}' shows its aliases")
    echo(f"removed alias {stored} of {user}")


# `alias del` was this command's name until 2026-12 (every other command that takes
# something away is `remove` or `revoke`); kept, unlisted, for scripts that use it.
alias.add_command(click.Command(
    "del", callback=alias_remove.callback, params=alias_remove.params,
    help=alias_remove.help, hidden=True))


@alias.command("list")
@USER
@config_option
def alias_list(user: str, config_path: Path | None) -> None:
    """Print USER's aliases, one per line."""
    with admin_service(get_config(config_path)) as admin:
        admin.require_account(user)
        aliases = admin.aliases(user)
    for a in aliases:
        echo(a)


# --- granted domains ---------------------------------------------------------------


@user.group("domain")
def domain() -> None:
    """Domains an account may send as any address of that is no other account's."""


@domain.command("grant")
@USER
@click.argument("name")
@config_option
def domain_grant(user: str, name: str, config_path: Path | None) -> None:
    """Let USER send as any address in domain NAME that is no other account's."""
    with admin_service(get_config(config_path)) as admin:
        try:
            domain_name = admin.grant_domain(user, name)
        except InvalidAccountName as e:
            raise click.BadParameter(str(e), param_hint="NAME") from None
    echo(f"{user} may now send as any address in {domain_name} that is no other account's")


@domain.command("revoke")
@USER
@click.argument("name")
@config_option
def domain_revoke(user: str, name: str, config_path: Path | None) -> None:
    """Withdraw domain NAME from USER."""
    with admin_service(get_config(config_path)) as admin:
        done = admin.revoke_domain(user, name)
    if not done:
        raise NotFound(f"{name} is not granted to {user}",
                       f"'smtpgate user show {user}' lists its granted domains")
    echo(f"revoked {name.lower()} from {user}")


# --- conditional access ----------------------------------------------------------------


@user.command("access")
@USER
@click.option("--network", "networks", multiple=True, help="Allowed source network (CIDR); repeat.")
@click.option("--any-network", is_flag=True, help="Lift the network restriction.")
@click.option("--listener", "listeners", multiple=True, help="Allowed listener name; repeat.")
@click.option("--any-listener", is_flag=True, help="Lift the listener restriction.")
@click.option("--require-oauth/--no-require-oauth", default=None,
              help="Allow only OAUTHBEARER/XOAUTH2 logins (high-risk accounts).")
@config_option
def access(
    user: str, networks: tuple[str, ...], any_network: bool, listeners: tuple[str, ...],
    any_listener: bool, require_oauth: bool | None, config_path: Path | None,
) -> None:
    """Restrict where and how USER may log in. A refused login gets 535 5.7.8,
    and the auth log says why. Mechanisms: `smtpgate user mechanisms`."""
    if networks and any_network:
        raise click.UsageError("--network and --any-network exclude each other")
    if listeners and any_listener:
        raise click.UsageError("--listener and --any-listener exclude each other")
    cfg = get_config(config_path)
    known = {lst.name for lst in cfg.listeners}
    for name in listeners:
        if name not in known:
            raise click.BadParameter(f"no listener {name!r} (known: {', '.join(sorted(known))})",
                                     param_hint="--listener")
    changes: list[AccessChange] = []
    if any_network:
        changes.append(AnyNetwork())
    elif networks:
        changes.append(RestrictNetworks(networks))
    if any_listener:
        changes.append(AnyListener())
    elif listeners:
        changes.append(RestrictListeners(listeners))
    if require_oauth is not None:
        changes.append(RequireOAuth(require_oauth))
    with admin_service(cfg) as admin:
        try:
            account = admin.change_access(user, changes)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--network") from None
    echo(f"access of {user}: " + _access_text(account))


def _access_text(a: Account) -> str:
    nets = "any" if a.allowed_networks is None else " ".join(a.allowed_networks) or "none"
    lst = "any" if a.allowed_listeners is None else " ".join(sorted(a.allowed_listeners)) or "none"
    mechs = "any" if a.allowed_mechanisms is None else " ".join(sorted(a.allowed_mechanisms)) or "none"
    return f"networks {nets}; listeners {lst}; mechanisms {mechs}; require OAuth {'yes' if a.require_oauth else 'no'}"


# --- rate limits and password age ------------------------------------------------------------


def _rate(value: str, hint: str) -> int | None:
    if value == "default":
        return None
    if not (value.isascii() and value.isdigit()):  # int() also reads "٣"; "²" fails it
        raise click.BadParameter("a number (0 = unlimited) or 'default'", param_hint=hint)
    if int(value) > MAX_RATE:
        raise click.BadParameter(f"at most {MAX_RATE} (0 = unlimited)", param_hint=hint)
    return int(value)


@user.command("limits")
@USER
@click.option("--messages-per-hour", "messages", default=None,
              help="N (0 = unlimited) or 'default' ([limits].messages_per_hour).")
@click.option("--recipients-per-hour", "recipients", default=None,
              help="N (0 = unlimited) or 'default' ([limits].recipients_per_hour).")
@config_option
def limits(user: str, messages: str | None, recipients: str | None, config_path: Path | None) -> None:
    """Set USER's sending rates (exceeding them gets 450 4.7.1)."""
    changes: list[RateChange] = []
    if messages is not None:
        changes.append(MessageRate(_rate(messages, "--messages-per-hour")))
    if recipients is not None:
        changes.append(RecipientRate(_rate(recipients, "--recipients-per-hour")))
    cfg = get_config(config_path)
    with admin_service(cfg) as admin:
        account = admin.change_limits(user, changes)
    echo(f"limits of {user}: " + _limits_text(account, cfg))


def _limits_text(a: Account, cfg: Config) -> str:
    def one(v: int | None, default: int) -> str:
        n = default if v is None else v
        text = "unlimited" if n == 0 else str(n)
        return text + (" (default)" if v is None else "")

    return (f"{one(a.max_messages_per_hour, cfg.limits.messages_per_hour)} messages/hour, "
            f"{one(a.max_recipients_per_hour, cfg.limits.recipients_per_hour)} recipients/hour")


@user.command("max-age")
@USER
@click.argument("age")
@config_option
def max_age(user: str, age: str, config_path: Path | None) -> None:
    """Set how long USER's password lasts: a duration (90d), 'never' or 'default'
    ([passwords].max_age_days)."""
    days: float | None
    if age == "default":
        days = None
    elif age == "never":
        days = 0
    else:
        days = _duration(age, "AGE") / 86400
        if days <= 0:
            raise click.BadParameter("must be more than 0", param_hint="AGE")
    cfg = get_config(config_path)
    with admin_service(cfg) as admin:
        account = admin.set_password_max_age(user, days)
    echo(f"password of {user} expires: {password_expiry(account, cfg.passwords.max_age_days)}")


# --- rotation ---------------------------------------------------------------------------------


@user.command("rotate")
@USER
@click.option("--app", "app_name", default=None,
              help="Rotate this app password (the new one takes its name); without it, the "
              "account's password is the old secret.")
@click.option("--name", "new_name", default=None,
              help="Name of the new app password (default: the --app name, or rotated-DATE, "
              "-2 ... added if a rotation in the same second took it).")
@click.option("--grace", default=None, help="How long the old secret keeps working "
              "(default: [passwords].rotation_grace_days).")
@config_option
def rotate(user: str, app_name: str | None, new_name: str | None, grace: str | None,
           config_path: Path | None) -> None:
    """Issue a new app password for USER (printed once) and schedule the old
    secret to stop working after a grace period."""
    cfg = get_config(config_path)
    seconds = cfg.passwords.rotation_grace_days * 86400 if grace is None else _duration(grace, "--grace")
    with admin_service(cfg) as admin:
        try:
            if app_name is not None:
                done = admin.rotate_app_password(
                    user, app_name, new_name=new_name, grace=timedelta(seconds=seconds)
                )
            else:
                done = admin.rotate_password(user, new_name=new_name, grace=timedelta(seconds=seconds))
        except AccountExists as e:
            raise OperationalError(str(e), "pass another --name; nothing was changed") from None
    def unshown() -> str:
        # Not undone here: the old secret's end is scheduled already; revoking the new
        # one and rotating again is the administrator's call.
        return (f"the new app password {done.app_password.name!r} could not be shown: "
                f"'smtpgate app-password revoke {user} {done.app_password.name}', then "
                "rotate again")

    with secret_shown_once(unshown):
        echo(f"new app password {done.app_password.name!r} for {user}: {done.secret}")
        echo(f"    (shown once; {works_with(done.app_password)})")
    echo(f"{done.retired} stops working at {done.deadline.strftime('%Y-%m-%d %H:%M')} UTC")


# --- show ----------------------------------------------------------------------------------------


@user.command("show")
@USER
@click.option("--json", "as_json", is_flag=True, help="As one JSON object.")
@config_option
def show(user: str, as_json: bool, config_path: Path | None) -> None:
    """Everything about USER's policy: access, limits, password age, aliases,
    granted domains, app passwords."""
    cfg = get_config(config_path)
    with admin_service(cfg) as admin:
        a = admin.require_account(user)
        aliases = admin.aliases(user)
        domains = admin.granted_domains(user)
        apps = admin.app_passwords(user)
    if as_json:
        expiry = a.password_expiry(cfg.passwords.max_age_days)
        echo(json.dumps({
            "name": a.name,
            "locked": a.locked,
            "allowed_networks": a.allowed_networks,
            "allowed_listeners": None if a.allowed_listeners is None else sorted(a.allowed_listeners),
            "allowed_mechanisms": None if a.allowed_mechanisms is None else sorted(a.allowed_mechanisms),
            "require_oauth": a.require_oauth,
            "max_messages_per_hour": a.max_messages_per_hour,
            "max_recipients_per_hour": a.max_recipients_per_hour,
            "password_expires": None if expiry is None else iso_time(expiry),
            "aliases": aliases,
            "granted_domains": domains,
            "app_passwords": [p.name for p in apps],
        }, sort_keys=True))
        return
    echo(f"account:          {name_shown(a.name)}")
    echo(f"access:           {_access_text(a)}")
    echo(f"limits:           {_limits_text(a, cfg)}")
    echo(f"password age:     {password_age(a)}; expires {password_expiry(a, cfg.passwords.max_age_days)}")
    echo(f"aliases:          {', '.join(aliases) or '-'}")
    echo(f"granted domains:  {', '.join(domains) or '-'}")
    echo(f"app passwords:    {', '.join(p.name for p in apps) or '-'}")
