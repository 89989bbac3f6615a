"""A typo in ``[accounts].database``: the real ``smtpgate`` in a subprocess on the
config ``init`` wrote, its path then mistyped.

Opening the SQLite store creates the file. Every command did, so ``user list``
answered "no accounts" (exit 0), ``status`` "sqlite answers", ``guard list`` and
``report`` went on as if all was well, and from then on ``config check`` passed too,
the file being there; ``serve`` would have started with no account. Now only the
commands that make accounts create the file; the others exit 3 naming the path.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.integration.conftest import SMTPGATE


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "srv"
    subprocess.run([SMTPGATE, "init", "--dir", str(root), "--no-demo", "--metrics", "",
                    "--admin", ""], check=True, capture_output=True, timeout=60)
    config = root / "smtpgate.toml"
    text = config.read_text()
    assert 'database = "accounts.sqlite"' in text
    config.write_text(text.replace('database = "accounts.sqlite"', 'database = "acounts.sqlite"'))
    (root / "auth.log").touch()
    return root


def _cli(root: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "SMTPGATE_CONFIG"}
    return subprocess.run([SMTPGATE, *args, "--config", str(root / "smtpgate.toml")],
                          input=stdin, capture_output=True, text=True, env=env, timeout=60,
                          check=False)


@pytest.mark.parametrize("args", [("user", "list"), ("user", "list", "--json"),
                                  ("guard", "list"), ("admin-log",), ("report", "--json"),
                                  ("app-password", "list", "alice@example.com")])
def test_a_command_that_reads_does_not_make_an_empty_database(root: Path, args: tuple[str, ...]) -> None:
    typo = root / "acounts.sqlite"
    done = _cli(root, *args)
    assert done.returncode == 3, done.stdout + done.stderr
    assert done.stdout == ""
    assert done.stderr.splitlines()[0] == f"error: no account database at {typo}"
    assert not typo.exists()


def test_status_says_the_database_is_missing_and_makes_none(root: Path) -> None:
    typo = root / "acounts.sqlite"
    done = _cli(root, "status")
    assert f"accounts:     cannot read (sqlite, accounts.database): no account database at {typo}" \
        in done.stdout, done.stdout
    assert not typo.exists()
    checked = _cli(root, "config", "check")
    assert f"accounts.database: {typo} does not exist yet" in checked.stdout + checked.stderr


def test_user_add_still_creates_it(root: Path) -> None:
    added = _cli(root, "user", "add", "alice@example.com", "--password-stdin",
                 stdin="Correct-Horse-Battery-9\n")
    assert added.returncode == 0, added.stderr
    assert (root / "acounts.sqlite").is_file()
    assert _cli(root, "user", "list", "--json").stdout.count("alice@example.com") == 1


def test_a_database_in_a_missing_directory_names_the_directory(root: Path) -> None:
    """config check said "`smtpgate user add` creates it", and user add then failed
    with a bare "[Errno 2] No such file or directory": it makes no directory."""
    config = root / "smtpgate.toml"
    config.write_text(config.read_text().replace('database = "acounts.sqlite"',
                                                 'database = "state/accounts.sqlite"'))
    checked = _cli(root, "config", "check")
    # An error (exit 1), not a warning: serve cannot start on it (h28readme review).
    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert f"its directory {root / 'state'} does not exist (smtpgate makes the file, not " \
        "the directory); create it" in checked.stdout + checked.stderr
    added = _cli(root, "user", "add", "alice@example.com", "--password-stdin",
                 stdin="Correct-Horse-Battery-9\n")
    assert added.returncode == 1
    assert added.stderr.splitlines() == [
        (f"error: the directory {root / 'state'} of [accounts].database "
         f"{root / 'state/accounts.sqlite'} does not exist"),
        "hint: create it (owned by the user smtpgate runs as), or correct [accounts].database",
    ]
