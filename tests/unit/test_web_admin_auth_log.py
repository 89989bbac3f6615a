"""Web admin login attempts go to the auth log like SMTP ones (listener "admin",
front_door "web_admin", username ``admin:NAME``), so fail2ban, ``smtpgate report``
and the overview see a brute force against the admin page. Before, they went to
the server log only: the auth log of forty guesses at root was empty."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pyotp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from smtpgate.config import AccountsConfig, AdminConfig, Config, GuardConfig, ListenerConfig
from smtpgate.policy.report import Thresholds, build_report, read_records
from smtpgate.web import authlog_view
from smtpgate.web.site import AdminSite

FILTER = Path(__file__).resolve().parents[2] / "contrib" / "fail2ban" / "filter.d" / "smtpgate.conf"
PASSPHRASE = "admin passphrase 4 tests"
ADMIN, ATTACKER = "192.0.2.10", "198.51.100.66"


@pytest.mark.filterwarnings("ignore::aiohttp.web_exceptions.NotAppKeyWarning")
async def test_admin_logins_are_in_the_auth_log_for_fail2ban_and_the_report(
        tmp_path: Path) -> None:
    cfg = Config(
        listeners=[ListenerConfig(name="s", address="127.0.0.1:2587", tls="starttls")],
        admin=AdminConfig(listen="127.0.0.1:9480", trusted_proxies=["127.0.0.1"]), base_dir=tmp_path,
        accounts=AccountsConfig(argon2_memory_kib=8192, argon2_time_cost=1),
        guard=GuardConfig(address_failure_limit=1000, lockout_threshold=4,
                          penalty_base=0.01, penalty_max=0.02))
    site = AdminSite(cfg, tls=False, status_path=None)
    await site.open()
    try:
        _admin, secret = site.service("-", "test").add_web_admin("root", PASSPHRASE)
        async with TestClient(TestServer(site.app())) as client:
            async def login(name: str, password: str, code: str, via: str = ATTACKER) -> int:
                client.session.cookie_jar.clear()
                resp = await client.post(
                    "/login", data={"login_token": "t" * 16, "name": name,
                                    "password": password, "code": code},
                    headers={"Cookie": "smtpgate_login=" + "t" * 16,
                             "X-Forwarded-For": via}, allow_redirects=False)
                return resp.status

            good = pyotp.TOTP(secret).now()
            # The admin, then (from another address, which the guard does not know)
            # an attacker with the password and without the phone.
            assert await login("root", PASSPHRASE, good, via=ADMIN) == 303
            assert await login("nobody", "guess", "123456") == 401
            assert await login("root", "guess", "123456") == 401
            wrong = "000000" if good != "000000" else "111111"
            assert await login("root", PASSPHRASE, wrong) == 401  # the password is known!
            assert await login("root", PASSPHRASE, good) == 401  # a code is good once
            assert await login("root", "guess", "123456") == 401  # the 4th: locked out
            assert await login("root", PASSPHRASE, good) == 429
    finally:
        await site.close()
    log = tmp_path / "auth.log"
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(r["username"], r["result"], r["reason"]) for r in records] == [
        ("admin:root", "success", ""),
        ("admin:nobody", "failure", "no such admin"),
        ("admin:root", "failure", "bad password"),
        ("admin:root", "failure", "bad TOTP code"),
        ("admin:root", "failure", "TOTP code used already"),
        ("admin:root", "failure", "bad password"),
        ("admin:root", "tempfail", records[-1]["reason"]),
    ]
    assert records[-1]["reason"].startswith("blocked: ")
    assert [r["client_ip"] for r in records] == [ADMIN] + [ATTACKER] * 6
    for r in records:
        assert (r["listener"], r["front_door"], r["mechanism"], r["tls"]) == (
            "admin", "web_admin", "PASSWORD+TOTP", None)
        assert r["client_port"] == 0  # behind a proxy: the browser's port is unknown

    report = build_report(read_records([log]), since=None, thresholds=Thresholds(4, 10))
    assert report["accounts"]["admin:root"] == {"success": 1, "failure": 4, "blocked": 1}
    assert report["episodes"]["brute_force"][0]["account"] == "admin:root"
    assert report["top_failing_addresses"][0] == {
        "address": ATTACKER, "failures": 5, "accounts": 2}

    # The overview reads the same records (its charts and offenders).
    attempts = authlog_view.read_attempts(log)
    assert sum(a.result == "failure" for a in attempts) == 5
    assert {a.front_door for a in attempts} == {"web_admin"}

    # fail2ban's filter matches the 5 failures and the blocked attempt, not the login.
    assert _fail2ban_lines(log) == ("7", "0", "6", "1")


def _fail2ban_lines(log: Path) -> tuple[str, ...]:
    """fail2ban-regex's (lines, ignored, matched, missed) for ``log`` and the filter."""
    tool = shutil.which("fail2ban-regex")
    if tool is None:
        pytest.skip("fail2ban-regex not installed")
    out = subprocess.run([tool, str(log), str(FILTER)], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    m = re.search(r"Lines: (\d+) lines, (\d+) ignored, (\d+) matched, (\d+) missed", out)
    assert m is not None, out
    return m.groups()
