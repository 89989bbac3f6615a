"""``smtpgate admin add|list|remove|passwd|reset-totp|unlock``: the administrators of
the web admin.

An admin is not a mail account: it has an Argon2id password and a TOTP key (the
second factor) and logs in to the web admin only (docs/operations.md, "Web
admin"). It is kept in the account database (``web_admins``), and every change is
in the admin log, as for accounts. ``smtpgate admin-log`` and ``smtpgate guard``
(cli/admin_cmd.py) are separate commands.
"""

from __future__ import annotations

from pathlib import Path

import click

from smtpgate.admin import totp_uri, web_admin_name
from smtpgate.auth.admin_store import AccountExists
from smtpgate.cli.common import (
    NotFound,
    OperationalError,
    admin_service,
    config_option,
    get_config,
    iso_time,
)
from smtpgate.cli.output import echo, secret_shown_once
from smtpgate.cli.user_cmd import password_stdin_option, read_password
from smtpgate.plural import count


@click.group("admin")
def admin() -> None:
    """Manage the web admin's administrators."""


def _name(name: str) -> str:
    """The admin name ``name`` spells; a malformed one is bad input (exit 2, as a
    malformed account name is for ``user``), not an error of the database (exit 1
    with "choose another name", which `admin remove` of a typo also said)."""
    try:
        return web_admin_name(name)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="'NAME'") from None


@admin.command("add")
@click.argument("name")
@password_stdin_option
@config_option
def add(name: str, password_stdin: bool, config_path: Path | None) -> None:
    """Create admin NAME with a password and a new TOTP key; prints the otpauth://
    URI to enrol in an authenticator app (shown once)."""
    key = _name(name)
    cfg = get_config(config_path)
    with admin_service(cfg, create=True) as service:
        if service.get_web_admin(key) is not None:  # before asking for a password
            raise OperationalError(f"admin {key} already exists",
                                   "'smtpgate admin remove' it first to enrol it again")
        password = read_password(password_stdin)
        try:
            added, secret = service.add_web_admin(key, password)
        except AccountExists:
            raise OperationalError(f"admin {key} already exists") from None
    def remove() -> str:
        with admin_service(cfg) as service:
            service.remove_web_admin(added.name)
        return f"admin {added.name} was removed: its TOTP key could not be shown"

    with secret_shown_once(remove):
        echo(f"added admin {added.name}")
        echo("enrol this TOTP key in an authenticator app (it is not shown again):")
        echo(totp_uri(added.name, secret, f"smtpgate {cfg.hostname}"))
    if not cfg.admin.listen:
        echo("note: the web admin is off; set [admin] listen, e.g. '127.0.0.1:9480'")


@admin.command("list")
@config_option
def list_(config_path: Path | None) -> None:
    """The web admin's administrators."""
    with admin_service(get_config(config_path)) as service:
        admins = service.web_admins()
    if not admins:
        echo("no admins; 'smtpgate admin add NAME' creates one")
    for a in admins:
        echo(f"{a.name}\tcreated {iso_time(a.created)}")


@admin.command("remove")
@click.argument("name")
@config_option
def remove(name: str, config_path: Path | None) -> None:
    """Remove admin NAME (its sessions end at their next request)."""
    key = _name(name)
    with admin_service(get_config(config_path)) as service:
        if not service.remove_web_admin(key):
            raise NotFound(f"no admin {key}", "'smtpgate admin list' shows them")
    echo(f"removed admin {key}")


@admin.command("passwd")
@click.argument("name")
@password_stdin_option
@config_option
def passwd(name: str, password_stdin: bool, config_path: Path | None) -> None:
    """Give admin NAME a new password (its TOTP key stays); its open sessions end."""
    key = _name(name)
    with admin_service(get_config(config_path)) as service:
        if service.get_web_admin(key) is None:  # before asking for a password
            raise NotFound(f"no admin {key}", "'smtpgate admin list' shows them")
        password = read_password(password_stdin)
        if not service.set_web_admin_password(key, password):
            raise NotFound(f"no admin {key}", "'smtpgate admin list' shows them")
    echo(f"changed the password of admin {key}; its open sessions are ended")


@admin.command("reset-totp")
@click.argument("name")
@config_option
def reset_totp(name: str, config_path: Path | None) -> None:
    """Give admin NAME a new TOTP key (a lost or copied phone) and print the
    otpauth:// URI to enrol it (shown once); the old key stops working and its open
    sessions end."""
    key = _name(name)
    cfg = get_config(config_path)
    with admin_service(cfg) as service:
        secret = service.reset_web_admin_totp(key)
    if secret is None:
        raise NotFound(f"no admin {key}", "'smtpgate admin list' shows them")
    echo(f"new TOTP key for admin {key}; the old one no longer works")
    echo("enrol this TOTP key in an authenticator app (it is not shown again):")
    echo(totp_uri(key, secret, f"smtpgate {cfg.hostname}"))


@admin.command("unlock")
@click.argument("name")
@config_option
def unlock(name: str, config_path: Path | None) -> None:
    """Lift the guard's lockout of admin NAME's logins (after failed admin logins)."""
    key = _name(name.removeprefix("admin:"))
    with admin_service(get_config(config_path)) as service:
        n = service.unlock_web_admin(key)
    echo(f"lifted {count(n, 'lockout')} of admin {key}")


COMMANDS: list[click.Command] = [admin]
