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
