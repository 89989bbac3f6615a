"""Under systemd, each server-log line on stderr carries journald's ``<N>`` priority.

Before: every line went to the journal at priority 6 (info), ERROR and WARNING
included, so ``journalctl -u smtpgate -p warning`` showed nothing and an alert on
the journal's priority never fired. systemd tells a service its stderr is the
journal with ``JOURNAL_STREAM=DEVICE:INODE`` (systemd.exec(5)); the test gives a
real `smtpgate serve` that variable for the file its stderr goes to, as systemd
does for its stream socket.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

from smtpgate.server.logs import JournalFormatter
from tests.unit.cli_support import CONFIG, write_config

TYPO = CONFIG.replace('hostname = "mx.example.org"', 'hostnam = "mx.example.org"')


def _serve_with_stderr_in(path: Path, config: Path, journal_stream: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    with path.open("w") as err:
        if journal_stream == "this file":
            st = os.fstat(err.fileno())
            journal_stream = f"{st.st_dev}:{st.st_ino}"
        if journal_stream is not None:
            env["JOURNAL_STREAM"] = journal_stream
        smtpgate = str(Path(sys.executable).parent / "smtpgate")
        proc = subprocess.run([smtpgate, "serve", "--config", str(config)], check=False,
                              env=env, stdout=subprocess.DEVNULL, stderr=err, timeout=60)
    assert proc.returncode == 2
    return path.read_text()


def test_an_error_reaches_the_journal_at_priority_3(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    config.write_text(TYPO)
    out = _serve_with_stderr_in(tmp_path / "journal", config, "this file")
    lines = out.splitlines()
    assert lines and all(line.startswith("<3>") for line in lines)
    assert "ERROR smtpgate[" in lines[0] and "cannot start: " in lines[0]


def test_a_terminal_or_a_redirect_gets_no_prefix(tmp_path: Path) -> None:
    """No JOURNAL_STREAM (a terminal), or one naming another file (the unit's
    stderr redirected by a wrapper script): the line as before."""
    config = write_config(tmp_path)
    config.write_text(TYPO)
    for stream in (None, "1:2"):
        out = _serve_with_stderr_in(tmp_path / "err", config, stream)
        assert out.startswith("20") and "<3>" not in out, stream


def test_each_level_and_each_line_of_a_traceback_has_its_priority() -> None:
    fmt = JournalFormatter("%(levelname)s %(message)s")
    levels = {logging.DEBUG: "<7>", logging.INFO: "<6>", logging.WARNING: "<4>",
              logging.ERROR: "<3>", logging.CRITICAL: "<2>"}
    for level, prefix in levels.items():
        record = logging.LogRecord("smtpgate", level, __file__, 1, "x", None, None)
        assert fmt.format(record).startswith(prefix)
    try:
        raise ValueError("boom")
    except ValueError:
        info = sys.exc_info()
    record = logging.LogRecord("smtpgate", logging.ERROR, __file__, 1, "failed", None, info)
    lines = fmt.format(record).split("\n")
    assert len(lines) > 3 and all(line.startswith("<3>") for line in lines)
