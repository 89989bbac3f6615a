"""``smtpgate user ...`` in-process with CliRunner, on a real config and database."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from smtpgate.auth.admin_store import AuditActor
from smtpgate.auth.passwords import PasswordHasher
from smtpgate.auth.store import SqliteAccountStore
from smtpgate.cli.main import cli

from .cli_support import FAST, run, write_config


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return write_config(tmp_path)


def verify(config: Path, user: str, password: str) -> bool:
    store = SqliteAccountStore(config.parent / "accounts.sqlite", FAST)
    try:
        encoded = store.get_credential(user, "argon2id")
    finally:
        store.close()
    return encoded is not None and PasswordHasher(FAST).verify(encoded, password)


def test_add_with_password_stdin(config: Path) -> None:
    r = run(config, "add", "Alice@EXAMPLE.org", "--password-stdin", input="pen cil\n")
    assert r.exit_code == 0, r.output
    assert "added account alice@example.org" in r.output
    assert verify(config, "Alice@example.org", "pen cil")  # trailing newline dropped only


def test_add_with_prompt_twice(config: Path) -> None:
    r = run(config, "add", "a@example.org", input="pencil\npencil\n")
    assert r.exit_code == 0, r.output
    assert "pencil" not in r.output  # no echo
    assert verify(config, "a@example.org", "pencil")


def test_prompt_mismatch_asks_again(config: Path) -> None:
    r = run(config, "add", "a@example.org", input="pencil\npencel\ncrayon\ncrayon\n")
    assert r.exit_code == 0, r.output
    assert "do not match" in r.output
    assert verify(config, "a@example.org", "crayon")


def test_prompt_eof_aborts(config: Path) -> None:
    """Input that ends before the repeat, with no terminal: a usage error saying to
    pass --password-stdin (it was a bare "Aborted!", exit 1)."""
    r = run(config, "add", "a@example.org", input="pencil\n")
    assert r.exit_code == 2
    assert "pass --password-stdin" in r.stderr


@pytest.mark.parametrize("stdin", ["", "\n", "a\0b\n"])
def test_unusable_password_refused(config: Path, stdin: str) -> None:
    r = run(config, "add", "a@example.org", "--password-stdin", input=stdin)
    assert r.exit_code == 1
    assert "error: the password" in r.stderr and "hint:" in r.stderr
    assert "a@example.org" not in run(config, "list").output


def test_password_on_argv_is_not_an_option(config: Path) -> None:
    r = run(config, "add", "a@example.org", "--password", "pencil")
    assert r.exit_code == 2


@pytest.mark.parametrize("bad", ["alice", "alice@", "a b@example.org"])
def test_invalid_address_is_usage_error(config: Path, bad: str) -> None:
    r = run(config, "add", bad, "--password-stdin", input="p\n")
    assert r.exit_code == 2
    assert "local@domain" in r.stderr or "whitespace" in r.stderr


def test_add_refuses_a_name_no_mail_from_can_give(config: Path) -> None:
    """Before: the account was made, logged in, and could send only from its
    aliases (RFC 5321 §4.1.2: ')', '(' and '\\' only inside quotes). An account
    stored so by an earlier version still answers to the commands."""
    r = run(config, "add", "a)b(c\\d@localhost", "--password-stdin", input="pencil\n")
    assert r.exit_code == 2, r.output
    assert "the local part holds '(' ')' '\\\\'" in r.stderr
    assert "could never send mail as itself" in r.stderr
    assert "Password" not in r.output
    store = SqliteAccountStore(config.parent / "accounts.sqlite", FAST)
    try:
        with store.transaction(AuditActor("ops", "pytest")) as w:  # as an earlier version did
            w.create_account("a)b@localhost", {})
    finally:
        store.close()
    assert run(config, "lock", "a)b@localhost").exit_code == 0
    assert run(config, "remove", "a)b@localhost").exit_code == 0


def test_add_existing_fails_before_prompting(config: Path) -> None:
    run(config, "add", "a@example.org", "--password-stdin", input="p\n")
    r = run(config, "add", "a@EXAMPLE.ORG")
    assert r.exit_code == 1
    assert "already exists" in r.stderr and "user passwd" in r.stderr


def test_add_of_another_accounts_alias_fails_before_prompting(config: Path) -> None:
    """The name is another account's alias: said before the password is asked for
    (it was asked for twice, then refused)."""
    run(config, "add", "a@example.org", "--password-stdin", input="p\n")
    assert run(config, "alias", "add", "a@example.org", "sales@example.org").exit_code == 0
    r = run(config, "add", "Sales@example.org", input="pencil\npencil\n")
    assert r.exit_code == 1
    assert "Password" not in r.output
    assert "sales@example.org is an alias of a@example.org" in r.stderr
    r = run(config, "add", "a@EXAMPLE.ORG")
    assert "account a@example.org already exists" in r.stderr  # as stored
    r = run(config, "add", "New@Example.org", "--password-stdin", input="p\n")
    assert r.exit_code == 0 and r.output == "added account new@example.org\n"


def test_alias_del_names_the_alias_as_stored(config: Path) -> None:
    """`alias add` says the address as stored; `alias del` said it as typed."""
    run(config, "add", "a@example.org", "--password-stdin", input="p\n")
    r = run(config, "alias", "add", "a@example.org", "Sales@Example.ORG")
    assert r.output == "a@example.org may now send as sales@example.org\n"
    r = run(config, "alias", "del", "a@example.org", "SALES@example.org")
    assert r.exit_code == 0 and r.output == "removed alias sales@example.org of a@example.org\n"
    r = run(config, "alias", "del", "a@example.org", "Sales@example.org")
    assert r.exit_code == 3 and "error: sales@example.org is not an alias" in r.stderr


def test_alias_remove_is_the_name_and_del_still_works_unlisted(config: Path) -> None:
    """Every command that takes something away is `remove` or `revoke`; `alias del`
    was the odd one out, and stays for the scripts that use it, unlisted."""
    run(config, "add", "a@example.org", "--password-stdin", input="p\n")
    for address in ("sales@example.org", "info@example.org"):
        assert run(config, "alias", "add", "a@example.org", address).exit_code == 0
    r = run(config, "alias", "remove", "a@example.org", "Sales@example.org")
    assert r.exit_code == 0 and r.output == "removed alias sales@example.org of a@example.org\n"
    r = run(config, "alias", "remove", "a@example.org", "sales@example.org")
    assert r.exit_code == 3 and "error: sales@example.org is not an alias" in r.stderr
    assert "user alias list a@example.org" in r.stderr
    r = run(config, "alias", "del", "a@example.org", "info@example.org")
    assert r.exit_code == 0 and r.output == "removed alias info@example.org of a@example.org\n"
    from smtpgate.cli.user_policy_cmd import alias

    listed = CliRunner().invoke(alias, ["--help"]).output
    assert "  remove " in listed and "  del " not in listed


def test_passwd(config: Path) -> None:
    run(config, "add", "a@example.org", "--password-stdin", input="old\n")
    r = run(config, "passwd", "a@example.org", "--password-stdin", input="new\r\n")
    assert r.exit_code == 0, r.output
    assert verify(config, "a@example.org", "new")
    r = run(config, "passwd", "nobody@example.org", "--password-stdin", input="x\n")
    assert r.exit_code == 3 and "no account" in r.stderr and "user list" in r.stderr


def test_remove(config: Path) -> None:
    run(config, "add", "a@example.org", "--password-stdin", input="p\n")
    assert run(config, "remove", "a@example.org").exit_code == 0
    r = run(config, "remove", "a@example.org")
    assert r.exit_code == 3 and "no account" in r.stderr


def test_lock_unlock_and_list(config: Path) -> None:
    run(config, "add", "a@example.org", "--password-stdin", input="p\n")
    run(config, "add", "b@example.org", "--password-stdin", input="p\n")
    r = run(config, "lock", "a@example.org", "--reason", "phished")
    assert r.exit_code == 0 and "locked account a@example.org" in r.output
    out = run(config, "list").output
    a_line = next(line for line in out.splitlines() if "a@example.org" in line)
    b_line = next(line for line in out.splitlines() if "b@example.org" in line)
    assert "yes: phished" in a_line and "never" in a_line
    assert " no " in b_line
    for column in ("name", "locked", "created", "last login", "last mechanism"):
        assert column in out
    assert "unlocked" in run(config, "unlock", "a@example.org").output
    assert "was not locked" in run(config, "unlock", "a@example.org").output
    assert run(config, "lock", "nobody@example.org").exit_code == 3
    # An escape sequence in the reason would reach the terminal of `user list`.
    r = run(config, "lock", "b@example.org", "--reason", "\x1b[2Jgone")
    assert r.exit_code == 2 and "printable" in r.stderr  # bad input, as docs/cli.md has it
    assert "\x1b" not in run(config, "list").output


def test_the_account_commands_find_an_account_by_every_spelling_that_logs_in_to_it(
    config: Path,
) -> None:
    """A login SASLprep's its name (``auth/names.login_spellings``):
    ``ａｌｉｃｅ@example.org`` in full-width letters, or with a soft hyphen, logs in
    as alice. The account commands said "no account" for those spellings (exit 3)."""
    run(config, "add", "alice@example.org", "--password-stdin", input="p\n")
    full_width = "\uff41\uff4c\uff49\uff43\uff45@example.org"
    r = run(config, "lock", full_width)
    assert r.exit_code == 0 and "locked account alice@example.org" in r.output, r.output
    r = run(config, "unlock", "ali\u00adce@example.org")
    assert r.exit_code == 0 and "unlocked account alice@example.org" in r.output, r.output
    r = run(config, "alias", "add", full_width, "al@example.org")
    assert r.exit_code == 0, r.output
    assert run(config, "alias", "list", "alice@example.org").output.split() == ["al@example.org"]
    r = run(config, "unlock", "\uff42\uff4f\uff42@example.org")  # no such account
    assert r.exit_code == 3 and "no account" in r.stderr


@pytest.mark.parametrize("reason", ["", "   ", "x" * 201, "two\nlines"])
def test_lock_with_a_reason_that_is_no_reason_is_a_usage_error_naming_the_option(
        config: Path, reason: str) -> None:
    """`user lock NAME --reason ""` was exit 1, an "error" with a hint to write the
    reason on one line; a malformed option is bad input, exit 2, and the default
    reason is there for a lock without one."""
    run(config, "add", "a@example.org", "--password-stdin", input="p\n")
    r = run(config, "lock", "a@example.org", "--reason", reason)
    assert r.exit_code == 2, r.output
    assert "Invalid value for '--reason'" in r.stderr
    assert "1-200 printable characters" in r.stderr and "leave --reason out" in r.stderr
    assert ("empty" in r.stderr) == (not reason.strip())
    assert " no " in next(line for line in run(config, "list").output.splitlines()
                          if "a@example.org" in line)
    r = run(config, "lock", "a@example.org")
    assert r.exit_code == 0
    assert "yes: locked by administrator" in run(config, "list").output


def test_list_empty(config: Path) -> None:
    r = run(config, "list")
    assert r.exit_code == 0 and "no accounts" in r.output


def test_list_by_mechanism(config: Path) -> None:
    from datetime import UTC, datetime

    for name in ("a@example.org", "b@example.org", "c@example.org"):
        run(config, "add", name, "--password-stdin", input="p\n")
    store = SqliteAccountStore(config.parent / "accounts.sqlite", FAST)
    try:
        store.record_login("a@example.org", "PLAIN", datetime.now(UTC))
        store.record_login("b@example.org", "PLAIN", datetime.now(UTC))
        store.record_login("c@example.org", "SCRAM-SHA-256", datetime.now(UTC))
    finally:
        store.close()
    r = run(config, "list", "--mechanisms")
    assert r.exit_code == 0, r.output
    plain = next(line for line in r.output.splitlines() if "PLAIN" in line)
    assert "2" in plain and "a@example.org" in plain and "b@example.org" in plain
    scram = next(line for line in r.output.splitlines() if "SCRAM-SHA-256" in line)
    assert "c@example.org" in scram


def test_config_from_environment(config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMTPGATE_CONFIG", str(config))
    r = CliRunner().invoke(cli, ["user", "list"])
    assert r.exit_code == 0 and "no accounts" in r.output


def test_no_config_is_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SMTPGATE_CONFIG", raising=False)
    r = CliRunner().invoke(cli, ["user", "list"])
    assert r.exit_code == 2 and "SMTPGATE_CONFIG" in r.stderr


def test_unusable_database_is_operational_error(config: Path) -> None:
    (config.parent / "accounts.sqlite").write_bytes(b"not a database" * 100)
    r = run(config, "list")
    assert r.exit_code == 1
    assert r.stderr.startswith("error: account database") and "hint:" in r.stderr


def test_an_unreachable_postgresql_store_hints_at_its_dsn(tmp_path: Path) -> None:
    # The hint was "check [accounts].database ... the permissions of its directory",
    # a file the PostgreSQL backend does not use. Port 1 on loopback: refused at once.
    config = write_config(tmp_path)
    text = config.read_text().replace("[accounts]\n", '[accounts]\nbackend = "postgresql"\n', 1)
    config.write_text(text + (
        '[accounts.postgresql]\ndsn = "postgresql://smtpgate@127.0.0.1:1/smtpgate"\n'
        "timeout = 1\n"))
    r = run(config, "list")
    assert r.exit_code == 1, r.output
    assert "accounts.postgresql.dsn" in r.output
    assert "[accounts].database" not in r.output


@pytest.mark.parametrize(("name", "sent"), [
    ("\ufb01sh@example.org", "fish@example.org"),    # LATIN SMALL LIGATURE FI
    ("\uff41b@example.org", "ab@example.org"),        # FULLWIDTH LATIN SMALL LETTER A
    ("x\u00b2@example.org", "x2@example.org"),        # SUPERSCRIPT TWO
])
def test_add_refuses_a_name_scram_clients_send_as_another(
    config: Path, name: str, sent: str
) -> None:
    """A SCRAM client SASLprep's the user name before sending it (RFC 5802 §5.1), so
    such an account could log in with PLAIN but never with SCRAM (gsasl sent
    ``n=fish@...`` for ``ﬁsh@...`` and the server found no account)."""
    r = run(config, "add", name, "--password-stdin", input="pencil\n")
    assert r.exit_code == 1
    assert f"SCRAM clients send this name as {sent}" in r.output
    assert f"add it as {sent}" in r.output
    assert "Password" not in r.output  # refused before the password is asked for
    assert run(config, "list").output.count("@example.org") == 0


@pytest.mark.parametrize("name", [
    "jos\u00e9@example.org",
    "jose\u0301@example.org",                        # NFD: canonical NFC, as SCRAM sends it
    "\u0645\u062d\u0645\u062f@example.org",          # SASLprep refuses it: clients say so
])
def test_add_keeps_names_scram_clients_send_as_they_are(config: Path, name: str) -> None:
    r = run(config, "add", name, "--password-stdin", input="pencil\n")
    assert r.exit_code == 0, r.output


def _list_on_a_terminal(config: Path, columns: int) -> list[str]:
    """``smtpgate user list`` run on a pseudo-terminal ``columns`` wide: its lines,
    without the colour sequences."""
    import fcntl
    import os
    import pty
    import re
    import struct
    import subprocess
    import sys
    import termios

    main, side = pty.openpty()
    fcntl.ioctl(side, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2] / "src")
    env["TERM"] = "xterm"
    proc = subprocess.Popen(
        [sys.executable, "-c", "from smtpgate.cli.main import cli; cli()", "user", "list",
         "--config", str(config)], stdout=side, stderr=side, stdin=side, env=env)
    os.close(side)
    out = b""
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:  # EIO: the other side closed
            break
        if not chunk:
            break
        out += chunk
    os.close(main)
    assert proc.wait(timeout=60) == 0, out
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.decode()).replace("\r", "")
    return [line.rstrip() for line in plain.splitlines()]


@pytest.mark.parametrize("columns", [80, 100, 120])
def test_list_fits_a_narrow_terminal(config: Path, columns: int) -> None:
    """On a terminal narrower than its eleven columns (about 200), rich squeezed the
    table: the name column got no width at all and the rest were cut with '…'."""
    for name in ("alice.longname@example.org", "bob@example.org"):
        assert run(config, "add", name, "--password-stdin", input="pencil\n").exit_code == 0
    run(config, "lock", "bob@example.org", "--reason", "left the company")
    lines = _list_on_a_terminal(config, columns)
    assert max(len(line) for line in lines) <= columns, "\n".join(lines)
    text = "\n".join(lines)
    assert "…" not in text
    # Nothing lost: each name (maybe folded over lines of its column) and the
    # lock reason are there.
    names = "".join(line.split("│")[1].strip() for line in lines if line.startswith("│"))
    assert names == "alice.longname@example.orgbob@example.org"
    assert "left" in text and "company" in text


def test_list_into_a_pipe_keeps_the_wide_table(config: Path) -> None:
    """Scripts grep the piped lines: one line per account, every column."""
    run(config, "add", "alice.longname@example.org", "--password-stdin", input="pencil\n")
    out = run(config, "list").output
    [row] = [line for line in out.splitlines() if "alice.longname@example.org" in line]
    assert "scram-sha-1 scram-sha-256" in row and "last mechanism" in out


def test_lock_and_remove_say_which_of_the_accounts_messages_the_queue_will_deliver(
    config: Path,
) -> None:
    """Locking or removing a compromised account stops its logins, not the mail it
    queued before; until 2026-12 neither command said so, and its spam went on
    leaving. A held message, and another account's, are not named."""
    import asyncio

    from smtpgate.queue.envelope import Envelope
    from smtpgate.queue.manage import QueueManager
    from smtpgate.queue.spool import Spool

    assert run(config, "add", "a@example.org", "--password-stdin", input="pencil\n").exit_code == 0
    spool = Spool(config.parent / "spool", prefill=False)

    def queued(account: str) -> str:
        env = Envelope("a@example.org", ("b@example.net",), account, "192.0.2.7", "h",
                       "submission")
        return spool.store_sync(env, b"Subject: x\r\n\r\nhi\r\n")

    spam, held, other = queued("a@example.org"), queued("a@example.org"), queued("b@example.org")
    QueueManager(spool).hold(held)
    asyncio.run(spool.close())
    for command in (["lock", "A@example.org"], ["remove", "a@example.org"]):
        r = run(config, *command)
        assert r.exit_code == 0, r.output
        assert (f"note: 1 message a@example.org submitted is still queued and will be "
                f"delivered ({spam}); 'smtpgate queue hold ID'") in r.stderr, r.output
        assert held not in r.output and other not in r.output
    assert run(config, "add", "b@example.org", "--password-stdin", input="pencil\n").exit_code == 0
    r = run(config, "lock", "b@example.org")
    assert r.exit_code == 0 and "note: 1 message b@example.org" in r.stderr
