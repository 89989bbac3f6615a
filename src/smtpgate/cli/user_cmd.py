"""``smtpgate user ...``: manage the accounts in ``[accounts].database``.

Passwords come from a prompt (asked twice, not echoed) or, for scripts, from
standard input with ``--password-stdin``; never from the command line, where
``ps`` and shell history would show them. Exit codes (``cli/common.py``): 2 for a
usage error (bad option, invalid address), 3 when the account (or the alias,
grant, app password) does not exist, 1 for any other error, which is printed
on stderr with a hint.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from smtpgate.auth.names import InvalidAccountName, canonical_name
from smtpgate.auth.passwords import PasswordPolicyError, check_new_password
from smtpgate.auth.sqlite_file import NewerSchema
from smtpgate.auth.store import (
    Account,
    AccountExists,
    NoSuchAccount,
    SqliteAccountStore,
    StoreError,
)
from smtpgate.cli.common import (
    NotFound,
    OperationalError,
    config_option,
    get_config,
    iso_time,
)
from smtpgate.config import PasswordsConfig

__all__ = ["USER", "AddressType", "NotFound", "OperationalError", "user"]


class AddressType(click.ParamType[str]):
    """An account name, ``local@domain``; converts to the canonical spelling."""

    name = "USER"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        try:
            return canonical_name(str(value))
        except InvalidAccountName as e:
            self.fail(f"{e} (expected an address such as alice@example.com)", param, ctx)


USER = click.argument("user", type=AddressType())
password_stdin_option = click.option(
    "--password-stdin",
    is_flag=True,
    help="Read the password from standard input (up to the end; one final newline "
    "is dropped) instead of prompting.",
)


@contextmanager
def _store(config_path: Path | None) -> Iterator[SqliteAccountStore]:
    cfg = get_config(config_path)
    path = cfg.path(cfg.accounts.database)
    try:
        from smtpgate.cli.admin_cmd import cli_actor  # every change goes to the admin log

        store = SqliteAccountStore(path, cfg.accounts, actor=cli_actor())
    except StoreError as e:
        hint = (
            e.hint
            if isinstance(e, NewerSchema)
            else "check [accounts].database in the config and the permissions of its directory"
        )
        raise OperationalError(str(e), hint) from None
    try:
        yield store
    except NoSuchAccount as e:
        raise NotFound(str(e), "'smtpgate user list' shows the accounts") from None
    except StoreError as e:
        raise OperationalError(
            str(e), "check the database file; another process may hold it locked"
        ) from None
    finally:
        store.close()


def _read_password(
    from_stdin: bool, user: str = "", policy: PasswordsConfig | None = None
) -> str:
    if from_stdin:
        data = sys.stdin.read()
        password = data.removesuffix("\n").removesuffix("\r") if data.endswith("\n") else data
    else:
        password = str(
            click.prompt("Password", hide_input=True, confirmation_prompt="Repeat password")
        )
    try:
        check_new_password(password)
        if policy is not None:
            from smtpgate.policy.passwords import check_password_policy

            check_password_policy(password, user, policy)
    except PasswordPolicyError as e:
        raise OperationalError(str(e), "choose another password") from None
    return password


@click.group()
def user() -> None:
    """Manage accounts."""


@user.command("add")
@USER
@password_stdin_option
@config_option
def add(user: str, password_stdin: bool, config_path: Path | None) -> None:
    """Create account USER (an address) with a password."""
    with _store(config_path) as store:
        if store.get_account(user) is not None:  # before asking for a password
            raise OperationalError(
                f"account {user} already exists", "'smtpgate user passwd' changes its password"
            )
        password = _read_password(password_stdin, user, get_config(config_path).passwords)
        try:
            store.add_account(user, password)
        except AccountExists:
            raise OperationalError(f"account {user} already exists") from None
        except PasswordPolicyError as e:
            raise OperationalError(str(e), "choose another password") from None
    click.echo(f"added account {user}")


@user.command("passwd")
@USER
@password_stdin_option
@config_option
def passwd(user: str, password_stdin: bool, config_path: Path | None) -> None:
    """Set the password of USER (all old secrets are replaced)."""
    with _store(config_path) as store:
        if store.get_account(user) is None:
            raise NoSuchAccount(f"no account {user}")
        password = _read_password(password_stdin, user, get_config(config_path).passwords)
        try:
            store.set_password(user, password)
        except PasswordPolicyError as e:
            raise OperationalError(str(e), "choose another password") from None
        account = store.get_account(user)
    click.echo(f"password of {user} changed")
    if account is not None and account.cram_md5_enabled:
        click.echo(
            f"warning: {user} has CRAM-MD5 enabled, so a plaintext-equivalent secret of the "
            "new password is stored (anyone who reads the account database can log in with "
            f"it); 'smtpgate user cram-md5 {user} --disable' removes it",
            err=True,
        )


@user.command("remove")
@USER
@config_option
def remove(user: str, config_path: Path | None) -> None:
    """Delete account USER and its credentials."""
    with _store(config_path) as store:
        store.remove_account(user)
    click.echo(f"removed account {user}")


@user.command("lock")
@USER
@click.option(
    "--reason",
    default="locked by administrator",
    show_default=True,
    help="Why; shown by 'user list' and in the auth log context.",
)
@config_option
def lock(user: str, reason: str, config_path: Path | None) -> None:
    """Refuse every login of USER (takes effect at its next login attempt)."""
    with _store(config_path) as store:
        store.lock(user, reason)
    click.echo(f"locked account {user}")


@user.command("unlock")
@USER
@config_option
def unlock(user: str, config_path: Path | None) -> None:
    """Allow USER to log in again (administrative lock and the guard's lockouts)."""
    from smtpgate.cli.user_policy_cmd import lift_guard_locks

    with _store(config_path) as store:
        changed = store.unlock(user)
        changed = lift_guard_locks(config_path, user, store) or changed
    click.echo(f"unlocked account {user}" if changed else f"account {user} was not locked")


def _when(t: datetime | None) -> str:
    return "never" if t is None else t.strftime("%Y-%m-%d %H:%M")


def account_json(a: Account, max_age_days: float) -> dict[str, object]:
    """One account for ``user list --json`` (times in ISO 8601 UTC, never a secret)."""

    def t(x: datetime | None) -> str | None:
        return None if x is None else iso_time(x)

    return {
        "name": a.name,
        "locked": a.locked,
        "lock_reason": a.lock_reason,
        "created": t(a.created),
        "last_login": t(a.last_login),
        "last_mechanism": a.last_mechanism,
        "cram_md5_enabled": a.cram_md5_enabled,
        "allowed_mechanisms": None if a.allowed_mechanisms is None else sorted(a.allowed_mechanisms),
        "password_changed": t(a.password_changed),
        "password_expires": t(a.password_expiry(max_age_days)),
    }


def _accounts_table(accounts: list[Account], max_age_days: float = 0) -> Table:
    table = Table(title="accounts (times in UTC)", title_justify="left")
    table.add_column("name", overflow="fold")
    table.add_column("locked", overflow="fold")
    table.add_column("created", no_wrap=True)
    table.add_column("last login", no_wrap=True)
    table.add_column("last mechanism", no_wrap=True)
    table.add_column("cram-md5", no_wrap=True)
    table.add_column("mechanisms allowed", overflow="fold")
    table.add_column("password age", no_wrap=True)
    table.add_column("password expires", no_wrap=True)
    from smtpgate.cli.user_policy_cmd import password_age, password_expiry
    for a in accounts:
        locked = (
            f"yes: {a.lock_reason}" if a.locked and a.lock_reason else "yes" if a.locked else "no"
        )
        allowed = "all" if a.allowed_mechanisms is None else " ".join(
            sorted(a.allowed_mechanisms)
        ) or "none"
        table.add_row(
            a.name,
            locked,
            _when(a.created),
            _when(a.last_login),
            a.last_mechanism or "-",
            # CRAM-MD5 accounts hold a plaintext-equivalent secret: flag them.
            "YES (plaintext-equivalent)" if a.cram_md5_enabled else "no",
            allowed,
            password_age(a),
            password_expiry(a, max_age_days),
        )
    return table


def _mechanisms_table(accounts: list[Account]) -> Table:
    groups: dict[str, list[str]] = defaultdict(list)
    for a in accounts:
        groups[a.last_mechanism or "(never logged in)"].append(a.name)
    table = Table(title="accounts by last mechanism used", title_justify="left")
    table.add_column("last mechanism", no_wrap=True)
    table.add_column("count", justify="right")
    table.add_column("accounts", overflow="fold")
    for mech in sorted(groups):
        table.add_row(mech, str(len(groups[mech])), ", ".join(groups[mech]))
    return table


@user.command("list")
@click.option(
    "--mechanisms",
    is_flag=True,
    help="Group accounts by the mechanism of their last login (e.g. to see who "
    "still uses PLAIN before turning it off).",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per account and line.")
@config_option
def list_(mechanisms: bool, as_json: bool, config_path: Path | None) -> None:
    """List accounts."""
    with _store(config_path) as store:
        accounts = store.list_accounts()
    if as_json:
        max_age_days = get_config(config_path).passwords.max_age_days
        for a in accounts:
            click.echo(json.dumps(account_json(a, max_age_days), sort_keys=True))
        return
    if not accounts:
        click.echo("no accounts")
        return
    # Into a pipe, never fold a name: scripts grep these lines. On a terminal,
    # rich fits the table to the window.
    wide = None if sys.stdout.isatty() else 4096
    console = Console(file=sys.stdout, highlight=False, width=wide)
    max_age = get_config(config_path).passwords.max_age_days
    console.print(
        _mechanisms_table(accounts) if mechanisms else _accounts_table(accounts, max_age)
    )
