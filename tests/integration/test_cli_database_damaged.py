"""Admin commands on a damaged database: the real ``smtpgate`` in a subprocess, a real
SQLite file cut short (a copy interrupted, a disk that failed) or overwritten.

Before: SQLite's "database disk image is malformed" came with "check
[accounts].database in the config and the permissions of its directory" (nothing
was wrong there), and ``db migrate``/``db backup`` gave no hint at all. Now each
says the file is damaged and how to put back a copy. A failed ``db backup``
leaves no partial copy behind.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.integration.cli_install import install
from tests.integration.conftest import SMTPGATE

HINT = "hint: the file is damaged or is no SQLite database: stop the server, move the file aside"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return install(tmp_path / "srv", sidecars=False)


def _cli(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "SMTPGATE_CONFIG"}
    return subprocess.run([SMTPGATE, *args, "--config", str(root / "smtpgate.toml")],
                          capture_output=True, text=True, env=env, timeout=60, check=False)


@pytest.mark.parametrize("args", [("user", "list"), ("user", "lock", "alice@example.com"),
                                  ("db", "migrate"), ("db", "backup", "--to", "copies")])
def test_a_truncated_account_database_says_it_is_damaged(root: Path, args: tuple[str, ...]) -> None:
    db = root / "accounts.sqlite"
    db.write_bytes(db.read_bytes()[:50_000])
    args = tuple(str(root / a) if a == "copies" else a for a in args)
    done = _cli(root, *args)
    assert done.returncode == 1, done.stdout
    assert "Traceback" not in done.stderr
    assert "database disk image is malformed" in done.stderr
    assert HINT in done.stderr, done.stderr
    copies = root / "copies"
    assert not copies.exists() or not any(copies.iterdir())  # no partial copy left


def test_a_guard_database_that_is_no_database_says_so(root: Path) -> None:
    (root / "guard.sqlite").write_text("not a database\n" * 100)
    done = _cli(root, "guard", "list")
    assert done.returncode == 1, done.stdout
    assert "file is not a database" in done.stderr
    assert HINT in done.stderr, done.stderr
