r"""Account names that can no longer be made but may be stored: a control character or
whitespace in a database from before names were checked, or a row inserted by hand
with sqlite3. ``user list`` showed ``ali\x1bce@example.org``, and neither that nor
the name with a real ESC in it was accepted by ``user remove`` or ``user lock``
(exit 2, "local part holds whitespace or control characters"): the account could
not be removed or locked from the CLI.

The USER argument now takes a name as the account commands show it
(``cli/output.name_shown``, where a backslash itself is ``\\``), and a valid address
but for its hidden characters is looked up as stored.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smtpgate.cli.common import ExitCode
from smtpgate.cli.output import name_shown
from smtpgate.visible import name_from_shown
from tests.unit.cli_support import run, write_config

ESC_NAME = "ali\x1bce@example.org"
TAB_NAME = "tab\tname@example.org"
#: A legacy name that holds a backslash: shown as ESC_NAME would be, were the
#: backslash not written twice.
BACKSLASH_NAME = "ali\\x1bce@example.org"


def _insert(config: Path, *names: str) -> None:
    """Accounts inserted by hand, as copies of bob's row under other names."""
    with sqlite3.connect(config.parent / "accounts.sqlite") as db:
        cols = [r[1] for r in db.execute("PRAGMA table_info(accounts)")]
        row = dict(zip(cols, db.execute(
            "SELECT * FROM accounts WHERE name = 'bob@example.org'").fetchone(), strict=True))
        for name in names:
            row["name"] = name
            db.execute(f"INSERT INTO accounts ({', '.join(cols)}) "
                       f"VALUES ({', '.join('?' * len(cols))})", list(row.values()))
    db.close()


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = write_config(tmp_path)
    assert run(path, "add", "bob@example.org", "--password-stdin", input="pw\n").exit_code == 0
    _insert(path, ESC_NAME, TAB_NAME, BACKSLASH_NAME)
    return path


def _names_listed(config: Path) -> list[str]:
    out = run(config, "list").output
    return [line.split("│")[1].strip() for line in out.splitlines()
            if line.startswith("│") and "@" in line]


def test_the_list_shows_each_name_once_and_unambiguously(config: Path) -> None:
    assert sorted(_names_listed(config)) == sorted([
        "ali\\x1bce@example.org", "ali\\\\x1bce@example.org", "bob@example.org",
        "tab\\x09name@example.org"])


@pytest.mark.parametrize("stored", [ESC_NAME, TAB_NAME, BACKSLASH_NAME])
def test_the_name_as_listed_locks_unlocks_and_removes_that_account_alone(
        config: Path, stored: str) -> None:
    listed = name_shown(stored)
    assert listed in _names_listed(config)
    r = run(config, "lock", listed, "--reason", "legacy")
    assert r.exit_code == 0 and r.output == f"locked account {listed}\n", r.output
    others = [a for a in (ESC_NAME, TAB_NAME, BACKSLASH_NAME, "bob@example.org") if a != stored]
    with sqlite3.connect(config.parent / "accounts.sqlite") as db:
        locked = {n for (n,) in db.execute("SELECT name FROM accounts WHERE locked")}
    db.close()
    assert locked == {stored}
    assert run(config, "unlock", listed).exit_code == 0
    r = run(config, "remove", listed)
    assert r.exit_code == 0, r.output
    assert sorted(_names_listed(config)) == sorted(name_shown(n) for n in others)


def test_the_name_with_its_control_character_itself_is_accepted_too(config: Path) -> None:
    """As a shell passes $'ali\\x1bce@example.org'."""
    assert run(config, "remove", ESC_NAME).exit_code == 0
    assert name_shown(ESC_NAME) not in _names_listed(config)
    assert run(config, "remove", ESC_NAME).exit_code == ExitCode.NOT_FOUND


def test_a_hidden_character_in_a_name_that_is_not_there_is_not_found(config: Path) -> None:
    r = run(config, "remove", "nobody\\x1b@example.org")
    assert r.exit_code == ExitCode.NOT_FOUND and "no account" in r.stderr


def test_a_name_that_is_no_address_but_for_its_hidden_characters_is_still_bad_input(
        config: Path) -> None:
    for bad in ("no-at-sign\\x1b", "a..b\\x1b@example.org", "a\\b@example.org", "a\\x1@x.org",
                "a\\U00110000@example.org"):
        r = run(config, "remove", bad)
        assert r.exit_code == ExitCode.USAGE, (bad, r.output)


def test_a_new_account_still_cannot_have_such_a_name(config: Path) -> None:
    """``user add`` takes the name as typed: no escapes, and no hidden character."""
    r = run(config, "add", "new\x1b@example.org", "--password-stdin", input="pw\n")
    assert r.exit_code == ExitCode.USAGE and "control characters" in r.output
    r = run(config, "add", "new\\x1b@example.org", "--password-stdin", input="pw\n")
    assert r.exit_code == ExitCode.USAGE and "could never send mail as itself" in r.output


def test_ordinary_names_read_as_before(config: Path) -> None:
    assert run(config, "lock", "BOB@Example.ORG").output == "locked account bob@example.org\n"


@given(st.text(max_size=30))
def test_a_shown_name_reads_back_as_that_name(name: str) -> None:
    assert name_from_shown(name_shown(name)) == name
