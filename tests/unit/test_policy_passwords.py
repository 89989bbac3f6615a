"""The password policy of `smtpgate user add/passwd`: length, account name, zxcvbn."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from smtpgate.auth.passwords import PasswordPolicyError
from smtpgate.cli.main import cli
from smtpgate.config import PasswordsConfig
from smtpgate.policy.passwords import check_password_policy

DEFAULT = PasswordsConfig()
USER = "alice@example.org"


@pytest.mark.parametrize(
    ("password", "why"),
    [
        ("short1!", "shorter than 12"),
        ("password1234", "too weak"),  # on every breach list
        ("qwertyuiop123", "too weak"),  # keyboard walk
        ("aaaaaaaaaaaaaaaa", "too weak"),  # repetition
        ("alice@example.org!", "account name"),
        ("xxALICE-2024-long", "account name"),  # the local part, any case
        ("", "empty"),
        ("nul\0in-a-long-password", "NUL"),
    ],
)
def test_weak_passwords_are_refused_with_a_reason(password: str, why: str) -> None:
    with pytest.raises(PasswordPolicyError, match=why):
        check_password_policy(password, USER, DEFAULT)


@pytest.mark.parametrize("password", ["correct horse battery", "Winter-Plum-Kettle-42", "t7#Kq!v9Lm2$xZ"])
def test_strong_passwords_pass(password: str) -> None:
    check_password_policy(password, USER, DEFAULT)


@pytest.mark.parametrize("length", [72, 73, 100, 101, 1000])
def test_a_long_passphrase_is_scored_not_a_crash(length: int) -> None:
    """zxcvbn 4.5 raises ValueError past 72 characters; the policy scored the first
    100, so a 73-character passphrase was a traceback of ``user add``."""
    words = "Winter plum kettle 42 and a lighthouse on the Baltic coast "
    check_password_policy((words * 20)[:length], USER, DEFAULT)
    with pytest.raises(PasswordPolicyError, match="too weak"):
        check_password_policy("a" * length, USER, DEFAULT)


def test_each_rule_can_be_relaxed() -> None:
    lax = PasswordsConfig(min_length=1, min_strength=0, reject_username=False)
    check_password_policy("alice", USER, lax)
    check_password_policy("password1234", USER, PasswordsConfig(min_strength=0))


def test_zxcvbn_knows_the_account_name() -> None:
    """user_inputs: a password built from the account's own words scores low."""
    strict = PasswordsConfig(reject_username=False, min_strength=4)
    check_password_policy("examplebob2024!", "carol@other.test", strict)  # scores 4
    with pytest.raises(PasswordPolicyError, match="too weak"):
        check_password_policy("examplebob2024!", "bob@example.org", strict)  # scores 3


def _config(tmp_path: Path) -> Path:
    """A minimal config whose certificate files exist (the CLI checks no more)."""
    (tmp_path / "c.pem").write_text("x")
    (tmp_path / "k.pem").write_text("x")
    cfg = tmp_path / "smtpgate.toml"
    cfg.write_text(
        'hostname = "mx.example.org"\n[[listeners]]\nname = "s"\naddress = "127.0.0.1:5870"\n'
        'tls = "starttls"\n[tls]\ncert = "c.pem"\nkey = "k.pem"\n[accounts]\n'
        "argon2_memory_kib = 8192\nargon2_time_cost = 1\n"
    )
    return cfg


def test_cli_add_and_passwd_apply_the_policy(tmp_path: Path) -> None:
    cfg = _config(tmp_path)

    def run(*args: str, stdin: str) -> tuple[int, str]:
        r = CliRunner().invoke(cli, ["user", *args, "--password-stdin", "--config", str(cfg)], input=stdin)
        return r.exit_code, r.output + r.stderr

    code, out = run("add", USER, stdin="password1234\n")
    assert code == 1 and "too weak" in out and "hint: choose another password" in out
    assert run("add", USER, stdin="Winter-Plum-Kettle-42\n")[0] == 0
    code, out = run("passwd", USER, stdin="alice-alice-alice\n")
    assert code == 1 and "account name" in out
    passphrase = "the quick brown fox jumps over the lazy dog near Winter-Plum-Kettle-42"
    code, out = run("passwd", USER, stdin=passphrase + " twice over\n")
    assert code == 0 and "Traceback" not in out, out


@pytest.mark.parametrize("password", ["Winter-Plum-123456\nKettle-42", "123456\n"])
def test_a_line_break_after_digits_is_scored_not_a_crash(password: str) -> None:
    """zxcvbn's date matcher raised ValueError on digits before a line break (its
    ``$`` matches before a final newline): the policy scores such a password."""
    lax = PasswordsConfig(min_length=1)
    try:
        check_password_policy(password, USER, lax)
    except PasswordPolicyError as e:
        assert "too weak" in str(e)


def test_cli_admin_add_refuses_a_password_with_a_line_break(tmp_path: Path) -> None:
    """``--password-stdin`` reads to the end: two lines made a web admin whose
    password no browser's field can send (or, with digits before the break, a
    zxcvbn traceback); refused with the reason, and no admin made."""
    cfg = _config(tmp_path)

    def run(*args: str, stdin: str) -> tuple[int, str]:
        r = CliRunner().invoke(cli, ["admin", *args, "--config", str(cfg)], input=stdin)
        return r.exit_code, r.output + r.stderr

    for pw in ("Vq7-admin-1234567\nVq7-admin-1234567\n", "Vq7-admin\rXk2p-Lm9w"):
        code, out = run("add", "boss", "--password-stdin", stdin=pw)
        assert code == 1 and "line break" in out and "Traceback" not in out, out
    assert "boss" not in run("list", stdin="")[1]
    assert run("add", "boss", "--password-stdin", stdin="Vq7-admin-Xk2p-Lm9w\n")[0] == 0
