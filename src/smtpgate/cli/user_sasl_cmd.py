"""``smtpgate user cram-md5`` and ``smtpgate user mechanisms``: per-account SASL policy.

Registered on the ``user`` group by import (``cli/main.py`` imports this module).

- ``user cram-md5 USER --enable`` asks for the account's *current* password
  (CRAM-MD5's secret, the HMAC-MD5 intermediate key pair, is derived from it and
  smtpgate never stores the password); the admin service checks it against the
  account's password and stores the secret, in one transaction with the opt-in.
  ``--disable`` deletes the secret at once. Without either flag the command
  shows the current setting.
- ``user mechanisms USER --allow MECH ...`` restricts the account to those
  mechanisms; ``--all`` lifts the restriction. Allowing a SCRAM mechanism also
  allows its ``-PLUS`` variant (same stored keys, plus channel binding), so a
  restriction never locks out a client for being *more* careful. Without flags
  the command shows the current policy.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from smtpgate import mechanism_facts
from smtpgate.admin import with_channel_binding_variants
from smtpgate.auth.credentials import CRAM_MD5
from smtpgate.cli.common import USER, admin_service, config_option, get_config
from smtpgate.cli.output import echo, name_shown
from smtpgate.cli.user_cmd import password_stdin_option, user
from smtpgate.config import Config

CRAM_MD5_WARNING = (
    "warning: CRAM-MD5 needs a plaintext-equivalent secret. The account database now "
    "holds, for {user}, the HMAC-MD5 key pair of the password: anyone who reads the "
    "database can log in as {user} with CRAM-MD5 without knowing the password "
    "(RFC 2195 section 4). Prefer SCRAM-SHA-256, and disable this when the client no "
    "longer needs it."
)


def _server_offers(cfg: Config, mechanism: str) -> bool:
    """True if ``mechanism`` is enabled server-wide or on some listener."""
    if mechanism in mechanism_facts.CLIENT_CERTIFICATE:  # EXTERNAL: where certificates are asked for
        return any(lst.client_certificates is not None for lst in cfg.listeners)
    if any(mechanism in [m.upper() for m in (lst.mechanisms or [])] for lst in cfg.listeners):
        return True
    return any(mechanism in cfg.auth.mechanisms for lst in cfg.listeners if lst.mechanisms is None)


def _read_current_password(from_stdin: bool) -> str:
    if from_stdin:
        data = sys.stdin.read()
        return data.removesuffix("\n").removesuffix("\r") if data.endswith("\n") else data
    # One prompt, no echo: the answer is checked against the stored hash, so a
    # typo is caught there rather than by asking twice.
    return str(click.prompt("Current password of the account", hide_input=True))


@user.command("cram-md5")
@USER
@click.option(
    "--enable/--disable",
    "enable",
    default=None,
    help="Store the CRAM-MD5 secret (asks for the current password) or delete it. "
    "Without either, show the setting.",
)
@password_stdin_option
@config_option
def cram_md5(
    user: str, enable: bool | None, password_stdin: bool, config_path: Path | None
) -> None:
    """Opt account USER in to or out of CRAM-MD5 (off by default)."""
    cfg = get_config(config_path)
    with admin_service(cfg) as admin:
        account = admin.require_account(user)
        if enable is None:
            if account.cram_md5_enabled:
                secret = "stored" if CRAM_MD5 in account.schemes else "not stored yet"
                echo(f"CRAM-MD5 is enabled for {name_shown(account.name)} (secret {secret})")
            else:
                echo(f"CRAM-MD5 is disabled for {name_shown(account.name)}")
            return
        if not enable:
            admin.disable_cram_md5(account.name)
            echo(f"CRAM-MD5 disabled for {name_shown(account.name)}; its secret is deleted")
            return
        admin.require_cram_md5_possible(account, with_password=True)  # before the prompt
        admin.enable_cram_md5(account.name, _read_current_password(password_stdin))
    echo(f"CRAM-MD5 enabled for {name_shown(account.name)}")
    echo(CRAM_MD5_WARNING.format(user=name_shown(account.name)), err=True)
    if not account.allows("CRAM-MD5"):
        echo(
            f"note: the mechanism policy of {name_shown(account.name)} does not allow CRAM-MD5; "
            f"see 'smtpgate user mechanisms {name_shown(account.name)}'",
            err=True,
        )
    if not _server_offers(cfg, "CRAM-MD5"):
        echo(
            "note: CRAM-MD5 is not enabled on any listener; add it to [auth].mechanisms "
            "(or a listener's mechanisms) for clients to use it",
            err=True,
        )


class MechanismType(click.ParamType[str]):
    """A SASL mechanism name smtpgate knows; converts to upper case."""

    name = "MECH"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> str:
        name = str(value).strip().upper()
        if mechanism_facts.facts(name) is None:
            known = ", ".join(mechanism_facts.KNOWN)
            self.fail(f"unknown mechanism {value!r}; known: {known}", param, ctx)
        return name


def _in_strength_order(names: set[str] | frozenset[str]) -> list[str]:
    return mechanism_facts.in_strength_order(names)


@user.command("mechanisms")
@USER
@click.option(
    "--allow",
    "allow",
    multiple=True,
    type=MechanismType(),
    help="A mechanism USER may use (repeat for several). Replaces the current list. "
    "Allowing SCRAM-SHA-256 also allows SCRAM-SHA-256-PLUS (same for SHA-1).",
)
@click.option("--all", "allow_all", is_flag=True, help="Allow every mechanism a listener offers.")
@config_option
def mechanisms(
    user: str, allow: tuple[str, ...], allow_all: bool, config_path: Path | None
) -> None:
    """Show or set which SASL mechanisms account USER may log in with."""
    if allow and allow_all:
        raise click.UsageError("use --allow or --all, not both")
    cfg = get_config(config_path)
    with admin_service(cfg) as admin:
        account = admin.require_account(user)
        if not allow and not allow_all:
            if account.allowed_mechanisms is None:
                echo(f"{name_shown(account.name)} may use every mechanism a listener offers")
            else:
                shown = " ".join(_in_strength_order(account.allowed_mechanisms)) or "(none)"
                echo(f"{name_shown(account.name)} may use: {shown}")
            return
        if allow_all:
            admin.set_allowed_mechanisms(account.name, None)
            echo(f"{name_shown(account.name)} may now use every mechanism a listener offers")
            return
        wanted = with_channel_binding_variants(allow)
        admin.set_allowed_mechanisms(account.name, wanted)
        cram_enabled = account.cram_md5_enabled
    echo(f"{name_shown(account.name)} may now use: {' '.join(_in_strength_order(wanted))}")
    if "CRAM-MD5" in wanted and not cram_enabled:
        echo(
            f"note: CRAM-MD5 also needs 'smtpgate user cram-md5 {name_shown(account.name)} --enable'",
            err=True,
        )
    legacy = [m for m in mechanism_facts.in_strength_order(wanted) if m in mechanism_facts.LEGACY]
    if legacy:
        echo(
            f"note: {' '.join(legacy)} send the password or a plaintext-equivalent proof; "
            "'smtpgate user list --mechanisms' shows who still needs them",
            err=True,
        )
    missing = [m for m in _in_strength_order(set(allow)) if not _server_offers(cfg, m)]
    if missing:
        echo(
            f"note: not enabled on any listener, so unusable for now: {' '.join(missing)}",
            err=True,
        )
