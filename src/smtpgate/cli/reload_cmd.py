"""``smtpgate reload``: make the running server reload (SIGHUP to the pid in its
pid file). The server reloads the certificate and the reloadable keys and
reopens its log files; docs/operations.md says what reloads and what needs a
restart. The outcome (taken; which changed keys need a restart; or why it failed,
nothing changed) is read back from the status file the server rewrites at once
(``server/status_file.py``, ``last_reload``) and printed; it used to be only in the
server's log, so a changed key that needs a restart went unnoticed."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import click

from smtpgate.cli.common import config_option, get_config

#: No running server: the thing acted on does not exist (the CLI's "not found").
EXIT_NOT_RUNNING = 3
#: Seconds to wait for the outcome: a reload that opens a directory may take
#: ``accounts.ldap.connect_timeout``.
OUTCOME_WAIT = 15.0
#: Seconds to wait, after the outcome, for the web admin and the metrics endpoint
#: to be where the config asks (the process that serves them binds the new address).
ENDPOINT_WAIT = 5.0


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
    asked = time.time()
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
    # A server found by its config file, not at its pid file, writes its status file
    # where it started: waiting for the outcome beside the new pid file path was
    # OUTCOME_WAIT (15 s) for nothing, every time until it restarts.
    outcome = None if logs_only or not found.at_pid_file else _outcome(cfg, pid, asked)
    if outcome is None:
        click.echo(f"asked smtpgate (pid {pid}) to {what}; the server log says how it went")
        return
    if not outcome.get("ok"):
        click.echo(f"error: reload failed (pid {pid}); the running configuration and "
                   f"certificate are kept: {outcome.get('error')}", err=True)
        raise SystemExit(1)
    click.echo(f"reloaded the configuration and certificate (pid {pid})")
    kept = outcome.get("kept") or []
    if kept:
        click.echo(f"warning: changed in the file, kept as running until a restart: "
                   f"{', '.join(kept)}", err=True)
    for note in outcome.get("notes") or []:
        click.echo(f"warning: {note}", err=True)
    for note in _endpoints_not_followed(cfg, pid, kept):
        click.echo(f"warning: {note}", err=True)


def _outcome(cfg: Any, pid: int, asked: float) -> dict[str, Any] | None:
    """The server's ``last_reload`` once it is from this request (None: no answer
    within ``OUTCOME_WAIT``, e.g. a server older than this command)."""
    from smtpgate.server import status_file

    path = status_file.status_path(cfg)
    deadline = time.monotonic() + OUTCOME_WAIT
    while time.monotonic() < deadline:
        try:
            doc = status_file.read(path)
        except (OSError, ValueError):
            doc = {}
        last = doc.get("last_reload")
        if doc.get("pid") == pid and isinstance(last, dict) and last.get("at", 0) >= asked:
            return last
        time.sleep(0.1)
    return None


def _endpoints_not_followed(cfg: Any, pid: int, kept: list[str]) -> list[str]:
    """The web admin and the metrics endpoint move in the process that serves them,
    after the reload's outcome is written, and stay where they are when the new
    address cannot be bound (taken, or below 1024 for a process that is no longer
    root): what the status file says they are served at, after ``ENDPOINT_WAIT``
    seconds, where that is not what the config asks for (a key kept until a
    restart is warned about already)."""
    from smtpgate.server import status_file

    wanted = {key: url for key, url in (("admin", cfg.admin.url), ("metrics", cfg.metrics.url))
              if f"{key}.listen" not in kept}
    path = status_file.status_path(cfg)
    deadline = time.monotonic() + ENDPOINT_WAIT
    while True:
        try:
            doc = status_file.read(path)
        except (OSError, ValueError):
            return []
        if doc.get("pid") != pid:
            return []
        off = {key: url for key, url in wanted.items() if doc.get(key, url) != url}
        if not off or time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    names = {"admin": "the web admin", "metrics": "the metrics endpoint"}
    return [f"{names[key]} is still served at {doc.get(key) or 'nowhere'}, not at "
            f"{url or 'nowhere'} ({key}.listen): the server log says why (a reload keeps "
            f"the old address when the new one cannot be bound)" for key, url in off.items()]


def moved_note(path: Path, pid: int) -> str:
    """What ``reload`` and ``status`` say when the server was found by its config file."""
    return (f"note: no pid file {path}; smtpgate serve (pid {pid}) runs with this config "
            "file: it keeps its pid and status files where the config named them when it "
            "started (accounts.database or server.pid_file changed since) until it restarts")


COMMANDS = [reload]
