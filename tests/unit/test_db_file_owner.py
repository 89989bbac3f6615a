"""Files the CLI makes in the state directory belong to the directory's owner, not to
root: `sudo smtpgate db migrate` created a root-owned guard.sqlite (and `db backup`
root-owned copies), which a server running as its own user (server.user, systemd's
User=) could then not open."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from smtpgate.auth.guard_store import SqliteGuardStore
from smtpgate.auth.store import SqliteAccountStore
from smtpgate.cli.main import cli

from .as_nobody import NOBODY, run_as_nobody
from .cli_support import FAST, write_config
from .test_db_upgrades import version_1_database

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give files away")


@pytest.fixture
def state() -> Iterator[Path]:
    """A state directory owned by nobody, in a tree nobody can walk (tmp_path is not)."""
    top = Path(tempfile.mkdtemp(prefix="smtpgate-owner-"))
    top.chmod(0o755)
    directory = top / "state"
    directory.mkdir(mode=0o750)
    os.chown(directory, NOBODY, NOBODY)
    try:
        yield directory
    finally:
        shutil.rmtree(top)


def owners(directory: Path) -> dict[str, int]:
    return {p.name: p.stat().st_uid for p in directory.iterdir()}


def nobody_can_write(directory: Path) -> list[str]:
    """As nobody, open both stores and write to each (a schema check and a write)."""

    def work() -> list[str]:
        done = []
        guard = SqliteGuardStore(directory / "guard.sqlite")
        guard.close()
        done.append("guard")
        accounts = SqliteAccountStore(directory / "accounts.sqlite", FAST)
        accounts.close()
        done.append("accounts")
        return done

    result: list[str] = run_as_nobody(work)
    return result


def test_db_migrate_as_root_leaves_the_databases_to_the_directory_owner(state: Path) -> None:
    config = write_config(state, database=False)
    version_1_database(state / "accounts.sqlite")  # an upgrade: a copy is made aside
    os.chown(state / "accounts.sqlite", NOBODY, NOBODY)
    result = CliRunner().invoke(cli, ["db", "migrate", "--config", str(config)])
    assert result.exit_code == 0, result.output
    made = {name: uid for name, uid in owners(state).items()
            if name.startswith(("guard.sqlite", "accounts.sqlite"))}
    assert "guard.sqlite" in made and any(".bak-v1-" in name for name in made)
    assert made == dict.fromkeys(made, NOBODY)
    assert nobody_can_write(state) == ["guard", "accounts"]


def test_user_add_as_root_creates_the_account_database_for_the_directory_owner(
    state: Path,
) -> None:
    config = write_config(state, database=False)
    result = CliRunner().invoke(cli, ["user", "add", "alice@example.org", "--password-stdin",
                                      "--config", str(config)], input="pencil\n")
    assert result.exit_code == 0, result.output
    assert (state / "accounts.sqlite").stat().st_uid == NOBODY


def test_db_backup_as_root_gives_the_copies_to_the_directory_owner(state: Path) -> None:
    config = write_config(state, database=False)
    for store in (SqliteAccountStore(state / "accounts.sqlite", FAST),
                  SqliteGuardStore(state / "guard.sqlite")):
        store.close()
    result = CliRunner().invoke(cli, ["db", "backup", "--config", str(config)])
    assert result.exit_code == 0, result.output
    copies = sorted(state.glob("*.bak-*"))
    assert len(copies) == 2
    assert {p.stat().st_uid for p in copies} == {NOBODY}
    assert {p.stat().st_gid for p in copies} == {NOBODY}
    # --to a directory of root's: the copies stay root's, as the directory is.
    root_dir = state.parent / "root-backups"
    result = CliRunner().invoke(cli, ["db", "backup", "--to", str(root_dir), "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert {p.stat().st_uid for p in root_dir.iterdir()} == {0}
