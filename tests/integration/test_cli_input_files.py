"""Input files given by mistake: the real ``smtpgate`` in a subprocess, run under an
address-space limit so that a runaway read fails here instead of on the machine.

``user import dovecot-passwd`` and ``user cert add`` read their FILE whole: the
wrong file (a mailbox, a disk image, ``/dev/zero``) was read into memory to its end;
``user import dovecot-passwd /dev/zero`` grew until the kernel's OOM killer ended it
(24 GB on the machine this was found on). Now each reads at most what such a file
can hold (256 MiB, 1 MiB) and says the file is not the right one.
"""

from __future__ import annotations

import os
import resource
import subprocess
from pathlib import Path

from tests.integration.conftest import SMTPGATE

LIMIT = 1536 << 20


def _limited() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (LIMIT, LIMIT))


def _cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "SMTPGATE_CONFIG"}
    return subprocess.run([SMTPGATE, *args, "--config", str(config)], capture_output=True,
                          text=True, env=env, timeout=120, preexec_fn=_limited, check=False)


def test_endless_input_files_are_refused_in_bounded_memory(tmp_path: Path) -> None:
    root = tmp_path / "srv"
    subprocess.run([SMTPGATE, "init", "--dir", str(root), "--no-demo", "--metrics", "",
                    "--admin", ""], check=True, capture_output=True, timeout=60)
    config = root / "smtpgate.toml"
    subprocess.run([SMTPGATE, "user", "add", "alice@example.com", "--password-stdin",
                    "--config", str(config)], input="Correct-Horse-Battery-9\n", text=True,
                   check=True, capture_output=True, timeout=60)

    imported = _cli(config, "user", "import", "dovecot-passwd", "/dev/zero", "--dry-run")
    assert imported.returncode == 1, imported.stderr
    assert "Traceback" not in imported.stderr
    assert imported.stderr.startswith(
        "error: /dev/zero holds more than 256 MiB, and no Dovecot passwd-file is that large")

    cert = _cli(config, "user", "cert", "add", "alice@example.com", "/dev/zero")
    assert cert.returncode == 2, cert.stderr
    assert "Traceback" not in cert.stderr
    assert "Invalid value for FILE: /dev/zero holds more than 1 MiB, and no certificate " \
        "file is that large" in cert.stderr
