"""``smtpgate user cram-md5`` / ``user mechanisms`` / the CRAM-MD5 flags of ``user list``
and ``user passwd``, in-process with CliRunner on a real config and database."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from smtpgate.auth.credentials import CRAM_MD5, decode_cram_md5
from smtpgate.auth.store import SqliteAccountStore
from smtpgate.sasl.base import Challenge, NeedCredentials, NotFound, Success, Verdict
from smtpgate.sasl.cram_md5 import CramMd5Client, CramMd5Server

from .cli_support import CONFIG, FAST, run, write_config

USER = "alice@example.org"


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = write_config(tmp_path)
    r = run(path, "add", USER, "--password-stdin", input="Lantern-Quartz-Harbor-58\n")
    assert r.exit_code == 0, r.output
    return path




def open_store(config: Path) -> SqliteAccountStore:
    return SqliteAccountStore(config.parent / "accounts.sqlite", FAST)


def cram_secret(config: Path) -> str | None:
    store = open_store(config)
    try:
        return store.get_credential(USER, CRAM_MD5)
    finally:
        store.close()


def cram_md5_login(config: Path, password: str) -> bool:
    """Run a CRAM-MD5 exchange of our client against our server on the stored secret."""
    data = cram_secret(config)
    server = CramMd5Server(hostname="mx.example.org")
    challenge = server.start(None)
    assert isinstance(challenge, Challenge)
    step = server.step(CramMd5Client(USER, password).step(challenge.data))
    assert isinstance(step, NeedCredentials)
    step = server.answer(decode_cram_md5(data) if data else NotFound())
    if isinstance(step, NeedCredentials):  # ConfirmIdentity after a good digest
        step = server.answer(Verdict(ok=True, identity=USER))
    return isinstance(step, Success)


# --- cram-md5 ---------------------------------------------------------------------------


def test_cram_md5_is_off_by_default(config: Path) -> None:
    r = run(config, "cram-md5", USER)
    assert r.exit_code == 0 and "disabled" in r.output
    assert cram_secret(config) is None


def test_cram_md5_enable_with_password_stdin_stores_a_working_secret(config: Path) -> None:
    r = run(
        config, "cram-md5", USER, "--enable", "--password-stdin", input="Lantern-Quartz-Harbor-58\n"
    )
    assert r.exit_code == 0, r.output + r.stderr
    assert f"CRAM-MD5 enabled for {USER}" in r.stdout
    assert "plaintext-equivalent" in r.stderr  # the warning, on stderr
    assert "not enabled on any listener" in r.stderr  # the server does not offer it yet
    data = cram_secret(config)
    assert (
        data is not None and "Lantern-Quartz-Harbor-58" not in data
    )  # the HMAC states, not the password
    assert cram_md5_login(config, "Lantern-Quartz-Harbor-58")
    assert not cram_md5_login(config, "Wrong-Guess-Lantern-11")
    r = run(config, "cram-md5", USER)
    assert "enabled" in r.output and "secret stored" in r.output


def test_cram_md5_enable_prompts_without_echo(config: Path) -> None:
    r = run(config, "cram-md5", USER, "--enable", input="Lantern-Quartz-Harbor-58\n")
    assert r.exit_code == 0, r.output
    assert "Lantern-Quartz-Harbor-58" not in r.output
    assert cram_secret(config) is not None


def test_cram_md5_enable_with_wrong_password_changes_nothing(config: Path) -> None:
    r = run(
        config, "cram-md5", USER, "--enable", "--password-stdin", input="Copper-Meadow-Violin-73\n"
    )
    assert r.exit_code == 1
    assert "does not match" in r.stderr and "hint:" in r.stderr
    assert cram_secret(config) is None
    store = open_store(config)
    try:
        account = store.get_account(USER)
        assert account is not None and not account.cram_md5_enabled
    finally:
        store.close()


def test_cram_md5_wrong_password_hint_can_be_followed(config: Path) -> None:
    """The hint said to run `user passwd` *after* enabling, which needs the password
    the admin does not know; it now says to set a new one first, and that works."""
    r = run(
        config, "cram-md5", USER, "--enable", "--password-stdin", input="Copper-Meadow-Violin-73\n"
    )
    assert r.exit_code == 1
    hint = r.stderr.split("hint:", 1)[1]
    assert "after enabling" not in hint
    assert f"set a new one first ('smtpgate user passwd {USER}')" in hint, hint
    r = run(config, "passwd", USER, "--password-stdin", input="Velvet-Orchard-Signal-94\n")
    assert r.exit_code == 0, r.output
    r = run(
        config, "cram-md5", USER, "--enable", "--password-stdin", input="Velvet-Orchard-Signal-94\n"
    )
    assert r.exit_code == 0, r.output
    assert cram_md5_login(config, "Velvet-Orchard-Signal-94")


def test_cram_md5_disable_deletes_the_secret(config: Path) -> None:
    run(
        config, "cram-md5", USER, "--enable", "--password-stdin", input="Lantern-Quartz-Harbor-58\n"
    )
    r = run(config, "cram-md5", USER, "--disable")
    assert r.exit_code == 0 and "secret is deleted" in r.output
    assert cram_secret(config) is None
    assert not cram_md5_login(config, "Lantern-Quartz-Harbor-58")


def test_cram_md5_unknown_account(config: Path) -> None:
    r = run(config, "cram-md5", "nobody@example.org", "--disable")
    assert r.exit_code == 3 and "no account" in r.stderr


def test_cram_md5_note_when_server_offers_it(config: Path) -> None:
    config.write_text(CONFIG + '\n[auth]\nmechanisms = ["SCRAM-SHA-256", "CRAM-MD5"]\n')
    r = run(
        config, "cram-md5", USER, "--enable", "--password-stdin", input="Lantern-Quartz-Harbor-58\n"
    )
    assert r.exit_code == 0, r.stderr
    assert "not enabled on any listener" not in r.stderr


def test_passwd_warns_for_cram_md5_accounts_and_rederives(config: Path) -> None:
    r = run(config, "passwd", USER, "--password-stdin", input="Copper-Meadow-Violin-73\n")
    assert r.exit_code == 0 and "CRAM-MD5" not in r.stderr  # no warning without opt-in
    run(config, "cram-md5", USER, "--enable", "--password-stdin", input="Copper-Meadow-Violin-73\n")
    r = run(config, "passwd", USER, "--password-stdin", input="Thistle-Orbit-Canvas-41\n")
    assert r.exit_code == 0, r.output
    assert "warning:" in r.stderr and "CRAM-MD5" in r.stderr
    assert "plaintext-equivalent" in r.stderr
    assert cram_md5_login(config, "Thistle-Orbit-Canvas-41")  # the secret follows the new password
    assert not cram_md5_login(config, "Copper-Meadow-Violin-73")


def test_list_flags_cram_md5_accounts_and_policy(config: Path) -> None:
    run(config, "add", "bob@example.org", "--password-stdin", input="Ember-Falcon-Granite-26\n")
    run(
        config, "cram-md5", USER, "--enable", "--password-stdin", input="Lantern-Quartz-Harbor-58\n"
    )
    run(config, "mechanisms", "bob@example.org", "--allow", "scram-sha-256")
    out = run(config, "list").output
    assert "cram-md5" in out and "mechanisms allowed" in out
    alice = next(line for line in out.splitlines() if USER in line)
    bob = next(line for line in out.splitlines() if "bob@example.org" in line)
    assert "YES (plaintext-equivalent)" in alice and " all" in alice
    assert "YES" not in bob and "SCRAM-SHA-256 SCRAM-SHA-256-PLUS" in bob


def test_list_mechanisms_shows_last_mechanism_per_account(config: Path) -> None:
    run(config, "add", "bob@example.org", "--password-stdin", input="Ember-Falcon-Granite-26\n")
    run(config, "add", "carol@example.org", "--password-stdin", input="Ember-Falcon-Granite-26\n")
    store = open_store(config)
    try:
        store.record_login(USER, "CRAM-MD5", datetime.now(UTC))
        store.record_login("bob@example.org", "PLAIN", datetime.now(UTC))
    finally:
        store.close()
    r = run(config, "list", "--mechanisms")
    assert r.exit_code == 0
    lines = r.output.splitlines()
    assert USER in next(line for line in lines if "CRAM-MD5" in line)
    assert "bob@example.org" in next(line for line in lines if "PLAIN" in line)
    assert "carol@example.org" in next(line for line in lines if "never logged in" in line)


# --- mechanisms ------------------------------------------------------------------------


def allowed(config: Path) -> frozenset[str] | None:
    store = open_store(config)
    try:
        account = store.get_account(USER)
        assert account is not None
        return account.allowed_mechanisms
    finally:
        store.close()


def test_mechanisms_show_default(config: Path) -> None:
    r = run(config, "mechanisms", USER)
    assert r.exit_code == 0 and "every mechanism" in r.output
    assert allowed(config) is None


def test_mechanisms_allow_sets_policy_and_adds_plus_variants(config: Path) -> None:
    r = run(config, "mechanisms", USER, "--allow", "SCRAM-SHA-256", "--allow", "oauthbearer")
    assert r.exit_code == 0, r.output
    assert allowed(config) == {"SCRAM-SHA-256", "SCRAM-SHA-256-PLUS", "OAUTHBEARER"}
    assert "SCRAM-SHA-256-PLUS SCRAM-SHA-256 OAUTHBEARER" in r.output  # strongest first
    assert "not enabled on any listener" in r.stderr and "OAUTHBEARER" in r.stderr
    r = run(config, "mechanisms", USER)
    assert "may use: SCRAM-SHA-256-PLUS SCRAM-SHA-256 OAUTHBEARER" in r.output


def test_mechanisms_legacy_and_cram_notes(config: Path) -> None:
    r = run(config, "mechanisms", USER, "--allow", "PLAIN", "--allow", "CRAM-MD5")
    assert r.exit_code == 0
    assert "cram-md5" in r.stderr and "--enable" in r.stderr
    assert "user list --mechanisms" in r.stderr


def test_mechanisms_all_lifts_the_restriction(config: Path) -> None:
    run(config, "mechanisms", USER, "--allow", "PLAIN")
    assert allowed(config) == {"PLAIN"}
    r = run(config, "mechanisms", USER, "--all")
    assert r.exit_code == 0 and allowed(config) is None


@pytest.mark.parametrize(
    "args", [["--allow", "DIGEST-MD5"], ["--allow", "PLAIN", "--all"]], ids=["unknown", "both"]
)
def test_mechanisms_usage_errors(config: Path, args: list[str]) -> None:
    r = run(config, "mechanisms", USER, *args)
    assert r.exit_code == 2
    assert allowed(config) is None


def test_mechanisms_unknown_account(config: Path) -> None:
    r = run(config, "mechanisms", "nobody@example.org", "--all")
    assert r.exit_code == 3 and "no account" in r.stderr
