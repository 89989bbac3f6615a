"""``[server] user`` with a Python the user cannot read (a pyenv under /root): each
process dropped to the user and then failed at its first lazy import ("No module
named 'netrc'" from the delivery process); serve now refuses to start, naming
server.user and the directory in the way."""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from smtpgate.config import Config, ListenerConfig
from smtpgate.errors import StartupError
from smtpgate.server import privileges
from smtpgate.server.privileges import RunAs, unreadable_by

NOBODY = RunAs("nobody", 65534, 65534, (65534,))


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A directory every user may enter (pytest's open_tmp is under a 0700 one)."""
    path = Path(tempfile.mkdtemp())
    path.chmod(0o755)
    try:
        yield path
    finally:
        for d in path.rglob("*"):
            d.chmod(0o755)
        shutil.rmtree(path)


def test_a_closed_directory_on_the_way_is_named(open_tmp: Path) -> None:
    closed = open_tmp / "home"
    (closed / "lib/python3").mkdir(parents=True)
    closed.chmod(0o700)
    assert unreadable_by(closed / "lib/python3", NOBODY) == closed.resolve()
    closed.chmod(0o711)  # enter, not list: enough on the way
    assert unreadable_by(closed / "lib/python3", NOBODY) is None
    (closed / "lib/python3").chmod(0o711)  # the target itself must be listable
    assert unreadable_by(closed / "lib/python3", NOBODY) == (closed / "lib/python3").resolve()


def test_group_and_owner_bits_count_for_their_own(open_tmp: Path) -> None:
    d = open_tmp / "d"
    d.mkdir()
    st = d.stat()
    owner = RunAs("x", st.st_uid, 65534, (65534,))
    group = RunAs("y", 65533, st.st_gid, (st.st_gid,))
    d.chmod(0o500)
    assert unreadable_by(d, owner) is None
    assert unreadable_by(d, group) == d.resolve()
    d.chmod(0o050)
    assert unreadable_by(d, group) is None
    assert unreadable_by(d, owner) == d.resolve()


def test_serve_refuses_a_python_the_user_cannot_read(
    open_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    try:
        pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user nobody")
    closed = open_tmp / "root"
    (closed / "lib").mkdir(parents=True)
    closed.chmod(0o700)
    monkeypatch.setattr(privileges, "python_paths", lambda: [closed / "lib"])
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    cfg = Config.model_validate({
        "listeners": [ListenerConfig(name="s", address="127.0.0.1:2587", tls="starttls")],
        "server": {"user": "nobody"},
    })
    with pytest.raises(StartupError) as e:
        privileges.resolve(cfg)
    assert e.value.key == "server.user"
    assert f"'nobody' cannot read {closed.resolve()}" in str(e.value)


def test_this_python_is_readable_by_its_owner() -> None:
    for path in privileges.python_paths():
        st = path.stat()
        assert unreadable_by(path, RunAs("me", st.st_uid, st.st_gid, (st.st_gid,))) is None


@pytest.mark.skipif(os.geteuid() != 0, reason="init --owner needs root")
def test_init_owner_warns_of_a_python_the_owner_cannot_read(
    open_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # README step 2 then passed, and the service failed at its first start.
    from click.testing import CliRunner

    from smtpgate.cli.main import cli

    closed = open_tmp / "root"
    (closed / "lib").mkdir(parents=True)
    closed.chmod(0o700)
    args = ["init", "--owner", "nobody", "--no-demo"]
    monkeypatch.setattr(privileges, "python_paths", lambda: [closed / "lib"])
    result = CliRunner().invoke(cli, [*args, "--dir", str(open_tmp / "a/etc"),
                                      "--state-dir", str(open_tmp / "a/lib"),
                                      "--log-dir", str(open_tmp / "a/log")])
    assert result.exit_code == 0, result.output
    assert f"warning: user nobody cannot read {closed / 'lib'}, the Python" in result.output
    monkeypatch.setattr(privileges, "python_paths", lambda: [open_tmp])
    result = CliRunner().invoke(cli, [*args, "--dir", str(open_tmp / "b/etc"),
                                      "--state-dir", str(open_tmp / "b/lib"),
                                      "--log-dir", str(open_tmp / "b/log")])
    assert result.exit_code == 0, result.output
    assert "warning" not in result.output


def test_a_python_without_a_stdlib_directory_is_not_refused(
    open_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sysconfig

    monkeypatch.setattr(sysconfig, "get_paths", lambda: {"stdlib": str(open_tmp / "none")})
    assert str(open_tmp / "none") not in map(str, privileges.python_paths())


def test_config_check_finds_what_serve_refuses_whoever_runs_it(
    open_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``privileges.problems`` (config check) says what ``resolve`` (serve) raises, and
    nothing for a user that serve would switch to, run as root or not."""
    try:
        pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user nobody")

    def cfg(**server: str) -> Config:
        return Config.model_validate({
            "listeners": [ListenerConfig(name="s", address="127.0.0.1:2587", tls="starttls")],
            "server": server,
        })

    closed = open_tmp / "root"
    (closed / "lib").mkdir(parents=True)
    monkeypatch.setattr(privileges, "python_paths", lambda: [closed / "lib"])
    monkeypatch.setattr(os, "geteuid", lambda: 4242)  # neither root nor nobody
    assert privileges.problems(cfg()) == []
    assert privileges.problems(cfg(user="nobody")) == []
    closed.chmod(0o700)
    found = privileges.problems(cfg(user="nobody"))
    assert [(p.severity, p.key) for p in found] == [("error", "server.user")]
    assert f"'nobody' cannot read {closed.resolve()}" in found[0].message


def test_a_key_the_user_cannot_read_is_a_warning_since_reloads_would_fail(
    open_tmp: Path,
) -> None:
    """serve, started as root, read a key of root's (certbot's privkey.pem, 0600) and
    started; every reload, made by the serving processes as the user, then failed on
    it, and config check said nothing (h28readme review)."""
    tls = open_tmp / "tls"
    tls.mkdir()
    cert, key = tls / "cert.pem", tls / "key.pem"
    cert.write_text("x")
    cert.chmod(0o644)
    key.write_text("x")
    key.chmod(0o600)
    cfg = Config.model_validate({
        "listeners": [ListenerConfig(name="s", address="127.0.0.1:2587", tls="starttls")],
        "tls": {"cert": str(cert), "key": str(key)},
    })
    found = privileges.reload_problems(cfg, NOBODY)
    assert [(p.severity, p.key) for p in found] == [("warning", "tls.key")]
    assert f"'nobody' cannot read {key.resolve()}: serve starts" in found[0].message
    assert "every reload runs as 'nobody' and fails on it" in found[0].message
    # The user in the key's group (ours, so that no chown to another group is needed).
    member = RunAs("nobody", NOBODY.uid, NOBODY.gid, (*NOBODY.groups, os.getgid()))
    os.chown(key, -1, os.getgid())
    key.chmod(0o640)
    assert privileges.reload_problems(cfg, member) == []
    tls.chmod(0o700)  # the directory in the way
    found = privileges.reload_problems(cfg, member)
    assert [p.key for p in found] == ["tls.cert", "tls.key"]
    assert f"cannot read {tls.resolve()}, on the way to {key}" in found[1].message
