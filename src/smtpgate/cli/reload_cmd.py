"""``smtpgate reload``: make the running server reload (SIGHUP to the pid in its
pid file). The server reloads the certificate and the reloadable keys and
reopens its log files; docs/operations.md says what reloads and what needs a
restart. The result is in the server's log."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import click

from smtpgate.cli.common import config_option, get_config

#: No running server: the thing acted on does not exist (the CLI's "not found").
EXIT_NOT_RUNNING = 3


@click.command()
@config_option
@click.option(
    "--logs-only",
    is_flag=True,
    help="Only reopen the log files (SIGUSR1), e.g. after log rotation.",
)
def reload(config_path: Path | None, logs_only: bool) -> None:
    """Tell the running server to reload its certificate and config (SIGHUP)."""
    from smtpgate.cli.common import config_file
    from smtpgate.server.pidfile import NotRunning, find_running, pid_path

    try:
        cfg = get_config(config_path)
    except SystemExit:
        # The problems are printed; the server would refuse this file as well.
        click.echo("the running server was not signalled: it keeps the configuration "
                   "it has", err=True)
        raise
    path = pid_path(cfg)
    try:
        found = find_running(path, config_file(config_path))
    except NotRunning as e:
        click.echo(f"error: {e}", err=True)
        raise SystemExit(EXIT_NOT_RUNNING) from None
    pid = found.pid
    if not found.at_pid_file:
        click.echo(moved_note(path, pid), err=True)
    sig = signal.SIGUSR1 if logs_only else signal.SIGHUP
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        click.echo(f"error: smtpgate (pid {pid}) stopped before it could be signalled", err=True)
        raise SystemExit(EXIT_NOT_RUNNING) from None
    except PermissionError:
        click.echo(f"error: not allowed to signal smtpgate (pid {pid}): run this as the "
                   "server's user or as root", err=True)
        raise SystemExit(1) from None
    what = "reopen its log files" if logs_only else "reload"
    click.echo(f"asked smtpgate (pid {pid}) to {what}; the server log says how it went")


def moved_note(path: Path, pid: int) -> str:
    """What ``reload`` and ``status`` say when the server was found by its config file."""
    return (f"note: no pid file {path}; smtpgate serve (pid {pid}) runs with this config "
            "file: it keeps its pid and status files where the config named them when it "
            "started (accounts.database or server.pid_file changed since) until it restarts")


COMMANDS = [reload]
