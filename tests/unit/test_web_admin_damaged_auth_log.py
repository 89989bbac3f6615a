"""The web admin's overview and auth-log pages on an auth log holding a garbage line
of deep nesting (``[[[[...``, as `smtpgate report` meets it too): json.loads raises
RecursionError, which is no ValueError, so the page that reads the log's tail was a
500 for as long as the line stayed in the tail. A real site (aiohttp's test server)
over a real file; the line is skipped, the records around it are shown."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pyotp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from smtpgate.config import AccountsConfig, AdminConfig, Config, ListenerConfig
from smtpgate.web import authlog_view
from smtpgate.web.site import AdminSite

PASSPHRASE = "admin passphrase 4 tests"


def _record(user: str) -> bytes:
    now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return (json.dumps({"time": now, "listener": "submission", "client_ip": "198.51.100.7",
                        "client_port": 1, "tls": "TLSv1.3", "mechanism": "PLAIN",
                        "username": user, "result": "failure", "reason": "bad password",
                        "session": "s", "front_door": "smtp"}) + "\n").encode()


def test_read_attempts_skips_a_line_nested_too_deep(tmp_path: Path) -> None:
    log = tmp_path / "auth.log"
    log.write_bytes(_record("a@x.org") + b"[" * 100_000 + b"\n" + _record("b@x.org"))
    assert [a.username for a in authlog_view.read_attempts(log)] == ["a@x.org", "b@x.org"]


@pytest.mark.filterwarnings("ignore::aiohttp.web_exceptions.NotAppKeyWarning")
async def test_the_pages_that_read_the_log_still_answer(tmp_path: Path) -> None:
    (tmp_path / "auth.log").write_bytes(_record("a@x.org") + b'{"x": ' * 50_000 + b"\n")
    cfg = Config(
        listeners=[ListenerConfig(name="s", address="127.0.0.1:2587", tls="starttls")],
        admin=AdminConfig(listen="127.0.0.1:9480"), base_dir=tmp_path,
        accounts=AccountsConfig(argon2_memory_kib=8192, argon2_time_cost=1))
    site = AdminSite(cfg, tls=False, status_path=None)
    await site.open()
    try:
        _admin, secret = site.service("-", "test").add_web_admin("root", PASSPHRASE)
        async with TestClient(TestServer(site.app())) as client:
            resp = await client.post(
                "/login", data={"login_token": "t" * 16, "name": "root",
                                "password": PASSPHRASE, "code": pyotp.TOTP(secret).now()},
                headers={"Cookie": "smtpgate_login=" + "t" * 16}, allow_redirects=False)
            assert resp.status == 303
            for page in ("/", "/authlog"):
                got = await client.get(page)
                assert got.status == 200, page
                assert "198.51.100.7" in await got.text(), page
    finally:
        await site.close()
