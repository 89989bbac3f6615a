"""With the guard's state in Redis (``[state] backend = "redis"``) no node keeps
a ``guard.sqlite``: before, ``db migrate`` and ``serve`` made one that nothing
ever used, and administrators asked which of the two was the real state. A real
Redis (tests/peers/redis_server.py) and real server processes."""

from __future__ import annotations

import json
import smtplib
from pathlib import Path

from tests.peers.redis_server import new_prefix, shared_redis

from .conftest import PASSWORD, USER, make_server, require_tool
from .test_attacks import plain


def test_no_guard_file_with_the_state_in_redis(tmp_path: Path) -> None:
    require_tool("redis-server")
    redis = shared_redis()
    srv = make_server(tmp_path / "srv")
    srv.config.write_text(
        srv.config.read_text() + f'\n[state]\nbackend = "redis"\nredis_url = "{redis.url}"\n'
        f'password_file = "{redis.password_file}"\nkey_prefix = "{new_prefix()}"\n')
    for old in srv.root.glob("guard.sqlite*"):  # init makes it, for a single node
        old.unlink()
    srv.add_user(USER, PASSWORD)

    def guard_files() -> list[str]:
        return sorted(p.name for p in srv.root.glob("guard.sqlite*"))

    srv.start()
    try:
        with smtplib.SMTP("127.0.0.1", srv.submission, timeout=20) as c:
            c.starttls(context=srv.client_context())
            c.ehlo()
            code, _ = c.docmd("AUTH", "PLAIN " + plain(USER, "not the password"))
            assert code == 535
    finally:
        srv.stop()
    assert guard_files() == [], "serve"
    migrated = srv.cli("db", "migrate").stdout
    assert "guard database" not in migrated, migrated
    assert "guard state: in Redis" in migrated, migrated
    assert guard_files() == [], "db migrate"
    checked = json.loads(srv.cli("config", "check", "--json", check=False).stdout)
    assert not [p for p in checked["problems"] if p["severity"] == "error"], checked
    listed = srv.cli("guard", "list")
    assert listed.returncode == 0, listed.stderr
    backup = srv.cli("db", "backup").stdout
    assert "guard state: in Redis" in backup, backup
    assert guard_files() == [], "config check, guard list, db backup"
