"""``pidfile.another_serving``: which pid files stop a second ``serve`` from starting.

Only a live ``smtpgate serve`` other than this process counts; a stale file, this
process's own, and a number reused by another program do not (a refusal there would
keep the server down after a crash)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from smtpgate.server import pidfile


@pytest.fixture
def pid_file(tmp_path: Path) -> Path:
    return tmp_path / "smtpgate.pid"


def _spawn(argv: list[str]) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(argv)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture
def fake_serve(tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A process whose command line reads as ``smtpgate serve``, as /proc shows it."""
    script = tmp_path / "smtpgate"
    script.write_text("import time\ntime.sleep(60)\n")
    yield from _spawn([sys.executable, str(script), "serve", "--config", "x.toml"])


@pytest.fixture
def other_program(tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A live process that names smtpgate but is no ``serve`` (``smtpgate status``)."""
    script = tmp_path / "smtpgate"
    script.write_text("import time\ntime.sleep(60)\n")
    yield from _spawn([sys.executable, str(script), "status"])


def _wait_for_argv(proc: subprocess.Popen[bytes], word: bytes) -> None:
    cmdline = Path(f"/proc/{proc.pid}/cmdline")
    for _ in range(200):
        if word in cmdline.read_bytes().split(b"\0"):
            return
        time.sleep(0.01)
    raise AssertionError(cmdline.read_bytes())


def test_a_running_serve_named_by_the_file_is_found(
    pid_file: Path, fake_serve: subprocess.Popen[bytes],
) -> None:
    _wait_for_argv(fake_serve, b"serve")
    pid_file.write_text(f"{fake_serve.pid}\n")
    assert pidfile.another_serving(pid_file) == fake_serve.pid


def test_no_file_a_stale_file_and_this_process_are_not(pid_file: Path) -> None:
    assert pidfile.another_serving(pid_file) is None
    pid_file.write_text("999999999\n")
    assert pidfile.another_serving(pid_file) is None
    pidfile.write(pid_file)
    assert pidfile.another_serving(pid_file) is None


def test_a_reused_number_held_by_another_smtpgate_command_is_not(
    pid_file: Path, other_program: subprocess.Popen[bytes],
) -> None:
    _wait_for_argv(other_program, b"status")
    pid_file.write_text(f"{other_program.pid}\n")
    assert pidfile.another_serving(pid_file) is None
