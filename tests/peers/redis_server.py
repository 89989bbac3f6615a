"""A private Redis server (Debian ``redis-server``) for the shared-state tests.

Runs from a temp dir on a free loopback port with persistence off and a
password (``requirepass``), never the system service. ``stop()``/``start()``
keep the port, for the outage tests (Redis down, then back). One per test
process (``shared_redis``); each user of it works under a key prefix of its own
(``new_prefix``), so tests never see each other's keys.
"""

from __future__ import annotations

import atexit
import itertools
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import redis

from tests.ports import free_port as _free_port

PASSWORD = "redis secret for tests"


class RedisServer:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        self.password_file = root / "redis.pw"
        self.password_file.write_text(PASSWORD + "\n")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.root), "--requirepass", PASSWORD,
             "--daemonize", "no", "--logfile", str(self.root / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if redis.Redis(port=self.port, password=PASSWORD, socket_timeout=1).ping():
                    return
            except redis.RedisError:
                pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start: "
                           + (self.root / "redis.log").read_text(errors="replace"))

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=20)
            self.proc = None


_shared: RedisServer | None = None
_lock = threading.Lock()
_prefixes = itertools.count(1)


def available() -> str | None:
    """Why Redis tests cannot run here (None: they can)."""
    if shutil.which("redis-server") is None and not Path("/usr/bin/redis-server").exists():
        return "redis-server is not installed (make test installs it)"
    return None


def shared_redis() -> RedisServer:
    """The test process's Redis, started on first use, stopped at exit."""
    global _shared
    why = available()
    if why is not None:
        import pytest

        if os.environ.get("SMTPGATE_CI") or os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    with _lock:
        if _shared is None:
            root = Path(tempfile.mkdtemp(prefix="smtpgate-redis-"))
            server = RedisServer(root)
            server.start()
            atexit.register(lambda: (server.stop(), shutil.rmtree(root, ignore_errors=True)))
            _shared = server
        return _shared


def new_prefix() -> str:
    """A key prefix no other test in this run uses."""
    return f"t{os.getpid()}-{next(_prefixes)}:"
