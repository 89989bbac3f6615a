"""An alias is only ever compared with a sender (MAIL FROM, From), so one that
is no RFC 5321 mailbox is refused when added: ``user alias add`` took
``<b>x</b>@localhost``, which the server refuses as MAIL FROM (501), so it could
never be used."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from smtpgate.cli.main import cli
from smtpgate.smtp.address import AddressError, parse_path
from tests.unit.cli_support import write_config

ALICE = "alice@example.org"


@pytest.mark.parametrize("alias", ["<b>x</b>@localhost", "a(b)@example.org",
                                   "a,b@example.org", "a[1]@example.org", "a:b@example.org"])
def test_an_alias_no_client_can_send_as_is_refused(tmp_path: Path, alias: str) -> None:
    with pytest.raises(AddressError):  # what the server makes of it as a sender
        parse_path(f"<{alias}>", allow_null=False, utf8=True)
    config = write_config(tmp_path)
    CliRunner().invoke(cli, ["user", "add", ALICE, "--password-stdin", "--config", str(config)],
                       input="pw\n")
    out = CliRunner().invoke(cli, ["user", "alias", "add", ALICE, alias, "--config", str(config)])
    assert out.exit_code == 2, out.output
    assert "cannot be a sender address" in out.output and "RFC 5321" in out.output
    listed = CliRunner().invoke(cli, ["user", "alias", "list", ALICE, "--config", str(config)])
    assert alias not in listed.output


@pytest.mark.parametrize("alias", ["sales+eu@example.org", "o'brien@example.org",
                                   "jürgen@example.de", "x.y-z@sub.example.org"])
def test_an_alias_a_client_can_send_as_is_taken(tmp_path: Path, alias: str) -> None:
    config = write_config(tmp_path)
    CliRunner().invoke(cli, ["user", "add", ALICE, "--password-stdin", "--config", str(config)],
                       input="pw\n")
    out = CliRunner().invoke(cli, ["user", "alias", "add", ALICE, alias, "--config", str(config)])
    assert out.exit_code == 0, out.output
