r"""Output to a stream that cannot encode every character (``PYTHONIOENCODING=ascii``,
a cron job's ASCII locale): ``user list`` of ``josé@example.org`` was a
UnicodeEncodeError traceback. Such characters are now escaped as hidden ones are
(``\xe9``), in table cells before rich measures them (the borders stay aligned) and
by the stream itself for whatever else gets through.

The command runs in a subprocess: the encoding of a real standard output is what
is under test, which click's CliRunner replaces.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.cli_support import run, write_config

MAIN = "import sys; sys.argv[0] = 'smtpgate'; from smtpgate.cli.main import main; main()"


def _ascii_smtpgate(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "SMTPGATE_CONFIG"}
    env["PYTHONIOENCODING"] = "ascii"
    return subprocess.run([sys.executable, "-c", MAIN, *args, "--config", str(config)],
                          capture_output=True, text=True, encoding="ascii", errors="strict",
                          timeout=60, env=env, stdin=subprocess.DEVNULL, check=False)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = write_config(tmp_path)
    assert run(path, "add", "josé@example.org", "--password-stdin", input="pw\n").exit_code == 0
    assert run(path, "add", "bob@example.org", "--password-stdin", input="pw\n").exit_code == 0
    return path


def test_user_list_of_a_non_ascii_name_on_an_ascii_output(config: Path) -> None:
    done = _ascii_smtpgate(config, "user", "list")
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    rows = done.stdout.splitlines()
    assert any(r.startswith("| jos\\xe9@example.org ") for r in rows), done.stdout
    table = [r for r in rows if r.startswith(("|", "+"))]
    assert len({len(r) for r in table}) == 1, done.stdout  # borders aligned


def test_the_other_listings_and_messages_escape_it_too(config: Path) -> None:
    done = _ascii_smtpgate(config, "user", "list", "--mechanisms")
    assert done.returncode == 0 and "jos\\xe9@example.org" in done.stdout, done.stderr
    done = _ascii_smtpgate(config, "user", "lock", "josé@example.org", "--reason", "señal")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "locked account jos\\xe9@example.org\n"
    done = _ascii_smtpgate(config, "user", "list")
    assert "yes: se\\xf1al" in done.stdout, done.stderr
    done = _ascii_smtpgate(config, "user", "list", "--json")  # JSON escapes it itself
    assert done.returncode == 0 and '"jos\\u00e9@example.org"' in done.stdout, done.stderr


def test_the_escaped_name_is_accepted_back(config: Path) -> None:
    """What the list showed, copied into the next command, names the account."""
    done = _ascii_smtpgate(config, "user", "remove", "jos\\xe9@example.org")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "removed account jos\\xe9@example.org\n"
    assert "josé@example.org" not in run(config, "list").output


def test_standard_output_escapes_what_it_cannot_encode_whoever_writes_it() -> None:
    from smtpgate.cli.main import _escape_what_cannot_be_encoded

    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="ascii")
    _escape_what_cannot_be_encoded(stream)
    stream.write("jos\u00e9 \u2500 \U0001f600\n")
    stream.flush()
    assert raw.getvalue() == b"jos\\xe9 \\u2500 \\U0001f600\n"
    chosen = io.TextIOWrapper(io.BytesIO(), encoding="ascii", errors="replace")
    _escape_what_cannot_be_encoded(chosen)
    assert chosen.errors == "replace"  # PYTHONIOENCODING=ascii:replace is kept
