"""A reload of the directory, OAuth and web admin settings: what ``server.reload``
takes and refuses, and how ``auth.services`` hands the auth service over."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import pytest

from smtpgate.auth.login import LoginAttempts
from smtpgate.auth.service import AuthContext
from smtpgate.auth.services import AuthServices
from smtpgate.config import parse_config
from smtpgate.sasl.base import VerifyPassword
from smtpgate.sasl.exchange import AuthResult
from smtpgate.server import reload as reloading
from tests.unit.test_server_processes import _cfg as write_config

LDAP = """
[accounts]
backend = "ldap"
[accounts.ldap]
url = "ldap://127.0.0.1:9"
base_dn = "dc=example,dc=org"
bind_dn = "cn=svc,dc=example,dc=org"
bind_password_file = "{password_file}"
connect_timeout = 1
"""

ISSUER = """
[auth]
mechanisms = ["XOAUTH2", "PLAIN"]
[[auth.oauth_issuers]]
issuer = "https://id.example"
audience = ["smtp"]
jwks_file = "{jwks}"
algorithms = ["HS256"]
"""


def _write(tmp_path: Path, extra: str = "") -> Path:
    """The reload tests' config (tests/unit/test_server_processes.py) plus ``extra``."""
    return write_config(tmp_path, extra)


def test_directory_oauth_and_admin_keys_are_taken_not_named_for_a_restart(tmp_path: Path) -> None:
    path = _write(tmp_path)
    running = parse_config(path.read_text(), tmp_path)
    (tmp_path / "jwks.json").write_text('{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}')
    _write(tmp_path, ISSUER.format(jwks="jwks.json")
           + "[accounts]\ndatabase = 'other.sqlite'\ncache_ttl = 5\n"
           + "[admin]\nlisten = '127.0.0.1:9481'\nsession_lifetime = 60\n")
    new = reloading.load(path, running)
    assert new.cfg.accounts.database == Path("other.sqlite")
    assert new.cfg.accounts.cache_ttl == 5
    assert new.cfg.admin.listen == "127.0.0.1:9481"
    assert new.cfg.admin.session_lifetime == 60
    assert new.cfg.auth.mechanisms == ["XOAUTH2", "PLAIN"]
    assert new.needs_restart == ()
    assert reloading.directory_changed(running, new.cfg)
    assert reloading.oauth_changed(running, new.cfg)


def test_changed_keys_still_names_what_needs_a_restart(tmp_path: Path) -> None:
    path = _write(tmp_path)
    running = parse_config(path.read_text(), tmp_path)
    _write(tmp_path, "[accounts]\ncache_ttl = 5\n[auth]\ndecoy_secret_file = 'd.key'\n")
    new = reloading.load(path, running)
    assert new.cfg.accounts.cache_ttl == 5
    assert new.needs_restart == ("auth.decoy_secret_file",)
    assert reloading.changed_keys(running, new.cfg) == ("accounts.cache_ttl",)


@pytest.mark.parametrize(("extra", "key"), [
    (LDAP.format(password_file="missing.secret"), "accounts.ldap.bind_password_file"),
    (ISSUER.format(jwks="nowhere/jwks.json"), "auth.oauth_issuers.0.jwks_file"),
], ids=["bind password file", "key set file"])
def test_a_missing_file_refuses_the_reload_naming_the_key(
    tmp_path: Path, extra: str, key: str
) -> None:
    path = _write(tmp_path)
    running = parse_config(path.read_text(), tmp_path)
    _write(tmp_path, extra)
    with pytest.raises(reloading.ReloadError) as e:
        reloading.load(path, running)
    assert e.value.key == key
    assert ("missing.secret" in str(e.value)) is (key == "accounts.ldap.bind_password_file")


def test_an_unchanged_directory_is_not_opened_again(tmp_path: Path) -> None:
    # The running LDAP settings name a password file gone since: a reload that
    # does not touch [accounts] does not read it (only a change is checked).
    secret = tmp_path / "bind.secret"
    secret.write_text("pw\n")
    path = _write(tmp_path, LDAP.format(password_file=secret))
    running = parse_config(path.read_text(), tmp_path)
    secret.unlink()
    _write(tmp_path, LDAP.format(password_file=secret) + "[limits]\nmax_connections = 9\n")
    assert reloading.load(path, running).cfg.limits.max_connections == 9


class FakeService:
    def __init__(self, name: str) -> None:
        self.name = name
        self.closed = False
        self.asked: list[str] = []

    async def close(self) -> None:
        self.closed = True

    async def resolve_detailed(self, query: object, ctx: object) -> object:
        self.asked.append("resolve")
        await asyncio.sleep(0)
        from smtpgate.auth.service import Resolution
        from smtpgate.sasl.base import Verdict

        return Resolution(Verdict(ok=True))

    def record(self, *args: object) -> None:
        self.asked.append("record")


def closed(svc: FakeService) -> bool:
    return svc.closed


def test_a_replaced_service_closes_once_the_last_login_holding_it_ends() -> None:
    async def run() -> None:
        old, new = FakeService("old"), FakeService("new")
        services = AuthServices(old)  # type: ignore[arg-type]
        held = services.hold()
        services.replace(new)  # type: ignore[arg-type]
        assert id(services.current) == id(new) and id(held) == id(old)
        await asyncio.sleep(0)
        assert not closed(old)  # a login still holds it
        services.release(held)
        await asyncio.sleep(0)
        assert closed(old) and not closed(new)
        services.replace(FakeService("newer"))  # type: ignore[arg-type]
        await asyncio.sleep(0)
        assert closed(new)  # nobody held it: closed at once
        await services.close()

    asyncio.run(run())


@dataclass(frozen=True)
class Outcome:
    mechanism: str
    result: AuthResult
    username: str
    identity: str
    reason: str = ""
    malformed: bool = False


def test_a_login_under_way_finishes_with_the_service_it_started_with() -> None:
    async def run() -> None:
        old, new = FakeService("old"), FakeService("new")
        login = LoginAttempts(old, None, failure_floor=0.0)  # type: ignore[arg-type]
        attempt = login.begin(AuthContext("submission", "127.0.0.1", 1, "TLSv1.3", "s"))
        await attempt.resolve(VerifyPassword(username="a@example.org", password="pw"))
        login.services.replace(new)  # type: ignore[arg-type]
        attempt.conclude(Outcome("PLAIN", AuthResult.SUCCESS, "a@example.org", "a@example.org"))
        assert old.asked == ["resolve", "record"] and new.asked == []
        await asyncio.sleep(0)
        assert old.closed
        assert id(login.auth) == id(new)
        await login.services.close()

    asyncio.run(run())


def test_a_serving_process_that_cannot_open_the_new_directory_keeps_the_running_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    # The main process checked the new directory; this process still failed to open
    # it (the password file went in between): its logins keep the running one.
    from types import SimpleNamespace

    from smtpgate.auth.directory import StoreUnavailable
    from smtpgate.server import app

    path = _write(tmp_path)
    running = parse_config(path.read_text(), tmp_path)
    _write(tmp_path, ISSUER.format(jwks="jwks.json") + "[accounts]\ncache_ttl = 5\n")
    (tmp_path / "jwks.json").write_text('{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}')
    new = reloading.load(path, running).cfg
    old = FakeService("old")
    login = LoginAttempts(old, None)  # type: ignore[arg-type]
    live = app._Live.__new__(app._Live)
    live.cfg = running
    live.runtime = SimpleNamespace(login=login, auth=old)  # type: ignore[assignment]

    def broken(cfg: object, verifier: object) -> object:
        raise StoreUnavailable("accounts.ldap.bind_password_file /x: gone")

    monkeypatch.setattr(app, "build_auth_service", broken)
    kept, ok = live._new_auth(new)
    assert not ok and kept.accounts == running.accounts
    assert kept.auth.oauth_issuers == [] and kept.auth.mechanisms == running.auth.mechanisms
    assert login.auth is old  # type: ignore[comparison-overlap]
    assert "logins keep the running directory" in caplog.text

    fresh = FakeService("fresh")
    monkeypatch.setattr(app, "build_auth_service", lambda cfg, verifier: fresh)

    async def swap() -> None:
        taken, ok = live._new_auth(new)
        assert ok and taken.accounts.cache_ttl == 5
        assert login.auth is fresh  # type: ignore[comparison-overlap]
        await asyncio.sleep(0)
        assert closed(old)

    asyncio.run(swap())


def test_the_web_admin_opens_the_new_account_store_and_closes_the_old_one(
        tmp_path: Path) -> None:
    from smtpgate.web.site import AdminSite

    path = _write(tmp_path)
    running = parse_config(path.read_text(), tmp_path)
    _write(tmp_path, "[accounts]\ndatabase = 'other.sqlite'\n[admin]\nsession_lifetime = 60\n")
    new = reloading.load(path, running).cfg

    async def run() -> None:
        site = AdminSite(running, tls=False, status_path=None)
        await site.open()
        old = site._store
        assert old is not None
        closed: list[bool] = []
        old.close = lambda: closed.append(True)  # type: ignore[method-assign]
        site._requests = 1  # a request in flight may still use the old store
        await site.reconfigure(new, tls=False)
        assert site._store is not old and (tmp_path / "other.sqlite").exists()
        assert site.sessions.lifetime == 60 and closed == []
        site._requests = 0  # as the middleware does when the request ends
        await site._close_retired()
        assert closed == [True]
        await site.close()

    asyncio.run(run())


def test_session_recheck_and_the_password_policy_are_taken_not_named_for_a_restart(
    tmp_path: Path,
) -> None:
    """Both were named "kept as running until a restart" though the serving process
    applies them (the session's recheck interval, the auth service's and the web
    admin's password policy)."""
    path = _write(tmp_path)
    running = parse_config(path.read_text(), tmp_path)
    _write(tmp_path, "[auth]\nsession_recheck = 3\n[passwords]\nmin_length = 20\n"
                     "max_age_days = 90\n")
    new = reloading.load(path, running)
    assert new.needs_restart == () and new.partly == ()
    assert new.cfg.auth.session_recheck == 3
    assert new.cfg.passwords.min_length == 20 and new.cfg.passwords.max_age_days == 90


def test_a_new_hostname_is_taken_and_delivery_keeping_the_old_one_is_said(tmp_path: Path) -> None:
    path = _write(tmp_path)
    running = parse_config(path.read_text(), tmp_path)
    path.write_text(path.read_text().replace("mail.example.org", "smtp.example.org", 1))
    new = reloading.load(path, running)
    assert new.cfg.hostname == "smtp.example.org" and new.needs_restart == ()
    (note,) = new.partly
    assert note.startswith("hostname: new sessions use it now; delivery keeps "
                           "'mail.example.org' (its EHLO to the next hop")
