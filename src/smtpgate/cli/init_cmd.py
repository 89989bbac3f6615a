"""``smtpgate init``: a working directory with config, certificate, database and a demo account."""

from __future__ import annotations

import secrets
import sys
from pathlib import Path

import click

from smtpgate.config import ConfigError, check_hostname, parse_config

_TEMPLATE = """\
# smtpgate configuration, written by `smtpgate init`.
# Every key is described in docs/configuration.md; `smtpgate config check` validates it.
hostname = "{hostname}"

[[listeners]]
name = "submission"          # RFC 6409 submission with STARTTLS (RFC 3207)
address = "{submission}"
tls = "starttls"

[[listeners]]
name = "submissions"         # RFC 8314 implicit TLS
address = "{submissions}"
tls = "implicit"

[tls]
cert = "tls/cert.pem"
key = "tls/key.pem"

[accounts]
database = "accounts.sqlite"

[auth]
log_file = "auth.log"

[queue]
spool = "spool"

[delivery]
{delivery}
"""


def _delivery_block(deliver: str) -> str:
    kind, _, rest = deliver.partition(":")
    if kind == "maildir" and rest:
        return f'mode = "maildir"\nmaildir = "{rest}"'
    if kind == "relay" and rest:
        host, sep, port = rest.rpartition(":")
        if not sep or not port.isdigit():
            raise click.BadParameter("expected relay:HOST:PORT", param_hint="--deliver")
        return f'mode = "relay"\nrelay_host = "{host}"\nrelay_port = {port}'
    raise click.BadParameter("expected maildir:PATH or relay:HOST:PORT", param_hint="--deliver")


def _hostname(value: str) -> str:
    """Checked before anything is written: the name becomes the certificate's SAN."""
    try:
        return check_hostname(value)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--hostname") from None


def _demo_address(hostname: str) -> str:
    return f"demo@{hostname.lower()}"


@click.command()
@click.option(
    "--dir", "directory", required=True, type=click.Path(file_okay=False, path_type=Path)
)
@click.option(
    "--hostname", default="localhost", show_default=True, callback=lambda _c, _p, v: _hostname(v),
    help="Server name: a DNS host name (RFC 1123), e.g. mail.example.org.",
)
@click.option("--submission", default="127.0.0.1:2587", show_default=True, help="STARTTLS listener.")
@click.option(
    "--submissions", default="127.0.0.1:2465", show_default=True, help="Implicit-TLS listener."
)
@click.option(
    "--deliver",
    default="maildir:mail",
    show_default=True,
    help="maildir:PATH or relay:HOST:PORT.",
)
@click.option("--no-demo", is_flag=True, help="Do not create the demo account.")
def init(
    directory: Path, hostname: str, submission: str, submissions: str, deliver: str, no_demo: bool
) -> None:
    """Create DIR with smtpgate.toml, a self-signed certificate, the account
    database, a spool and a demo account (its password is printed once)."""
    from smtpgate.auth.store import SqliteAccountStore
    from smtpgate.tls.certs import write_self_signed

    config_path = directory / "smtpgate.toml"
    if config_path.exists():
        click.echo(f"error: {config_path} exists; refusing to overwrite it", err=True)
        raise SystemExit(1)
    text = _TEMPLATE.format(
        hostname=hostname,
        submission=submission,
        submissions=submissions,
        delivery=_delivery_block(deliver),
    )
    directory.mkdir(parents=True, exist_ok=True)
    write_self_signed(directory / "tls/cert.pem", directory / "tls/key.pem", hostname)
    try:
        cfg = parse_config(text, directory.resolve())
    except ConfigError as e:
        for key, msg in e.problems:
            click.echo(f"error: {key}: {msg}", err=True)
        raise SystemExit(1) from None
    cfg.path(cfg.queue.spool).mkdir(parents=True, exist_ok=True)
    if cfg.delivery.mode == "maildir":
        for sub in ("tmp", "new", "cur"):
            (cfg.path(cfg.delivery.maildir) / sub).mkdir(parents=True, exist_ok=True)
    store = SqliteAccountStore(cfg.path(cfg.accounts.database), cfg.accounts)
    password = ""
    user = _demo_address(hostname)
    try:
        if not no_demo:
            password = secrets.token_urlsafe(15)
            store.add_account(user, password)
    finally:
        store.close()
    config_path.write_text(text, encoding="utf-8")
    click.echo(f"wrote {config_path}")
    click.echo(f"  certificate: {directory / 'tls/cert.pem'} (self-signed, ECDSA P-256)")
    click.echo(f"  accounts:    {cfg.path(cfg.accounts.database)}")
    if password:
        click.echo(f"demo account: {user}")
        click.echo(f"    password: {password}    (shown once; change it with `smtpgate user passwd`)")
        click.echo("send a test message (after `smtpgate serve`):")
        host, port = cfg.listeners[0].host_port
        prog = sys.argv[0] if sys.argv and sys.argv[0].endswith("smtpgate") else "smtpgate"
        click.echo(
            f"  echo '{password}' | {prog} test --server {host}:{port} --starttls "
            f"--ca {directory / 'tls/cert.pem'} --user {user} --password-stdin "
            f"--from {user} --to {user}"
        )
