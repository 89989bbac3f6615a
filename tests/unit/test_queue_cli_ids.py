"""`smtpgate queue` with ids that are not queue ids (a path, a slot's name): refused
before they name a file, with an error that says so (exit 3, like an unknown id)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from smtpgate.cli.main import cli
from tests.unit.cli_support import write_config

ATTACKS = ["../../etc/passwd", "a/b", "../queue/x", "1.sg0123abcd.1.slot", "0-0-0-0\n", ""]


@pytest.mark.parametrize("command", ["show", "delete", "hold", "bounce"])
def test_an_id_that_is_no_queue_id_is_refused_and_said_so(tmp_path: Path, command: str) -> None:
    config = write_config(tmp_path)
    (tmp_path / "spool").mkdir()
    victim = tmp_path / "victim.msg"
    victim.write_text("not the queue's")
    for qid in [*ATTACKS, str(victim.with_suffix(""))]:
        result = CliRunner().invoke(cli, ["queue", command, qid, "--config", str(config)])
        assert result.exit_code == 3, (qid, result.output)
        first = result.output.splitlines()[0]
        assert first == f"error: not a queue id: {qid!r}", first
    assert victim.read_text() == "not the queue's"


@pytest.mark.parametrize("command", [["queue", "list"], ["queue", "list", "--json"],
                                     ["queue", "flush"], ["status", "--json"]])
def test_a_missing_spool_is_said_and_not_made_by_an_admin_command(
    tmp_path: Path, command: list[str]
) -> None:
    """`smtpgate status` or `queue list` run as root before the server's first start
    (or with [queue].spool mistyped) made the spool, root's and mode 0700, so a
    server running as its own user could not use it; and reported an empty queue."""
    config = write_config(tmp_path)
    result = CliRunner().invoke(cli, [*command, "--config", str(config)])
    spool = tmp_path / "spool"
    assert not spool.exists()
    if command[0] == "status":
        assert json.loads(result.output)["queue"]["error"].startswith(f"no spool at {spool} ")
    else:
        assert result.exit_code == 3, result.output
        assert f"error: no spool at {spool}" in result.output


def test_queue_list_totals_round_up_and_count_in_words(tmp_path: Path) -> None:
    """Two small messages read "-- 0 KiB in 2 messages", one "in 1 messages"."""
    from smtpgate.queue.envelope import Envelope
    from smtpgate.queue.spool import Spool

    config = write_config(tmp_path)
    spool = Spool(tmp_path / "spool", prefill=False)
    env = Envelope("a@example.org", ("b@example.net",), "a", "192.0.2.7", "h", "submission")
    spool.store_sync(env, b"Subject: x\r\n\r\nhi\r\n")
    out = CliRunner().invoke(cli, ["queue", "list", "--config", str(config)]).output
    assert out.splitlines()[-1] == "-- 1 KiB in 1 message"
    spool.store_sync(env, b"Subject: y\r\n\r\nhi\r\n")
    asyncio.run(spool.close())
    out = CliRunner().invoke(cli, ["queue", "list", "--config", str(config)]).output
    assert out.splitlines()[-1] == "-- 1 KiB in 2 messages"
