"""One exit code per outcome across every command (docs/cli.md), and JSON wherever it
is offered, with times in ISO 8601 carrying their zone (issue 8)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from smtpgate.auth.guard import count_failure, thresholds
from smtpgate.auth.guard_store import RecordedFailure, SqliteGuardStore
from smtpgate.cli.common import ExitCode
from smtpgate.cli.main import cli
from smtpgate.config import GuardConfig
from tests.client_pki import TestCa
from tests.unit.as_nobody import run_as_nobody
from tests.unit.cli_support import write_config

ALICE = "alice@example.org"


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = write_config(tmp_path)
    assert smtpgate(path, "user", "add", ALICE, "--password-stdin", input="pw\n").exit_code == 0
    return path


def smtpgate(config: Path, *args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(cli, [*args, "--config", str(config)], input=input)


def test_the_codes_are_the_documented_ones() -> None:
    assert [(c.name, int(c)) for c in ExitCode] == [
        ("OK", 0), ("ERROR", 1), ("USAGE", 2), ("NOT_FOUND", 3)
    ]
    page = (Path(__file__).resolve().parents[2] / "docs" / "cli.md").read_text()
    for code, meaning in ((0, "success"), (1, "error"), (2, "bad input"), (3, "not found")):
        assert f"| {code} | {meaning} |" in page


@pytest.mark.parametrize(
    "args",
    [
        ("user", "alias", "del", ALICE, "nobody@example.org"),
        ("user", "alias", "del", "ghost@example.org", "x@example.org"),
        ("user", "domain", "revoke", ALICE, "example.com"),
        ("guard", "unblock", "192.0.2.7"),
        ("app-password", "revoke", ALICE, "phone"),
        ("user", "show", "ghost@example.org"),
        ("user", "remove", "ghost@example.org"),
        ("user", "lock", "ghost@example.org"),
        ("user", "rotate", ALICE, "--app", "phone"),
        ("app-password", "list", "ghost@example.org"),
        ("report", "--log", "/nonexistent/auth.log"),
    ],
)
def test_a_missing_item_exits_3(config: Path, args: tuple[str, ...]) -> None:
    r = smtpgate(config, *args)
    assert r.exit_code == ExitCode.NOT_FOUND, r.output
    assert r.stderr.startswith("error: ") and "hint: " in r.stderr


def test_report_on_a_missing_log_says_so_instead_of_zero_attempts(config: Path) -> None:
    r = smtpgate(config, "report", "--log", "/nonexistent/auth.log")
    assert "no auth log at /nonexistent/auth.log" in r.stderr
    assert "0 attempts" not in r.output


def test_a_missing_config_file_exits_3(tmp_path: Path) -> None:
    r = smtpgate(tmp_path / "nope.toml", "user", "list")
    assert r.exit_code == ExitCode.NOT_FOUND
    assert "no config file" in r.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("user", "add", "not an address"),
        ("user", "domain", "grant", ALICE, "bad domain!"),
        ("guard", "list", "--bogus"),
        ("report", "--since", "yesterday"),
    ],
)
def test_bad_input_exits_2(config: Path, args: tuple[str, ...]) -> None:
    assert smtpgate(config, *args).exit_code == ExitCode.USAGE


def test_removing_what_is_there_exits_0_and_a_no_op_state_change_too(config: Path) -> None:
    assert smtpgate(config, "user", "alias", "add", ALICE, "al@example.org").exit_code == 0
    assert smtpgate(config, "user", "alias", "del", ALICE, "al@example.org").exit_code == 0
    assert smtpgate(config, "user", "alias", "del", ALICE, "al@example.org").exit_code == 3
    assert smtpgate(config, "user", "domain", "grant", ALICE, "example.com").exit_code == 0
    assert smtpgate(config, "user", "domain", "revoke", ALICE, "example.com").exit_code == 0
    r = smtpgate(config, "user", "unlock", ALICE)  # not locked: nothing to do, not an error
    assert r.exit_code == 0 and "was not locked" in r.output


def test_removing_a_removed_certificate_is_a_no_op_exit_0(config: Path) -> None:
    """A removed certificate stays listed as removed, so a second `user cert remove`
    finds the state it asks for: exit 0, as `user unlock` of an unlocked account. It was
    exit 3, 'has no registered certificate', for one `user cert list` shows."""
    leaf = TestCa(config.parent / "pki", "ours").issue("laptop")
    assert smtpgate(config, "user", "cert", "add", ALICE, str(leaf.cert)).exit_code == 0
    colons = ":".join(leaf.fingerprint[i:i + 2] for i in range(0, 64, 2)).upper()
    assert smtpgate(config, "user", "cert", "remove", ALICE, colons).exit_code == 0
    r = smtpgate(config, "user", "cert", "remove", ALICE, leaf.fingerprint)
    assert r.exit_code == 0 and "was removed already" in r.output, r.output
    r = smtpgate(config, "user", "cert", "remove", ALICE, "ab" * 32)  # never registered
    assert r.exit_code == ExitCode.NOT_FOUND and "has no registered certificate" in r.stderr


def test_other_errors_exit_1(config: Path) -> None:
    smtpgate(config, "app-password", "add", ALICE, "phone")
    assert smtpgate(config, "app-password", "add", ALICE, "phone").exit_code == ExitCode.ERROR


# --- JSON ----------------------------------------------------------------------------------------


def zoned(value: object) -> datetime:
    """An ISO 8601 time with a zone (``...Z`` or ``+00:00``), parsed."""
    assert isinstance(value, str), value
    t = datetime.fromisoformat(value)
    assert t.tzinfo is not None and t.utcoffset() is not None, value
    return t


def lines(r: Result) -> list[dict[str, object]]:
    assert r.exit_code == 0, r.output
    return [json.loads(line) for line in r.stdout.splitlines()]


def test_user_list_json(config: Path) -> None:
    smtpgate(config, "user", "add", "bob@example.org", "--password-stdin", input="pw\n")
    smtpgate(config, "user", "lock", "bob@example.org", "--reason", "phished")
    rows = lines(smtpgate(config, "user", "list", "--json"))
    assert [r["name"] for r in rows] == [ALICE, "bob@example.org"]
    bob = rows[1]
    assert (bob["locked"], bob["lock_reason"], bob["last_login"]) == (True, "phished", None)
    assert set(bob) == {"name", "locked", "lock_reason", "created", "last_login",
                        "last_mechanism", "cram_md5_enabled", "allowed_mechanisms",
                        "password_changed", "password_expires", "legacy_hash", "scram_keys"}
    zoned(bob["created"])
    zoned(bob["password_changed"])
    assert lines(smtpgate(config, "user", "list", "--json", "--mechanisms")) == rows


def test_user_list_json_of_no_accounts_is_empty(tmp_path: Path) -> None:
    r = smtpgate(write_config(tmp_path), "user", "list", "--json")
    assert r.exit_code == 0 and r.stdout == ""


def test_guard_list_json_times_are_iso_8601_with_a_zone(config: Path) -> None:
    store = SqliteGuardStore(config.parent / "guard.sqlite")
    now = time.time()
    count_failure(store, RecordedFailure(now, "192.0.2.1", "192.0.2.0/24", ALICE, False, True),
                  thresholds(GuardConfig(lockout_threshold=1)))
    store.close()
    rows = lines(smtpgate(config, "guard", "list", "--json"))
    assert rows
    for row in rows:
        assert abs(zoned(row["since"]).timestamp() - now) < 1
        assert zoned(row["until"]) > zoned(row["since"])
    (config.parent / "auth.log").write_text("")
    report = json.loads(smtpgate(config, "report", "--json").stdout)
    for block in report["current_blocks"]:
        zoned(block["until"])


def test_every_other_json_time_has_a_zone(config: Path) -> None:
    smtpgate(config, "app-password", "add", ALICE, "phone", "--expires", "30d")
    smtpgate(config, "user", "max-age", ALICE, "90d")
    for row in lines(smtpgate(config, "app-password", "list", "--json")):
        zoned(row["created"])
        zoned(row["expires"])
    for row in lines(smtpgate(config, "admin-log", "--json")):
        zoned(row["time"])
    shown = json.loads(smtpgate(config, "user", "show", ALICE, "--json").stdout)
    zoned(shown["password_expires"])


def test_queue_json_times_have_a_zone(config: Path) -> None:
    """`queue list --json` and `queue show --json` gave `arrived` and `next_attempt`
    as seconds since the epoch, unlike every other time in JSON (docs/cli.md)."""
    import asyncio

    from smtpgate.queue.envelope import Envelope
    from smtpgate.queue.spool import Spool
    from smtpgate.queue.state import MessageState

    spool = Spool(config.parent / "spool", prefill=False)
    env = Envelope(ALICE, ("bob@example.net", "carol@example.net"), ALICE, "127.0.0.1",
                   "test", "submission", received_at=time.time() - 60)
    qid = spool.store_sync(env, b"From: alice@example.org\r\nSubject: hi\r\n\r\nbody\r\n")
    later = time.time() + 3600
    first, second = MessageState.initial(env.rcpt_to).recipients
    spool.save_state_sync(qid, MessageState((replace(first, next_attempt=later, attempts=1),
                                             second)))
    asyncio.run(spool.close())

    (listed,) = json.loads(smtpgate(config, "queue", "list", "--json").stdout)
    shown = json.loads(smtpgate(config, "queue", "show", qid, "--json").stdout)
    for obj in (listed, shown):
        assert abs(zoned(obj["arrived"]).timestamp() - env.received_at) < 0.001
        rows = obj["recipients"]
        assert isinstance(rows, list)
        assert abs(zoned(rows[0]["next_attempt"]).timestamp() - later) < 0.001
        assert rows[1]["next_attempt"] is None


def test_reload_with_a_broken_config_says_the_server_was_not_signalled(tmp_path: Path) -> None:
    bad = tmp_path / "smtpgate.toml"
    bad.write_text('hostname = "mail.example.org"\n[tls\n', encoding="utf-8")
    result = CliRunner().invoke(cli, ["reload", "--config", str(bad)])
    assert result.exit_code == ExitCode.ERROR
    assert "config error" in result.output
    assert "not signalled" in result.output and "keeps the configuration" in result.output


def _invoke_as_other_user(args: list[str]) -> tuple[int, str, str]:
    """Run the command as user nobody (``as_nobody``): exit code, output, and the
    exception's type name if it ended in one."""
    CliRunner().invoke(cli, [*args[:-2], "--help"])  # import the command while we still can

    def invoke() -> list[object]:
        r = CliRunner().invoke(cli, args)
        crashed = "" if r.exception is None or isinstance(r.exception, SystemExit) else (
            type(r.exception).__name__)
        return [r.exit_code, r.output, crashed]

    code, output, crashed = run_as_nobody(invoke)
    return code, output, crashed


@pytest.mark.parametrize("locked", ["file", "directory"])
@pytest.mark.parametrize("command", [["config", "check"], ["config", "show"], ["user", "list"]])
def test_a_config_the_user_may_not_read_is_permission_denied_exit_1(
    tmp_path: Path, locked: str, command: list[str]
) -> None:
    """/etc/smtpgate mode 0750 and an admin running `smtpgate user list` as
    themselves: was a PermissionError traceback (the directory) or click's usage
    error, exit 2 (the file)."""
    top = Path(tempfile.mkdtemp(prefix="smtpgate-cli-"))  # world-traversable, unlike tmp_path
    top.chmod(0o755)
    etc = top / "etc"
    etc.mkdir()
    path = write_config(etc)
    if locked == "file":
        path.chmod(0o600 if os.geteuid() == 0 else 0o000)
    else:
        etc.chmod(0o700 if os.geteuid() == 0 else 0o000)
    try:
        code, output, crashed = _invoke_as_other_user([*command, "--config", str(path)])
    finally:
        etc.chmod(0o755)
        path.chmod(0o644)
        shutil.rmtree(top)
    assert crashed == ""
    assert code == ExitCode.ERROR, output
    assert f"permission denied: user nobody cannot read {path}" in output or (
        "permission denied: user " in output and os.geteuid() != 0)


def test_an_import_file_the_user_may_not_read_is_an_error_exit_1() -> None:
    """docs/cli.md: "1 with nothing changed when the file cannot be read"; it was
    click's usage error, exit 2."""
    top = Path(tempfile.mkdtemp(prefix="smtpgate-cli-"))
    top.chmod(0o755)
    try:
        config = write_config(top)
        users = top / "users"
        users.write_text("bob@example.org:{PLAIN}Winter-Plum-Kettle-42\n")
        users.chmod(0o600 if os.geteuid() == 0 else 0o000)
        code, output, crashed = _invoke_as_other_user(
            ["user", "import", "dovecot-passwd", str(users), "--dry-run", "--config", str(config)])
    finally:
        shutil.rmtree(top)
    assert crashed == ""
    assert code == ExitCode.ERROR, output
    assert f"{users}: permission denied" in output
