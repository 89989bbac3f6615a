"""The decoy secret behind SCRAM's fake salts is a file of its own (auth/decoy.py),
not something derived from the TLS key, so a certificate renewal changes nothing."""

from __future__ import annotations

import base64
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from smtpgate.auth.decoy import SECRET_BYTES, decoy_secret_path, load_decoy_secret
from smtpgate.cli.main import cli
from smtpgate.config import Config, parse_config
from smtpgate.errors import StartupError
from smtpgate.preflight import check_decoy_secret
from smtpgate.sasl.base import Challenge, ChannelBinding, NeedCredentials, NotFound
from smtpgate.server.app import engine_settings
from smtpgate.tls.certs import write_self_signed


def _config(root: Path, extra: str = "") -> Config:
    write_self_signed(root / "cert.pem", root / "key.pem", "localhost")
    (root / "state").mkdir()
    return parse_config(
        '[[listeners]]\nname = "s"\naddress = "127.0.0.1:0"\ntls = "implicit"\n'
        '[tls]\ncert = "cert.pem"\nkey = "key.pem"\n[accounts]\ndatabase = "state/a.sqlite"\n'
        + extra,
        root,
    )


def fake_salt(cfg: Config, name: str = "nobody@example.org") -> str:
    """The salt the server's SCRAM-SHA-256 announces to an unknown ``name``, with the
    secret the server would load at start-up."""
    settings = engine_settings(cfg, cfg.listeners[0], load_decoy_secret(cfg))
    mech = settings.mechanism_factory("SCRAM-SHA-256", ChannelBinding(), False)
    step = mech.start(f"n,,n={name},r=abc".encode())
    assert isinstance(step, NeedCredentials)
    challenge = mech.answer(NotFound())
    assert isinstance(challenge, Challenge)
    return dict(p.split("=", 1) for p in challenge.data.decode().split(","))["s"]


def test_a_new_certificate_and_key_leave_an_unknown_names_salt_unchanged(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    before = fake_salt(cfg)
    assert fake_salt(cfg) == before  # a restart: same file, same salt
    write_self_signed(tmp_path / "cert.pem", tmp_path / "key.pem", "localhost")  # renewal
    assert fake_salt(cfg) == before
    assert fake_salt(cfg, "someone@example.org") != before
    assert base64.b64decode(before)  # a real-looking salt


def test_the_default_file_is_made_once_in_the_state_directory(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    path = decoy_secret_path(cfg)
    assert path == tmp_path / "state" / "decoy.key"
    first = load_decoy_secret(cfg)
    assert len(first) == SECRET_BYTES and path.read_bytes() == first
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_decoy_secret(cfg) == first
    assert not [p for p in path.parent.iterdir() if p.name != "decoy.key"]  # no temp left


def test_a_configured_path_is_used(tmp_path: Path) -> None:
    cfg = _config(tmp_path, '[auth]\ndecoy_secret_file = "secret/decoy"\n')
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "decoy").write_bytes(b"k" * 40)
    (tmp_path / "secret" / "decoy").chmod(0o600)  # 0644 is a warning (test_preflight)
    assert decoy_secret_path(cfg) == tmp_path / "secret" / "decoy"
    assert load_decoy_secret(cfg) == b"k" * 40
    assert check_decoy_secret(cfg) == []


def test_a_short_secret_is_refused_naming_the_key(tmp_path: Path) -> None:
    cfg = _config(tmp_path, '[auth]\ndecoy_secret_file = "decoy"\n')
    (tmp_path / "decoy").write_bytes(b"x" * (SECRET_BYTES - 1))
    with pytest.raises(StartupError) as err:
        load_decoy_secret(cfg)
    assert err.value.key == "auth.decoy_secret_file"
    assert "holds 31 bytes" in err.value.message
    [problem] = check_decoy_secret(cfg)
    assert problem.severity == "error" and problem.key == "auth.decoy_secret_file"


def test_a_secret_that_cannot_be_created_is_a_start_up_error_with_a_fix(tmp_path: Path) -> None:
    cfg = _config(tmp_path, '[auth]\ndecoy_secret_file = "not-a-dir/decoy"\n')
    (tmp_path / "not-a-dir").write_text("a file")
    with pytest.raises(StartupError) as err:
        load_decoy_secret(cfg)
    assert err.value.key == "auth.decoy_secret_file"
    assert "/dev/urandom" in err.value.hint
    [problem] = check_decoy_secret(cfg)
    assert problem.key == "auth.decoy_secret_file" and "/dev/urandom" in problem.message


def test_init_makes_the_secret_beside_the_databases(tmp_path: Path) -> None:
    state = tmp_path / "state"
    result = CliRunner().invoke(cli, ["init", "--dir", str(tmp_path / "etc"), "--state-dir",
                                      str(state), "--no-demo"])
    assert result.exit_code == 0, result.output
    secret = state / "decoy.key"
    assert len(secret.read_bytes()) == SECRET_BYTES
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert not (tmp_path / "etc" / "decoy.key").exists()
