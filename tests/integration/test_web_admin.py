"""The web admin in a real browser: headless Debian Chromium driven by Playwright,
against the real `smtpgate serve` (the config `smtpgate init` writes, `workers = 0`,
so on this machine's cores the supervised layout where the delivery process serves
the web admin), with SMTP logins by smtplib and swaks.

One server and one browser for the module; screenshots of each page go to
``test-artifacts/web-admin/`` (git-ignored; ``SMTPGATE_ARTIFACTS`` moves it).
"""

from __future__ import annotations

import base64
import http.client
import os
import re
import smtplib
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyotp
import pytest
from playwright.sync_api import Page, sync_playwright  # a test extra; the browser is Debian's

from tests.integration.conftest import (
    PASSWORD,
    USER,
    Server,
    free_port,
    make_server,
    require_tool,
    wait_http,
)

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(os.environ.get("SMTPGATE_ARTIFACTS", Path(__file__).parents[2] / "test-artifacts"))
BOB = "bob@example.org"
ADMIN_PASSWORD = "admin passphrase 4 tests"
ATTACKER = "127.0.0.77"


@dataclass
class Admin:
    name: str
    totp: pyotp.TOTP
    #: TOTP steps whose code this test used (the server takes a code once).
    used: set[int] = field(default_factory=set)


@dataclass
class Site:
    srv: Server
    port: int
    root: Admin
    eve: Admin
    ops: Admin

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _add_admin(srv: Server, name: str) -> Admin:
    out = srv.cli("admin", "add", name, "--password-stdin", stdin=ADMIN_PASSWORD + "\n").stdout
    uri = next(line for line in out.splitlines() if line.startswith("otpauth://"))
    secret = urllib.parse.parse_qs(urllib.parse.urlparse(uri).query)["secret"][0]
    return Admin(name, pyotp.TOTP(secret))


#: A code of the step before the current one is used only while this many seconds
#: of the current step are left: the server must check it before its own clock
#: leaves the current step (the code is then two steps old and refused).
_LAST_STEP_MARGIN = 10


def _code(admin: Admin, *, lasting: bool = False) -> str:
    """A TOTP code of a step after every one this test used: a code is good once (the
    store takes only a step after the last one used). The server takes the codes of
    the steps on either side of its own (site.py's _totp_step), so up to three
    logins in one step use the step before, this one and the next instead of waiting
    30 s for a new step; a fourth waits. ``lasting``: not the step before, whose
    code is too old a few seconds later (for a code used again after a restart)."""
    while True:
        now, into = divmod(time.time(), 30)
        earliest = int(now) - (0 if lasting or into > 30 - _LAST_STEP_MARGIN else 1)
        step = max([earliest, *(used + 1 for used in admin.used)])
        if step <= int(now) + 1:
            break
        time.sleep(30 - time.time() % 30 + 0.05)
    admin.used.add(step)
    return admin.totp.at(step * 30)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    require_tool("chromium")
    port = free_port()
    srv = make_server(tmp_path_factory.mktemp("web") / "srv", f"""
[admin]
listen = "127.0.0.1:{port}"

[guard]
penalty_base = 0.01
penalty_max = 0.05
address_failure_limit = 6
""")
    srv.add_user(USER, PASSWORD)
    srv.add_user(BOB, PASSWORD)
    root, eve, ops = (_add_admin(srv, n) for n in ("root", "eve", "ops"))
    srv.start()
    wait_http(srv, port)
    yield Site(srv, port, root, eve, ops)
    if srv.proc is not None:
        srv.stop()


@pytest.fixture(scope="module")
def page(site: Site, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Page]:
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),
            executable_path=CHROMIUM,
            headless=True,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"],
            viewport={"width": 1200, "height": 900},
        )
        p = context.new_page()
        p.on("dialog", lambda d: d.accept())
        p.goto(site.url + "/login")
        p.fill("input[name=name]", "root")
        p.fill("input[name=password]", ADMIN_PASSWORD)
        p.fill("input[name=code]", _code(site.root))
        p.click("button[type=submit]")
        p.wait_for_url(site.url + "/")
        yield p
        context.close()


def _shot(page: Page, name: str) -> None:
    out = ARTIFACTS / "web-admin"
    out.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(out / f"{name}.png"), full_page=True)


def _http(port: int, method: str, path: str, body: dict[str, str] | None = None,
          cookie: str = "", source: str = "127.0.0.1", origin: str = ""
          ) -> tuple[int, str, dict[str, str]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30, source_address=(source, 0))
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if cookie:
        headers["Cookie"] = cookie
    if origin:
        headers["Origin"] = origin
    conn.request(method, path, urllib.parse.urlencode(body or {}), headers)
    resp = conn.getresponse()
    text = resp.read().decode("utf-8", "replace")
    conn.close()
    headers = {k.lower(): v for k, v in resp.getheaders()}
    # Every cookie set, "name=value" each, in one header of our own.
    headers["x-cookies"] = "; ".join(c.split(";")[0] for c in resp.msg.get_all("Set-Cookie") or [])
    return resp.status, text, headers


def _smtp_login(srv: Server, user: str, password: str, source: str = "127.0.0.1") -> int:
    """235, or the reply code of the refusal: one AUTH PLAIN attempt."""
    with smtplib.SMTP("127.0.0.1", srv.submission, timeout=30,
                      source_address=(source, 0)) as s:
        s.starttls(context=srv.client_context())
        s.ehlo()
        s.user, s.password = user, password
        try:
            s.auth("PLAIN", s.auth_plain)  # one attempt (login() would try LOGIN too)
        except smtplib.SMTPAuthenticationError as e:
            return e.smtp_code
        return 235


def _cookie(page: Page) -> str:
    c = next(c for c in page.context.cookies() if c["name"] == "smtpgate_admin")
    return f"smtpgate_admin={c['value']}"


def _login(site: Site, name: str, password: str, code: str, source: str = "127.0.0.1",
           session: str = "") -> tuple[int, dict[str, str]]:
    """A login over HTTP, with the login form's token: (status, headers).
    ``session``: the session cookie the browser sends along ("name=value")."""
    status, text, headers = _http(site.port, "GET", "/login", source=source)
    token = re.search(r'name="login_token" value="([^"]+)"', text)
    assert status == 200 and token
    cookies = "; ".join(c for c in (headers["x-cookies"], session) if c)
    status, _, headers = _http(site.port, "POST", "/login", {
        "login_token": token.group(1), "name": name, "password": password, "code": code},
        cookie=cookies, source=source)
    return status, headers


def _session_of(site: Site, admin: Admin) -> tuple[str, str]:
    """(cookie, CSRF token) of a fresh session of ``admin``, logged in over HTTP."""
    status, headers = _login(site, admin.name, ADMIN_PASSWORD, _code(admin))
    assert status == 303, status
    cookie = next(c for c in headers["x-cookies"].split("; ") if c.startswith("smtpgate_admin="))
    _, text, _ = _http(site.port, "GET", "/", cookie=cookie)
    csrf = re.search(r'name="csrf" value="([^"]+)"', text)
    assert csrf
    return cookie, csrf.group(1)


def _failures_on_chart(page: Page) -> int:
    return int(page.get_attribute("svg[data-chart=timeline]", "data-total-failures") or "-1")


# --- the tests ----------------------------------------------------------------------------


def test_pages_show_the_running_server_and_are_screenshotted(site: Site, page: Page) -> None:
    page.goto(site.url + "/")
    assert page.text_content("#config-file") == str(site.srv.config.resolve())
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", page.text_content("#config-loaded") or "")
    _shot(page, "overview")
    page.goto(site.url + "/accounts")
    assert page.locator("#accounts tbody tr").count() == 2
    page.fill("input[name=q]", "bob")  # the little script filters as one types
    assert page.locator("#accounts tbody tr:not([hidden])").count() == 1
    page.click("button:has-text('Search')")
    page.wait_for_url("**/accounts?q=bob")
    assert page.locator("#accounts tbody tr").count() == 1
    _shot(page, "accounts")
    for path, name in (("/queue", "queue"), ("/admin-log", "admin-log")):
        page.goto(site.url + path)
        assert page.locator("h1").count() == 1
        _shot(page, name)
    page.goto(site.url + "/audit")
    page.click("text=Run the audit now")
    page.wait_for_selector("#grade", timeout=60_000)
    assert re.fullmatch(r"[A-F][+-]?|-", page.text_content("#grade") or "")
    _shot(page, "audit")


def test_lock_in_the_browser_refuses_the_next_smtp_login(site: Site, page: Page) -> None:
    assert _smtp_login(site.srv, USER, PASSWORD) == 235
    page.goto(f"{site.url}/accounts/{USER}")
    page.fill("input[name=reason]", "left the company")
    page.click("button:has-text('Lock')")
    assert "locked" in (page.text_content("#state") or "")
    assert _smtp_login(site.srv, USER, PASSWORD) == 535
    _shot(page, "account-locked")
    page.click("button:has-text('Unlock')")
    assert _smtp_login(site.srv, USER, PASSWORD) == 235
    page.goto(site.url + "/admin-log")
    rows = [r.split("\t") for r in page.locator("#adminlog tbody tr").all_inner_texts()]
    assert any(r[1] == "web:root" and r[3] == "account locked" and r[4] == USER for r in rows)


def test_brute_force_shows_on_the_chart_and_the_block_is_lifted(site: Site, page: Page) -> None:
    page.goto(site.url + "/")
    before = _failures_on_chart(page)
    for _ in range(6):
        assert _smtp_login(site.srv, BOB, "wrong password", source=ATTACKER) == 535
    # The address is blocked now: even the right password is refused (454).
    assert _smtp_login(site.srv, BOB, PASSWORD, source=ATTACKER) == 454
    page.goto(site.url + "/")
    assert _failures_on_chart(page) == before + 6
    assert page.locator(f"svg[data-chart=bars] rect[data-label='{ATTACKER}']").count() == 1
    _shot(page, "overview-brute-force")
    page.goto(site.url + "/guard")
    row = page.locator("#blocks tbody tr", has_text=ATTACKER)
    assert row.count() == 1
    _shot(page, "guard")
    row.locator("button:has-text('Lift')").click()
    assert page.locator("#blocks tbody tr", has_text=ATTACKER).count() == 0
    assert _smtp_login(site.srv, BOB, PASSWORD, source=ATTACKER) == 235
    page.goto(f"{site.url}/authlog?address={ATTACKER}&result=failure")
    assert page.locator("#authlog tbody tr.failure").count() == 6
    _shot(page, "authlog")


def test_app_password_added_in_the_browser_works_with_swaks(site: Site, page: Page) -> None:
    swaks = require_tool("swaks")
    page.goto(f"{site.url}/accounts/{BOB}")
    page.fill("input[name=app]", "phone")
    page.click("button:has-text('Add app password')")
    secret = page.text_content("#app-secret") or ""
    assert len(secret) >= 16
    _shot(page, "account-app-password")
    run = subprocess.run(
        [swaks, "--server", "127.0.0.1", "--port", str(site.srv.submission), "-tls",
         "--tls-ca-path", str(site.srv.ca), "--auth", "PLAIN", "--auth-user", BOB,
         "--auth-password", secret, "--from", BOB, "--to", USER, "--silent", "2"],
        check=False, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    # The message counts against bob's hourly limit (200, the default), on the chart.
    page.goto(site.url + "/")
    bar = page.locator(f"svg[data-chart=bars] rect[data-label='{BOB}']")
    assert bar.get_attribute("data-value") == "1"
    chart = page.locator(f"svg[data-chart=bars]:has(rect[data-label='{BOB}'])")
    assert "1 / 200" in (chart.text_content() or "")
    _shot(page, "overview-messages")
    page.goto(f"{site.url}/accounts/{BOB}")
    row = page.locator("#apps tbody tr", has_text="phone")
    assert "127.0.0.1" in (row.inner_text())  # last use, from where
    row.locator("button:has-text('Revoke')").click()
    assert page.locator("#apps tbody tr", has_text="phone").count() == 0
    assert _smtp_login(site.srv, BOB, secret) == 535


def test_posts_without_this_sessions_csrf_token_are_refused(site: Site, page: Page) -> None:
    page.goto(site.url + "/")
    mine = _cookie(page)
    # No token at all.
    status, _, _ = _http(site.port, "POST", f"/accounts/{BOB}/lock", {"reason": "x"}, cookie=mine)
    assert status == 403
    # Another admin's token with this session's cookie, and that admin's own cookie
    # with this session's token: neither session's token is the other's.
    eve_cookie, eve_csrf = _session_of(site, site.eve)
    my_csrf = page.get_attribute("input[name=csrf]", "value") or ""
    assert eve_csrf != my_csrf
    assert _http(site.port, "POST", f"/accounts/{BOB}/lock", {"csrf": eve_csrf},
                 cookie=mine)[0] == 403
    assert _http(site.port, "POST", f"/accounts/{BOB}/lock", {"csrf": my_csrf},
                 cookie=eve_cookie)[0] == 403
    # This session's cookie and token, sent by a page of another site: refused.
    assert _http(site.port, "POST", f"/accounts/{BOB}/lock", {"csrf": my_csrf}, cookie=mine,
                 origin="http://evil.example")[0] == 403
    # A forged cookie is no session: the page sends to the login, a POST is refused.
    forged = "smtpgate_admin=" + base64.urlsafe_b64encode(b"root" * 8).decode()
    status, _, headers = _http(site.port, "GET", "/accounts", cookie=forged)
    assert status == 303 and headers["location"] == "/login"
    assert _http(site.port, "POST", f"/accounts/{BOB}/lock", {"csrf": my_csrf},
                 cookie=forged)[0] == 403
    page.goto(f"{site.url}/accounts/{BOB}")
    assert "active" in (page.text_content("#state") or "")


def test_a_login_ends_the_session_whose_cookie_it_replaces(site: Site) -> None:
    """Before: a login from a browser that still had a live session (a login tab
    left open, another admin's session on a shared machine) gave it a new cookie
    and left the old session alive in the server for its idle timeout; whoever had
    copied that cookie kept using it. The session a login replaces is ended."""
    old, _ = _session_of(site, site.ops)
    assert _http(site.port, "GET", "/", cookie=old)[0] == 200
    status, headers = _login(site, "ops", ADMIN_PASSWORD, _code(site.ops), session=old)
    assert status == 303, status
    new = next(c for c in headers["x-cookies"].split("; ") if c.startswith("smtpgate_admin="))
    assert new != old
    assert _http(site.port, "GET", "/", cookie=new)[0] == 200
    status, _, headers = _http(site.port, "GET", "/", cookie=old)
    assert status == 303 and headers["location"] == "/login"


def test_script_in_account_fields_and_the_auth_log_is_shown_as_text(site: Site, page: Page
                                                                    ) -> None:
    payload = '<script>window.__xss = 1</script><img src=x onerror="window.__xss = 2">'
    # Into the auth log, by a client: a username is whatever it sends.
    assert _smtp_login(site.srv, payload, "nope") == 535
    # Into account fields, by an admin: an app password's name and a lock reason.
    page.goto(f"{site.url}/accounts/{USER}")
    page.fill("input[name=app]", "<script>window.__xss = 3</script>")
    page.click("button:has-text('Add app password')")
    page.fill("input[name=reason]", payload)
    page.click("button:has-text('Lock')")
    for path, cell in ((f"/accounts/{USER}", ".reason"), (f"/accounts/{USER}", ".app-name"),
                       ("/authlog?result=failure", "#authlog td.user")):
        page.goto(site.url + path)
        texts = page.locator(cell).all_text_contents()
        assert any("<script>window.__xss" in t for t in texts), (path, texts)
        assert page.evaluate("window.__xss") is None
        # The only script in the DOM is the page's own; no img came from the payload.
        scripts: list[Any] = page.eval_on_selector_all("script", "els => els.map(e => e.src)")
        assert scripts == [site.url + "/static/admin.js"]
        assert page.locator("img").count() == 0
    _shot(page, "authlog-xss-escaped")
    page.goto(f"{site.url}/accounts/{USER}")
    page.click("button:has-text('Unlock')")


def test_admin_login_failures_get_the_guards_penalties(site: Site, page: Page) -> None:
    """Wrong codes, a replayed code and a wrong password are refused; after the
    guard's limit the address is blocked (for SMTP too), right credentials or not."""
    bad = "127.0.0.88"
    code = _code(site.ops)
    assert _login(site, "ops", ADMIN_PASSWORD, code, source=bad)[0] == 303
    assert _login(site, "ops", ADMIN_PASSWORD, code, source=bad)[0] == 401  # replayed
    wrong = f"{(int(site.ops.totp.now()) + 1) % 1_000_000:06d}"
    assert _login(site, "ops", ADMIN_PASSWORD, wrong, source=bad)[0] == 401
    assert _login(site, "ops", "not the password", site.ops.totp.now(), source=bad)[0] == 401
    # Without a login-form token (a cross-site login), nothing is even checked.
    assert _http(site.port, "POST", "/login", {"name": "ops"}, source=bad)[0] == 403
    for _ in range(3):
        assert _login(site, "nobody", "x", "000000", source=bad)[0] == 401
    assert _login(site, "ops", ADMIN_PASSWORD, site.ops.totp.now(), source=bad)[0] == 429
    assert _smtp_login(site.srv, BOB, PASSWORD, source=bad) == 454
    page.goto(site.url + "/guard")
    page.locator("#blocks tbody tr", has_text=bad).locator("button:has-text('Lift')").click()
    assert page.locator("#blocks tbody tr", has_text=bad).count() == 0


def test_a_totp_code_used_to_log_in_is_refused_after_a_restart(tmp_path: Path) -> None:
    """The last time step used is kept in the account store, not only in memory: a
    code seen (shoulder-surfed, logged by a proxy) cannot log in again once the
    server restarts within its 90 s window."""
    port = free_port()
    srv = make_server(tmp_path / "srv", f'\n[admin]\nlisten = "127.0.0.1:{port}"\n')
    admin = _add_admin(srv, "root")
    site = Site(srv, port, admin, admin, admin)
    srv.start()
    try:
        wait_http(srv, port)
        code = _code(admin, lasting=True)
        assert _login(site, "root", ADMIN_PASSWORD, code)[0] == 303
        assert _login(site, "root", ADMIN_PASSWORD, code)[0] == 401  # replayed
        assert srv.stop() == 0
        srv.start()
        wait_http(srv, port)
        assert _login(site, "root", ADMIN_PASSWORD, code)[0] == 401  # and after a restart
        assert _login(site, "root", ADMIN_PASSWORD, _code(admin))[0] == 303  # the next one
    finally:
        if srv.proc is not None:
            srv.stop()


def test_smtp_guesses_at_an_admins_guard_key_do_not_lock_the_web_admin_out(
        tmp_path: Path) -> None:
    """The web admin's logins are counted under ``admin:NAME``; SMTP AUTH as the
    name ``admin:root`` (anyone who reaches the submission port, while the admin
    listens on loopback) was counted under the same key and locked the admin out
    of the web admin (429 with the right password and code). Such a name is no
    mail account's: its failures count against the address only."""
    port = free_port()
    srv = make_server(tmp_path / "srv", f"""
[admin]
listen = "127.0.0.1:{port}"

[guard]
penalty_base = 0.01
penalty_max = 0.05
lockout_threshold = 2
distributed_addresses = 2
""")
    admin = _add_admin(srv, "root")
    site = Site(srv, port, admin, admin, admin)
    srv.start()
    try:
        wait_http(srv, port)
        for i, name in enumerate(("admin:root", "ADMIN:root", "admin:root", "admin:Root")):
            assert _smtp_login(srv, name, "a guess", source=f"127.0.0.{101 + i}") == 535
        blocks = srv.cli("guard", "list", "--json").stdout
        assert "admin:root" not in blocks.lower(), blocks
        assert _login(site, "root", ADMIN_PASSWORD, _code(admin))[0] == 303
        # The web admin's own lockout still holds: wrong codes from new addresses.
        wrong = f"{(int(admin.totp.now()) + 1) % 1_000_000:06d}"
        for i in range(2):
            assert _login(site, "root", ADMIN_PASSWORD, wrong, source=f"127.0.0.{111 + i}"
                          )[0] == 401
        assert _login(site, "root", ADMIN_PASSWORD, wrong, source="127.0.0.113")[0] == 429
    finally:
        if srv.proc is not None:
            srv.stop()
