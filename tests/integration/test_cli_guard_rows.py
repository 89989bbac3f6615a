"""Guard blocks written by hand with sqlite3: the real ``smtpgate guard`` commands on a
real guard database.

A block "for ever" (``until`` 1e300) was an OverflowError traceback from ``guard
list`` (text and JSON); one whose ``until`` is text ('tomorrow', which SQLite orders
after every number, so it is in force) a TypeError/AttributeError traceback. Now the
first is shown until 9999-12-31, the second named with a hint, and ``guard unblock``
lifts it.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import time
from pathlib import Path

from tests.integration.conftest import SMTPGATE


def _cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "SMTPGATE_CONFIG"}
    return subprocess.run([SMTPGATE, *args, "--config", str(config)], capture_output=True,
                          text=True, env=env, timeout=60, check=False)


def _block(root: Path, until: object) -> None:
    with sqlite3.connect(root / "guard.sqlite") as db:
        db.execute("DELETE FROM blocks")
        db.execute("INSERT INTO blocks VALUES ('address', '192.0.2.9', ?, ?, 'by hand')",
                   (time.time(), until))
    db.close()


def test_hand_written_blocks_are_listed_or_named(tmp_path: Path) -> None:
    root = tmp_path / "srv"
    subprocess.run([SMTPGATE, "init", "--dir", str(root), "--no-demo", "--metrics", "",
                    "--admin", ""], check=True, capture_output=True, timeout=60)
    config = root / "smtpgate.toml"

    _block(root, 1e300)
    listed = _cli(config, "guard", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout)["until"] == "9999-12-31T23:59:59Z"
    text = _cli(config, "guard", "list")
    assert text.returncode == 0 and "9999-12-31 23:59:59" in text.stdout, text.stderr

    _block(root, "tomorrow")
    bad = _cli(config, "guard", "list")
    assert bad.returncode == 1, bad.stdout
    assert "Traceback" not in bad.stderr
    first, hint = bad.stderr.splitlines()
    assert first.startswith(f"error: guard database {root / 'guard.sqlite'}: the block of "
                            "address '192.0.2.9' holds a time that is no number (since ")
    assert first.endswith(", until 'tomorrow')")
    assert hint == ("hint: lift it with 'smtpgate guard unblock KEY', or correct the row "
                    "with sqlite3 (since and until are seconds since 1970)")
    assert _cli(config, "guard", "unblock", "192.0.2.9").returncode == 0
    assert _cli(config, "guard", "list").stdout == "no blocks or lockouts in force\n"
