"""``smtpgate serve``: run in the foreground, log to stderr (or ``server.log_file``),
stop on SIGTERM/SIGINT, reload on SIGHUP.

Exit status (docs/operations.md): 0 after a clean stop; 2 when the server cannot
start because of a config key (a `smtpgate.errors.StartupError`, or a config file
that does not validate), logged as one line naming the key and the fix; 1 when it
cannot start for another reason or its worker processes keep failing.
"""

from __future__ import annotations

import logging
from pathlib import Path

import click

from smtpgate.cli.common import config_option, require_config_file
from smtpgate.config import ConfigError, in_file, load_config
from smtpgate.errors import StartupError

log = logging.getLogger("smtpgate")


@click.command()
@config_option
@click.option(
    "--debug",
    is_flag=True,
    help="Log at DEBUG level: connections, TLS handshakes, SMTP command verbs (never "
    "AUTH data), deliveries.",
)
def serve(config_path: Path | None, debug: bool) -> None:
    """Run the server in the foreground."""
    from smtpgate.server.app import run
    from smtpgate.server.logs import setup_logging
    from smtpgate.server.supervisor import EXIT_CONFIG

    setup_logging(logging.DEBUG if debug else logging.INFO)
    path = require_config_file(config_path)
    try:
        cfg = load_config(path)
    except ConfigError as e:
        for key, message in e.problems:
            log.error("cannot start: %s", in_file(path, key, message))
        raise SystemExit(EXIT_CONFIG) from None
    try:
        code = run(cfg, path.resolve())
    except StartupError as e:
        log.error("cannot start: %s", e)
        raise SystemExit(EXIT_CONFIG) from None
    raise SystemExit(code)
