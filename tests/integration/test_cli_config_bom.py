"""A config saved by Notepad: UTF-8 with a byte order mark. The real ``smtpgate`` in a
subprocess on the config ``init`` wrote, re-saved with a BOM.

tomllib refused it with "Invalid statement (at line 1, column 1)" of a first line that
looks right to anyone reading it; now the error names the BOM and how to drop it, and
the sed command it gives makes the file load.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.integration.conftest import SMTPGATE


def test_a_byte_order_mark_is_named(tmp_path: Path) -> None:
    root = tmp_path / "srv"
    subprocess.run([SMTPGATE, "init", "--dir", str(root), "--no-demo", "--metrics", "",
                    "--admin", ""], check=True, capture_output=True, timeout=60)
    config = root / "smtpgate.toml"
    config.write_bytes(b"\xef\xbb\xbf" + config.read_bytes())
    env = {k: v for k, v in os.environ.items() if k != "SMTPGATE_CONFIG"}
    for args, prefix in ((("user", "list"), "config error: "),
                         (("config", "check"), f"{config}: error: (file): ")):
        done = subprocess.run([SMTPGATE, *args, "--config", str(config)], capture_output=True,
                              text=True, env=env, timeout=60, check=False)
        assert done.returncode == 1, done.stderr
        assert done.stderr.startswith(
            f"{prefix}{config} starts with a byte order mark (U+FEFF, as Notepad saves "
            "UTF-8), which TOML does not allow"), done.stderr
    subprocess.run(["sed", "-i", "1s/^\\xEF\\xBB\\xBF//", str(config)], check=True, timeout=60)
    fixed = subprocess.run([SMTPGATE, "user", "list", "--config", str(config)],
                           capture_output=True, text=True, env=env, timeout=60, check=False)
    assert fixed.returncode == 0, fixed.stderr
