"""`smtpgate report` on auth logs as a crash, a full disk or a careless copy leaves
them: the real command in a subprocess, on real files. Each case ended in a Python
traceback (or took memory in proportion to the file) before; now the report counts
what it can read, names what it could not on stderr, and `--json` is one valid
JSON object, or the command says what is wrong with exit 1.
"""

from __future__ import annotations

import gzip
import json
import os
import resource
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.integration.conftest import SMTPGATE

NOW = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _line(user: str, result: str) -> bytes:
    return (json.dumps({"time": NOW, "listener": "submission", "client_ip": "192.0.2.9",
                        "client_port": 4000, "tls": "TLSv1.3", "mechanism": "PLAIN",
                        "username": user, "result": result, "reason": "",
                        "session": "s", "front_door": "smtp"}) + "\n").encode()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "srv"
    subprocess.run([SMTPGATE, "init", "--dir", str(root), "--no-demo", "--metrics", "",
                    "--admin", ""], check=True, capture_output=True, timeout=60)
    return root


def _report(root: Path, *args: str, prefix: tuple[str, ...] = (),
            limit_memory: int | None = None) -> subprocess.CompletedProcess[str]:
    def limit() -> None:
        if limit_memory is not None:
            resource.setrlimit(resource.RLIMIT_AS, (limit_memory, limit_memory))

    env = {k: v for k, v in os.environ.items() if k != "SMTPGATE_CONFIG"}
    return subprocess.run(
        [*prefix, SMTPGATE, "report", "--json", *args, "--config", str(root / "smtpgate.toml")],
        capture_output=True, text=True, timeout=120, env=env, preexec_fn=limit, check=False,
    )


def _totals(done: subprocess.CompletedProcess[str]) -> dict[str, int]:
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    totals: dict[str, int] = json.loads(done.stdout)["totals"]
    return totals


def test_garbage_nesting_and_a_torn_last_line_are_skipped(root: Path) -> None:
    """A line of ``[[[[...`` made json.loads raise RecursionError (no ValueError):
    the whole report was a traceback."""
    (root / "auth.log").write_bytes(
        _line("a@x.org", "success") + b"not json\n\x00\x00\x00\n\xff\xfe\xfd\n"
        + b"[" * 100_000 + b"\n" + b'{"a": ' * 50_000 + b"\n"
        + _line("b@x.org", "failure") + _line("c@x.org", "failure")[:40]
    )
    totals = _totals(_report(root))
    assert (totals["attempts"], totals["success"], totals["failure"]) == (2, 1, 1)


def test_a_corrupt_gzip_copy_counts_what_it_holds_and_says_so(root: Path) -> None:
    """Bytes flipped inside a rotated ``.gz`` made zlib raise zlib.error, which is no
    OSError: a traceback instead of the warning a ``.gz`` cut short already got."""
    (root / "auth.log").write_bytes(_line("a@x.org", "success"))
    z = bytearray(gzip.compress(_line("b@x.org", "failure") * 2000))
    for i in range(30, 60):
        z[i] ^= 0xFF
    (root / "auth.log.2.gz").write_bytes(bytes(z))
    done = _report(root)
    assert _totals(done)["success"] == 1
    assert f"warning: {root / 'auth.log.2.gz'}: read only in part (" in done.stderr


def test_an_unreadable_rotated_copy_is_permission_denied_not_a_traceback(root: Path) -> None:
    """A rotated copy the user may not read (logrotate's ``create 0640``) was a
    PermissionError traceback; it is now one error line naming the file, exit 1,
    with or without --log (which said "is not readable", a usage error, exit 2)."""
    (root / "auth.log").write_bytes(_line("a@x.org", "success"))
    rotated = root / "auth.log.1"
    rotated.write_bytes(_line("b@x.org", "failure"))
    rotated.chmod(0)
    prefix: tuple[str, ...] = ()
    if os.geteuid() == 0:  # root reads any file: drop the capabilities that let it
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("setpriv (util-linux) is needed to run as root without DAC override")
        caps = "-dac_override,-dac_read_search"
        prefix = (setpriv, f"--bounding-set={caps}", f"--inh-caps={caps}")
    for args in ((), ("--log", str(rotated))):
        done = _report(root, *args, prefix=prefix)
        assert done.returncode == 1, done.stderr
        assert "Traceback" not in done.stderr and done.stdout == ""
        assert done.stderr.startswith("error: permission denied: user ")
        assert f"cannot read {rotated}\nhint: " in done.stderr


def test_a_gigabyte_line_is_read_past_in_bounded_memory(root: Path) -> None:
    """A gigabyte of NUL bytes with no newline (a file system's zero-filled tail after
    a crash; sparse here, so it costs no disk) was read as one line: memory grew with
    it, and under a 512 MiB address-space limit the report failed. Now the line is
    read past in 1 MiB pieces, skipped, and named in a warning."""
    log = root / "auth.log"
    with log.open("wb") as f:
        f.truncate(1 << 30)
        f.seek(0, os.SEEK_END)
        f.write(b"\n" + _line("b@x.org", "failure"))
    done = _report(root, limit_memory=512 << 20)
    assert _totals(done)["failure"] == 1
    assert f"warning: {log}: 1 line longer than 1048576 bytes skipped" in done.stderr


def test_a_spray_of_made_up_names_is_a_screenful_not_a_table_per_name(root: Path) -> None:
    """200,000 made-up names from a spraying run made a per-account table of 200,000
    rows (68 s and 830 MB of layout here); the text report now shows the busiest 100
    and says how many more ``--json`` lists. Here 2,000 names, and a real account the
    attacker hit five times, which the busiest-first order keeps on screen."""
    (root / "auth.log").write_bytes(
        b"".join(_line(f"made-up{i:04d}@x.org", "failure") for i in range(2000))
        + _line("zz-real@x.org", "failure") * 5
    )
    done = subprocess.run(
        [SMTPGATE, "report", "--config", str(root / "smtpgate.toml")], capture_output=True,
        text=True, timeout=120, check=False,
        env={**{k: v for k, v in os.environ.items() if k != "SMTPGATE_CONFIG"}, "COLUMNS": "160"})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) < 200, len(lines)
    assert "... and 1901 more rows (the busiest 100 shown); `smtpgate report --json` lists " \
        "every one" in lines
    rows = [line for line in lines if "@x.org" in line]
    assert "zz-real@x.org" in rows[0]
    json_done = _report(root)
    assert len(json.loads(json_done.stdout)["accounts"]) == 2001


def test_one_file_named_twice_is_counted_once(root: Path) -> None:
    """``--log`` given twice, or a rotated name that is a link to the current log,
    read the file twice: every figure doubled (3 failures became a brute force of 6)."""
    log = root / "auth.log"
    log.write_bytes(_line("a@x.org", "failure") * 3)
    (root / "auth.log.1").symlink_to(log)
    assert _totals(_report(root))["failure"] == 3
    assert _totals(_report(root, "--log", str(log), "--log", str(log)))["failure"] == 3


def test_a_record_appended_to_a_block_of_zeros_is_counted(root: Path) -> None:
    """After a crash the log may end in zeros (the file system's unwritten blocks); the
    restarted server appends its next record right after them, with no newline
    between. That record was lost with the zeros; a record holds no NUL byte (JSON
    escapes it), so what follows the last NUL is read as a line of its own, also
    after a block of more than the 1 MiB a line may have."""
    (root / "auth.log").write_bytes(
        _line("a@x.org", "success")
        + b"\0" * 4096 + _line("b@x.org", "failure")
        + b"\0" * (3 << 20) + _line("c@x.org", "failure")
    )
    done = _report(root)
    totals = _totals(done)
    assert (totals["attempts"], totals["failure"]) == (3, 2)
    assert "1 line longer than 1048576 bytes skipped" in done.stderr
