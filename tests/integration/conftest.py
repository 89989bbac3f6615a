"""Fixtures that run the real ``smtpgate serve`` on free loopback ports.

No fixed ports and no sleep-based start-up: a port is taken from the kernel,
and readiness is the listening socket accepting a connection.
"""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.peers.postfix_dovecot import PostfixDovecot, running
from tests.ports import free_port

BIN = Path(sys.executable).parent
SMTPGATE = str(BIN / "smtpgate")
IN_CI = bool(os.environ.get("SMTPGATE_CI") or os.environ.get("CI"))


def require_tool(name: str) -> str:
    """Path of a peer program. Missing under CI is a failure, never a skip."""
    path = shutil.which(name)
    if path is None:
        if IN_CI:
            pytest.fail(f"peer program {name!r} is not installed (make test installs it)")
        pytest.skip(f"{name} not installed")
    return path


def require_file(path: Path, source: str) -> Path:
    """A file of a peer library (a library has no program to look for), from
    ``source`` (a Debian package, npm ci). Missing under CI is a failure, never a skip."""
    if not path.exists():
        if IN_CI:
            pytest.fail(f"{path} is missing: {source} (make test installs it)")
        pytest.skip(f"{path} missing: {source}")
    return path


@dataclass
class Server:
    root: Path
    submission: int
    submissions: int
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path = field(init=False)
    #: Put before ``smtpgate serve`` by `start` (a program that execs its arguments).
    launcher: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.log_path = self.root / "server.log"

    @property
    def config(self) -> Path:
        return self.root / "smtpgate.toml"

    @property
    def ca(self) -> Path:
        return self.root / "tls" / "cert.pem"

    @property
    def maildir(self) -> Path:
        return self.root / "mail"

    def cli(self, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [SMTPGATE, *args, "--config", str(self.config)],
            input=stdin,
            capture_output=True,
            text=True,
            env=self.env,
            check=check,
            timeout=60,
        )

    def add_user(self, name: str, password: str) -> None:
        self.cli("user", "add", name, "--password-stdin", stdin=password + "\n")

    def start(self, *serve_args: str) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [*self.launcher, SMTPGATE, "serve", "--config", str(self.config), *serve_args],
                stdout=log,
                stderr=log,
                env=self.env,
            )
        deadline = time.monotonic() + 30
        for port, implicit in ((self.submission, False), (self.submissions, True)):
            while True:
                if self.proc.poll() is not None:
                    self.proc = None
                    raise RuntimeError("server exited:\n" + self.log_text())
                if self._greets(port, implicit):
                    break
                if time.monotonic() > deadline:
                    self.proc.kill()
                    self.proc.wait()
                    self.proc = None
                    raise RuntimeError("server did not listen:\n" + self.log_text())
                time.sleep(0.05)

    def _greets(self, port: int, implicit: bool) -> bool:
        """Ready means a real 220 greeting (over TLS on the implicit port): a bare
        connect can succeed by itself when a loopback port connects to itself."""
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as raw:
                # No certificate check here: some tests serve expired or
                # untrusted certificates on purpose.
                probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                probe.check_hostname = False
                probe.verify_mode = ssl.CERT_NONE
                sock: socket.socket = (
                    probe.wrap_socket(raw, server_hostname="localhost") if implicit else raw
                )
                try:
                    ok = sock.recv(100).startswith(b"220 ")
                    sock.sendall(b"QUIT\r\n")
                    return ok
                finally:
                    sock.close()
        except (OSError, ssl.SSLError):
            return False

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        rc = self.proc.wait(timeout=timeout)
        self.proc = None
        return rc

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def delivered(self) -> list[Path]:
        new, cur = self.maildir / "new", self.maildir / "cur"
        return sorted([*new.glob("*"), *cur.glob("*")]) if new.exists() else []

    def wait_for_mail(self, count: int, timeout: float = 30) -> list[Path]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            files = self.delivered()
            if len(files) >= count:
                return files
            time.sleep(0.05)
        raise AssertionError(f"expected {count} delivered messages, have {len(self.delivered())}")

    def client_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca))
        ctx.check_hostname = True
        return ctx


def make_server(root: Path, extra_config: str = "") -> Server:
    sub, subs = free_port(), free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("SMTPGATE_CONFIG", None)
    # init's metrics and web admin ports are fixed (9465, 9480): servers running side by
    # side would collide on them, so tests that want them append their own tables.
    subprocess.run(
        [SMTPGATE, "init", "--dir", str(root), "--no-demo", "--metrics", "", "--admin", "",
         "--submission", f"127.0.0.1:{sub}", "--submissions", f"127.0.0.1:{subs}"],
        check=True, capture_output=True, env=env, timeout=60,
    )
    cfg = root / "smtpgate.toml"
    text = cfg.read_text()
    # Cheaper Argon2 so the suite stays fast; the server behaves the same.
    text = text.replace(
        'database = "accounts.sqlite"',
        'database = "accounts.sqlite"\nargon2_memory_kib = 8192\nargon2_time_cost = 1',
    )
    text = text.replace('log_file = "auth.log"', 'log_file = "auth.log"\nfailure_floor = 0.1')
    cfg.write_text(text + extra_config)
    return Server(root, sub, subs, env)


USER = "alice@example.org"
PASSWORD = "correct horse battery"
#: Config for tests that read which account sent a message off its Received header
#: (the login is left out by default, docs/smtp.md).
LOGIN_IN_RECEIVED = "\n[smtp]\nreceived_login = true\n"


def serving(root: Path, extra_config: str = "",
            users: tuple[tuple[str, str], ...] = ()) -> Iterator[Server]:
    """A started server under ``root`` with ``extra_config`` and ``users`` (name,
    password), stopped afterwards: the body of a fixture (``yield from``)."""
    srv = make_server(root, extra_config)
    for name, password in users:
        srv.add_user(name, password)
    srv.start()
    yield srv
    if srv.proc is not None:
        srv.stop()


def serving_alice(root: Path, extra_config: str = "") -> Iterator[Server]:
    """`serving` with the account alice."""
    yield from serving(root, extra_config, ((USER, PASSWORD),))


def make_http_server(root: Path, extra_config: str = "") -> tuple[Server, int, int]:
    """`make_server` with the web admin and /metrics on free ports as well (init's
    are fixed, and left out): the server, not started, its admin and metrics ports."""
    admin, metrics = free_port(), free_port()
    srv = make_server(root, f'\n[admin]\nlisten = "127.0.0.1:{admin}"\n'
                            f'\n[metrics]\nlisten = "127.0.0.1:{metrics}"\n{extra_config}')
    return srv, admin, metrics


def http_status(port: int, path: str) -> int:
    """The status of ``GET path`` on 127.0.0.1:``port``."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    finally:
        conn.close()


def wait_http(srv: Server, port: int, path: str = "/login", timeout: float = 30) -> None:
    """Until ``GET path`` on ``port`` is a 200: the web admin and /metrics listen a
    moment after `Server.start` has seen the SMTP listeners greet."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if http_status(port, path) == 200:
                return
        except OSError:
            pass
        assert time.monotonic() < deadline, f"nothing answered {path} on {port}:\n" + srv.log_text()
        time.sleep(0.1)


@dataclass
class PolicyDoor:
    """A started server with a Postfix policy door (``postfix_policy``) on ``port``."""

    smtpgate: Server
    port: int


def serving_policy_door(prefix: str, extra_config: str, users: tuple[str, ...],
                        ready: Callable[[Server], None] = lambda srv: None,
                        ) -> Iterator[PolicyDoor]:
    """The body of a module fixture (``yield from``): a server in a temp directory
    named ``prefix``, with ``extra_config``, a policy door and ``users`` (password
    ``Winter-Plum-Kettle-42``); ``ready`` runs before the start."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    port = free_port()
    srv = make_server(root / "srv", extra_config + (
        f'\n[[auth_listeners]]\nprotocol = "postfix_policy"\naddress = "127.0.0.1:{port}"\n'))
    try:
        for user in users:
            srv.add_user(user, "Winter-Plum-Kettle-42")
        ready(srv)
        srv.start()
        yield PolicyDoor(srv, port)
    finally:
        if srv.proc is not None:
            srv.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    yield from serving_alice(tmp_path / "srv")


def require_mta() -> None:
    """Postfix and Dovecot, run as a private instance, need their programs and root."""
    for tool in ("postfix", "dovecot", "doveadm", "script"):
        require_tool(tool)
    if os.geteuid() != 0:
        if IN_CI:
            pytest.fail("Postfix and Dovecot tests need root (they drop to their own users)")
        pytest.skip("Postfix and Dovecot tests need root")


@pytest.fixture(scope="module")
def mta() -> Iterator[PostfixDovecot]:
    """A private Postfix+Dovecot on loopback for one test module (tests/peers/)."""
    require_mta()
    with running() as pd:
        yield pd


def send_and_read_all(port: int, data: bytes) -> bytes:
    """Send ``data`` to a line-protocol door on loopback, half-close, and read until it
    closes: one whole exchange (the Postfix policy protocol's tests)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := s.recv(4096):
            out += chunk
    return out
