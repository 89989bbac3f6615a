"""``config check`` (and ``serve``'s start-up checks) try the shared state's Redis
(``[state] backend = "redis"``) as they try PostgreSQL: a Redis that refuses the
configured password, or asks for one none is configured, is an error naming
``state.password_file``; one that does not answer is a warning (an outage, the
node starts). Before, both passed without a word, and a node with a wrong
password served every login from an address its process had not seen with 454
for as long as it ran. A real Redis (tests/peers/redis_server.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from smtpgate.cli.main import cli
from tests.peers.redis_server import shared_redis
from tests.ports import free_port
from tests.unit.cli_support import write_config


def _own_copy(tmp_path: Path, password: str) -> Path:
    pw = tmp_path / "redis.pw"
    pw.write_text(password + "\n")
    pw.chmod(0o600)
    return pw


def _check(tmp_path: Path, url: str, password_file: Path | None) -> list[dict[str, str]]:
    """The findings under ``state`` (the rest of write_config's set-up has its own)."""
    config = write_config(tmp_path)
    extra = "" if password_file is None else f'password_file = "{password_file}"\n'
    config.write_text(config.read_text() + f'\n[state]\nbackend = "redis"\nredis_url = "{url}"\n'
                      + extra)
    out = CliRunner().invoke(cli, ["config", "check", "--json", "--config", str(config)])
    return [p for p in json.loads(out.output)["problems"] if p["key"].startswith("state")]


def test_a_redis_that_answers_as_configured_passes(tmp_path: Path) -> None:
    server = shared_redis()
    password = server.password_file.read_text().strip()
    assert _check(tmp_path, server.url, _own_copy(tmp_path, password)) == []


@pytest.mark.parametrize("password", ["not the password", None])
def test_a_refused_or_missing_password_is_an_error(tmp_path: Path, password: str | None) -> None:
    server = shared_redis()
    pw = None if password is None else _own_copy(tmp_path, password)
    found = _check(tmp_path, server.url, pw)
    assert [(p["severity"], p["key"]) for p in found] == [("error", "state.password_file")]
    assert ("refused the password" if password else "put it in state.password_file") in (
        found[0]["message"])


def test_a_redis_that_does_not_answer_is_a_warning(tmp_path: Path) -> None:
    found = _check(tmp_path, f"redis://127.0.0.1:{free_port()}/0", _own_copy(tmp_path, "pw"))
    assert [(p["severity"], p["key"]) for p in found] == [("warning", "state.redis_url")]
    assert "does not answer (" in found[0]["message"]
    assert "on_unavailable" in found[0]["message"]


@pytest.mark.parametrize("command", [["guard", "list"], ["user", "unlock", "alice@example.org"]])
def test_guard_commands_with_redis_down_point_at_state_not_a_file(
        tmp_path: Path, command: list[str]) -> None:
    """With the state in Redis, ``guard list`` and ``user unlock`` failing said
    "hint: check [guard].database and its directory", a file no node uses then."""
    config = write_config(tmp_path)
    config.write_text(config.read_text() + f'\n[state]\nbackend = "redis"\n'
                      f'redis_url = "redis://127.0.0.1:{free_port()}/0"\n')
    added = CliRunner().invoke(cli, ["user", "add", "alice@example.org", "--password-stdin",
                                     "--config", str(config)], input="Plum-orbit-canvas-47")
    assert added.exit_code == 0, added.output
    out = CliRunner().invoke(cli, [*command, "--config", str(config)])
    assert out.exit_code == 1, out.output
    assert "Redis" in out.output
    assert "hint: check [state] redis_url and password_file" in out.output, out.output
    assert "[guard].database" not in out.output


def test_with_the_state_in_redis_the_guard_file_is_not_checked(tmp_path: Path) -> None:
    """No process opens [guard].database then: a path no node could create must not
    stop ``serve`` (its start-up runs the same checks) for a file it would not use."""
    server = shared_redis()
    password = server.password_file.read_text().strip()
    config = write_config(tmp_path)
    config.write_text(config.read_text() + '\n[guard]\ndatabase = "cert.pem/guard.sqlite"\n'
                      f'\n[state]\nbackend = "redis"\nredis_url = "{server.url}"\n'
                      f'password_file = "{_own_copy(tmp_path, password)}"\n')
    out = CliRunner().invoke(cli, ["config", "check", "--json", "--config", str(config)])
    found = [p for p in json.loads(out.output)["problems"]
             if p["key"].startswith(("guard", "state"))]
    assert found == []
    assert not list(tmp_path.glob("guard.sqlite*"))
    from smtpgate.config import load_config
    from smtpgate.server.privileges import state_paths

    # serve as root hands the state's files to its user: none of the guard's then.
    assert not [p for p in state_paths(load_config(config)) if "guard.sqlite" in p.name]


@pytest.fixture
def own_redis(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A Redis of this test's own: its memory settings are changed."""
    from tests.peers.redis_server import RedisServer

    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize("policy", ["allkeys-lru", "volatile-ttl"])
def test_a_redis_that_evicts_keys_is_an_error(tmp_path: Path, own_redis, policy: str) -> None:  # type: ignore[no-untyped-def]
    """A Redis with maxmemory and an evicting policy drops the guard's keys once full
    (a block's record, an account's failures): lockouts gone without a word. Before,
    config check and serve's start-up said nothing."""
    own_redis.client().config_set("maxmemory", "1gb")
    own_redis.client().config_set("maxmemory-policy", policy)
    password = own_redis.password_file.read_text().strip()
    found = _check(tmp_path, own_redis.url, _own_copy(tmp_path, password))
    assert [(p["severity"], p["key"]) for p in found] == [("error", "state.redis_url")]
    assert f"maxmemory-policy {policy}" in found[0]["message"]
    assert "set maxmemory-policy noeviction" in found[0]["message"]


@pytest.mark.parametrize(("limit", "policy"), [("1gb", "noeviction"), ("0", "allkeys-lru")])
def test_a_redis_that_keeps_its_keys_passes(tmp_path: Path, own_redis, limit: str,  # type: ignore[no-untyped-def]
                                            policy: str) -> None:
    """noeviction, or no maxmemory at all (nothing is evicted whatever the policy)."""
    own_redis.client().config_set("maxmemory", limit)
    own_redis.client().config_set("maxmemory-policy", policy)
    password = own_redis.password_file.read_text().strip()
    assert _check(tmp_path, own_redis.url, _own_copy(tmp_path, password)) == []


def test_an_acl_user_that_may_not_read_the_policy_is_warned(tmp_path: Path, own_redis) -> None:  # type: ignore[no-untyped-def]
    """An ACL user (the URL's user name, the password in password_file) without INFO:
    the login works, and the policy it could not read is a warning to check by hand."""
    own_redis.client().acl_setuser("smtpgate", enabled=True, passwords=["+acl-user-pw"],
                                   keys=["*"], commands=["+@all", "-info"])
    url = own_redis.url.replace("redis://", "redis://smtpgate@")
    found = _check(tmp_path, url, _own_copy(tmp_path, "acl-user-pw"))
    assert [(p["severity"], p["key"]) for p in found] == [("warning", "state.redis_url")]
    assert "cannot read its maxmemory-policy" in found[0]["message"]
    assert "on_unavailable" not in found[0]["message"]


@pytest.mark.parametrize("user", [None, "smtpgate"])
def test_a_rotated_redis_password_is_read_at_the_next_connection(
        tmp_path: Path, own_redis, user: str | None) -> None:  # type: ignore[no-untyped-def]
    """The password file was read once, at start-up: after a rotation (requirepass, or
    an ACL user's password, changed in Redis and in state.password_file) every new
    connection a node made was refused (invalid username-password pair), logged as
    Redis not answering, until the node was restarted. Each new connection reads the
    file now; with a user name in the URL, as that user."""
    from smtpgate.auth.state_backend import redis_client
    from smtpgate.config import load_config

    admin = own_redis.client()
    url = own_redis.url
    if user is None:
        pw = _own_copy(tmp_path, own_redis.password_file.read_text().strip())
    else:
        admin.acl_setuser(user, enabled=True, passwords=["+before"], keys=["*"],
                          commands=["+@all"])
        url = url.replace("redis://", f"redis://{user}@")
        pw = _own_copy(tmp_path, "before")
    config = write_config(tmp_path)
    config.write_text(config.read_text() + f'\n[state]\nbackend = "redis"\nredis_url = "{url}"\n'
                      f'password_file = "{pw}"\n')
    client = redis_client(load_config(config))
    try:
        assert client.ping()
        if user is None:
            admin.config_set("requirepass", "after")
        else:
            admin.acl_setuser(user, enabled=True, reset_passwords=True, passwords=["+after"],
                              keys=["*"], commands=["+@all"])
        pw.write_text("after\n")
        client.connection_pool.disconnect()  # the next call connects anew
        assert client.ping()
        if user is not None:
            assert client.acl_whoami() in (user, user.encode())
    finally:
        client.close()
        if user is None:  # the fixture's own client stops it with the password it knows
            import redis as redis_py

            redis_py.Redis(port=own_redis.port, password="after").config_set(
                "requirepass", own_redis.password_file.read_text().strip())


def test_a_node_whose_redis_comes_back_evicting_keys_says_so(
        tmp_path: Path, own_redis, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    """Start-up refuses a Redis that evicts keys, but a node started while Redis was
    down (nodes booting before it) was never asked: once Redis answered, with
    maxmemory-policy allkeys-lru, the node served on without a word while a full
    Redis could drop its blocks and failure counts. The heartbeat asks when Redis
    answers again, and once a minute: an error, once; a line when it no longer
    evicts."""
    import logging
    import time

    from smtpgate.config import parse_config
    from smtpgate.server.heartbeat import Heartbeat
    from smtpgate.server.status_file import ServerStatus
    from tests.unit.config_support import MINIMAL, config_dir

    password = own_redis.password_file.read_text().strip()
    cfg = parse_config(MINIMAL + f'[state]\nbackend = "redis"\nredis_url = "{own_redis.url}"\n'
                       f'password_file = "{_own_copy(tmp_path, password)}"\n',
                       config_dir(tmp_path))
    status = ServerStatus(1, "0", 0.0, None, 0.0, [], [], 1, updated=time.time())
    hb = Heartbeat(cfg)

    def beat() -> list[str]:
        hb._next = 0.0  # the next beat is due
        caplog.clear()
        hb.beat(status)
        return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR
                or "evict" in r.getMessage()]

    caplog.set_level(logging.INFO, logger="smtpgate")
    own_redis.stop()
    try:
        assert beat() == []  # Redis down: "cannot write", a warning
    finally:
        own_redis.start()
    own_redis.client().config_set("maxmemory", "1gb")
    own_redis.client().config_set("maxmemory-policy", "allkeys-lru")
    found = beat()
    assert len(found) == 1 and "maxmemory-policy allkeys-lru" in found[0], found
    assert "state.redis_url" in found[0]
    assert beat() == []  # said once
    own_redis.stop()
    try:
        assert beat() == []
    finally:
        own_redis.start()  # its default again: noeviction
    assert [x for x in beat() if "no longer evicts" in x], caplog.text
    # A Redis restarted between two beats is not seen failing (the client reconnects
    # by itself): the policy is asked again every POLICY_EVERY seconds as well.
    own_redis.client().config_set("maxmemory", "1gb")
    own_redis.client().config_set("maxmemory-policy", "volatile-lru")
    assert beat() == []  # not due yet
    hb._next_policy = 0.0
    found = beat()
    assert len(found) == 1 and "maxmemory-policy volatile-lru" in found[0], found
    hb.stop()
