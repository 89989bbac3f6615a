"""The README's first screen: `smtpgate init` prints a command that sends a test
message, and that exact command works against `smtpgate serve`."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from .conftest import SMTPGATE, Server, free_port


def test_init_prints_a_working_test_command(tmp_path: Path) -> None:
    root = tmp_path / "var"
    sub, subs = free_port(), free_port()
    out = subprocess.run(
        [SMTPGATE, "init", "--dir", str(root), "--submission", f"127.0.0.1:{sub}",
         "--submissions", f"127.0.0.1:{subs}"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout
    assert "demo account: demo@localhost" in out
    command = next(line.strip() for line in out.splitlines() if line.strip().startswith("echo '"))
    # init refuses to overwrite an existing config
    again = subprocess.run(
        [SMTPGATE, "init", "--dir", str(root)], capture_output=True, text=True, check=False
    )
    assert again.returncode == 1 and "refusing to overwrite" in again.stderr
    server = Server(root, sub, subs, env=dict(os.environ))
    server.start()
    try:
        sent = subprocess.run(
            command, shell=True, capture_output=True, text=True, timeout=60, check=False
        )
        assert sent.returncode == 0, sent.stdout + sent.stderr
        assert "== result: success" in sent.stdout
        files = server.wait_for_mail(1)
        assert b"with ESMTPSA" in files[0].read_bytes()
    finally:
        server.stop()
