"""The production layout: `smtpgate init --owner USER` as root, then the server run as
USER (as the systemd unit runs it) reads its config and key, writes its state and
log, and serves; root's admin commands do not take the files away from it.

Runs as root (init chowns), with the system user ``nobody`` as the service user.
Its files live under a fresh directory in /tmp, since pytest's own temporary
directories are private to root.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import site
import smtplib
import ssl
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import smtpgate

from .conftest import IN_CI, SMTPGATE, Server, free_port

OWNER = "nobody"


def require_root() -> None:
    if os.geteuid() != 0:
        if IN_CI:
            pytest.fail("the production-layout tests need root (init --owner chowns)")
        pytest.skip("needs root")


def owner_python() -> list[str]:
    """A Python that OWNER may execute, with smtpgate and its dependencies importable:
    this one if OWNER can run it, else the system's Python of the same version (a
    venv made from a Python under /root is not executable by other users)."""
    candidates = [Path(sys.executable).resolve(), Path(f"/usr/bin/python3.{sys.version_info.minor}")]
    for python in candidates:
        probe = subprocess.run(
            ["runuser", "-u", OWNER, "--", str(python), "-c", "import sys"],
            capture_output=True, check=False, cwd="/",
        )
        if probe.returncode == 0:
            return [str(python)]
    pytest.fail(f"no Python that {OWNER} may run: {candidates}")


def as_owner(*args: str) -> list[str]:
    """The command line of ``smtpgate ARGS`` run as OWNER."""
    path = [str(Path(smtpgate.__file__).resolve().parents[1]), *site.getsitepackages()]
    return ["runuser", "-u", OWNER, "--", "env", f"PYTHONPATH={os.pathsep.join(path)}",
            *owner_python(), "-c", "from smtpgate.cli.main import main; main()", *args]


def run_as_owner(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        as_owner(*args), capture_output=True, text=True, cwd="/", timeout=60, check=False
    )


@pytest.fixture
def base() -> Iterator[Path]:
    require_root()
    root = Path(tempfile.mkdtemp(prefix="smtpgate-layout-", dir="/tmp"))
    root.chmod(0o755)  # like / : others may pass through
    yield root
    shutil.rmtree(root)


def init(base: Path, *extra: str) -> tuple[Path, int, int]:
    sub, subs = free_port(), free_port()
    result = subprocess.run(
        [SMTPGATE, "init", "--dir", f"{base}/etc/smtpgate",
         "--state-dir", f"{base}/var/lib/smtpgate", "--log-dir", f"{base}/var/log/smtpgate",
         "--submission", f"127.0.0.1:{sub}", "--submissions", f"127.0.0.1:{subs}",
         # init's metrics and web admin, on free ports (a test beside may hold init's own)
         "--metrics", f"127.0.0.1:{free_port()}", "--admin", f"127.0.0.1:{free_port()}",
         "--no-demo", *extra],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return base / "etc/smtpgate/smtpgate.toml", sub, subs


def owner_of(path: Path) -> str:
    return pwd.getpwuid(path.stat().st_uid).pw_name


def test_without_owner_the_service_user_cannot_read_what_root_wrote(base: Path) -> None:
    """The defect: init as root wrote files only root can read."""
    config, _, _ = init(base)
    checked = run_as_owner("config", "check", "--config", str(config))
    assert checked.returncode == 1
    assert "tls.key: permission denied" in checked.stderr


def test_init_owner_gives_the_service_user_what_it_needs(base: Path) -> None:
    config, sub, subs = init(base, "--owner", OWNER)
    etc, lib, log = base / "etc/smtpgate", base / "var/lib/smtpgate", base / "var/log/smtpgate"
    # Read-only for the service: root's, group-readable; never world-readable.
    for path, mode in ((config, 0o640), (etc / "tls/key.pem", 0o640), (etc / "tls", 0o750)):
        st = path.stat()
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, mode), path
        assert st.st_gid == pwd.getpwnam(OWNER).pw_gid
    # Written by the service: its own.
    for path in (lib, lib / "accounts.sqlite", lib / "guard.sqlite", lib / "spool",
                 lib / "mail" / "new", log, log / "auth.log"):
        assert owner_of(path) == OWNER, path
    assert stat.S_IMODE(lib.stat().st_mode) == 0o750

    # An admin adds an account as root: the database stays usable by the service
    # (SQLite gives the -wal/-shm files the database's owner).
    added = subprocess.run(
        [SMTPGATE, "user", "add", "alice@example.org", "--password-stdin", "--config", str(config)],
        input="correct horse battery staple\n", capture_output=True, text=True, timeout=60,
        check=False,
    )
    assert added.returncode == 0, added.stderr
    for side in lib.glob("accounts.sqlite*"):
        assert owner_of(side) == OWNER, side

    checked = run_as_owner("config", "check", "--config", str(config))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # ... but it may not change its config or key, nor put files beside them.
    for target in (config, etc / "tls/key.pem", etc / "tls/cert.pem", etc / "tls"):
        probe = subprocess.run(["runuser", "-u", OWNER, "--", "test", "-w", str(target)],
                               cwd="/", check=False)
        assert probe.returncode == 1, f"{OWNER} may write {target}"

    serve_log = base / "serve.log"
    with open(serve_log, "wb") as out:
        proc = subprocess.Popen(
            as_owner("serve", "--config", str(config)),
            stdout=out, stderr=out, cwd="/", start_new_session=True,
        )
    probe = Server(base, sub, subs, env={})
    try:
        deadline = time.monotonic() + 30
        while not probe._greets(sub, False):
            assert proc.poll() is None, serve_log.read_text()
            assert time.monotonic() < deadline, serve_log.read_text()
            time.sleep(0.05)
        ctx = ssl.create_default_context(cafile=str(etc / "tls/cert.pem"))
        with smtplib.SMTP("127.0.0.1", sub, timeout=30) as s:
            s.starttls(context=ctx)
            s.login("alice@example.org", "correct horse battery staple")
            s.sendmail("alice@example.org", ["alice@example.org"],
                       b"From: alice@example.org\r\nSubject: layout\r\n\r\nhi\r\n")
        deadline = time.monotonic() + 30
        while not list((lib / "mail/new").iterdir()):
            assert time.monotonic() < deadline, serve_log.read_text()
            time.sleep(0.05)
        (message,) = (lib / "mail/new").iterdir()
        assert owner_of(message) == OWNER
        assert '"result": "success"' in (log / "auth.log").read_text()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def test_owner_must_exist(base: Path) -> None:
    result = subprocess.run(
        [SMTPGATE, "init", "--dir", f"{base}/etc", "--owner", "no-such-user-smtpgate"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 2 and "no user 'no-such-user-smtpgate'" in result.stderr
    assert not (base / "etc").exists()
