"""Extra `smtpgate user ...` subcommands (registered on the user group by import)."""

from __future__ import annotations

from smtpgate.cli.user_cmd import user  # noqa: F401  (subcommands attach to this group)
