"""A config or auth log that is not a regular file (a named pipe, a device): each
command that reads one hung forever on a FIFO, blocked in open() until a writer came,
and read /dev/zero without end. Now it is refused at once, exit 1 as for a file the
user may not read (docs/cli.md), naming the path and what it is.

The commands run in a subprocess with a timeout: a hang is a failure here, not a
test run stuck until pytest's own timeout.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from smtpgate.cli.common import ExitCode
from smtpgate.regular_file import NotRegularFile, open_regular
from smtpgate.web.authlog_view import read_attempts
from tests.unit.cli_support import CONFIG, write_config

MAIN = "import sys; sys.argv[0] = 'smtpgate'; from smtpgate.cli.main import main; main()"


def _smtpgate(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "SMTPGATE_CONFIG"}
    return subprocess.run([sys.executable, "-c", MAIN, *args], capture_output=True, text=True,
                          timeout=30, env=env, stdin=subprocess.DEVNULL, check=False)


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "pipe"
    os.mkfifo(path)
    return path


@pytest.mark.parametrize("command", [["config", "check"], ["user", "list"], ["report"]])
def test_a_config_that_is_a_named_pipe_is_refused_at_once_exit_1(
        fifo: Path, command: list[str]) -> None:
    done = _smtpgate(*command, "--config", str(fifo))
    assert done.returncode == ExitCode.ERROR, done.stderr
    assert "Traceback" not in done.stderr
    assert f"{fifo} is a named pipe (FIFO), not a regular file" in done.stderr


def test_a_config_that_is_a_device_is_refused_not_read_without_end() -> None:
    done = _smtpgate("config", "check", "--config", "/dev/zero")
    assert done.returncode == ExitCode.ERROR, done.stderr
    assert "/dev/zero is a character device, not a regular file" in done.stdout + done.stderr


def test_report_of_a_log_that_is_a_named_pipe_is_refused_at_once_exit_1(
        tmp_path: Path, fifo: Path) -> None:
    config = write_config(tmp_path)
    done = _smtpgate("report", "--log", str(fifo), "--config", str(config))
    assert done.returncode == ExitCode.ERROR, done.stderr
    assert "Traceback" not in done.stderr
    assert f"cannot read {fifo}: it is a named pipe (FIFO), not a regular file" in done.stderr


def test_report_of_a_log_file_setting_that_is_a_named_pipe_is_refused(tmp_path: Path) -> None:
    """[auth].log_file pointed at a pipe (to feed another program): the report,
    reading it by default, hung too."""
    config = write_config(tmp_path)
    config.write_text(CONFIG.replace("[accounts]", '[auth]\nlog_file = "auth.log"\n\n[accounts]'))
    os.mkfifo(tmp_path / "auth.log")
    done = _smtpgate("report", "--config", str(config))
    assert done.returncode == ExitCode.ERROR, done.stderr
    assert f"cannot read {tmp_path / 'auth.log'}: it is a named pipe (FIFO)" in done.stderr


def test_open_regular_refuses_what_is_not_a_file_and_opens_what_is(
        tmp_path: Path, fifo: Path) -> None:
    with pytest.raises(NotRegularFile) as e:
        open_regular(fifo)
    assert e.value.kind == "a named pipe (FIFO)" and e.value.filename == str(fifo)
    with pytest.raises(NotRegularFile, match="a directory"):
        open_regular(tmp_path)
    with pytest.raises(FileNotFoundError):
        open_regular(tmp_path / "none")
    (tmp_path / "f").write_bytes(b"data")
    with open_regular(tmp_path / "f") as f:
        assert f.read() == b"data"  # blocking again: the whole file


def test_the_web_admins_log_view_of_a_named_pipe_is_empty_not_a_hung_page(fifo: Path) -> None:
    result: list[object] = []
    reader = threading.Thread(target=lambda: result.append(read_attempts(fifo)), daemon=True)
    reader.start()
    reader.join(10)
    if reader.is_alive():  # unblock the open() it hangs in, so the thread can end
        os.close(os.open(fifo, os.O_WRONLY))
        reader.join(10)
        pytest.fail("read_attempts blocked on the named pipe")
    assert result == [[]]
