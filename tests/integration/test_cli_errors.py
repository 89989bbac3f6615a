"""A database that only fails at its first query (a corrupt file) is one error
line and exit 1 from every command, never a traceback."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.integration.conftest import SMTPGATE


@pytest.mark.parametrize(
    "args",
    [("report",), ("user", "list"), ("user", "list", "--json")],
)
def test_corrupt_account_database_is_one_error_line(tmp_path: Path, args: tuple[str, ...]) -> None:
    root = tmp_path / "srv"
    subprocess.run([SMTPGATE, "init", "--dir", str(root), "--no-demo"], check=True,
                   capture_output=True, timeout=60)
    (root / "auth.log").touch()
    (root / "accounts.sqlite").write_bytes(b"this is not a database\n" * 100)
    done = subprocess.run([SMTPGATE, *args, "--config", str(root / "smtpgate.toml")],
                          check=False, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith("error: account database ")
    assert "file is not a database" in done.stderr
