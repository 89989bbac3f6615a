"""``smtpgate user cert add|list|remove``: TLS client certificates for SASL EXTERNAL.

Registered on the ``user`` group by import (``cli/main.py`` imports this module).

A certificate is registered by its SHA-256 fingerprint, read from a PEM or DER
file; it logs in as the account on a listener with ``client_certificates`` set,
once it verified against that listener's ``client_ca`` (docs/mechanisms.md).
``remove`` keeps the record, marked removed: the certificate is refused from then
on, even where ``client_cert_san_login`` would let its SAN email log in.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path

import click
from rich.console import Console

from smtpgate.auth.admin_store import CertificateTaken
from smtpgate.auth.directory import CertificateRecord
from smtpgate.cli.common import (
    USER,
    NotFound,
    OperationalError,
    admin_service,
    config_option,
    get_config,
    iso_time,
    read_at_most,
)
from smtpgate.cli.output import Table, echo
from smtpgate.cli.user_cmd import user
from smtpgate.tls.client_certs import CertificateFileError, normalise_fingerprint

#: A PEM chain is a few kilobytes; this leaves room for any real one.
MAX_CERT_FILE = 1 << 20


@user.group("cert")
def cert() -> None:
    """Client certificates that log in with SASL EXTERNAL."""


@cert.command("add")
@USER
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@config_option
def add(user: str, file: Path, config_path: Path | None) -> None:
    """Register the certificate in FILE (PEM or DER) to USER."""
    try:
        data = read_at_most(file, MAX_CERT_FILE, "certificate file")
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="FILE") from None
    except OSError as e:
        raise OperationalError(f"cannot read {file}: {e.strerror or e}") from None
    with admin_service(get_config(config_path)) as admin:
        try:
            record, added = admin.add_certificate(user, data)
        except CertificateFileError as e:
            raise click.BadParameter(f"{file}: {e}", param_hint="FILE") from None
        except CertificateTaken as e:
            raise OperationalError(
                str(e), "remove it from that account first ('smtpgate user cert remove')"
            ) from None
    verb = "added" if added else "already registered:"
    echo(f"{verb} certificate sha256:{record.fingerprint} for {user}")
    echo(f"    subject {record.subject or '(none)'}"
               + (f", valid until {record.not_after:%Y-%m-%d %H:%M} UTC" if record.not_after else ""))


def _row(c: CertificateRecord) -> dict[str, object]:
    def t(x: datetime | None) -> str | None:
        return None if x is None else iso_time(x)

    return {
        "account": c.account, "sha256": c.fingerprint, "subject": c.subject,
        "not_after": t(c.not_after), "added": t(c.added), "removed": t(c.revoked),
    }


@cert.command("list")
@USER
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@config_option
def list_(user: str, as_json: bool, config_path: Path | None) -> None:
    """List USER's client certificates (removed ones too, marked)."""
    with admin_service(get_config(config_path)) as admin:
        admin.require_account(user)
        records = admin.certificates(user)
    if as_json:
        for c in records:
            echo(json.dumps(_row(c), sort_keys=True))
        return
    if not records:
        echo(f"no client certificates for {user}")
        return
    table = Table(title=f"client certificates of {user} (times in UTC)", title_justify="left")
    for col in ("sha256", "subject", "valid until", "added", "state"):
        table.add_column(col, overflow="fold")
    for c in records:
        until = "-" if c.not_after is None else f"{c.not_after:%Y-%m-%d %H:%M}"
        state = "active" if c.revoked is None else f"removed {c.revoked:%Y-%m-%d %H:%M}"
        table.add_row(c.fingerprint, c.subject, until, f"{c.added:%Y-%m-%d %H:%M}", state)
    Console(file=sys.stdout, highlight=False, width=None if sys.stdout.isatty() else 4096).print(table)


@cert.command("remove")
@USER
@click.argument("fingerprint")
@config_option
def remove(user: str, fingerprint: str, config_path: Path | None) -> None:
    """Refuse USER's certificate of SHA-256 FINGERPRINT from now on.

    A certificate removed before stays listed as removed: removing it again finds
    the state asked for, and exits 0 like `user unlock` of an unlocked account
    (docs/cli.md, "Exit codes")."""
    with admin_service(get_config(config_path)) as admin:
        try:
            done = admin.remove_certificate(user, fingerprint)
        except CertificateFileError as e:
            raise click.BadParameter(str(e), param_hint="FINGERPRINT") from None
        removed_before = not done and any(
            c.fingerprint == normalise_fingerprint(fingerprint) and c.revoked is not None
            for c in admin.certificates(user))
    if removed_before:
        echo(f"certificate {fingerprint} of {user} was removed already")
        return
    if not done:
        raise NotFound(f"{user} has no registered certificate {fingerprint}",
                       f"'smtpgate user cert list {user}' shows them")
    echo(f"removed certificate {fingerprint} of {user}; it is refused from now on")
