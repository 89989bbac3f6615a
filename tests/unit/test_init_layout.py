"""`smtpgate init` layouts: the development one keeps everything in DIR with relative
paths; --state-dir/--log-dir put state and logs elsewhere with absolute paths; init
never takes over existing state. (--owner, which needs root, is tested in
tests/integration/test_production_layout.py.)"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from smtpgate.cli.main import cli


def init(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["init", *args])
    return result.exit_code, result.output


def test_development_layout_is_relative_to_dir(tmp_path: Path) -> None:
    code, out = init("--dir", str(tmp_path / "var"))
    assert code == 0, out
    cfg = tomllib.loads((tmp_path / "var/smtpgate.toml").read_text())
    assert cfg["accounts"]["database"] == "accounts.sqlite"
    assert cfg["auth"]["log_file"] == "auth.log"
    assert cfg["queue"]["spool"] == "spool"
    assert cfg["delivery"]["maildir"] == "mail"
    assert "guard" not in cfg  # its default, guard.sqlite, is in DIR already
    assert (tmp_path / "var/guard.sqlite").is_file()  # made now, not by whoever runs first


def test_state_and_log_dirs(tmp_path: Path) -> None:
    code, out = init("--dir", str(tmp_path / "etc"), "--state-dir", str(tmp_path / "lib"),
                     "--log-dir", str(tmp_path / "log"), "--no-demo")
    assert code == 0, out
    cfg = tomllib.loads((tmp_path / "etc/smtpgate.toml").read_text())
    lib, log = tmp_path.resolve() / "lib", tmp_path.resolve() / "log"
    assert cfg["accounts"]["database"] == str(lib / "accounts.sqlite")
    assert cfg["guard"]["database"] == str(lib / "guard.sqlite")
    assert cfg["queue"]["spool"] == str(lib / "spool")
    assert cfg["delivery"]["maildir"] == str(lib / "mail")
    assert cfg["auth"]["log_file"] == str(log / "auth.log")
    assert cfg["tls"] == {"cert": "tls/cert.pem", "key": "tls/key.pem"}  # beside the config
    assert sorted(p.name for p in (tmp_path / "etc").iterdir()) == ["smtpgate.toml", "tls"]
    for path in ("lib/accounts.sqlite", "lib/guard.sqlite", "lib/spool", "lib/mail/new"):
        assert (tmp_path / path).exists(), path


def test_a_path_with_quotes_stays_valid_toml(tmp_path: Path) -> None:
    odd = tmp_path / 'st"ate\\dir'
    code, out = init("--dir", str(tmp_path / "etc"), "--state-dir", str(odd), "--no-demo")
    assert code == 0, out
    cfg = tomllib.loads((tmp_path / "etc/smtpgate.toml").read_text())
    assert cfg["accounts"]["database"] == str(odd.resolve() / "accounts.sqlite")


def test_existing_state_is_never_taken_over(tmp_path: Path) -> None:
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib/accounts.sqlite").write_bytes(b"someone's accounts")
    code, out = init("--dir", str(tmp_path / "etc"), "--state-dir", str(tmp_path / "lib"))
    assert code == 1
    assert "accounts.sqlite exists; init does not touch existing state" in out
    assert not (tmp_path / "etc").exists()
    assert (tmp_path / "lib/accounts.sqlite").read_bytes() == b"someone's accounts"


def test_the_demo_password_never_starts_with_a_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    """swaks (the README's second way to send a test message) takes
    ``--auth-password -abc`` for an unknown option: the demo password must not
    start with "-" (token_urlsafe gives one about one time in 64)."""
    from smtpgate.cli import init_cmd

    draws = iter(["-startsWithDash_xxxxx", "_underscoreFirst_xxxx", "GoodPassword-_-xxxxx"])
    monkeypatch.setattr(init_cmd.secrets, "token_urlsafe", lambda n: next(draws))
    assert init_cmd.demo_password() == "GoodPassword-_-xxxxx"


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--submission", "127.0.0.1:99999"], "--submission (listeners.0.address)"),
        (["--submissions", "nonsense"], "--submissions (listeners.1.address)"),
        (["--metrics", "bogus"], "--metrics (metrics.listen)"),
        # Valid one by one, but serve could never bind both.
        (["--submission", "0.0.0.0:2587", "--admin", "0.0.0.0:2587"], "--admin (admin.listen)"),
    ],
)
def test_a_bad_option_names_the_option_and_writes_nothing(
    tmp_path: Path, args: list[str], option: str
) -> None:
    # It exited 1 naming only the config key, after writing DIR/tls/key.pem and
    # cert.pem; the clash was not noticed at all.
    code, out = init("--dir", str(tmp_path / "var"), *args)
    assert code == 2, out
    assert f"Invalid value for {option}" in out
    assert not (tmp_path / "var").exists()


def test_the_printed_test_command_goes_to_loopback_for_a_wildcard(tmp_path: Path) -> None:
    # "--server 0.0.0.0:2587" reaches the server but 0.0.0.0 is not in the
    # certificate, so the command init printed stopped with exit 4.
    code, out = init("--dir", str(tmp_path / "a"), "--submission", "0.0.0.0:2587")
    assert code == 0, out
    assert "test --server 127.0.0.1:2587 --starttls" in out
    code, out = init("--dir", str(tmp_path / "b"), "--submission", "[::]:2587")
    assert code == 0, out
    assert "test --server [::1]:2587 --starttls" in out


@pytest.mark.parametrize("which", ["--dir", "--state-dir", "--log-dir"])
def test_a_directory_init_cannot_make_is_one_error_not_a_traceback(
    tmp_path: Path, which: str
) -> None:
    """/etc/smtpgate as a user other than root, or a read-only file system: init
    died with a traceback. A regular file in the way fails the same way as root."""
    (tmp_path / "file").write_text("not a directory\n")
    blocked = tmp_path / "file" / "smtpgate"
    args = ["init", "--dir", str(tmp_path / "etc"), "--no-demo"]
    if which == "--dir":
        args[2] = str(blocked)
    else:
        args += [which, str(blocked)]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 1, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
    assert f"error: cannot create {blocked}" in r.output


def test_every_printed_command_names_the_config(tmp_path: Path) -> None:
    # init printed `smtpgate admin add NAME` and `smtpgate user passwd`, which stop
    # at "no config: pass --config PATH or set SMTPGATE_CONFIG" as printed.
    config = tmp_path / "var/smtpgate.toml"
    code, out = init("--dir", str(tmp_path / "var"))
    assert code == 0, out
    assert f"admin add NAME --config {config}`" in out
    assert f"user passwd demo@localhost --config {config}`" in out


@pytest.mark.parametrize("name", ["cert.pem", "key.pem"])
def test_an_existing_certificate_or_key_is_never_written_through(tmp_path: Path, name: str) -> None:
    """tls/cert.pem and tls/key.pem as links to certbot's files (a common set-up):
    init wrote its self-signed pair through them, over the real certificate and key."""
    live = tmp_path / "letsencrypt/live/mail.example.org"
    live.mkdir(parents=True)
    (live / "fullchain.pem").write_text("the real chain\n")
    (live / "privkey.pem").write_text("the real key\n")
    (tmp_path / "etc/tls").mkdir(parents=True)
    target = live / ("fullchain.pem" if name == "cert.pem" else "privkey.pem")
    (tmp_path / "etc/tls" / name).symlink_to(target)
    code, out = init("--dir", str(tmp_path / "etc"), "--no-demo")
    assert code == 1
    assert f"tls/{name} exists; init does not replace a certificate or key" in out
    assert (live / "fullchain.pem").read_text() == "the real chain\n"
    assert (live / "privkey.pem").read_text() == "the real key\n"
    assert sorted(p.name for p in (tmp_path / "etc").iterdir()) == ["tls"]


def test_a_dangling_link_where_the_key_goes_is_refused_too(tmp_path: Path) -> None:
    (tmp_path / "etc/tls").mkdir(parents=True)
    (tmp_path / "etc/tls/key.pem").symlink_to(tmp_path / "not-yet-issued.pem")
    code, out = init("--dir", str(tmp_path / "etc"), "--no-demo")
    assert code == 1 and "tls/key.pem exists" in out
    assert not (tmp_path / "not-yet-issued.pem").exists()


def test_a_run_that_fails_half_way_takes_its_certificate_and_key_with_it(tmp_path: Path) -> None:
    """The pair a failed run wrote would otherwise stop the next run at 'exists'."""
    (tmp_path / "a-file").write_text("")
    code, out = init("--dir", str(tmp_path / "etc"), "--no-demo",
                     "--deliver", f"maildir:{tmp_path / 'a-file/mail'}")
    assert code == 1 and "cannot create" in out, out
    assert not (tmp_path / "etc/tls/cert.pem").exists()
    assert not (tmp_path / "etc/tls/key.pem").exists()
    code, out = init("--dir", str(tmp_path / "etc"), "--no-demo")
    assert code == 0, out
    assert (tmp_path / "etc/tls/key.pem").stat().st_size > 0


@pytest.mark.parametrize("umask", [0o000, 0o002])
def test_nothing_init_makes_is_writable_by_group_or_others(tmp_path: Path, umask: int) -> None:
    """Under ``umask 000`` (a container, a service's UMask=0000) init made the config,
    the TLS directory (where the key could then be replaced), the state directory,
    the spool and the Maildir writable by everyone; write for group and others is
    now taken out of any umask, and the caller's umask is left as it was."""
    import os
    import stat

    previous = os.umask(umask)
    try:
        code, out = init("--dir", str(tmp_path / "etc"), "--state-dir", str(tmp_path / "lib"),
                         "--log-dir", str(tmp_path / "log"))
        assert os.umask(umask) == umask
    finally:
        os.umask(previous)
    assert code == 0, out
    made = [p for top in ("etc", "lib", "log") for p in [tmp_path / top,
                                                         *(tmp_path / top).rglob("*")]]
    assert len(made) > 10
    for path in made:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert not mode & 0o022, f"{path}: {mode:04o}"
    assert stat.S_IMODE((tmp_path / "etc/tls/key.pem").stat().st_mode) == 0o600
