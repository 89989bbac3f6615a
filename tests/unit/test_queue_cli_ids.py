"""`smtpgate queue` with ids that are not queue ids (a path, a slot's name): refused
before they name a file, with an error that says so (exit 3, like an unknown id)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from smtpgate.cli.main import cli
from tests.unit.cli_support import write_config

ATTACKS = ["../../etc/passwd", "a/b", "../queue/x", "1.sg0123abcd.1.slot", "0-0-0-0\n", ""]


@pytest.mark.parametrize("command", ["show", "delete", "hold", "bounce"])
def test_an_id_that_is_no_queue_id_is_refused_and_said_so(tmp_path: Path, command: str) -> None:
    config = write_config(tmp_path)
    victim = tmp_path / "victim.msg"
    victim.write_text("not the queue's")
    for qid in [*ATTACKS, str(victim.with_suffix(""))]:
        result = CliRunner().invoke(cli, ["queue", command, qid, "--config", str(config)])
        assert result.exit_code == 3, (qid, result.output)
        first = result.output.splitlines()[0]
        assert first == f"error: not a queue id: {qid!r}", first
    assert victim.read_text() == "not the queue's"
