"""``smtpgate queue flush`` with no server makes the attempts itself; its exit code
says whether they left anything in the queue, so that a script's ``queue flush &&
...`` does not go on as if the queue were drained when every attempt was deferred."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

from click.testing import CliRunner

from smtpgate.cli.main import cli
from smtpgate.config import load_config
from smtpgate.queue.envelope import Envelope
from smtpgate.queue.spool import Spool

from .cli_support import write_config
from .test_queue_manage import MESSAGE


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then closed: connect is refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _queue_one(config: Path, delivery: str) -> None:
    with config.open("a") as f:
        f.write(delivery)
    cfg = load_config(config)
    spool = Spool(cfg.path(cfg.queue.spool), prefill=False)
    try:
        # Arrived now: an old one would be bounced as expired at its first attempt.
        spool.store_sync(Envelope("alice@example.org", ("bob@example.net",), "alice",
                                  "192.0.2.7", "laptop.example.org", "submission",
                                  received_at=time.time()), MESSAGE)
    finally:
        asyncio.run(spool.close())


def test_flush_here_with_every_attempt_deferred_exits_1(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    _queue_one(config, f'\n[delivery]\nmode = "relay"\nrelay_host = "127.0.0.1"\n'
                       f"relay_port = {_closed_port()}\nrelay_connect_timeout = 5.0\n")
    out = CliRunner().invoke(cli, ["queue", "flush", "--config", str(config)])
    assert out.exit_code == 1, out.output
    assert ("no server is delivering: made 1 delivery attempt here: 1 recipient "
            "deferred\n") in out.stdout
    assert "error: 1 recipient deferred: still in the queue" in out.stderr
    assert "smtpgate queue list" in out.stderr


def test_flush_here_that_delivers_exits_0(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    _queue_one(config, "")  # the default: the Maildir under the config's directory
    out = CliRunner().invoke(cli, ["queue", "flush", "--config", str(config)])
    assert out.exit_code == 0, out.output
    assert ("no server is delivering: made 1 delivery attempt here: 1 recipient "
            "delivered\n") in out.stdout
