"""``smtpgate user import dovecot-passwd|sasldb FILE``: accounts from another server.

Registered on the ``user`` group by import (``cli/main.py`` imports this module).
The files are read by ``auth/imports.py``; the admin service writes the good
entries in one transaction (``AccountAdmin.import_accounts``). Each bad line is
reported as ``FILE:LINE: why`` on stderr and left out; the exit code is then 1
(the good lines *are* imported), so a script notices.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from smtpgate.admin import ImportResult
from smtpgate.auth.imports import (
    ImportEntry,
    ImportProblem,
    ImportSourceError,
    read_dovecot_passwd,
    read_sasldb,
)
from smtpgate.auth.legacy_hashes import LEGACY
from smtpgate.cli.common import (
    OperationalError,
    admin_service,
    config_option,
    get_config,
    read_at_most,
)
from smtpgate.cli.output import echo
from smtpgate.cli.user_cmd import user

F = TypeVar("F", bound=Callable[..., Any])


#: A passwd-file of a million users is about 200 MB; a larger file is the wrong one.
MAX_PASSWD_FILE = 256 << 20


@user.group("import")
def import_() -> None:
    """Import accounts from Dovecot or Cyrus SASL (docs/directories.md)."""


def _options(f: F) -> F:
    """The options both import commands take."""
    for decorator in reversed((
        click.option("--dry-run", is_flag=True,
                     help="Show what would be imported; change nothing."),
        click.option("--update", is_flag=True,
                     help="Replace the password of accounts that already exist "
                     "(default: skip them)."),
        click.option("--cram-md5", "cram_md5", is_flag=True,
                     help="Opt the imported accounts in to CRAM-MD5 (a plaintext-"
                     "equivalent secret; see 'smtpgate user cram-md5')."),
        config_option,
    )):
        f = decorator(f)
    return f


def _kind(e: ImportEntry) -> str:
    if e.password is not None:
        return f"{e.scheme}, hashed now"
    if e.credentials and LEGACY in e.credentials:
        return f"{e.scheme}, upgraded at first login"
    return f"{e.scheme}, kept"


def _report(
    path: Path, result: ImportResult, problems: list[ImportProblem], dry_run: bool
) -> None:
    # The names and messages come from the imported file: shown escaped, as every
    # text from elsewhere (docs/cli.md); a NUL or U+202E in a name reached the
    # terminal as it was.
    for p in problems:
        echo(f"{path}:{p.line}: {p.message}; not imported", err=True)
    for e, why in result.skipped:
        echo(f"{path}:{e.line}: {e.name}: {why}; skipped", err=True)
    verb = ("would create", "would update") if dry_run else ("created", "updated")
    for e in result.created:
        echo(f"{verb[0]} {e.name} ({_kind(e)})")
    for e in result.updated:
        echo(f"{verb[1]} {e.name} ({_kind(e)})")
    summary = (
        f"{len(result.created)} {verb[0]}, {len(result.updated)} {verb[1]}, "
        f"{len(result.skipped)} skipped, {len(problems)} bad"
    )
    echo(f"{summary}{' (dry run: nothing changed)' if dry_run else ''}")
    if problems:
        raise OperationalError(
            f"{len(problems)} entr{'y' if len(problems) == 1 else 'ies'} of {path} not imported",
            "fix the lines named above and import the file again (accounts already "
            "imported are skipped, or replaced with --update)",
        )


def _run(
    path: Path, source: str, entries: list[ImportEntry], problems: list[ImportProblem],
    *, dry_run: bool, update: bool, cram_md5: bool, config_path: Path | None,
) -> None:
    cfg = get_config(config_path)
    # A dry run changes nothing, so it does not make a missing database either.
    with admin_service(cfg, create=not dry_run) as admin:
        result = admin.import_accounts(
            entries, source=source, update=update, cram_md5_enabled=cram_md5, dry_run=dry_run
        )
    _report(path, result, problems, dry_run)


@import_.command("dovecot-passwd")
# readable=False: a file the user may not read is the command's own error, exit 1
# (docs/cli.md), not click's usage error.
@click.argument("file", type=click.Path(exists=True, dir_okay=False, readable=False,
                                        path_type=Path))
@click.option("--domain", help="Domain appended to user names without @domain.")
@_options
def dovecot_passwd(
    file: Path, domain: str | None, dry_run: bool, update: bool, cram_md5: bool,
    config_path: Path | None,
) -> None:
    """Import a Dovecot passwd-file (user:{SCHEME}hash:...), hashes and all."""
    try:
        text = read_at_most(file, MAX_PASSWD_FILE, "Dovecot passwd-file").decode("utf-8")
    except UnicodeDecodeError as e:
        raise OperationalError(f"{file}: {e}", "give a Dovecot passwd-file in UTF-8") from None
    except ValueError as e:  # too large
        raise OperationalError(
            str(e), "give the passwd-file (/etc/dovecot/users, or the file userdb names)"
        ) from None
    except PermissionError:
        raise OperationalError(f"{file}: permission denied: run the import as a user that "
                               "may read it (root for /etc/dovecot/users)") from None
    except OSError as e:
        raise OperationalError(f"{file}: {e}", "give a Dovecot passwd-file in UTF-8") from None
    entries, problems = read_dovecot_passwd(text, domain=domain)
    _run(file, f"dovecot-passwd {file.name}", entries, problems, dry_run=dry_run,
         update=update, cram_md5=cram_md5, config_path=config_path)


@import_.command("sasldb")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_options
def sasldb(
    file: Path, dry_run: bool, update: bool, cram_md5: bool, config_path: Path | None
) -> None:
    """Import a Cyrus SASL sasldb2 (user@realm and password; needs db_dump)."""
    try:
        entries, problems = read_sasldb(file)
    except ImportSourceError as e:
        raise OperationalError(
            str(e), "give the sasldb2 file saslpasswd2 writes (e.g. /etc/sasldb2)"
        ) from None
    _run(file, f"sasldb {file.name}", entries, problems, dry_run=dry_run,
         update=update, cram_md5=cram_md5, config_path=config_path)
