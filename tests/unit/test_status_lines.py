"""`smtpgate status` names the store that failed (cli/status_cmd.py): the account
backend and the guard state each have their own line."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from smtpgate.cli.main import cli

from .cli_support import write_config

# Nothing listens there (the helper port range of this clone; a refused connection).
DOWN = "postgresql://smtpgate@127.0.0.1:62501/accounts"


def _postgres_config(tmp_path: Path) -> Path:
    config = write_config(tmp_path)
    text = config.read_text().replace(
        "[accounts]\n", '[accounts]\nbackend = "postgresql"\n', 1)
    config.write_text(text + f'\n[accounts.postgresql]\ndsn = "{DOWN}"\ntimeout = 1\n')
    return config


def test_a_postgresql_account_database_that_is_down_is_not_reported_as_the_guard(
    tmp_path: Path,
) -> None:
    """The guard's line read "guard: cannot read: ... 127.0.0.1:62501 ..." because its
    blocks were read through the admin service, which opens the account database
    first; the guard (its own SQLite file) was fine."""
    config = _postgres_config(tmp_path)
    out = CliRunner().invoke(cli, ["status", "--config", str(config)])
    assert out.exit_code == 3, out.output  # no server runs
    lines = {line.split(":", 1)[0]: line for line in out.stdout.splitlines()}
    assert lines["accounts"].startswith(
        "accounts:     cannot read (postgresql, accounts.postgresql.dsn): ")
    assert lines["guard"] == "guard:        0 blocks and lockouts in force"

    doc = json.loads(CliRunner().invoke(
        cli, ["status", "--json", "--config", str(config)]).stdout)
    assert doc["guard"] == {"blocks": 0, "by_kind": {}}
    assert doc["accounts"]["backend"] == "postgresql"
    assert doc["accounts"]["key"] == "accounts.postgresql.dsn"
    assert doc["accounts"]["error"]


def test_a_guard_database_that_cannot_be_opened_is_named_with_its_key(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    (tmp_path / "guard.sqlite").mkdir()  # a directory where the file should be
    config.write_text(config.read_text() + '\n[guard]\ndatabase = "guard.sqlite"\n')
    out = CliRunner().invoke(cli, ["status", "--config", str(config)])
    lines = {line.split(":", 1)[0]: line for line in out.stdout.splitlines()}
    assert lines["accounts"] == "accounts:     sqlite answers (accounts.database)"
    assert lines["guard"].startswith(
        f"guard:        cannot read: guard.database {tmp_path / 'guard.sqlite'}: ")
