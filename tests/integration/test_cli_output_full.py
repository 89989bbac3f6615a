"""Output that cannot be written: the real ``smtpgate`` in a subprocess with standard
output on ``/dev/full`` (every write fails with ENOSPC, as on a full disk).

``smtpgate report --json > /var/tmp/report.json`` on a full disk, like every other
command, ended in an OSError traceback from inside click or rich. Now it is one
error line and a hint, exit 1; a closed pipe (``| head``) stays quiet.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.integration.cli_install import install
from tests.integration.conftest import SMTPGATE


@pytest.mark.parametrize("args", [("user", "list"), ("user", "list", "--json"),
                                  ("report", "--json", "--since", "all"), ("config", "show")])
def test_a_full_disk_under_standard_output_is_one_error_line(tmp_path: Path,
                                                            args: tuple[str, ...]) -> None:
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    root = tmp_path / "srv"
    subprocess.run([SMTPGATE, "init", "--dir", str(root), "--no-demo", "--metrics", "",
                    "--admin", ""], check=True, capture_output=True, timeout=60)
    (root / "auth.log").touch()
    env = {k: v for k, v in os.environ.items() if k != "SMTPGATE_CONFIG"}
    subprocess.run([SMTPGATE, "user", "add", "alice@example.com", "--password-stdin",
                    "--config", str(root / "smtpgate.toml")], input=b"Correct-Horse-Battery-9\n",
                   env=env, check=True, capture_output=True, timeout=60)
    with open("/dev/full", "wb") as full:
        done = subprocess.run([SMTPGATE, *args, "--config", str(root / "smtpgate.toml")],
                              stdout=full, stderr=subprocess.PIPE, text=True, env=env,
                              timeout=60, check=False)
    assert done.returncode == 1, done.stderr
    assert done.stderr.splitlines() == [
        "error: cannot write the output: No space left on device",
        "hint: check the file or device standard output goes to (a full disk?)",
    ]


def _install(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    root = install(tmp_path / "srv")
    env = {k: v for k, v in os.environ.items() if k != "SMTPGATE_CONFIG"}
    env["SMTPGATE_CONFIG"] = str(root / "smtpgate.toml")
    return root, env


def _to_full_disk(args: list[str], env: dict[str, str], stdin: bytes = b"") -> subprocess.CompletedProcess[str]:
    with open("/dev/full", "wb") as full:
        return subprocess.run([SMTPGATE, *args], stdout=full, stderr=subprocess.PIPE,
                              input=stdin.decode(), text=True, env=env, timeout=60, check=False)


def test_an_app_password_that_could_not_be_shown_is_revoked(tmp_path: Path) -> None:
    """Its secret is shown once: written to a full disk, nobody saw it, and it stayed
    (its name taken, 'revoke it first') until an administrator found it."""
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    _, env = _install(tmp_path)
    done = _to_full_disk(["app-password", "add", "alice@example.com", "phone"], env)
    assert done.returncode == 1, done.stderr
    assert "app password 'phone' was revoked: it could not be shown" in done.stderr
    listed = subprocess.run([SMTPGATE, "app-password", "list", "alice@example.com"], env=env,
                            capture_output=True, text=True, timeout=60, check=True).stdout
    assert "phone" not in listed, listed
    again = subprocess.run([SMTPGATE, "app-password", "add", "alice@example.com", "phone"],
                           env=env, capture_output=True, text=True, timeout=60, check=False)
    assert again.returncode == 0 and "app password 'phone' for alice@example.com: " in again.stdout


def test_an_admin_whose_totp_key_could_not_be_shown_is_removed(tmp_path: Path) -> None:
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    _, env = _install(tmp_path)
    done = _to_full_disk(["admin", "add", "root", "--password-stdin"], env,
                         b"Another-Long-Passphrase-77\n")
    assert done.returncode == 1, done.stderr
    assert "admin root was removed: its TOTP key could not be shown" in done.stderr
    again = subprocess.run([SMTPGATE, "admin", "add", "root", "--password-stdin"], env=env,
                           input="Another-Long-Passphrase-77\n", capture_output=True, text=True,
                           timeout=60, check=False)
    assert again.returncode == 0 and "otpauth://" in again.stdout, again.stderr


def test_a_rotation_that_could_not_be_shown_says_how_to_undo_it(tmp_path: Path) -> None:
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    _, env = _install(tmp_path)
    done = _to_full_disk(["user", "rotate", "alice@example.com", "--name", "laptop"], env)
    assert done.returncode == 1, done.stderr
    assert ("the new app password 'laptop' could not be shown: 'smtpgate app-password "
            "revoke alice@example.com laptop'") in done.stderr
