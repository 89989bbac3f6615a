"""Start the Python test peers (aiosmtpd, the injectable toy) as subprocesses on free ports."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tests.ports import free_port

HERE = Path(__file__).parent


@dataclass
class PeerProcess:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s; idempotent."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def start_peer(script: str, log_dir: Path, *args: str) -> PeerProcess:
    """Run ``tests/peers/<script>`` with ``--port <free> args``; return once it listens.

    Raises:
        RuntimeError: it exited or did not listen within 20 s (it is stopped then).
    """
    port = free_port()
    log = log_dir / f"{Path(script).stem}-{port}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, str(HERE / script), "--port", str(port), *args],
            stdout=out, stderr=out, stdin=subprocess.DEVNULL,
        )
    peer = PeerProcess(script, port, proc, log)
    deadline = time.monotonic() + 20
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{script} exited:\n{peer.log_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return peer
        except OSError:
            if time.monotonic() > deadline:
                peer.stop()
                raise RuntimeError(f"{script} did not listen:\n{peer.log_text()}") from None
            time.sleep(0.05)
