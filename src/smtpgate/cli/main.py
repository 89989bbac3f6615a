"""Entry point of the ``smtpgate`` command: a click group of noun-verb commands."""

from __future__ import annotations

import click

from smtpgate import __version__
from smtpgate.cli import (
    admin_account_cmd,
    admin_cmd,
    app_password_cmd,
    audit_cmd,
    cluster_cmd,
    config_cmd,
    config_show_cmd,
    contrib_cmd,
    db_cmd,
    init_cmd,
    queue_cmd,
    reload_cmd,
    report_cmd,
    serve_cmd,
    status_cmd,
    tester_cmd,
    user_cert_cmd,
    user_cmd,
    user_import_cmd,
    user_policy_cmd,
    user_sasl_cmd,
)
from smtpgate.cli.common import ExitCode, OperationalError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="smtpgate")
def cli() -> None:
    """smtpgate: authenticated SMTP submission server."""


# user_sasl_cmd, user_policy_cmd and user_import_cmd add subcommands to the `user` group on import,
# config_show_cmd to the `config` group.
_ = (user_sasl_cmd, user_policy_cmd, user_import_cmd, user_cert_cmd, config_show_cmd)
cli.add_command(init_cmd.init)
cli.add_command(serve_cmd.serve)
cli.add_command(config_cmd.config)
cli.add_command(user_cmd.user)
for module in (
    app_password_cmd, report_cmd, admin_cmd, admin_account_cmd, tester_cmd, audit_cmd, reload_cmd, db_cmd, contrib_cmd,
    queue_cmd, status_cmd, cluster_cmd,
):
    for command in module.COMMANDS:
        cli.add_command(command)


def main() -> None:
    """Run the command; a database that fails mid-command is one error line, exit 1.

    Commands turn the errors they expect into `OperationalError` themselves; this
    catches a store failing later (a corrupt file is only found at the first query),
    which would otherwise end in a traceback.
    """
    from smtpgate.auth.guard_store import GuardStoreError
    from smtpgate.auth.store import StoreError

    try:
        cli()
    except StoreError as e:
        OperationalError(str(e), "check [accounts].database and its directory").show()
        raise SystemExit(ExitCode.ERROR) from None
    except GuardStoreError as e:
        OperationalError(str(e), "check [guard].database and its directory").show()
        raise SystemExit(ExitCode.ERROR) from None
