"""Shared by the CLI tests: a minimal config with cheap hashing and a lax password
policy (the policy has its own tests in test_policy_passwords.py)."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner, Result

from smtpgate.cli.main import cli
from smtpgate.config import AccountsConfig

CONFIG = """\
hostname = "mx.example.org"

[[listeners]]
name = "submission"
address = "127.0.0.1:5870"
tls = "starttls"

[tls]
cert = "cert.pem"
key = "key.pem"

[accounts]
database = "accounts.sqlite"
argon2_memory_kib = 8192
argon2_time_cost = 1
argon2_parallelism = 1
scram_iterations = 4096

# These tests use short passwords; the password policy has its own tests
# (tests/unit/test_policy_passwords.py).
[passwords]
min_length = 1
min_strength = 0
reject_username = false
"""
FAST = AccountsConfig(argon2_memory_kib=8192, argon2_time_cost=1, argon2_parallelism=1)


def write_config(directory: Path, *, database: bool = True) -> Path:
    """The config file plus the TLS files whose existence the loader checks, and an
    empty account database, as ``smtpgate init`` leaves them: only ``user add`` (and
    ``user import``, ``admin add``) may create a missing one; every other command
    exits 3 there (a typo in the path must not become a new, empty database)."""
    from smtpgate.auth.accounts import open_account_store
    from smtpgate.config import load_config

    (directory / "cert.pem").write_text("dummy")
    (directory / "key.pem").write_text("dummy")
    path = directory / "smtpgate.toml"
    path.write_text(CONFIG)
    if database:
        open_account_store(load_config(path)).close()
    return path


def run(config: Path, *args: str, input: str | None = None) -> Result:
    """``smtpgate user ARGS --config CONFIG`` in-process."""
    return CliRunner().invoke(cli, ["user", *args, "--config", str(config)], input=input)
