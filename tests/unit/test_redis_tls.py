"""Redis over TLS (``rediss://``), as docs/scale-out.md offers it, against a real
``redis-server`` on a private CA that asks for client certificates (Redis's own
default, ``tls-auth-clients yes``): the guard state, the sending counters and
``cluster status`` all reach it with ``[state] ca_file``, ``cert_file`` and
``key_file``. Before those keys, a rediss:// URL could trust only the system's
CAs and present no certificate, so no TLS Redis set up the usual way answered."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from smtpgate.auth.state_backend import open_guard_state
from smtpgate.config import Config, parse_config
from smtpgate.policy.counters_backend import open_rate_counters
from smtpgate.policy.rate_counters import BUCKET_SECONDS, RateCountersError
from smtpgate.preflight import check_state
from smtpgate.server.heartbeat import nodes
from tests.client_pki import TestCa
from tests.peers.redis_server import RedisServer, RedisTls, available
from tests.unit.config_support import MINIMAL, config_dir, problems


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    if available() is not None:
        pytest.skip(available())
    root = tmp_path_factory.mktemp("redis-tls")
    ca = TestCa(root / "pki", "redis")
    server_cert, client = ca.issue_server("redis-server"), ca.issue("smtpgate-node")
    server = RedisServer(root / "redis", RedisTls(server_cert.cert, server_cert.key, ca.pem,
                                                  client.cert, client.key))
    server.start()
    yield server
    server.stop()


def _config(tmp_path: Path, redis: RedisServer, tls_keys: str) -> Config:
    return parse_config(
        MINIMAL + f'[state]\nbackend = "redis"\nredis_url = "{redis.url}"\n'
        f'password_file = "{redis.password_file}"\nkey_prefix = "tls:"\n'
        f'node_name = "mx1"\n{tls_keys}', config_dir(tmp_path))


def _keys(redis: RedisServer) -> str:
    assert redis.tls is not None
    return (f'ca_file = "{redis.tls.ca}"\ncert_file = "{redis.tls.client_cert}"\n'
            f'key_file = "{redis.tls.client_key}"\n')


def test_the_guard_the_counters_and_cluster_status_reach_a_tls_redis(
        tmp_path: Path, tls_redis: RedisServer) -> None:
    cfg = _config(tmp_path, tls_redis, _keys(tls_redis))
    guard = open_guard_state(cfg)
    try:
        snap = guard.snapshot("192.0.2.7", "192.0.2.0/24", "alice@example.org", 1000.0, 900.0)
        assert snap.blocks == ()
    finally:
        guard.close()
    counters = open_rate_counters(cfg)
    try:
        bucket = int(time.time() // BUCKET_SECONDS)
        counters.add_usage(["acct:alice@example.org"], bucket, 1, 2)
        assert counters.usage(["acct:alice@example.org"], bucket) == {
            "acct:alice@example.org": (1, 2)}
    finally:
        counters.close()
    client = tls_redis.client()
    client.set("tls:node:mx1", json.dumps({"node": "mx1"}), ex=60)
    try:
        assert [d["node"] for d in nodes(cfg)] == ["mx1"]
    finally:
        client.delete("tls:node:mx1")
        client.close()


def test_without_the_ca_the_certificate_does_not_verify(
        tmp_path: Path, tls_redis: RedisServer) -> None:
    """The certificate is always checked: the system's CAs do not know this one."""
    assert tls_redis.tls is not None
    cfg = _config(tmp_path, tls_redis, f'cert_file = "{tls_redis.tls.client_cert}"\n'
                                       f'key_file = "{tls_redis.tls.client_key}"\n')
    counters = open_rate_counters(cfg)
    try:
        with pytest.raises(RateCountersError, match="certificate verify failed"):
            counters.usage(["acct:alice@example.org"], 0)
    finally:
        counters.close()


@pytest.mark.parametrize(("url", "keys", "key", "message"), [
    ("redis://127.0.0.1:6379/0", 'ca_file = "ca.pem"\n', "state.ca_file",
     "only apply to a rediss://"),
    ("rediss://127.0.0.1:6379/0", 'cert_file = "c.pem"\n', "state.key_file", "go together"),
])
def test_tls_files_without_tls_or_half_a_pair_are_config_errors(
        tmp_path: Path, url: str, keys: str, key: str, message: str) -> None:
    found = problems(MINIMAL + f'[state]\nbackend = "redis"\nredis_url = "{url}"\n{keys}',
                     config_dir(tmp_path))
    assert message in found[key], found


def _state_findings(cfg: Config) -> list[tuple[str, str, str]]:
    return [(p.severity, p.key, p.message) for p in check_state(cfg)]


def test_config_check_names_the_tls_key_that_makes_redis_refuse(
        tmp_path: Path, tls_redis: RedisServer) -> None:
    """A certificate that does not verify, or no client certificate for a Redis
    that wants one, is the config's fault (an error naming the key), not an
    outage to wait out; with the three keys the check passes."""
    assert tls_redis.tls is not None
    pw = tmp_path / "redis.pw"
    pw.write_text(tls_redis.password_file.read_text())
    pw.chmod(0o600)
    tls_redis.password_file = pw
    assert _state_findings(_config(tmp_path, tls_redis, _keys(tls_redis))) == []
    no_ca = _state_findings(_config(tmp_path, tls_redis, ""))
    assert [(s, k) for s, k, _ in no_ca] == [("error", "state.ca_file")], no_ca
    assert "does not verify" in no_ca[0][2]
    no_cert = _state_findings(_config(tmp_path, tls_redis, f'ca_file = "{tls_redis.tls.ca}"\n'))
    assert [(s, k) for s, k, _ in no_cert] == [("error", "state.cert_file")], no_cert


@pytest.mark.parametrize(("query", "named"), [
    ("ssl_cert_reqs=none", "ssl_cert_reqs"),
    ("ssl_check_hostname=false", "ssl_check_hostname"),
    ("password=hunter2", "password"),
    ("socket_timeout=30&db=1", "socket_timeout"),
])
def test_redis_url_query_parameters_that_override_smtpgate_are_config_errors(
        tmp_path: Path, query: str, named: str) -> None:
    """redis-py takes a URL's query parameters as client settings, over smtpgate's:
    ?ssl_cert_reqs=none turned off the certificate check the docs call always on,
    ?password= beat password_file (and was shown by config show), ?socket_timeout=
    replaced state.timeout. Only ?db= is taken now."""
    found = problems(MINIMAL + f'[state]\nbackend = "redis"\n'
                     f'redis_url = "rediss://redis.example:6380/0?{query}"\n',
                     config_dir(tmp_path))
    assert f"query parameters {named} are not taken: only ?db= is" in found["state.redis_url"], (
        found)
    assert "hunter2" not in json.dumps(found)


def test_a_redis_url_with_db_in_its_query_is_taken(tmp_path: Path) -> None:
    cfg = parse_config(MINIMAL + '[state]\nbackend = "redis"\n'
                       'redis_url = "unix:///run/redis/redis.sock?db=2"\n', config_dir(tmp_path))
    assert cfg.state.redis_url.endswith("?db=2")
