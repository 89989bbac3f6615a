"""Admin commands on databases this user may not write: the real ``smtpgate`` in a
subprocess, real SQLite files with real modes.

SQLite says only "attempt to write a readonly database"; the hint under it said
"another process may hold it locked" for the account database, which sent the
admin looking for a process. The hint now says what config check says: which
file (the database, its ``-shm``/``-wal`` or the directory) this user cannot
write, and how to fix it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.integration.cli_install import install
from tests.integration.conftest import SMTPGATE


def _as_plain_user() -> tuple[str, ...]:
    """Root reads and writes any file: run without the capabilities that let it."""
    if os.geteuid() != 0:
        return ()
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) is needed to run as root without DAC override")
    caps = "-dac_override,-dac_read_search,-fowner"
    return (setpriv, f"--bounding-set={caps}", f"--inh-caps={caps}")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return install(tmp_path / "srv", sidecars=False)


def _cli(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "SMTPGATE_CONFIG"}
    return subprocess.run([*_as_plain_user(), SMTPGATE, *args, "--config",
                           str(root / "smtpgate.toml")],
                          capture_output=True, text=True, env=env, timeout=60, check=False)


def _refused(done: subprocess.CompletedProcess[str], hint: str) -> None:
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert lines[0].startswith("error: "), done.stderr
    assert lines[1] == f"hint: {hint}", done.stderr


@pytest.mark.parametrize("args", [("user", "lock", "alice@example.com"),
                                  ("app-password", "add", "alice@example.com", "phone")])
def test_a_read_only_account_database_is_named_in_the_hint(root: Path, args: tuple[str, ...]) -> None:
    db = root / "accounts.sqlite"
    db.chmod(0o444)
    user = "root" if os.geteuid() == 0 else subprocess.run(
        ["id", "-un"], capture_output=True, text=True, check=True).stdout.strip()
    _refused(_cli(root, *args),
             f"permission denied: user {user} cannot read and write the account database "
             f"{db}; give that user access (chown or chmod), or run smtpgate as the user "
             "that owns it")


def test_a_read_only_state_directory_is_named_in_the_hint(root: Path) -> None:
    """With the directory at 0555 SQLite cannot make its -wal/-shm files: even a
    listing fails, and the hint says which directory."""
    root.chmod(0o555)
    try:
        done = _cli(root, "user", "list")
    finally:
        root.chmod(0o755)
    assert done.returncode == 1, done.stdout
    assert "another process may hold it locked" not in done.stderr
    assert f"cannot create files (the SQLite write-ahead log of the account database) in {root};" \
        in done.stderr, done.stderr


def test_a_read_only_guard_database_is_named_in_the_hint(root: Path) -> None:
    guard = root / "guard.sqlite"
    guard.chmod(0o444)
    done = _cli(root, "guard", "unblock", "192.0.2.1")
    assert done.returncode == 1, done.stdout
    assert f"cannot read and write the guard database {guard};" in done.stderr, done.stderr
