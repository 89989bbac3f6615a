"""Shared CLI plumbing: finding and loading the config, errors and exit codes, and
the one way commands open the accounts (``admin_service``).

Every command exits with one of `ExitCode` (docs/cli.md lists them): 0 done, 1 an
error (printed on stderr with a hint), 2 bad input (click's usage error), 3 the
thing the command was asked to act on does not exist. ``smtpgate test`` and
``smtpgate audit`` report on a remote server and add codes of their own above 2.

Commands that read or change accounts, the admin log or the guard's blocks go
through the admin service (``smtpgate/admin.py``); ``admin_service`` opens it for
the running command and turns its errors into exit codes.
"""

from __future__ import annotations

import functools
import os
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from enum import IntEnum
from pathlib import Path
from typing import IO, Any, TypeVar, cast

import click

from smtpgate.admin import AccountAdmin, AdminError, NotFoundError, default_actor, open_admin
from smtpgate.auth.admin_store import AuditActor, NoSuchAccount
from smtpgate.auth.directory import StoreError
from smtpgate.auth.guard_state import GuardStoreError
from smtpgate.auth.names import (
    InvalidAccountName,
    canonical_name,
    hidden_characters_only,
    login_spellings,
    new_account_name,
)
from smtpgate.auth.passwords import PasswordPolicyError
from smtpgate.auth.sqlite_file import BUSY_TIMEOUT, NewerSchema
from smtpgate.config import Config, ConfigError, in_file, load_config
from smtpgate.policy.timespec import parse_duration
from smtpgate.visible import name_from_shown, visible

F = TypeVar("F", bound=Callable[..., Any])

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
        click.echo(f"error: {visible(self.format_message())}", err=True)
        if self.hint:
            click.echo(f"hint: {visible(self.hint)}", err=True)


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
    # readable=False: an unreadable file is load_config's "permission denied: user
    # X cannot read ..." (exit 1, as for every other file), not a usage error.
    type=click.Path(dir_okay=False, readable=False, path_type=Path),
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


def config_missing(path: Path) -> bool:
    """No file at ``path``. One in a directory we may not search is there, as far
    as we know: reading it then says "permission denied" (Path.exists() raises)."""
    try:
        path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return True
    except OSError:
        return False
    return False


def require_config_file(config_path: Path | None) -> Path:
    """The config path; exit 3 when there is no file there."""
    path = config_file(config_path)
    if config_missing(path):
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
            click.echo(f"config error: {in_file(path, key, msg)}", err=True)
        raise SystemExit(ExitCode.ERROR) from None


def read_at_most(path: Path, limit: int, what: str) -> bytes:
    """The bytes of ``path``, which should be a ``what`` of at most ``limit`` bytes.

    Read with a bound, not whole: the wrong file given by mistake (a mailbox, a disk
    image, ``/dev/zero``) was read to its end into memory; ``user import`` of
    /dev/zero grew until the kernel's OOM killer ended it.

    Raises:
        ValueError: the file holds more than ``limit`` bytes (the message says so).
        OSError: it cannot be read.
    """
    with path.open("rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"{path} holds more than {limit // (1 << 20)} MiB, and no {what} is "
                         "that large: is it the right file?")
    return data


def parse_since(value: str | None, param_hint: str = "--since") -> datetime | None:
    """``--since 24h``: the time that long ago (None for None); exit 2 if malformed."""
    if value is None:
        return None
    try:
        return datetime.now(UTC) - timedelta(seconds=parse_duration(value))
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint=param_hint) from None


class AddressType(click.ParamType[str]):
    r"""An account name, ``local@domain``; converts to the canonical spelling.

    It is also taken as the account commands show it (``cli/output.name_shown``):
    ``ali\x1bce@example.org``, copied from ``user list``, is the account whose name
    holds an ESC, and ``jos\xe9@example.org`` (an ASCII-only output) is josé's. A
    name that holds whitespace or control characters, which ``canonical_name``
    refuses, is passed on as given when it is a valid address but for them: such
    legacy accounts (a database from before the rules, a row inserted by hand)
    could be neither removed nor locked. The account commands then find it as
    stored, or say there is no such account (exit 3).
    """

    name = "USER"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        try:
            given = name_from_shown(str(value))
        except ValueError as e:
            self.fail(str(e), param, ctx)
        try:
            return canonical_name(given)
        except InvalidAccountName as e:
            if hidden_characters_only(given):
                return given
            self.fail(f"{e} (expected an address such as alice@example.com)", param, ctx)


def login_spelling(user: str | None, config_path: Path | None) -> str | None:
    """``user`` (the USER argument) as a login finds its account
    (``AccountAdmin.account_spelling``): ``ａｌｉｃｅ@example.org`` in full-width
    letters logs in as alice, and every account command said "no account" for it.
    A name with no other spelling (nearly every one) opens nothing here."""
    if user is None or len(login_spellings(user)) == 1:
        return user
    with admin_service(get_config(config_path)) as admin:
        return admin.account_spelling(user)


def account_argument(*, required: bool = True) -> Callable[[F], F]:
    """The USER argument of the account commands (``AddressType``), found as a
    login finds it (``login_spelling``) before the command runs. The command
    takes ``user`` and ``config_path``."""
    def decorate(f: F) -> F:
        @functools.wraps(f)
        def run(*args: Any, **kwargs: Any) -> Any:
            kwargs["user"] = login_spelling(kwargs["user"], kwargs["config_path"])
            return f(*args, **kwargs)
        return click.argument("user", type=AddressType(), required=required)(
            cast("F", run))
    return decorate


#: The USER argument of the account commands.
USER = account_argument()


class NewAddressType(AddressType):
    """The name of an account to be made: also a mailbox a client can send from
    (``auth/names.new_account_name``); an existing account's name need not be."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        # Typed as itself: the escaped form names accounts that exist (AddressType),
        # and a new name may hold no backslash nor hidden character anyway.
        try:
            return new_account_name(canonical_name(str(value)))
        except InvalidAccountName as e:
            self.fail(str(e), param, ctx)


#: The USER argument of ``user add``.
NEW_USER = click.argument("user", type=NewAddressType())


def cli_actor() -> AuditActor:
    """The admin-log actor of the running command: OS user and command path."""
    actor = default_actor()
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return actor
    words = ctx.command_path.split()
    return AuditActor(actor.os_user, " ".join(["smtpgate", *words[1:]]))


def _file_hint(path: Path, what: str) -> str | None:
    """The permission problem of the SQLite file ``path``, if it has one."""
    from smtpgate.preflight import database_access_problem

    return database_access_problem(path, what)


def open_hint(cfg: Config) -> str:
    """What to check when the account store of ``cfg`` cannot be opened: for a SQLite
    file, what is wrong with its permissions if something is."""
    backend = cfg.accounts.backend
    if backend == "sqlite":
        found = _file_hint(cfg.path(cfg.accounts.database), "account database")
        if found:
            return found
    if backend == "postgresql":
        return ("check accounts.postgresql.dsn and password_file, and that the "
                "database server is running and reachable")
    if backend == "ldap":
        return ("check [accounts.ldap] (url, bind_dn, bind_password_file, base_dn), "
                "that the directory is reachable, and [accounts].database")
    return "check [accounts].database in the config and the permissions of its directory"


#: The hint for an SQLite file another process kept locked past the busy timeout.
LOCKED_HINT = (
    f"another process held its write lock for over {BUSY_TIMEOUT:g} s (a running server "
    "or another smtpgate command in the middle of a write); try again in a moment"
)


#: The hint for an SQLite file that is damaged or no database at all.
DAMAGED_HINT = (
    "the file is damaged or is no SQLite database: stop the server, move the file "
    "aside (with its -wal and -shm files) and put back the newest copy, one `smtpgate db "
    "backup` made (NAME.bak-TIMESTAMP) or a schema upgrade left (NAME.bak-vN-TIMESTAMP); "
    "sqlite3's .recover may save what it still holds (docs/accounts.md, \"Upgrades and "
    "backups\")"
)


def sqlite_damaged(e: BaseException) -> bool:
    """Whether ``e`` (a store's error, or sqlite3's own) says the file is corrupt
    (SQLITE_CORRUPT) or not a database (SQLITE_NOTADB)."""
    cause = e if isinstance(e, sqlite3.Error) else e.__cause__
    name = getattr(cause, "sqlite_errorname", "")
    return isinstance(cause, sqlite3.Error) and name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB"))


def sqlite_locked(e: BaseException) -> bool:
    """Whether ``e`` (a store's error) comes from an SQLite file that stayed locked
    (SQLITE_BUSY/SQLITE_LOCKED): the stores keep the sqlite3 error as the cause."""
    cause = e.__cause__
    name = getattr(cause, "sqlite_errorname", "")
    return isinstance(cause, sqlite3.Error) and name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED"))


def store_hint(e: Exception, default: str) -> str:
    """The error's own hint (a newer schema, a PostgreSQL schema to migrate), a lock
    (which the defaults, about the config and permissions, sent the admin away
    from), else ``default``."""
    if isinstance(e, NewerSchema):
        return e.hint
    own = getattr(e, "hint", None)
    if isinstance(own, str) and own:
        return own
    if sqlite_damaged(e):
        return DAMAGED_HINT
    return LOCKED_HINT if sqlite_locked(e) else default


def _in_use_hint(cfg: Config) -> str:
    """Where to look when the account backend failed after it opened: the SQLite
    file's permissions (a file of mode 0444 was "another process may hold it
    locked", which sent the admin looking for a process), else a lock, else the
    server it talks to (`open_hint`)."""
    if cfg.accounts.backend == "sqlite":
        found = _file_hint(cfg.path(cfg.accounts.database), "account database")
        return found or "check the database file; another process may hold it locked"
    return open_hint(cfg)


def guard_hint(cfg: Config) -> str:
    """Where to look when the guard's state fails: the SQLite file, or with
    ``[state] backend = "redis"`` the Redis it names (no file is involved then)."""
    if cfg.state.backend == "redis":
        return "check [state] redis_url and password_file, and that Redis runs"
    found = _file_hint(cfg.path(cfg.guard.database), "guard database")
    return found or "check [guard].database and its directory"


def require_account_database(cfg: Config, *, create: bool = False) -> None:
    """Exit 3 when ``[accounts] backend = "sqlite"`` names a file that does not exist
    (with ``create``: exit 1 when its directory does not exist).

    Opening the store creates the file. For ``user add`` that is the point; for every
    other command it turned a typo in ``[accounts].database`` into a new, empty
    database: ``user list`` said "no accounts", ``status`` said the accounts answer,
    and ``config check`` then passed, the file being there. The store makes no
    directory, and its error for one missing was a bare ``[Errno 2]``."""
    if cfg.accounts.backend not in ("sqlite", "ldap"):
        return  # a server
    path = cfg.path(cfg.accounts.database)
    if (create or cfg.accounts.backend == "ldap") and config_missing(path.parent):
        raise OperationalError(
            f"the directory {path.parent} of [accounts].database {path} does not exist",
            "create it (owned by the user smtpgate runs as), or correct [accounts].database",
        )
    if cfg.accounts.backend == "ldap" or create:
        return  # LDAP's local overlay may well not exist yet
    if config_missing(path):
        raise NotFound(
            f"no account database at {path}",
            "check [accounts].database in the config; `smtpgate user add` creates the "
            "file, `smtpgate init` a whole new install",
        )


@contextmanager
def admin_service(cfg: Config, *, create: bool = False) -> Iterator[AccountAdmin]:
    """The admin service on ``cfg``'s accounts, for the running command (every change
    goes to the admin log under its name), closed at the end. Errors become exit
    codes: no such account (or app password, or block) 3, anything else 1, each
    with a hint. Without ``create`` an SQLite account database that does not exist
    is exit 3 (`require_account_database`), not a new file."""
    require_account_database(cfg, create=create)
    try:
        admin = open_admin(cfg, cli_actor())
    except StoreError as e:
        raise OperationalError(str(e), store_hint(e, open_hint(cfg))) from None
    try:
        yield admin
    except NoSuchAccount as e:
        raise NotFound(str(e), "'smtpgate user list' shows the accounts") from None
    except NotFoundError as e:
        raise NotFound(str(e), e.hint) from None
    except AdminError as e:
        raise OperationalError(str(e), e.hint) from None
    except PasswordPolicyError as e:
        raise OperationalError(str(e), "choose another password") from None
    except GuardStoreError as e:
        raise OperationalError(str(e), store_hint(e, guard_hint(cfg))) from None
    except StoreError as e:
        raise OperationalError(str(e), store_hint(e, _in_use_hint(cfg))) from None
    finally:
        admin.close()
