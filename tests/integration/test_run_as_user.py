"""``[server] user``: started as root, bind a port below 1024, then serve as the user.

The server is started as root (the test runs as root, as CI does) with its
submission listener on a loopback port below 1024, which only root (or
CAP_NET_BIND_SERVICE) may bind: that it listens there proves the bind came
before the drop. Every serving process must then run as ``nobody``, and the
state it writes (accounts, guard, auth log, spool, Maildir) must belong to it.
"""

from __future__ import annotations

import os
import pwd
import site
import smtplib
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import smtpgate
from tests.integration import conftest
from tests.integration.conftest import IN_CI, PASSWORD, USER, Server, make_server
from tests.integration.test_production_layout import owner_python
from tests.ports import first_free

pytestmark = pytest.mark.slow

NOBODY = pwd.getpwnam("nobody")


@pytest.fixture
def root_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory ``nobody`` can reach (pytest's own are 0700 root), and an
    ``smtpgate`` there that runs on a Python ``nobody`` may read: after the drop,
    the server still imports modules (a venv made from a Python under /root
    would fail it, as no production install does)."""
    if os.geteuid() != 0:
        if IN_CI:
            pytest.fail("dropping privileges is tested as root")
        pytest.skip("needs root")
    d = Path(tempfile.mkdtemp(prefix="smtpgate-user-", dir="/tmp"))
    d.chmod(0o755)
    path = os.pathsep.join([str(Path(smtpgate.__file__).resolve().parents[1]),
                            *site.getsitepackages()])
    wrapper = d / "smtpgate"
    wrapper.write_text(f"#!/bin/sh\nPYTHONPATH={path} exec {owner_python()[0]} -c "
                       "'from smtpgate.cli.main import main; main()' \"$@\"\n")
    wrapper.chmod(0o755)
    monkeypatch.setattr(conftest, "SMTPGATE", str(wrapper))
    yield d
    subprocess.run(["rm", "-rf", str(d)], check=False)


def low_port() -> int:
    """A free loopback port below 1024."""
    port = first_free(range(1000, 600, -7))
    assert port is not None, "no free port below 1024"
    return port


def uids(pid: int) -> tuple[int, int]:
    """(real, effective) uid of ``pid``."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            real, effective = line.split()[1:3]
            return int(real), int(effective)
    raise AssertionError(f"no Uid line for {pid}")


def children(pid: int) -> list[int]:
    out = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(p) for p in out]


def _server(root: Path, workers: int) -> Server:
    srv = make_server(root / "srv", f'\n[server]\nworkers = {workers}\nuser = "nobody"\n')
    port = low_port()
    srv.config.write_text(srv.config.read_text().replace(
        f"127.0.0.1:{srv.submission}", f"127.0.0.1:{port}"))
    srv.submission = port
    # The state directory belongs to the user (as `smtpgate init --owner` makes it);
    # what root creates in it (the account added below, the guard database the
    # start-up opens) is handed over at start.
    os.chown(srv.root, NOBODY.pw_uid, NOBODY.pw_gid)
    srv.add_user(USER, PASSWORD)
    return srv


@pytest.mark.parametrize("workers", [1, 0])
def test_binds_below_1024_then_serves_as_the_user(root_dir: Path, workers: int) -> None:
    srv = _server(root_dir, workers)
    srv.start()
    try:
        main = srv.proc
        assert main is not None
        serving = [main.pid] if workers == 1 else children(main.pid)
        if workers != 1:
            assert uids(main.pid) == (0, 0)  # the supervisor keeps root to re-bind
            assert len(serving) >= 3  # two workers (or more cores) and delivery
        for pid in serving:
            assert uids(pid) == (NOBODY.pw_uid, NOBODY.pw_uid), pid

        with smtplib.SMTP("127.0.0.1", srv.submission, timeout=30) as s:
            s.starttls(context=srv.client_context())
            with pytest.raises(smtplib.SMTPAuthenticationError):
                s.login(USER, "wrong password")  # the guard writes its database
        with smtplib.SMTP("127.0.0.1", srv.submission, timeout=30) as s:
            s.starttls(context=srv.client_context())
            try:
                s.login(USER, PASSWORD)
            except smtplib.SMTPException as e:
                raise AssertionError(srv.log_text()) from e
            s.sendmail(USER, ["bob@example.net"],
                       f"From: {USER}\r\nSubject: x\r\n\r\nhi\r\n")
        (mail,) = srv.wait_for_mail(1)
        owned = [mail, srv.root / "accounts.sqlite", srv.root / "guard.sqlite",
                 srv.root / "auth.log", srv.root / "spool"]
        for path in owned:
            assert path.stat().st_uid == NOBODY.pw_uid, path
        assert "serving as root" not in srv.log_text()
    finally:
        rc = srv.stop()
        assert rc == 0, srv.log_text()


def test_reload_says_it_failed_when_the_user_cannot_read_the_key(root_dir: Path) -> None:
    """The supervisor (root) read the key of root's and took the reload; every
    serving process (nobody) could not, and kept the old certificate, while
    `smtpgate reload` said "reloaded the configuration and certificate", exit 0."""
    srv = _server(root_dir, 2)
    key = srv.root / "tls" / "key.pem"
    assert key.stat().st_mode & 0o077 == 0  # init's key, root's alone
    srv.start()
    try:
        # Said at start-up already, as config check says it.
        assert f"WARNING smtpgate[{srv.proc.pid if srv.proc else 0}]: tls.key: 'nobody' " \
            f"cannot read {key}: serve starts" in srv.log_text()
        failed = srv.cli("reload", check=False)
        assert failed.returncode == 1, failed.stdout + failed.stderr
        assert "error: reload failed" in failed.stderr
        assert f"tls.key: permission denied: user nobody cannot read {key}" in failed.stderr
        assert "serving processes could not reload" in failed.stderr
        os.chown(key, 0, NOBODY.pw_gid)  # as `init --owner` leaves it: the group reads
        key.chmod(0o640)
        done = srv.cli("reload", check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "reloaded the configuration and certificate" in done.stdout
    finally:
        assert srv.stop() == 0, srv.log_text()


def test_the_units_reload_runs_as_the_service_user_and_fails_when_refused(
    root_dir: Path,
) -> None:
    """The systemd unit's ExecReload is `smtpgate reload`, run as the unit's User=
    (until 2026-12 `kill -HUP`, so `systemctl reload` succeeded whatever the
    server made of it): as that user it must reach the server, and exit 1 when the
    server refuses the reload."""
    srv = _server(root_dir, 1)
    for path in (srv.config, srv.root / "tls" / "key.pem"):  # as `init --owner` leaves them
        os.chown(path, 0, NOBODY.pw_gid)
        path.chmod(0o640)
    as_user = ["runuser", "-u", "nobody", "--", conftest.SMTPGATE, "reload", "--config",
               str(srv.config)]
    srv.start()
    try:
        done = subprocess.run(as_user, capture_output=True, text=True, env=srv.env,
                              timeout=60, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "reloaded the configuration and certificate" in done.stdout
        cert = srv.root / "tls" / "cert.pem"
        good = cert.read_bytes()
        cert.write_bytes(b"not a certificate\n")
        refused = subprocess.run(as_user, capture_output=True, text=True, env=srv.env,
                                 timeout=60, check=False)
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert "error: reload failed" in refused.stderr
        cert.write_bytes(good)
    finally:
        assert srv.stop() == 0, srv.log_text()


def test_an_unknown_user_is_named_and_nothing_listens(root_dir: Path) -> None:
    srv = make_server(root_dir / "srv", '\n[server]\nuser = "no-such-user-xyz"\n')
    run = subprocess.run([conftest.SMTPGATE, "serve", "--config", str(srv.config)],
                         capture_output=True, text=True, env=srv.env, timeout=60, check=False)
    assert run.returncode == 2
    assert "server.user" in run.stderr and "no-such-user-xyz" in run.stderr
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", srv.submission), 2):
        pass


def test_a_state_directory_the_user_cannot_write_is_refused(root_dir: Path) -> None:
    """SQLite makes its journal beside the database: a root-owned 0755 state
    directory would fail at the first write, after the server said it was up."""
    srv = make_server(root_dir / "srv", '\n[server]\nuser = "nobody"\n')
    run = subprocess.run([conftest.SMTPGATE, "serve", "--config", str(srv.config)],
                         capture_output=True, text=True, env=srv.env, timeout=60, check=False)
    assert run.returncode == 2
    assert "not writable by 'nobody'" in run.stderr


@pytest.mark.parametrize("which", ["spool", "spool/queue"])
def test_a_spool_of_another_user_is_refused_naming_the_key(root_dir: Path, which: str) -> None:
    """A spool restored from a backup (or left by an install under another uid)
    belongs to a third user, whose files the start-up does not take: the server
    must say so and which key, not fail in its children with a bare EACCES."""
    srv = _server(root_dir, 0)
    spool = srv.root / "spool"
    for sub in ("queue", "tmp", "corrupt"):
        (spool / sub).mkdir(parents=True, exist_ok=True)
    for d in (spool, spool / "queue", spool / "tmp", spool / "corrupt"):
        os.chown(d, NOBODY.pw_uid, NOBODY.pw_gid)
    stranger = srv.root / which
    os.chown(stranger, 4242, 4242)
    stranger.chmod(0o700)
    run = subprocess.run([conftest.SMTPGATE, "serve", "--config", str(srv.config)],
                         capture_output=True, text=True, env=srv.env, timeout=60, check=False)
    assert run.returncode == 2, run.stderr
    assert (f"cannot start: queue.spool: {stranger} is not writable by 'nobody' (owned by "
            f"uid 4242, mode 0700): `chown -R nobody {spool}` and start again" in run.stderr)
    assert stranger.stat().st_uid == 4242  # a third user's directory is not taken
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", srv.submission), 2):
        pass
