"""Arguments that are not UTF-8 (a script in Latin-1, a pasted byte): the real
``smtpgate`` command in a subprocess, argv given as bytes.

Python keeps such a byte as a lone surrogate (PEP 383), which no encoder and no
SQLite query takes: ``user lock``, ``guard unblock``, ``user alias add``,
``app-password revoke``, ``admin-log --user`` ... ended in a UnicodeEncodeError
traceback. Now every text argument refuses it as a usage error (exit 2) naming
the argument; a path may still hold any bytes, as file names may.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.integration.conftest import SMTPGATE

BAD = b"x\xffy"


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("argv") / "srv"
    subprocess.run([SMTPGATE, "init", "--dir", str(root), "--no-demo", "--metrics", "",
                    "--admin", ""], check=True, capture_output=True, timeout=60)
    cfg = root / "smtpgate.toml"
    subprocess.run([SMTPGATE, "user", "add", "alice@example.com", "--password-stdin",
                    "--config", str(cfg)], input=b"Correct-Horse-Battery-9\n",
                   check=True, capture_output=True, timeout=60)
    return cfg


def _run(config: Path, *args: bytes) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "SMTPGATE_CONFIG"}
    done = subprocess.run([SMTPGATE.encode(), *args, b"--config", bytes(config)],
                          capture_output=True, timeout=60, env=env, check=False)
    return subprocess.CompletedProcess(done.args, done.returncode,
                                       done.stdout.decode(errors="replace"),
                                       done.stderr.decode(errors="replace"))


@pytest.mark.parametrize(
    ("args", "param"),
    [
        ((b"user", b"lock", BAD + b"@example.com"), "'USER'"),
        ((b"user", b"lock", b"alice@example.com", b"--reason", BAD), "'--reason'"),
        ((b"user", b"alias", b"add", b"alice@example.com", BAD + b"@example.com"), "'ADDRESS'"),
        ((b"user", b"domain", b"grant", b"alice@example.com", BAD + b".com"), "'NAME'"),
        ((b"app-password", b"revoke", b"alice@example.com", BAD), "'NAME'"),
        ((b"guard", b"unblock", BAD), "'KEY'"),
        ((b"admin-log", b"--user", BAD), "'--user'"),
    ],
)
def test_a_text_argument_that_is_not_utf8_is_a_usage_error(
    config: Path, args: tuple[bytes, ...], param: str,
) -> None:
    done = _run(config, *args)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert f"Invalid value for {param}: not UTF-8 text (byte 0xff at character 1)" in done.stderr


def test_a_path_may_still_hold_any_bytes(config: Path) -> None:
    """File names need not be UTF-8: --log with such a name is read as given."""
    log = Path(os.fsdecode(bytes(config.parent) + b"/auth-" + BAD + b".log"))
    log.write_text(json.dumps({"time": "2026-01-01T00:00:00Z", "client_ip": "192.0.2.1",
                               "username": "alice@example.com", "result": "success",
                               "mechanism": "PLAIN"}) + "\n")
    done = _run(config, b"report", b"--json", b"--since", b"all", b"--log", os.fsencode(log))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["totals"]["success"] == 1


def test_a_limit_past_sqlite_integers_is_a_usage_error(config: Path) -> None:
    """``admin-log --limit 99999999999999999999`` was an OverflowError traceback
    (SQLite's integers end at 2**63-1); it is now click's range error, exit 2."""
    done = _run(config, b"admin-log", b"--limit", b"99999999999999999999")
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "Invalid value for '--limit'" in done.stderr
    assert _run(config, b"admin-log", b"--limit", str(2**63 - 1).encode()).returncode == 0
