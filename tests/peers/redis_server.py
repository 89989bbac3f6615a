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
from dataclasses import dataclass
from pathlib import Path

import redis

from tests.ports import free_port as _free_port

PASSWORD = "redis secret for tests"


@dataclass(frozen=True)
class RedisTls:
    """TLS only (``tls-port``, no plain port): the server's certificate and key, the
    CA its clients' certificates must chain to, and whether it asks for one
    (``tls-auth-clients``; Redis's own default is yes). ``client_cert``/``client_key``
    are what this harness itself presents."""

    cert: Path
    key: Path
    ca: Path
    client_cert: Path
    client_key: Path
    require_client_cert: bool = True


class RedisServer:
    def __init__(self, root: Path, tls: RedisTls | None = None) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        self.password_file = root / "redis.pw"
        self.password_file.write_text(PASSWORD + "\n")
        self.tls = tls
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        scheme = "redis" if self.tls is None else "rediss"
        return f"{scheme}://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        """A client of the harness's own, for set-up and checks."""
        if self.tls is None:
            return redis.Redis(port=self.port, password=PASSWORD, socket_timeout=1)
        return redis.Redis(host="127.0.0.1", port=self.port, password=PASSWORD,
                           socket_timeout=1, ssl=True,
                           ssl_ca_certs=str(self.tls.ca), ssl_certfile=str(self.tls.client_cert),
                           ssl_keyfile=str(self.tls.client_key))

    def start(self) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        ports = ["--port", str(self.port)]
        if self.tls is not None:
            ports = ["--port", "0", "--tls-port", str(self.port),
                     "--tls-cert-file", str(self.tls.cert), "--tls-key-file", str(self.tls.key),
                     "--tls-ca-cert-file", str(self.tls.ca),
                     "--tls-auth-clients", "yes" if self.tls.require_client_cert else "no"]
        self.proc = subprocess.Popen(
            [binary, *ports, "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.root), "--requirepass", PASSWORD,
             "--daemonize", "no", "--logfile", str(self.root / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if self.client().ping():
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
