"""``smtpgate user ...``: manage the accounts of ``[accounts]``.

The ``user`` group and its account commands; ``user_policy_cmd`` and
``user_sasl_cmd`` add theirs to the group (they import this module, never the
other way round). Each command is a thin shell over one operation of the admin
service (``smtpgate/admin.py``), opened with ``cli/common.admin_service``.

Passwords come from a prompt (asked twice, not echoed) or, for scripts, from
standard input with ``--password-stdin``; never from the command line, where
``ps`` and shell history would show them. The admin service checks them against
``[passwords]``. Exit codes (``cli/common.py``): 2 for a usage error (bad
option, invalid address), 3 when the account (or the alias, grant, app
password) does not exist, 1 for any other error, which is printed on stderr
with a hint.
"""

from __future__ import annotations

import getpass
import json
import sys
import warnings
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.console import Console
from rich.text import Text

from smtpgate.admin import MAX_LOCK_REASON, AdminError, lock_reason
from smtpgate.auth.admin_store import AccountExists
from smtpgate.auth.credentials import SCRAM_SCHEMES
from smtpgate.auth.directory import Account
from smtpgate.auth.legacy_hashes import LEGACY
from smtpgate.cli.common import (
    NEW_USER,
    USER,
    OperationalError,
    admin_service,
    config_option,
    get_config,
    iso_time,
)
from smtpgate.cli.output import Table, echo, name_shown, text
from smtpgate.plural import count
from smtpgate.policy.timespec import format_duration

if TYPE_CHECKING:
    from smtpgate.config import Config

password_stdin_option = click.option(
    "--password-stdin",
    is_flag=True,
    help="Read the password from standard input (up to the end; one final newline "
    "is dropped) instead of prompting.",
)


def read_password(from_stdin: bool) -> str:
    """A new password from standard input (up to the end; one final newline is
    dropped) or a prompt asked twice without echo. The admin service checks it."""
    if from_stdin:
        # Bytes, decoded here: text-mode stdin turned a byte that is not UTF-8 into a
        # lone surrogate (or raised, by locale), and hashing it was a traceback.
        raw = sys.stdin.buffer.read()
        try:
            data = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise OperationalError(
                f"the password on standard input is not UTF-8 text (byte 0x{raw[e.start]:02x} "
                f"at offset {e.start})",
                "give it in UTF-8 (a file in another encoding: convert it, e.g. with "
                "iconv -t UTF-8)",
            ) from None
        return data.removesuffix("\n").removesuffix("\r") if data.endswith("\n") else data
    # Without a terminal (a pipe, a file, /dev/null) getpass printed a GetPassWarning
    # (a line that reads like a traceback's) besides its own "Password input may be
    # echoed", and an input that ended was a bare "Aborted!". Lines piped in are still
    # read, twice.
    terminal = sys.stdin.isatty()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", getpass.GetPassWarning)
            return str(click.prompt("Password", hide_input=True,
                                    confirmation_prompt="Repeat password"))
    except click.Abort:
        if terminal:
            raise
        raise click.UsageError(
            "no password: standard input is no terminal and ended before the password "
            "was given twice; pass --password-stdin to read it once from there"
        ) from None


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


@click.group()
def user() -> None:
    """Manage accounts."""


@user.command("add")
@NEW_USER
@password_stdin_option
@config_option
def add(user: str, password_stdin: bool, config_path: Path | None) -> None:
    """Create account USER (an address) with a password."""
    with admin_service(get_config(config_path), create=True) as admin:
        # Every refusal the store would make (the account exists, the name is
        # another's alias) before the password is asked for, not after.
        try:
            name = admin.check_new_account(user)
        except AccountExists as e:
            hint = ("'smtpgate user passwd' changes its password"
                    if admin.get_account(user) is not None else "")
            raise OperationalError(str(e), hint) from None
        password = read_password(password_stdin)
        try:
            account = admin.add_account(name, password)
        except AccountExists as e:  # made by someone else meanwhile
            raise OperationalError(str(e)) from None
    echo(f"added account {name_shown(account.name)}")


@user.command("passwd")
@USER
@password_stdin_option
@config_option
def passwd(user: str, password_stdin: bool, config_path: Path | None) -> None:
    """Set the password of USER (all old secrets are replaced)."""
    with admin_service(get_config(config_path)) as admin:
        admin.require_account(user)  # before asking for a password
        account = admin.set_password(user, read_password(password_stdin))
    echo(f"password of {name_shown(user)} changed")
    if account.cram_md5_enabled:
        echo(
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
    cfg = get_config(config_path)
    with admin_service(cfg) as admin:
        # The account's one name without reading its row: a row this version cannot
        # read is removed all the same (its error's hint says so).
        name = admin.login_identity(user)
        admin.remove_account(user)
    echo(f"removed account {name_shown(user)}")
    _queued_note(cfg, name)


#: Queue ids a note names; the rest are counted.
_QUEUED_SHOWN = 5


def _queued_note(cfg: Config, account: str) -> None:
    """After ``user lock`` and ``user remove``: the messages ``account`` submitted
    that the queue will still deliver (not held). Neither command touches them (an
    accepted message is never dropped unasked), and until 2026-12 neither said so:
    an admin who locked a compromised account saw its spam go on leaving. Best
    effort: a spool that cannot be read says nothing, the account change is done."""
    import asyncio

    from smtpgate.queue.manage import QueueManager
    from smtpgate.queue.spool import Spool, SpoolError

    spool_dir = cfg.path(cfg.queue.spool)
    if not (spool_dir / "queue").is_dir():
        return  # no spool yet: never made here (``queue_cmd._manager``)
    try:
        spool = Spool(spool_dir, prefill=False, tidy=False)
    except OSError:
        return
    try:
        ids = QueueManager(spool).to_deliver_for(account)
    except (OSError, SpoolError):
        return
    finally:
        asyncio.run(spool.close())
    if not ids:
        return
    shown = ", ".join(ids[:_QUEUED_SHOWN]) + (", ..." if len(ids) > _QUEUED_SHOWN else "")
    echo(f"note: {count(len(ids), 'message')} {name_shown(account)} submitted "
         f"{'is' if len(ids) == 1 else 'are'} still queued and will be delivered ({shown}); "
         "'smtpgate queue hold ID' keeps one back, 'smtpgate queue delete ID' removes it",
         err=True)


def _lock_reason(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """``--reason`` checked as the admin service checks it, before anything is
    opened: one that is not 1-200 printable characters (``--reason ""``, a line
    break) is bad input, exit 2, naming the option (it was exit 1, an "error")."""
    try:
        return lock_reason(value)
    except AdminError:
        text = value.strip()
        why = ("empty" if not text else f"{len(text)} characters long"
               if len(text) > MAX_LOCK_REASON
               else "it holds a control character, a line break or a bidi override")
        raise click.BadParameter(
            f"{why}; a lock reason is 1-{MAX_LOCK_REASON} printable characters on one line "
            "(leave --reason out for the default, 'locked by administrator')",
            ctx=ctx, param=param) from None


@user.command("lock")
@USER
@click.option(
    "--reason",
    default="locked by administrator",
    show_default=True,
    callback=_lock_reason,
    help=f"Why (1-{MAX_LOCK_REASON} printable characters); shown by 'user list' and in "
    "the auth log context.",
)
@config_option
def lock(user: str, reason: str, config_path: Path | None) -> None:
    """Refuse every login of USER (takes effect at its next login attempt)."""
    cfg = get_config(config_path)
    with admin_service(cfg) as admin:
        admin.lock(user, reason)
        name = admin.require_account(user).name
    echo(f"locked account {name_shown(user)}")
    _queued_note(cfg, name)


@user.command("unlock")
@USER
@config_option
def unlock(user: str, config_path: Path | None) -> None:
    """Allow USER to log in again (administrative lock and the guard's lockouts)."""
    with admin_service(get_config(config_path)) as admin:
        changed = admin.unlock(user)
    echo(f"unlocked account {name_shown(user)}" if changed
         else f"account {name_shown(user)} was not locked")


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
        # Imported (``user import``), not logged in since: the old server's hash.
        "legacy_hash": LEGACY in a.schemes,
        # Stored SCRAM keys; a directory (LDAP) account gets them at its first
        # PLAIN/LOGIN login and again after its password changes.
        "scram_keys": _scram_keys(a),
    }


def _scram_keys(a: Account) -> list[str]:
    return sorted(s for s in a.schemes if s in SCRAM_SCHEMES.values())


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
    table.add_column("legacy hash", no_wrap=True)
    table.add_column("scram keys", no_wrap=True)
    for a in accounts:
        locked, allowed = _locked_cell(a), _allowed_cell(a)
        table.add_row(
            name_shown(a.name),
            locked,
            _when(a.created),
            _when(a.last_login),
            a.last_mechanism or "-",
            # CRAM-MD5 accounts hold a plaintext-equivalent secret: flag them.
            "YES (plaintext-equivalent)" if a.cram_md5_enabled else "no",
            allowed,
            password_age(a),
            password_expiry(a, max_age_days),
            # Imported; upgraded to Argon2id at the account's first login.
            "yes (until first login)" if LEGACY in a.schemes else "no",
            " ".join(_scram_keys(a)) or "none",
        )
    return table


def _locked_cell(a: Account) -> str:
    return f"yes: {a.lock_reason}" if a.locked and a.lock_reason else "yes" if a.locked else "no"


def _allowed_cell(a: Account) -> str:
    if a.allowed_mechanisms is None:
        return "all"
    return " ".join(sorted(a.allowed_mechanisms)) or "none"


def _narrow_accounts_table(accounts: list[Account], max_age_days: float = 0) -> Table:
    """The accounts for a terminal too narrow for `_accounts_table` (its eleven
    columns need about 200): the same facts in five columns of a few lines each,
    every one of which may wrap, so that the table fits 80 columns and a name is
    never squeezed out. Only on a terminal: a pipe gets the wide table, whose
    lines scripts grep."""
    # The terminal's width, shared out by ratio: the name gets the largest share.
    table = Table(title="accounts (times in UTC)", title_justify="left", expand=True)
    table.add_column("name", overflow="fold", ratio=3)
    table.add_column("locked", overflow="fold", ratio=2)
    table.add_column("created, last login", overflow="fold", ratio=2)
    table.add_column("password", overflow="fold", ratio=2)
    table.add_column("mechanisms", overflow="fold", ratio=3)
    for a in accounts:
        locked, allowed = _locked_cell(a), _allowed_cell(a)
        login = _when(a.last_login) + (f" with {a.last_mechanism}" if a.last_mechanism else "")
        password = [f"age {password_age(a)}", f"expires {password_expiry(a, max_age_days)}"]
        if LEGACY in a.schemes:
            password.append("legacy hash (until first login)")
        mechs = [f"allowed: {allowed}", f"scram keys: {' '.join(_scram_keys(a)) or 'none'}"]
        if a.cram_md5_enabled:
            mechs.append("CRAM-MD5: YES (plaintext-equivalent)")
        table.add_row(name_shown(a.name), locked, _lines([_when(a.created), login]), _lines(password),
                      _lines(mechs))
    return table


def _lines(lines: list[str]) -> Text:
    """One cell of several lines, each escaped as any cell is."""
    return Text("\n").join(text(line) for line in lines)


def _mechanisms_table(accounts: list[Account]) -> Table:
    groups: dict[str, list[str]] = defaultdict(list)
    for a in accounts:
        groups[a.last_mechanism or "(never logged in)"].append(name_shown(a.name))
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
    cfg = get_config(config_path)
    with admin_service(cfg) as admin:
        accounts = admin.list_accounts()
    if as_json:
        max_age_days = cfg.passwords.max_age_days
        for a in accounts:
            echo(json.dumps(account_json(a, max_age_days), sort_keys=True))
        return
    if not accounts:
        echo("no accounts")
        return
    # Into a pipe, never fold a name: scripts grep these lines. On a terminal,
    # rich fits the table to the window.
    wide = None if sys.stdout.isatty() else 4096
    console = Console(file=sys.stdout, highlight=False, width=wide)
    max_age = cfg.passwords.max_age_days
    if mechanisms:
        console.print(_mechanisms_table(accounts))
        return
    table = _accounts_table(accounts, max_age)
    # Its natural width, measured without the terminal's bound (which clamps it).
    natural = console.measure(table, options=console.options.update_width(1 << 16)).maximum
    if natural > console.width:
        # Squeezed, rich gave the name column no width at all and cut the others
        # with an ellipsis.
        table = _narrow_accounts_table(accounts, max_age)
    console.print(table)
