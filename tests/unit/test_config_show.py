"""`smtpgate config show`: what the server will use, for scripts (make run reads the
listeners from it)."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from smtpgate.cli.main import cli

from .cli_support import write_config


def test_listeners_one_line_each(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    config.write_text(config.read_text() + '\n[[listeners]]\nname = "tls"\n'
                      'address = "[::1]:4650"\ntls = "implicit"\n')
    result = CliRunner().invoke(cli, ["config", "show", "--listeners", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert result.output == "submission 127.0.0.1:5870 starttls\ntls [::1]:4650 implicit\n"


def test_listeners_name_the_web_admin_and_metrics_when_on(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    config.write_text(config.read_text() + '\n[admin]\nlisten = "192.0.2.1:9480"\n'
                      '\n[metrics]\nlisten = "127.0.0.1:9465"\n')
    result = CliRunner().invoke(cli, ["config", "show", "--listeners", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[1:] == ["admin 192.0.2.1:9480 https",
                                              "metrics 127.0.0.1:9465 http"]


def test_json_has_defaults_and_resolved_paths(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    result = CliRunner().invoke(cli, ["config", "show", "--config", str(config)])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["hostname"] == "mx.example.org"
    assert data["accounts"]["database"] == str(tmp_path.resolve() / "accounts.sqlite")
    assert data["guard"]["database"] == str(tmp_path.resolve() / "guard.sqlite")
    assert data["tls"]["cert"] == str(tmp_path.resolve() / "cert.pem")
    assert data["auth"]["log_file"] == str(tmp_path.resolve() / "auth.log")
    assert data["queue"]["spool"] == str(tmp_path.resolve() / "spool")
    assert data["limits"]["max_recipients"] == 100  # a default
    assert data["delivery"]["relay_password_file"] is None
    assert "base_dir" not in data


def test_a_broken_config_is_named_not_shown(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    config.write_text(config.read_text().replace('address = "127.0.0.1:5870"', 'address = "x"'))
    result = CliRunner().invoke(cli, ["config", "show", "--listeners", "--config", str(config)])
    assert result.exit_code == 1
    assert "listeners.0.address" in result.output
