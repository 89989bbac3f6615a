"""``cluster status`` lists the nodes of its own key_prefix only, whatever the
prefix holds (a real Redis: tests/peers/redis_server.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis

from smtpgate.config import Config, parse_config
from smtpgate.server.heartbeat import nodes
from tests.peers.redis_server import PASSWORD, new_prefix, shared_redis
from tests.unit.config_support import MINIMAL, config_dir


def _config(tmp_path: Path, prefix: str) -> Config:
    server = shared_redis()
    return parse_config(
        MINIMAL + f'[state]\nbackend = "redis"\nredis_url = "{server.url}"\n'
        f'password_file = "{server.password_file}"\nkey_prefix = {json.dumps(prefix)}\n',
        config_dir(tmp_path))


@pytest.mark.parametrize(("ours", "theirs"), [("a*:", "ab:"), ("c?[x]\\:", "cQx\\:")])
def test_a_prefix_with_glob_characters_lists_only_its_own_nodes(
        tmp_path: Path, ours: str, theirs: str) -> None:
    """The SCAN pattern was the prefix as written: ``a*:`` listed the nodes of
    ``ab:`` (another cluster sharing the Redis) as its own, and ``c?[x]\\:`` (a
    backslash too) matched neither its own nodes nor anything else."""
    base = new_prefix()
    ours, theirs = base + ours, base + theirs
    client = redis.Redis(port=shared_redis().port, password=PASSWORD)
    try:
        for prefix, name in ((ours, "ours"), (theirs, "theirs")):
            client.set(prefix + "node:" + name, json.dumps({"node": name}), ex=60)
        assert [d["node"] for d in nodes(_config(tmp_path, ours))] == ["ours"]
        assert [d["node"] for d in nodes(_config(tmp_path, theirs))] == ["theirs"]
    finally:
        client.delete(ours + "node:ours", theirs + "node:theirs")
        client.close()


def test_cluster_status_shows_the_listeners_that_expect_a_proxy_header(tmp_path: Path) -> None:
    """A node's listener line read "lb 0.0.0.0:587" whether or not it takes only
    connections from the balancer; a heartbeat of an older version (no such key)
    is shown as before."""
    import time

    from click.testing import CliRunner

    from smtpgate.cli.main import cli
    from tests.unit.cli_support import write_config

    prefix = new_prefix()
    server = shared_redis()
    config = write_config(tmp_path)
    config.write_text(config.read_text() + f'\n[state]\nbackend = "redis"\n'
                      f'redis_url = "{server.url}"\npassword_file = "{server.password_file}"\n'
                      f'key_prefix = "{prefix}"\n')
    listeners = [
        {"name": "lb", "address": "0.0.0.0:587", "tls": "starttls", "proxy_protocol": True,
         "trusted_proxies": ["10.0.0.2/32", "10.0.0.3/32"]},
        {"name": "direct", "address": "0.0.0.0:2587", "tls": "starttls",
         "proxy_protocol": False, "trusted_proxies": []},
        {"name": "old", "address": "0.0.0.0:465", "tls": "implicit"},
    ]
    doc = {"node": "mx1", "version": "0.1.0", "pid": 7, "updated": time.time(),
           "sessions": 0, "queue": 0, "listeners": listeners}
    client = redis.Redis(port=server.port, password=PASSWORD)
    try:
        client.set(prefix + "node:mx1", json.dumps(doc), ex=60)
        out = CliRunner().invoke(cli, ["cluster", "status", "--config", str(config)])
    finally:
        client.delete(prefix + "node:mx1")
        client.close()
    assert out.exit_code == 0, out.output
    assert out.output.rstrip("\n").endswith(
        "; lb 0.0.0.0:587 (PROXY header from 10.0.0.2/32, 10.0.0.3/32), "
        "direct 0.0.0.0:2587, old 0.0.0.0:465")


def test_a_node_without_a_queue_directory_yet_has_an_empty_queue(tmp_path: Path) -> None:
    """A node's first heartbeats, before any message made spool/queue/, said
    ``queue -1`` in ``cluster status``: a count no queue has. No directory yet is
    an empty queue; one that cannot be read is shown as unknown."""
    import time

    from click.testing import CliRunner

    from smtpgate.cli.main import cli
    from smtpgate.server.heartbeat import Heartbeat
    from smtpgate.server.status_file import ServerStatus
    from tests.unit.cli_support import write_config

    prefix = new_prefix()
    server = shared_redis()
    config = write_config(tmp_path)
    config.write_text(config.read_text() + f'\n[state]\nbackend = "redis"\n'
                      f'redis_url = "{server.url}"\npassword_file = "{server.password_file}"\n'
                      f'key_prefix = "{prefix}"\nnode_name = "fresh"\n')
    from smtpgate.config import load_config

    cfg = load_config(config)
    assert not (cfg.path(cfg.queue.spool) / "queue").exists()
    beat = Heartbeat(cfg)
    beat.beat(ServerStatus(7, "0.1.0", time.time(), None, 0.0, [], [], 1, updated=time.time()))
    try:
        assert [d["queue"] for d in nodes(cfg)] == [0]
        out = CliRunner().invoke(cli, ["cluster", "status", "--config", str(config)])
        assert ", queue 0;" in out.output, out.output
        client = redis.Redis(port=server.port, password=PASSWORD)
        doc = json.loads(client.get(prefix + "node:fresh") or b"{}")
        client.set(prefix + "node:fresh", json.dumps({**doc, "queue": -1}), ex=60)
        client.close()
        out = CliRunner().invoke(cli, ["cluster", "status", "--config", str(config)])
        assert ", queue unknown (the node cannot read its spool);" in out.output, out.output
    finally:
        beat.stop()


def test_a_node_whose_clock_differs_from_redis_says_so_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Nodes keep the guard's blocks in their own wall-clock times: a node more than
    a minute behind another took each block the other started for one from before a
    step back of its clock (logged as "the clock went back", started again, its
    failures forgotten), and nothing said that the nodes' clocks differed. The
    heartbeat compares the node's clock with Redis's: one warning while they differ,
    one line when they agree again."""
    import logging
    import time

    from smtpgate.server.heartbeat import Heartbeat
    from smtpgate.server.status_file import ServerStatus

    cfg = _config(tmp_path, new_prefix())
    offset = [-90.0]
    beat = Heartbeat(cfg, clock=lambda: time.time() + offset[0])
    status = ServerStatus(7, "0.1.0", time.time(), None, 0.0, [], [], 1, updated=time.time())
    caplog.set_level(logging.INFO, logger="smtpgate")
    try:
        for _ in range(3):
            beat._next = 0.0  # every call beats
            beat.beat(status)
        warned = [r.getMessage() for r in caplog.records if "clock" in r.getMessage()]
        assert len(warned) == 1, warned
        assert "this node's clock is 90 s behind Redis's" in warned[0]
        assert "NTP" in warned[0]
        offset[0] = 0.0
        beat._next = 0.0
        beat.beat(status)
        again = [r for r in caplog.records if "agrees with Redis's again" in r.getMessage()]
        assert len(again) == 1
        assert again[0].levelno == logging.INFO
    finally:
        beat.stop()


def test_a_node_whose_clock_agrees_with_redis_says_nothing(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import logging
    import time

    from smtpgate.server.heartbeat import Heartbeat
    from smtpgate.server.status_file import ServerStatus

    cfg = _config(tmp_path, new_prefix())
    beat = Heartbeat(cfg)
    caplog.set_level(logging.INFO, logger="smtpgate")
    try:
        beat.beat(ServerStatus(7, "0.1.0", time.time(), None, 0.0, [], [], 1, updated=time.time()))
        assert not [r for r in caplog.records if "clock" in r.getMessage()]
    finally:
        beat.stop()
