"""A database that only fails at its first query (a corrupt file) is one error
line and exit 1 from every command, never a traceback."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.integration.conftest import SMTPGATE
from tests.ports import free_port


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


@pytest.mark.parametrize(
    ("table", "key", "said"),
    [
        ('[server]\nuser = "no-such-user-smtpgate"\n', "server.user",
         "no such user: 'no-such-user-smtpgate'"),
        ('[server]\nuser = "root"\n', "server.user", "'root' is root"),
        ('[server]\nuser = "nobody"\ngroup = "no-such-group-smtpgate"\n', "server.group",
         "no such group: 'no-such-group-smtpgate'"),
    ],
)
def test_config_check_refuses_the_server_user_serve_refuses(
    tmp_path: Path, table: str, key: str, said: str,
) -> None:
    """`config check` said OK to a server.user that does not exist, and `serve` then
    refused to start on it (exit 2): the check now says what serve says."""
    root = tmp_path / "srv"
    subprocess.run([SMTPGATE, "init", "--dir", str(root), "--no-demo", "--metrics", "",
                    "--admin", "", "--submission", f"127.0.0.1:{free_port()}",
                    "--submissions", f"127.0.0.1:{free_port()}"],
                   check=True, capture_output=True, timeout=60)
    config = root / "smtpgate.toml"
    config.write_text(config.read_text() + "\n" + table)
    check = subprocess.run([SMTPGATE, "config", "check", "--config", str(config)],
                           check=False, capture_output=True, text=True, timeout=60)
    assert check.returncode == 1, check.stdout + check.stderr
    assert f"{config}: error: {key}: {said}" in check.stderr
    serve = subprocess.run([SMTPGATE, "serve", "--config", str(config)],
                           check=False, capture_output=True, text=True, timeout=60)
    assert serve.returncode == 2, serve.stderr
    assert f"cannot start: {key}: {said}" in serve.stderr
