"""A config that does not load is reported with its file as well as its key.

Before: every command but `config check` said ``config error: hostnam: unknown key
...``, `serve` logged ``cannot start: (file): invalid TOML: ...`` and a failed
reload ``reload failed, ...: hostnam: ...``: with several configs on a host, or
the file named by ``$SMTPGATE_CONFIG`` in a systemd unit, the line did not say
which file to edit. Now each names it first, as `config check` does.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from smtpgate.cli.main import cli
from smtpgate.config import parse_config
from smtpgate.server import reload as reloading
from tests.unit.cli_support import CONFIG, write_config

TYPO = CONFIG.replace('hostname = "mx.example.org"', 'hostnam = "mx.example.org"')


@pytest.mark.parametrize("command", [
    ["status"], ["report"], ["guard", "list"], ["user", "list"], ["config", "show"],
    ["db", "migrate"], ["reload"],
])
def test_every_command_names_the_file_and_the_key(tmp_path: Path, command: list[str]) -> None:
    path = write_config(tmp_path)
    path.write_text(TYPO)
    result = CliRunner().invoke(cli, [*command, "--config", str(path)])
    assert result.exit_code == 1
    assert (f"config error: {path}: hostnam: unknown key `hostnam` at the top level; "
            "did you mean `hostname`?") in result.output
    assert "Traceback" not in result.output


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    path.write_text('hostname = "x\n')
    result = CliRunner().invoke(cli, ["user", "list", "--config", str(path)])
    assert result.exit_code == 1
    assert f"config error: {path}: invalid TOML: " in result.output
    assert "(file)" not in result.output


def test_an_unreadable_file_is_named_once(tmp_path: Path) -> None:
    path = tmp_path / "smtpgate.toml"
    path.mkdir()  # reading a directory fails: "cannot read PATH: Is a directory"
    result = CliRunner().invoke(cli, ["guard", "list", "--config", str(path)])
    assert result.exit_code != 0
    assert result.output.count(str(path)) >= 1 and "(file)" not in result.output


def test_serve_names_the_file_and_the_key(tmp_path: Path) -> None:
    """A real `smtpgate serve` process, as systemd would start it: the file comes
    from $SMTPGATE_CONFIG, and the one line in the journal must name it."""
    path = write_config(tmp_path)
    path.write_text(TYPO)
    env = {**os.environ, "SMTPGATE_CONFIG": str(path)}
    smtpgate = str(Path(sys.executable).parent / "smtpgate")
    proc = subprocess.run([smtpgate, "serve"], check=False, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert f"cannot start: {path}: hostnam: unknown key `hostnam`" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_failed_reload_names_the_file(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    running = parse_config(path.read_text(), tmp_path)
    path.write_text(TYPO)
    with pytest.raises(reloading.ReloadError) as e:
        reloading.load(path, running)
    assert e.value.key == "hostnam"
    assert str(e.value).startswith(f"{path}: hostnam: unknown key `hostnam`")
