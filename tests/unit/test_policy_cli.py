"""CLI pieces: durations, the admin log as the CLI writes it, guard list/unblock, app passwords."""

from __future__ import annotations

import getpass
import json
import time
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from smtpgate.auth.guard import count_failure, thresholds
from smtpgate.auth.guard_state import ACCOUNT_NEW, ADDRESS, SUBNET, THROTTLE, Block
from smtpgate.auth.guard_store import RecordedFailure, SqliteGuardStore
from smtpgate.cli.main import cli
from smtpgate.config import GuardConfig
from smtpgate.policy.timespec import format_duration, parse_duration

CONFIG = """\
hostname = "mx.example.org"
[[listeners]]
name = "submission"
address = "127.0.0.1:5870"
tls = "starttls"
[tls]
cert = "c.pem"
key = "k.pem"
[accounts]
argon2_memory_kib = 8192
argon2_time_cost = 1
"""
ALICE = "alice@example.org"


@pytest.mark.parametrize(("text", "seconds"), [("90", 90), ("90s", 90), ("30m", 1800), ("24h", 86400),
                                               ("7d", 604800), ("2w", 1209600), ("1.5h", 5400)])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "h", "-1d", "3y", "1 d d", "36501d", "9" * 400])
def test_parse_duration_refuses(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_format_duration() -> None:
    assert [format_duration(s) for s in (5, 600, 7200 * 3, 86400 * 10, -60)] == ["5s", "10m", "6h", "10d", "-60s"]


@pytest.fixture
def config(tmp_path: Path) -> Path:
    (tmp_path / "c.pem").write_text("x")
    (tmp_path / "k.pem").write_text("x")
    path = tmp_path / "smtpgate.toml"
    path.write_text(CONFIG)
    r = run(path, "user", "add", ALICE, "--password-stdin", input="Winter-Plum-Kettle-42\n")
    assert r.exit_code == 0, r.output
    return path


def run(config: Path, *args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(cli, [*args, "--config", str(config)], input=input)


def test_admin_log_names_the_os_user_and_the_command(config: Path) -> None:
    run(config, "user", "alias", "add", ALICE, "info@example.org")
    r = run(config, "admin-log", "--json")
    rows = [json.loads(x) for x in r.output.splitlines()]
    assert [(x["action"], x["command"]) for x in rows] == [
        ("account created", "smtpgate user add"), ("alias added", "smtpgate user alias add")
    ]
    assert {x["os_user"] for x in rows} == {getpass.getuser()}
    assert "Winter-Plum" not in r.output
    assert "alias added" in run(config, "admin-log", "--since", "1h").output
    assert run(config, "admin-log", "--since", "soon").exit_code == 2


def test_app_password_cli_prints_once_and_lists_without_secret(config: Path) -> None:
    r = run(config, "app-password", "add", ALICE, "phone", "--scope", "net:10.0.0.0/8",
            "--scope", "mech:login", "--expires", "30d", "--messages-per-hour", "5")
    assert r.exit_code == 0, r.output
    secret = r.output.split(": ", 1)[1].split()[0]
    listed = run(config, "app-password", "list", "--json").output
    assert secret not in listed
    row = json.loads(listed)
    assert (row["networks"], row["mechanisms"], row["max_messages_per_hour"]) == (["10.0.0.0/8"], ["LOGIN"], 5)
    assert run(config, "app-password", "add", ALICE, "phone").exit_code == 1  # name taken
    assert run(config, "app-password", "add", ALICE, "x", "--scope", "bogus").exit_code == 2
    assert run(config, "app-password", "revoke", ALICE, "phone").exit_code == 0
    assert run(config, "app-password", "revoke", ALICE, "phone").exit_code == 3  # not found


@pytest.mark.parametrize(("args", "said"), [
    (("",), "Invalid value for NAME: an app password name is 1-64"),
    (("x", "--network", "999.1.1.1/8"), "Invalid value for --network: '999.1.1.1/8'"),
    (("x", "--scope", "net:999.1.1.1/8"), "Invalid value for --scope: '999.1.1.1/8'"),
    (("x", "--scope", "mech:SCRAM-SHA-256"),
     "Invalid value for --scope: 'mech:SCRAM-SHA-256': app passwords work with PLAIN and LOGIN"),
    (("x", "--messages-per-hour", "99999999999999"),
     "Invalid value for '--messages-per-hour': 99999999999999 is not in the range"),
])
def test_app_password_add_names_the_argument_it_refuses(
        config: Path, args: tuple[str, ...], said: str) -> None:
    """Each said "Invalid value: ..." and named no option (audit h21); nothing is made."""
    r = run(config, "app-password", "add", ALICE, *args)
    assert r.exit_code == 2 and said in r.output, r.output
    assert "Traceback" not in r.output
    assert run(config, "app-password", "list", "--json").output == ""


@pytest.mark.parametrize("zero", ["0", "0d", "0s", "0.0h"])
def test_an_app_password_that_would_expire_at_once_is_refused(config: Path, zero: str) -> None:
    """--expires 0d printed a secret already listed as EXPIRED: one no device could use."""
    r = run(config, "app-password", "add", ALICE, "phone", "--expires", zero)
    assert r.exit_code == 2 and "expire at once" in r.output, r.output
    assert "phone" not in run(config, "app-password", "list").output


def test_guard_list_unblock_and_user_unlock(config: Path) -> None:
    g = SqliteGuardStore(config.parent / "guard.sqlite")
    t = thresholds(GuardConfig(lockout_threshold=1, spray_accounts=2))
    now = time.time()
    count_failure(g, RecordedFailure(now, "192.0.2.1", "192.0.2.0/24", ALICE, False, True), t)
    count_failure(g, RecordedFailure(now, "192.0.2.1", "192.0.2.0/24", "b@x.org", False, False), t)
    g.close()
    rows = [json.loads(x) for x in run(config, "guard", "list", "--json").output.splitlines()]
    assert sorted((x["kind"], x["key"]) for x in rows) == [("account-new", ALICE), ("address", "192.0.2.1")]
    assert "lifted 1 block of 192.0.2.1" in run(config, "guard", "unblock", "192.0.2.1").output
    assert "unlocked account" in run(config, "user", "unlock", ALICE).output
    assert "no blocks or lockouts in force" in run(config, "guard", "list").output
    actions = [json.loads(x)["action"] for x in run(config, "admin-log", "--json").output.splitlines()]
    assert actions[-2:] == ["guard block lifted", "guard lockout lifted"]


def test_user_remove_lifts_the_guards_lockout_so_a_new_account_starts_clean(
    config: Path
) -> None:
    """A name removed and added again is a new account: it did not inherit the
    lockout, nor the throttle's failures, earned by guesses at the old one."""
    g = SqliteGuardStore(config.parent / "guard.sqlite")
    t = thresholds(GuardConfig(lockout_threshold=2))
    now = time.time()
    for address in ("192.0.2.1", "192.0.2.2"):
        count_failure(g, RecordedFailure(now, address, "192.0.2.0/24", ALICE, False, True), t)
    assert [b.key for b in g.active_blocks(now)] == [ALICE]
    g.close()
    assert run(config, "user", "remove", "Alice@example.org").exit_code == 0
    r = run(config, "user", "add", ALICE, "--password-stdin", input="Winter-Plum-Kettle-42\n")
    assert r.exit_code == 0, r.output
    assert "no blocks or lockouts in force" in run(config, "guard", "list").output
    # The old failures are forgotten: one more is one, not the third.
    g = SqliteGuardStore(config.parent / "guard.sqlite")
    try:
        failure = RecordedFailure(now + 1, "192.0.2.3", "192.0.2.0/24", ALICE, False, True)
        assert count_failure(g, failure, t) == []
    finally:
        g.close()
    rows = [json.loads(x) for x in run(config, "admin-log", "--json").output.splitlines()]
    assert [(r["action"], r["target"]) for r in rows][-3:] == [
        ("account removed", ALICE), ("guard lockout lifted", ALICE), ("account created", ALICE)]


def test_user_show_and_limits(config: Path) -> None:
    assert run(config, "user", "limits", ALICE, "--messages-per-hour", "7").exit_code == 0
    assert run(config, "user", "limits", ALICE, "--messages-per-hour", "lots").exit_code == 2
    # A superscript two passed isdigit() and failed int() (a traceback); a number past
    # the databases' integer raised SQLite's OverflowError.
    assert run(config, "user", "limits", ALICE, "--messages-per-hour", "²").exit_code == 2
    huge = run(config, "user", "limits", ALICE, "--messages-per-hour", "9" * 25)
    assert huge.exit_code == 2 and "2147483647" in huge.output
    assert run(config, "user", "max-age", ALICE, "90d").exit_code == 0
    assert run(config, "user", "access", ALICE, "--listener", "nope").exit_code == 2
    shown = json.loads(run(config, "user", "show", ALICE, "--json").output)
    assert shown["max_messages_per_hour"] == 7 and shown["password_expires"] is not None


@pytest.mark.parametrize(
    "args",
    [
        ["user", "rotate", ALICE, "--grace", "99999999999d"],
        ["user", "max-age", ALICE, "9999999d"],
        ["app-password", "add", ALICE, "phone", "--expires", "9999999d"],
        ["admin-log", "--since", "99999999999d"],
        ["report", "--since", "99999999999d"],
    ],
)
def test_a_duration_past_year_9999_is_bad_input_not_a_traceback(
    config: Path, args: list[str]
) -> None:
    r = CliRunner().invoke(cli, [*args, "--config", str(config)])
    assert r.exit_code == 2, r.output
    assert "is longer than 100 years" in r.output


def test_guard_unblock_takes_a_client_address_as_the_logs_show_it(config: Path) -> None:
    """An IPv6 client is blocked by its /64 (`2001:db8:1:2::/64`): the address pasted
    from the auth log, `2001:DB8:1:2::5`, was "not blocked" (exit 3)."""
    g = SqliteGuardStore(config.parent / "guard.sqlite")
    now = time.time()
    g.start_blocks([Block(ADDRESS, "2001:db8:1:2::/64", now, now + 600, "test"),
                    Block(SUBNET, "198.51.100.0/24", now, now + 600, "test")])
    g.close()
    r = run(config, "guard", "unblock", "2001:DB8:1:2::5")
    assert r.exit_code == 0, r.output
    assert r.output.strip() == ("lifted 1 block of 2001:db8:1:2::/64 "
                                "(the guard's key of 2001:DB8:1:2::5)")
    r = run(config, "guard", "unblock", "198.51.100.7/24")
    assert r.exit_code == 0 and "of 198.51.100.0/24" in r.output, r.output
    r = run(config, "guard", "unblock", "alice@example.org")  # an account: as it is
    assert r.exit_code == 3 and "alice@example.org is not blocked" in r.output


def test_guard_unblock_lifts_the_lockout_of_a_name_that_is_no_account(config: Path) -> None:
    """The guard locks a made-up name as it locks an account (docs/protection.md),
    and `guard list` shows the row, but `guard unblock ghost@example.org` said it
    "is not blocked" (exit 3) and `user unlock` "no account": nothing lifted it
    before it ran out. It is lifted now, given as listed or in another spelling; an
    account's administrative lock is left to `user unlock`."""
    g = SqliteGuardStore(config.parent / "guard.sqlite")
    now = time.time()
    g.start_blocks([Block(ACCOUNT_NEW, "ghost@example.org", now, now + 600, "10 failed logins"),
                    Block(THROTTLE, "ghost@example.org", now, now + 600, "5 new addresses"),
                    Block(ACCOUNT_NEW, ALICE, now, now + 600, "10 failed logins")])
    g.close()
    assert run(config, "user", "unlock", "ghost@example.org").exit_code == 3
    r = run(config, "guard", "unblock", "GHOST@Example.org")
    assert r.exit_code == 0, r.output
    assert r.output.strip() == "lifted 2 lockouts of ghost@example.org"
    assert run(config, "user", "lock", ALICE, "--reason", "compromised").exit_code == 0
    r = run(config, "guard", "unblock", ALICE)
    assert r.exit_code == 0 and "lifted 1 lockout of alice@example.org" in r.output, r.output
    assert "no blocks or lockouts in force" in run(config, "guard", "list").output
    shown = json.loads(run(config, "user", "show", ALICE, "--json").output)
    assert shown["locked"], shown
    r = run(config, "guard", "unblock", "ghost@example.org")  # nothing left: as before
    assert r.exit_code == 3 and "ghost@example.org is not blocked" in r.output


def test_guard_unblock_of_an_address_in_a_blocked_subnet_names_the_subnet(config: Path) -> None:
    """A client refused because its /24 sprayed (`blocked: subnet 198.51.100.0/24`)
    was, given by its address, "198.51.100.7 is not blocked": false, and no word of
    the block that refuses it. The error now names the subnet block and how to lift
    it; the address alone is not lifted (the subnet holds the other sprayers)."""
    g = SqliteGuardStore(config.parent / "guard.sqlite")
    now = time.time()
    g.start_blocks([Block(SUBNET, "198.51.100.0/24", now, now + 600, "spraying")])
    g.close()
    r = run(config, "guard", "unblock", "198.51.100.7")
    assert r.exit_code == 3, r.output
    assert "198.51.100.7 is not blocked by itself: its subnet 198.51.100.0/24 is" in r.output
    assert "smtpgate guard unblock 198.51.100.0/24" in r.output
    rows = [json.loads(x) for x in run(config, "guard", "list", "--json").output.splitlines()]
    assert [(x["kind"], x["key"]) for x in rows] == [("subnet", "198.51.100.0/24")]


def test_the_printed_app_password_says_where_it_works(config: Path) -> None:
    """`app-password add ... --mechanism plain --network 10.0.0.0/8` printed "(shown
    once; it works with PLAIN and LOGIN)": a user who set up the device with LOGIN,
    or from home, got 535 with nothing to say why. The line now gives its scope, and
    `user rotate --app`, whose new password keeps the old scope, says it too."""
    r = run(config, "app-password", "add", ALICE, "phone", "--mechanism", "plain",
            "--network", "10.0.0.0/8")
    assert r.exit_code == 0, r.output
    assert "(shown once; it works with PLAIN only, from 10.0.0.0/8)" in r.output
    r = run(config, "user", "rotate", ALICE, "--app", "phone")
    assert r.exit_code == 0, r.output
    assert "(shown once; it works with PLAIN only, from 10.0.0.0/8)" in r.output
    r = run(config, "app-password", "add", ALICE, "laptop")
    assert "(shown once; it works with PLAIN and LOGIN)" in r.output
