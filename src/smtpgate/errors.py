"""Typed start-up errors: what library code raises when the server cannot start.

Library code never logs "cannot start" and never exits the process: it raises a
`StartupError` that names the config key at fault, says what is wrong, and,
where there is one, how to fix it. Only the command line (``smtpgate serve``)
turns it into one log line and exit status 2, so a service manager can tell "the
configuration is wrong: restarting will not help" (the contrib unit's
``RestartPreventExitStatus=2``) from a crash (1). docs/operations.md lists the
statuses.

This module sits at the bottom of the import layers with `mechanism_facts`: every
layer may raise these errors, and it imports nothing of the project.
"""

from __future__ import annotations


class StartupError(Exception):
    """The server cannot start because of what ``key`` says.

    Args:
        key: the config key at fault, dotted as in the file (``tls.key``,
            ``listeners.0.address``, ``delivery.relay_password_file``).
        message: what is wrong, in plain words (no traceback, no error tuple).
        hint: what to do about it; "" when the message already says.
    """

    def __init__(self, key: str, message: str, hint: str = "") -> None:
        super().__init__(key, message, hint)
        self.key = key
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        """``KEY: MESSAGE; HINT``: the one line ``serve`` logs after ``cannot start:``."""
        line = f"{self.key}: {self.message}"
        return f"{line}; {self.hint}" if self.hint else line
