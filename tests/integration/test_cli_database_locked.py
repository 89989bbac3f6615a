"""Admin commands while another process holds the account database's write lock, as
a server does in the middle of a write: the real ``smtpgate`` in a subprocess, a
second process holding a real SQLite write lock (BEGIN IMMEDIATE) on the real file.

Before: every command opened the store with BEGIN IMMEDIATE to check the schema, so
even ``user list`` and ``guard list`` waited 5 s and failed with "database is
locked", and the hint under it said to check ``[accounts].database`` and the
permissions of its directory. Now reads need no lock (a WAL reader does not wait
for a writer), and a write that times out says another process held the lock.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.cli_install import install
from tests.integration.conftest import SMTPGATE

HOLD = """
import sqlite3, sys
c = sqlite3.connect(sys.argv[1], isolation_level=None)
c.execute("BEGIN IMMEDIATE")
c.execute("UPDATE accounts SET name = name")
print("locked", flush=True)
sys.stdin.read()  # until the test closes it
c.execute("ROLLBACK")
"""


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return install(tmp_path / "srv")


@pytest.fixture
def locked(root: Path) -> Iterator[Path]:
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(root / "accounts.sqlite")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        yield root
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=30)
        if holder.stdout is not None:
            holder.stdout.close()


def _cli(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "SMTPGATE_CONFIG"}
    return subprocess.run([SMTPGATE, *args, "--config", str(root / "smtpgate.toml")],
                          capture_output=True, text=True, env=env, timeout=60, check=False)


def test_reads_do_not_wait_for_a_writer(locked: Path) -> None:
    listed = _cli(locked, "user", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [json.loads(line)["name"] for line in listed.stdout.splitlines()] == ["alice@example.com"]
    blocks = _cli(locked, "guard", "list", "--json")
    assert blocks.returncode == 0, blocks.stderr


def test_a_write_that_times_out_names_the_lock(locked: Path) -> None:
    done = _cli(locked, "user", "lock", "alice@example.com")
    assert done.returncode == 1, done.stdout
    assert "Traceback" not in done.stderr
    assert done.stderr.splitlines() == [
        f"error: account database {locked / 'accounts.sqlite'}: database is locked",
        ("hint: another process held its write lock for over 5 s (a running server or "
         "another smtpgate command in the middle of a write); try again in a moment"),
    ]
