"""``smtpgate user import`` on a file with odd bytes in its names: the real command in
a subprocess, a real Dovecot passwd-file.

The lines it refused were printed with their names as the file held them: an ESC
sequence drove the admin's terminal, a U+202E reversed the rest of the line and a
NUL went out raw, where every other command shows such text escaped (docs/cli.md,
"Text from elsewhere in the output"). A dry run also created a missing account
database, while it is to change nothing.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.integration.conftest import SMTPGATE


def _init(root: Path) -> Path:
    subprocess.run([SMTPGATE, "init", "--dir", str(root), "--no-demo", "--metrics", "",
                    "--admin", ""], check=True, capture_output=True, timeout=60)
    return root / "smtpgate.toml"


def _import(config: Path, source: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if k != "SMTPGATE_CONFIG"}
    return subprocess.run([SMTPGATE, "user", "import", "dovecot-passwd", str(source), *args,
                           "--config", str(config)],
                          capture_output=True, env=env, timeout=60, check=False)


def test_refused_names_are_shown_escaped(tmp_path: Path) -> None:
    config = _init(tmp_path / "srv")
    source = tmp_path / "users"
    source.write_bytes(
        b"ok@example.com:{PLAIN}Correct-Horse-Battery-9::::::\n"
        b"b\x1b[2Jad@example.com:{PLAIN}x::::::\n"
        b"\x00zz@example.com:{PLAIN}x::::::\n"
        b"w\xe2\x80\xaeq@example.com:{PLAIN}x::::::\n"
    )
    done = _import(config, source, "--dry-run")
    assert done.returncode == 1, done.stderr
    for raw in (b"\x1b", b"\x00", "\u202e".encode()):
        assert raw not in done.stderr + done.stdout
    err = done.stderr.decode()
    assert f"{source}:2: b\\x1b[2Jad@example.com: " in err
    assert f"{source}:3: \\x00zz@example.com: " in err
    assert f"{source}:4: w\\u202eq@example.com: " in err
    assert b"would create ok@example.com" in done.stdout


def test_a_dry_run_makes_no_database(tmp_path: Path) -> None:
    config = _init(tmp_path / "srv")
    (tmp_path / "srv" / "accounts.sqlite").unlink()
    source = tmp_path / "users"
    source.write_text("ok@example.com:{PLAIN}Correct-Horse-Battery-9::::::\n")
    done = _import(config, source, "--dry-run")
    assert done.returncode == 3, done.stderr
    assert not (tmp_path / "srv" / "accounts.sqlite").exists()
    assert _import(config, source).returncode == 0  # the import itself makes it
    assert (tmp_path / "srv" / "accounts.sqlite").is_file()
