"""``smtpgate user alias|domain|access|limits|max-age|rotate|show``: account policy.

These add subcommands to the ``user`` group of ``user_cmd`` on import. Every
change is recorded in the admin log by the store.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click

from smtpgate.auth.guard_store import GuardStoreError, SqliteGuardStore
from smtpgate.auth.names import InvalidAccountName, lookup_key
from smtpgate.auth.sqlite_file import NewerSchema
from smtpgate.auth.store import Account, AccountExists, AliasTaken, SqliteAccountStore
from smtpgate.cli.common import NotFound, OperationalError, config_option, get_config, iso_time
from smtpgate.cli.user_cmd import USER, _store, user
from smtpgate.config import Config
from smtpgate.policy.timespec import format_duration, parse_duration


def open_guard_store(cfg: Config) -> SqliteGuardStore:
    try:
        return SqliteGuardStore(cfg.path(cfg.guard.database))
    except GuardStoreError as e:
        hint = e.hint if isinstance(e, NewerSchema) else "check [guard].database and its directory"
        raise OperationalError(str(e), hint) from None


def lift_guard_locks(config_path: Path | None, user_name: str, store: SqliteAccountStore) -> bool:
    """Lift the guard's lockouts and throttle of an account (for ``user unlock``)."""
    cfg = get_config(config_path)
    gstore = open_guard_store(cfg)
    try:
        n = gstore.unlock_account(lookup_key(user_name))
    finally:
        gstore.close()
    if n:
        store.audit("guard lockout lifted", lookup_key(user_name), {"blocks": n})
    return n > 0


def password_age(a: Account) -> str:
    if a.password_changed is None:
        return "-"
    return format_duration((datetime.now(UTC) - a.password_changed).total_seconds())


def password_expiry(a: Account, max_age_days: float) -> str:
    expiry = a.password_expiry(max_age_days)
    if expiry is None:
        return "never"
    text = expiry.strftime("%Y-%m-%d %H:%M")
    return f"EXPIRED {text}" if expiry <= datetime.now(UTC) else text


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
    with _store(config_path) as store:
        try:
            store.add_alias(user, address)
        except InvalidAccountName as e:
            raise click.BadParameter(str(e), param_hint="ADDRESS") from None
        except AliasTaken as e:
            raise OperationalError(str(e), "'smtpgate user show' lists an account's aliases") from None
    click.echo(f"{user} may now send as {address}")


@alias.command("del")
@USER
@click.argument("address")
@config_option
def alias_del(user: str, address: str, config_path: Path | None) -> None:
    """Stop USER from sending as ADDRESS."""
    with _store(config_path) as store:
        if store.get_account(user) is None:
            raise NotFound(f"no account {user}", "'smtpgate user list' shows the accounts")
        removed = store.remove_alias(user, address)
    if not removed:
        raise NotFound(f"{address} is not an alias of {user}",
                       f"'smtpgate user alias list {user}' shows its aliases")
    click.echo(f"removed alias {address} of {user}")


@alias.command("list")
@USER
@config_option
def alias_list(user: str, config_path: Path | None) -> None:
    """Print USER's aliases, one per line."""
    with _store(config_path) as store:
        if store.get_account(user) is None:
            raise NotFound(f"no account {user}", "'smtpgate user list' shows the accounts")
        for a in store.aliases(user):
            click.echo(a)


# --- granted domains ---------------------------------------------------------------


@user.group("domain")
def domain() -> None:
    """Domains an account may send as any address of."""


@domain.command("grant")
@USER
@click.argument("name")
@config_option
def domain_grant(user: str, name: str, config_path: Path | None) -> None:
    """Let USER send as any address in domain NAME."""
    with _store(config_path) as store:
        try:
            store.grant_domain(user, name)
        except InvalidAccountName as e:
            raise click.BadParameter(str(e), param_hint="NAME") from None
    click.echo(f"{user} may now send as any address in {name.lower()}")


@domain.command("revoke")
@USER
@click.argument("name")
@config_option
def domain_revoke(user: str, name: str, config_path: Path | None) -> None:
    """Withdraw domain NAME from USER."""
    with _store(config_path) as store:
        if store.get_account(user) is None:
            raise NotFound(f"no account {user}", "'smtpgate user list' shows the accounts")
        done = store.revoke_domain(user, name)
    if not done:
        raise NotFound(f"{name} is not granted to {user}",
                       f"'smtpgate user show {user}' lists its granted domains")
    click.echo(f"revoked {name.lower()} from {user}")


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
    with _store(config_path) as store:
        try:
            store.set_access(
                user,
                networks=None if any_network else (list(networks) if networks else False),
                listeners=None if any_listener else (list(listeners) if listeners else False),
                require_oauth=require_oauth,
            )
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--network") from None
        account = store.get_account(user)
    assert account is not None
    click.echo(f"access of {user}: " + _access_text(account))


def _access_text(a: Account) -> str:
    nets = "any" if a.allowed_networks is None else " ".join(a.allowed_networks) or "none"
    lst = "any" if a.allowed_listeners is None else " ".join(sorted(a.allowed_listeners)) or "none"
    mechs = "any" if a.allowed_mechanisms is None else " ".join(sorted(a.allowed_mechanisms)) or "none"
    return f"networks {nets}; listeners {lst}; mechanisms {mechs}; require OAuth {'yes' if a.require_oauth else 'no'}"


# --- rate limits and password age ------------------------------------------------------------


def _rate(value: str | None, hint: str) -> int | None | bool:
    if value is None:
        return False
    if value == "default":
        return None
    if not value.isdigit():
        raise click.BadParameter("a number (0 = unlimited) or 'default'", param_hint=hint)
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
    m = _rate(messages, "--messages-per-hour")
    r = _rate(recipients, "--recipients-per-hour")
    cfg = get_config(config_path)
    with _store(config_path) as store:
        store.set_rate_limits(user, messages_per_hour=m, recipients_per_hour=r)
        account = store.get_account(user)
    assert account is not None
    click.echo(f"limits of {user}: " + _limits_text(account, cfg))


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
    with _store(config_path) as store:
        store.set_password_max_age(user, days)
        account = store.get_account(user)
    assert account is not None
    click.echo(f"password of {user} expires: {password_expiry(account, cfg.passwords.max_age_days)}")


# --- rotation ---------------------------------------------------------------------------------


@user.command("rotate")
@USER
@click.option("--app", "app_name", default=None,
              help="Rotate this app password (the new one takes its name); without it, the "
              "account's password is the old secret.")
@click.option("--name", "new_name", default=None,
              help="Name of the new app password (default: the --app name, or rotated-DATE).")
@click.option("--grace", default=None, help="How long the old secret keeps working "
              "(default: [passwords].rotation_grace_days).")
@config_option
def rotate(user: str, app_name: str | None, new_name: str | None, grace: str | None,
           config_path: Path | None) -> None:
    """Issue a new app password for USER (printed once) and schedule the old
    secret to stop working after a grace period."""
    cfg = get_config(config_path)
    grace_s = cfg.passwords.rotation_grace_days * 86400 if grace is None else _duration(grace, "--grace")
    now = datetime.now(UTC)
    deadline = now + timedelta(seconds=grace_s)
    with _store(config_path) as store:
        if store.get_account(user) is None:
            raise NotFound(f"no account {user}", "'smtpgate user list' shows the accounts")
        if app_name is not None:
            old = next((a for a in store.app_passwords(user) if a.name == app_name), None)
            if old is None:
                raise NotFound(f"{user} has no app password named {app_name!r}",
                                       "'smtpgate app-password list' shows them")
            retired = f"{app_name} (rotated {now.strftime('%Y-%m-%d %H:%M:%S')})"
            store.expire_app_password(user, app_name, deadline, rename_to=retired)
            name = new_name or app_name
            try:
                record, secret = store.add_app_password(
                    user, name, expires=old.expires if old.expires and old.expires > deadline else None,
                    networks=old.networks, mechanisms=old.mechanisms,
                    max_messages_per_hour=old.max_messages_per_hour,
                    max_recipients_per_hour=old.max_recipients_per_hour,
                )
            except AccountExists as e:
                raise OperationalError(str(e), "pass another --name") from None
            what = f"app password {app_name!r}"
        else:
            name = new_name or f"rotated-{now.strftime('%Y%m%d-%H%M%S')}"
            try:
                record, secret = store.add_app_password(user, name)
            except AccountExists as e:
                raise OperationalError(str(e), "pass another --name") from None
            store.schedule_password_expiry(user, deadline)
            what = "the account password"
    click.echo(f"new app password {record.name!r} for {user}: {secret}")
    click.echo("    (shown once; it works with PLAIN and LOGIN)")
    click.echo(f"{what} stops working at {deadline.strftime('%Y-%m-%d %H:%M')} UTC")


# --- show ----------------------------------------------------------------------------------------


@user.command("show")
@USER
@click.option("--json", "as_json", is_flag=True, help="As one JSON object.")
@config_option
def show(user: str, as_json: bool, config_path: Path | None) -> None:
    """Everything about USER's policy: access, limits, password age, aliases,
    granted domains, app passwords."""
    cfg = get_config(config_path)
    with _store(config_path) as store:
        a = store.get_account(user)
        if a is None:
            raise NotFound(f"no account {user}", "'smtpgate user list' shows the accounts")
        aliases = store.aliases(user)
        domains = store.granted_domains(user)
        apps = store.app_passwords(user)
    if as_json:
        expiry = a.password_expiry(cfg.passwords.max_age_days)
        click.echo(json.dumps({
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
    click.echo(f"account:          {a.name}")
    click.echo(f"access:           {_access_text(a)}")
    click.echo(f"limits:           {_limits_text(a, cfg)}")
    click.echo(f"password age:     {password_age(a)}; expires {password_expiry(a, cfg.passwords.max_age_days)}")
    click.echo(f"aliases:          {', '.join(aliases) or '-'}")
    click.echo(f"granted domains:  {', '.join(domains) or '-'}")
    click.echo(f"app passwords:    {', '.join(p.name for p in apps) or '-'}")
