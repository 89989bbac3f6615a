"""Stopping a daemon the tests started in the background, by its pid file (Dovecot's
master, Exim): the process is not our child, so it is signalled and polled."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path


def stop_by_pid_file(path: Path, timeout: float = 10.0) -> None:
    """SIGTERM to the pid in ``path``; SIGKILL if it still runs after ``timeout``.
    No file, no number in it or no such process: nothing to stop."""
    try:
        pid = int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
