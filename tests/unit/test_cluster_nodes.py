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
