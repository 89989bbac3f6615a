"""A fresh install for the command-line tests: ``smtpgate init`` (no demo, no web
admin, no metrics) and one account, made by the real command."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.integration.conftest import SMTPGATE

ALICE = "alice@example.com"
ALICE_PASSWORD = "Correct-Horse-Battery-9"


def install(root: Path, *, sidecars: bool = True) -> Path:
    """``root`` made by ``init``, with ``ALICE``; ``sidecars`` False: the databases'
    ``-wal``/``-shm`` files removed (their permissions are a test's own business)."""
    subprocess.run([SMTPGATE, "init", "--dir", str(root), "--no-demo", "--metrics", "",
                    "--admin", ""], check=True, capture_output=True, timeout=60)
    subprocess.run([SMTPGATE, "user", "add", ALICE, "--password-stdin",
                    "--config", str(root / "smtpgate.toml")], input=ALICE_PASSWORD + "\n",
                   text=True, check=True, capture_output=True, timeout=60)
    if not sidecars:
        for side in root.glob("*.sqlite-*"):
            side.unlink()
    return root
