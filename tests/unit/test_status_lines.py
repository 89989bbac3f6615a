"""`smtpgate status` names the store that failed (cli/status_cmd.py): the account
backend and the guard state each have their own line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from smtpgate.cli.main import cli

from .cli_support import write_config

# Nothing listens there (the helper port range of this clone; a refused connection).
DOWN = "postgresql://smtpgate@127.0.0.1:62501/accounts"


def _postgres_config(tmp_path: Path) -> Path:
    config = write_config(tmp_path)
    text = config.read_text().replace(
        "[accounts]\n", '[accounts]\nbackend = "postgresql"\n', 1)
    config.write_text(text + f'\n[accounts.postgresql]\ndsn = "{DOWN}"\ntimeout = 1\n')
    return config


def test_a_postgresql_account_database_that_is_down_is_not_reported_as_the_guard(
    tmp_path: Path,
) -> None:
    """The guard's line read "guard: cannot read: ... 127.0.0.1:62501 ..." because its
    blocks were read through the admin service, which opens the account database
    first; the guard (its own SQLite file) was fine."""
    config = _postgres_config(tmp_path)
    out = CliRunner().invoke(cli, ["status", "--config", str(config)])
    assert out.exit_code == 3, out.output  # no server runs
    lines = {line.split(":", 1)[0]: line for line in out.stdout.splitlines()}
    assert lines["accounts"].startswith(
        "accounts:     cannot read (postgresql, accounts.postgresql.dsn): ")
    assert lines["guard"] == "guard:        0 blocks and lockouts in force"

    doc = json.loads(CliRunner().invoke(
        cli, ["status", "--json", "--config", str(config)]).stdout)
    assert doc["guard"] == {"blocks": 0, "by_kind": {}}
    assert doc["accounts"]["backend"] == "postgresql"
    assert doc["accounts"]["key"] == "accounts.postgresql.dsn"
    assert doc["accounts"]["error"]


def test_a_guard_database_that_cannot_be_opened_is_named_with_its_key(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    (tmp_path / "guard.sqlite").mkdir()  # a directory where the file should be
    config.write_text(config.read_text() + '\n[guard]\ndatabase = "guard.sqlite"\n')
    out = CliRunner().invoke(cli, ["status", "--config", str(config)])
    lines = {line.split(":", 1)[0]: line for line in out.stdout.splitlines()}
    assert lines["accounts"] == "accounts:     sqlite answers (accounts.database)"
    assert lines["guard"].startswith(
        f"guard:        cannot read: guard.database {tmp_path / 'guard.sqlite'}: ")


def test_listeners_expecting_a_proxy_header_say_so(tmp_path: Path) -> None:
    """A listener behind a balancer refuses a client that connects to it directly,
    but ``status`` showed it as any other: "listener: lb 0.0.0.0:587 (starttls)"."""
    from smtpgate.cli import status_cmd
    from smtpgate.config import parse_config
    from smtpgate.server.status_file import ServerStatus

    from .config_support import MINIMAL, config_dir

    cfg = parse_config(
        MINIMAL + '[[listeners]]\nname = "lb"\naddress = "127.0.0.1:2588"\n'
        'tls = "implicit"\nproxy_protocol = true\n'
        'trusted_proxies = ["10.0.0.2/32", "10.0.0.3/32"]\n'
        '[[auth_listeners]]\nprotocol = "dovecot"\naddress = "127.0.0.1:12345"\n'
        'proxy_protocol = true\ntrusted_proxies = ["10.0.0.4/32"]\n',
        config_dir(tmp_path))
    status = ServerStatus.starting(cfg, None, workers=1)
    assert [(lst["name"], lst["proxy_protocol"], lst["trusted_proxies"])
            for lst in status.listeners] == [
        ("submission", False, []), ("lb", True, ["10.0.0.2/32", "10.0.0.3/32"])]
    server = {**json.loads(json.dumps(status.__dict__, default=lambda o: o.__dict__)),
              "running": True, "pid": 1, "stale": False}
    doc = {"server": server, "queue": {"error": "x"},
           "accounts": {"backend": "sqlite", "key": "k", "error": "x"},
           "guard": {"error": "x"}, "certificate": {"file": "c", "error": "x"}}
    runner = CliRunner()
    with runner.isolation() as (out, _, _):
        status_cmd._print(doc)
        text = out.getvalue().decode()
    assert "listener:     submission 127.0.0.1:2587 (starttls)\n" in text
    assert ("listener:     lb 127.0.0.1:2588 (implicit, PROXY header from 10.0.0.2/32, "
            "10.0.0.3/32)\n") in text
    assert ("front door:   dovecot 127.0.0.1:12345 (dovecot, PROXY header from "
            "10.0.0.4/32)\n") in text


def test_a_stale_pid_file_is_said_once(tmp_path: Path) -> None:
    """Before: "server: not running (smtpgate is not running (stale pid file ...))"."""
    import subprocess
    import sys

    config = write_config(tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "smtpgate.pid").write_text(f"{dead.pid}\n")
    out = CliRunner().invoke(cli, ["status", "--config", str(config)])
    assert out.exit_code == 3, out.output
    line = out.stdout.splitlines()[0]
    assert line.startswith("server:       not running (stale pid file "), line
    assert line.count("not running") == 1 and line.endswith(f"names process {dead.pid})")


def test_a_process_gone_until_its_restart_is_shown_down_and_exits_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker killed and waiting out its back-off was simply missing from the list
    ("process: worker 2 pid ..." alone) with exit 0: a monitoring check saw a
    healthy server. It is a line of its own now, and the exit status is 1."""
    import time

    from smtpgate.cli import status_cmd
    from smtpgate.server import pidfile, status_file

    config = write_config(tmp_path)
    now = time.time()
    doc = {"pid": 4242, "version": "0", "started": now - 60, "config_file": str(config),
           "config_loaded": now - 60, "listeners": [], "auth_listeners": [], "workers": 2,
           "admin": "", "metrics": "", "sessions": 0, "updated": now, "last_reload": None,
           "processes": [{"name": "delivery", "pid": 4245, "ready": True, "started": now},
                         {"name": "worker 2", "pid": 4244, "ready": True, "started": now}],
           "down": [{"name": "worker 1", "ended": now - 3, "restart_at": now + 5,
                     "how": "killed by signal 9 (SIGKILL)"}]}
    monkeypatch.setattr(status_cmd, "find_running", lambda path, cfg: pidfile.Found(4242))
    monkeypatch.setattr(status_file, "read", lambda path: doc)
    out = CliRunner().invoke(cli, ["status", "--config", str(config)])
    assert out.exit_code == 1, out.output
    assert ("process:      worker 1 DOWN since 3 s ago: killed by signal 9 (SIGKILL); "
            "restarted in 5 s\n") in out.stdout
    out = CliRunner().invoke(cli, ["status", "--json", "--config", str(config)])
    assert out.exit_code == 1, out.output
    [down] = json.loads(out.stdout)["server"]["down"]
    assert down["name"] == "worker 1" and down["restart_at"].endswith("Z")
    doc["down"] = []
    assert CliRunner().invoke(cli, ["status", "--config", str(config)]).exit_code == 0


def test_a_process_whose_loop_is_silent_is_shown_stuck_and_exits_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker stopped (SIGSTOP) or stuck was shown as any other with exit 0 until
    the watchdog killed it, 60 s later by default."""
    import time

    from smtpgate.cli import status_cmd
    from smtpgate.server import pidfile, status_file

    config = write_config(tmp_path)
    now = time.time()
    doc = {"pid": 4242, "version": "0", "started": now - 60, "config_file": str(config),
           "config_loaded": now - 60, "listeners": [], "auth_listeners": [], "workers": 2,
           "admin": "", "metrics": "", "sessions": 0, "updated": now, "last_reload": None,
           "processes": [{"name": "worker 1", "pid": 4243, "ready": True, "started": now,
                          "silent": 15.2},
                         {"name": "worker 2", "pid": 4244, "ready": True, "started": now,
                          "silent": 0.0}]}
    monkeypatch.setattr(status_cmd, "find_running", lambda path, cfg: pidfile.Found(4242))
    monkeypatch.setattr(status_file, "read", lambda path: doc)
    out = CliRunner().invoke(cli, ["status", "--config", str(config)])
    assert out.exit_code == 1, out.output
    assert "process:      worker 1 pid 4243 (STUCK: silent for 15 s)\n" in out.stdout
    assert "process:      worker 2 pid 4244\n" in out.stdout
    doc["processes"][0]["silent"] = 0.0  # type: ignore[index]
    assert CliRunner().invoke(cli, ["status", "--config", str(config)]).exit_code == 0
