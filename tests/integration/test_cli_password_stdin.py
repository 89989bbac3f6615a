"""Passwords given with ``--password-stdin``, as scripts and clumsy admins give them:
the real ``smtpgate`` in a subprocess, stdin as bytes, and a real server to log in to.

A file from Windows ends its line in CRLF; a file in Latin-1 holds bytes that are
not UTF-8. The first must set the password without its line end (a login with the
password works); the second was a UnicodeEncodeError traceback (text-mode stdin
turned the byte into a lone surrogate) and is now one error line, exit 1, nothing
changed.
"""

from __future__ import annotations

import smtplib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import SMTPGATE, Server, serving

PASSWORD = "Correct-Horse-Battery-9"


@pytest.fixture
def srv(tmp_path: Path) -> Iterator[Server]:
    yield from serving(tmp_path / "srv")


def _cli(srv: Server, *args: str, stdin: bytes) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([SMTPGATE, *args, "--config", str(srv.config)], input=stdin,
                          capture_output=True, env=srv.env, timeout=60, check=False)


def _login(srv: Server, user: str, password: str) -> int:
    with smtplib.SMTP("127.0.0.1", srv.submission, timeout=20) as s:
        s.starttls(context=srv.client_context())
        s.ehlo("client.test")
        try:
            s.login(user, password)
        except smtplib.SMTPAuthenticationError as e:
            return e.smtp_code
        return 235


@pytest.mark.parametrize("end", [b"", b"\n", b"\r\n"])
def test_the_line_end_is_not_part_of_the_password(srv: Server, end: bytes) -> None:
    user = "alice@example.org"
    added = _cli(srv, "user", "add", user, "--password-stdin", stdin=PASSWORD.encode() + end)
    assert added.returncode == 0, added.stderr
    assert _login(srv, user, PASSWORD) == 235


@pytest.mark.parametrize("command", [("user", "add", "bob@example.org"), ("admin", "add", "root1")])
def test_a_password_that_is_not_utf8_is_one_error_line(srv: Server, command: tuple[str, ...]) -> None:
    done = _cli(srv, *command, "--password-stdin", stdin=b"Correct-Horse-Battery-\xe9\n")
    stderr = done.stderr.decode()
    assert done.returncode == 1, stderr
    assert "Traceback" not in stderr
    assert stderr.startswith(
        "error: the password on standard input is not UTF-8 text (byte 0xe9 at offset 22)\n"
        "hint: "), stderr
    listed = _cli(srv, command[0], "list", stdin=b"")
    assert command[2] not in listed.stdout.decode()  # nothing was made


def test_a_pipe_without_password_stdin(srv: Server) -> None:
    """``echo PW | smtpgate user add NAME`` without --password-stdin: the prompt read one
    line, asked again, found the end of input and said "Aborted!" under a
    GetPassWarning; now a usage error says to pass --password-stdin. Two lines piped
    (a script answering both prompts) still work."""
    once = _cli(srv, "user", "add", "carol@example.org", stdin=PASSWORD.encode() + b"\n")
    stderr = once.stderr.decode()
    assert once.returncode == 2, stderr
    assert "GetPassWarning" not in stderr and "Aborted" not in stderr
    assert "pass --password-stdin to read it once from there" in stderr
    twice = _cli(srv, "user", "add", "dave@example.org", stdin=(PASSWORD + "\n").encode() * 2)
    assert twice.returncode == 0, twice.stderr
    assert b"GetPassWarning" not in twice.stderr
    assert _login(srv, "dave@example.org", PASSWORD) == 235
