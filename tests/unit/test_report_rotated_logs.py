"""`smtpgate report` reads the auth log's rotated copies that its period reaches.

Before: it read `[auth] log_file` alone, so `--since 7d` the morning after
logrotate's weekly run counted one morning and said "since" a week ago: a quiet
week, with the brute force of three days ago in auth.log.1. Now the rotated copies
(logrotate's auth.log.1, auth.log.2.gz, dateext's auth.log-20261201.gz) last
written within the period are read too, and none from before it.
"""

from __future__ import annotations

import gzip
import json
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from click.testing import CliRunner

from smtpgate.cli.main import cli
from tests.unit.cli_support import write_config

NOW = datetime.now(UTC)


def _record(days_ago: float, user: str) -> str:
    t = (NOW - timedelta(days=days_ago)).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return json.dumps({"time": t, "client_ip": "192.0.2.7", "client_port": 4000,
                       "listener": "submission", "tls": "TLSv1.3", "mechanism": "PLAIN",
                       "username": user, "result": "failure", "reason": "bad password",
                       "session": "s", "front_door": "smtp"}) + "\n"


def _write(path: Path, days_ago: float, user: str, *, gz: bool = False) -> None:
    data = _record(days_ago, user).encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    stamp = time.time() - days_ago * 86400
    os.utime(path, (stamp, stamp))


def _failures(config: Path, since: str) -> dict[str, int]:
    result = CliRunner().invoke(cli, ["report", "--json", "--since", since,
                                      "--config", str(config)])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    return {a: c["failure"] for a, c in doc["accounts"].items()}


def test_the_period_reaches_into_rotated_copies(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    config.write_text(config.read_text() + '\n[auth]\nlog_file = "auth.log"\n')
    _write(tmp_path / "auth.log", 0.1, "today@example.org")
    _write(tmp_path / "auth.log.1", 3, "three-days@example.org")
    _write(tmp_path / "auth.log.2.gz", 10, "ten-days@example.org", gz=True)
    _write(tmp_path / "auth.log-20200101.gz", 40, "dateext@example.org", gz=True)
    _write(tmp_path / "auth.log.bak", 2, "not-a-rotation@example.org")
    assert _failures(config, "24h") == {"today@example.org": 1}
    assert _failures(config, "7d") == {"today@example.org": 1, "three-days@example.org": 1}
    assert _failures(config, "all") == {
        "today@example.org": 1, "three-days@example.org": 1, "ten-days@example.org": 1,
        "dateext@example.org": 1}


def test_just_rotated_before_the_server_wrote_again(tmp_path: Path) -> None:
    """logrotate moved the file and nothing has been logged since: the period's
    records are in the rotated copy, not "no auth log"."""
    config = write_config(tmp_path)
    config.write_text(config.read_text() + '\n[auth]\nlog_file = "auth.log"\n')
    _write(tmp_path / "auth.log.1", 0.5, "yesterday@example.org")
    assert _failures(config, "24h") == {"yesterday@example.org": 1}


def test_an_explicit_log_is_read_alone(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    config.write_text(config.read_text() + '\n[auth]\nlog_file = "auth.log"\n')
    _write(tmp_path / "auth.log", 0.1, "today@example.org")
    _write(tmp_path / "auth.log.1", 3, "three-days@example.org")
    result = CliRunner().invoke(cli, ["report", "--json", "--since", "7d", "--log",
                                      str(tmp_path / "auth.log"), "--config", str(config)])
    assert list(json.loads(result.stdout)["accounts"]) == ["today@example.org"]
