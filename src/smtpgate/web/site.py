"""The web admin's pages: an aiohttp application over the admin service.

Security model (docs/operations.md, "Web admin"):

- Login is an admin's password (Argon2id) and a TOTP code (RFC 6238), both
  checked every time; a code is accepted once (a replayed code is refused). The
  guard counts failures under the client's address and under ``admin:NAME`` (so
  an admin login failure never locks out the mail account of the same name, but
  the address's penalties and blocks are the same as for SMTP), and refuses as it
  refuses SMTP logins.
- The session is a random id in a cookie (HttpOnly, SameSite=Strict, Secure and
  ``__Host-`` when the listener speaks TLS, as the login form's token cookie is),
  looked up in ``sessions.Sessions``;
  a login makes a new one and ends the one whose cookie it replaces.
- Every POST carries the session's CSRF token; without it, or with another
  session's, it is refused with 403 and changes nothing. The login form has its
  own token (a cookie and a field that must match). A POST whose ``Origin`` is
  another site is refused too.
- Every page is rendered by Jinja2 with autoescaping; charts are SVG drawn with
  every label escaped; the Content-Security-Policy allows scripts only from this
  server's /static/, so an injected ``<script>`` would not run even if it were
  not escaped.
- Every change goes through ``admin.AccountAdmin`` with the admin as the actor
  (``web:NAME``), so the admin log says who changed what, as for the CLI.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast
from urllib.parse import urlsplit

import jinja2
import pyotp
from aiohttp import web
from aiohttp.multipart import BadContentDispositionHeader
from markupsafe import Markup

from smtpgate import metrics
from smtpgate.admin import (
    AccountAdmin,
    AdminError,
    MessageRate,
    RecipientRate,
    admin_on,
    totp_uri,
    web_admin_name,
)
from smtpgate.auth.accounts import open_account_store
from smtpgate.auth.admin_store import AccountStore, AuditActor, NoSuchAccount, WebAdmin
from smtpgate.auth.directory import Account, AppPassword, StoreError
from smtpgate.auth.guard import ADMIN_KEY_PREFIX, Guard
from smtpgate.auth.guard_state import ACCOUNT_KINDS, GuardStoreError
from smtpgate.auth.names import canonical_name
from smtpgate.auth.state_backend import open_guard_state
from smtpgate.config import Config, GuardConfig
from smtpgate.plural import count
from smtpgate.policy.counters_backend import open_rate_counters
from smtpgate.policy.rate_counters import RateCounters, RateCountersError
from smtpgate.queue.manage import QueueManager
from smtpgate.queue.spool import Spool, SpoolError
from smtpgate.tools.audit import AuditOptions, AuditReport, Target, run_audit
from smtpgate.visible import visible
from smtpgate.web import authlog_view, charts, status
from smtpgate.web.http_socket import body_in_time, name_the_server, unread_while_answering
from smtpgate.web.http_socket import known_host as _known_host
from smtpgate.web.login_log import auth_log_path, record_login
from smtpgate.web.proxy import Client, client_of, trusted_networks
from smtpgate.web.sessions import Session, Sessions, credentials_of, tokens_match

if TYPE_CHECKING:
    from multidict import MultiDictProxy

log = logging.getLogger("smtpgate.web")

T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
_LOGIN_COOKIE = "smtpgate_login"
#: The login form's token cookie under TLS: ``__Host-`` binds it to this host over
#: HTTPS (Secure, Path=/, no Domain), so a sibling subdomain or a plain-HTTP page
#: cannot plant one, as for the session cookie.
_HOST_LOGIN_COOKIE = "__Host-smtpgate_login"
#: The largest request body taken (aiohttp's ``client_max_size``): the forms are a
#: few fields typed by hand; more is a 413.
MAX_FORM_BYTES = 64 * 1024
_RESULTS = ("success", "failure", "tempfail", "cancelled", "refused")
#: What an account change that returned False did not find.
_NOTHING_DONE = {"revoke": "no app password of that name",
                 "alias-remove": "not an alias of this account",
                 "domain-revoke": "no such domain granted",
                 "unlock": "the account was not locked"}


def _confirmed_password(form: Mapping[str, object]) -> str:
    """The new password of the account page's **Set password**, typed twice as
    ``user passwd`` asks for it: a typing mistake in a field that shows only dots
    set a password nobody knew, and the page said "done".

    Raises:
        ValueError: the two fields differ (the page shows why; nothing is changed).
    """
    password, again = (form.get(k, "") for k in ("password", "password2"))
    if not isinstance(password, str) or password != again:
        raise ValueError("the two passwords differ; nothing was changed, type the new "
                         "password again in both fields")
    return password


def _may_already(account: str, address: str) -> str:
    """What an alias the account has already is, in ``user alias add``'s words.

    Why: the page said "alias-add: nothing to do", in red, for an address the
    account may already send as (a form sent twice, an alias added by the CLI
    meanwhile), where the CLI says "... may already send as ..." and exits 0: an
    administrator read that the alias had not been added."""
    try:
        account, address = canonical_name(account), canonical_name(address)
    except ValueError:
        pass  # the service took both (it returned False): shown as typed
    return f"{account} may already send as {address}"


def _cram_md5_kept(account: str) -> str:
    """The warning ``user passwd`` gives after a new password of an account opted in
    to CRAM-MD5: the page said only "password: done" (until 2026-12), though the
    reset had just stored a plaintext-equivalent secret of the new password."""
    return (f"{account} has CRAM-MD5 enabled, so a plaintext-equivalent secret of the "
            "new password is stored (anyone who reads the account database can log in "
            f"with it); 'smtpgate user cram-md5 {account} --disable' removes it")


def _guard_key(name: str) -> str:
    """The guard's account key of an admin: never a mail account's name.

    "" (the failure counts against the address only) for a name no admin can
    have: the key is shown by ``smtpgate report``, ``status``, ``guard list`` and
    the Guard page, and a name as typed by anyone who reaches the login page
    would put escape sequences and bidi overrides there. Which names are
    well-formed is no secret, so this tells nothing of which admins exist."""
    try:
        return f"{ADMIN_KEY_PREFIX}{web_admin_name(name)}"
    except ValueError:
        return ""


#: The auth log's result of an admin login (``_log_attempt``) as the metric counts it.
_ADMIN_LOGIN_RESULTS = {"success": "success", "failure": "failure", "tempfail": "refused_guard"}



def admin_guard_config(guard: GuardConfig) -> GuardConfig:
    """The guard of admin logins: ``[guard]``'s thresholds, always on, no allowlist.

    ``guard.enabled = false`` and ``guard.allowlist`` exempt mail logins (a test
    rig, a monitoring probe, a webmail that logs many users in from one address).
    Until 2026-12 they exempted the web admin too: from an allowlisted network,
    or on a server with the guard off, password and TOTP guesses at an admin were
    neither slowed nor limited nor locked out, and such an address also got the
    trusted Argon2id slot. An admin login is never a monitoring probe's."""
    return guard.model_copy(update={"enabled": True, "allowlist": []})

class AdminSite:
    """The application and what it keeps: sessions, the open stores, the last audit."""

    def __init__(self, cfg: Config, *, tls: bool, status_path: Path | None,
                 clock: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self.tls = tls
        self.status_path = status_path
        self.clock = clock
        metrics.prime_admin_logins()
        self.sessions = Sessions(cfg.admin.session_lifetime,
                                 idle_timeout=cfg.admin.session_idle_timeout, clock=clock)
        self._proxies = trusted_networks(cfg.admin.trusted_proxies)
        self.cookie = "__Host-smtpgate_admin" if tls else "smtpgate_admin"
        self.login_cookie = _HOST_LOGIN_COOKIE if tls else _LOGIN_COOKIE
        self.templates = jinja2.Environment(
            loader=jinja2.PackageLoader("smtpgate.web", "templates"),
            autoescape=True, undefined=jinja2.StrictUndefined, finalize=_visible,
        )
        self.templates.filters["stamp"] = _stamp
        # A path segment: Jinja's ``urlencode`` keeps "/", which splits an account
        # name such as ``a/b@example.org`` over two segments (405, 404).
        self.templates.filters["path"] = _quote
        self._store: AccountStore | None = None
        self._guard: Guard | None = None
        self._counters: RateCounters | None = None
        self._spool: Spool | None = None
        #: Logins being answered per client address (the guard's address key) and
        #: per admin name (``admin:NAME``): one at a time, so each sees the
        #: failures of the one before.
        self._logins: dict[str, _Turn] = {}
        #: One admin password verification at a time in this process. Each is a
        #: full Argon2id run ([accounts] argon2_memory_kib: 64 MiB by default),
        #: for a name of no admin too (the decoy hash); on the default thread pool
        #: as many ran at once as it has threads (6 on two cores, 20 on sixteen),
        #: outside the hash scheduler that bounds SMTP AUTH's: twelve strangers'
        #: logins from twelve addresses took this process, which also delivers
        #: mail, from 65 to 450 MiB. An attempt the guard trusts (an address the
        #: admin has logged in from, without recent failures) has a slot of its own, as in SMTP AUTH's scheduler
        #: (auth/verify_scheduler.py), so the admin never waits for strangers'.
        self._verifying = asyncio.Semaphore(1)
        self._verifying_trusted = asyncio.Semaphore(1)
        self.last_audit: AuditReport | None = None
        self.last_audit_time: float | None = None
        #: Requests being answered, and the stores a reload replaced, closed once
        #: no request that may use them is left (``reconfigure``).
        self._requests = 0
        self._retired: list[AccountStore] = []

    # --- life cycle ------------------------------------------------------------------

    async def open(self) -> None:
        """Open the stores. Raises StoreError, GuardStoreError."""
        self._store = await asyncio.to_thread(open_account_store, self.cfg, outage_ok=True)
        self._guard = Guard(await asyncio.to_thread(open_guard_state, self.cfg),
                            admin_guard_config(self.cfg.guard),
                            self.cfg.state, reads_on_loop=self.cfg.server.sqlite_reads_on_loop)
        try:
            self._counters = await asyncio.to_thread(open_rate_counters, self.cfg)
        except RateCountersError as e:
            log.warning("web admin: no rate counters, no messages-per-hour chart: %s", e)
        self._spool = Spool(self.cfg.path(self.cfg.queue.spool), prefill=False)

    async def reconfigure(self, cfg: Config, *, tls: bool) -> None:
        """A reload: the next request sees ``cfg`` (``[admin]``, the guard's
        thresholds, the limits); a changed ``[accounts]`` opens the new store (if
        it cannot be opened, the old one stays, logged)."""
        old, self.cfg = self.cfg, cfg
        self.tls = tls
        self.cookie = "__Host-smtpgate_admin" if tls else "smtpgate_admin"
        self.login_cookie = _HOST_LOGIN_COOKIE if tls else _LOGIN_COOKIE
        self.sessions.lifetime = cfg.admin.session_lifetime
        self.sessions.idle_timeout = cfg.admin.session_idle_timeout
        self._proxies = trusted_networks(cfg.admin.trusted_proxies)
        if self._guard is not None:
            self._guard.reconfigure(admin_guard_config(cfg.guard), cfg.state)
        if old.accounts == cfg.accounts:
            return
        try:
            store = await asyncio.to_thread(open_account_store, cfg)
        except StoreError as e:
            log.error("reload: web admin keeps its account store: %s", e)
            self.cfg = cfg.model_copy(update={"accounts": old.accounts})
            return
        if self._store is not None:
            self._retired.append(self._store)
        self._store = store
        await self._close_retired()

    async def _close_retired(self) -> None:
        if self._requests == 0 and self._retired:
            stores, self._retired = self._retired, []
            for store in stores:
                try:
                    await asyncio.to_thread(store.close)
                except Exception as e:  # noqa: BLE001 - never the request's failure
                    log.warning("web admin: closing the replaced account store: %s", e)

    async def close(self) -> None:
        for store in self._retired:
            store.close()
        self._retired = []
        if self._guard is not None:
            await self._guard.close()
        if self._counters is not None:
            self._counters.close()
        if self._spool is not None:
            await self._spool.close()
        if self._store is not None:
            self._store.close()

    @property
    def guard(self) -> Guard:
        assert self._guard is not None, "open() first"
        return self._guard

    def service(self, admin: str, action: str) -> AccountAdmin:
        """The admin service acting for ``admin`` (its changes are logged under
        ``web:ADMIN``). Not closed after use: the store stays open."""
        assert self._store is not None, "open() first"
        return admin_on(self._store, self.cfg, AuditActor(f"web:{admin}", f"web admin {action}"))

    async def call(self, admin: str, action: str, fn: Callable[[AccountAdmin], T]) -> T:
        """``fn(service)`` in a thread (Argon2 and SQL block)."""
        return await asyncio.to_thread(fn, self.service(admin, action))

    def client(self, request: web.Request) -> Client:
        """The client's address and whether it spoke HTTPS to a trusted proxy
        (``web/proxy.py``)."""
        return client_of(request, self._proxies)

    def secure(self, request: web.Request) -> bool:
        """Whether cookies get ``Secure``: this listener speaks TLS, or a trusted
        proxy says the browser did."""
        return self.tls or self.client(request).https_via_proxy

    # --- application -----------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._headers], client_max_size=MAX_FORM_BYTES)
        name_the_server(app)  # also what aiohttp answers before the middleware
        app.router.add_static("/static/", Path(__file__).parent / "static")
        get, post = app.router.add_get, app.router.add_post
        get("/login", self.login_page)
        post("/login", self.login)
        post("/logout", self.logout_request)
        get("/", self.page(self.overview))
        get("/accounts", self.page(self.accounts))
        post("/accounts/add", self.page(self.account_add))
        get("/accounts/{name}", self.page(self.account))
        post("/accounts/{name}/{action}", self.page(self.account_change))
        get("/guard", self.page(self.guard_page))
        post("/guard/unblock", self.page(self.unblock))
        get("/authlog", self.page(self.authlog))
        get("/queue", self.page(self.queue))
        get("/audit", self.page(self.audit))
        post("/audit", self.page(self.run_audit))
        get("/admin-log", self.page(self.admin_log))
        return app

    @web.middleware
    async def _headers(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        self._requests += 1
        try:
            _known_host(request, self.cfg, self.cfg.admin, "web admin")
            await body_in_time(request, "web admin", MAX_FORM_BYTES)
            with unread_while_answering(request):
                resp = await handler(request)
        except web.HTTPException as e:
            resp = e
        except Exception:
            # aiohttp's own 500 would leave this middleware without the headers
            # below (no CSP, no frame ban); the traceback goes to the log only.
            log.exception("web admin: unexpected error answering %s %s",
                          request.method, request.path)
            resp = web.HTTPInternalServerError(
                text="Internal error: the server log has the details.\n")
        finally:
            self._requests -= 1
            await self._close_retired()
        resp.headers["Content-Security-Policy"] = _CSP
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["Referrer-Policy"] = "same-origin"  # "no-referrer" makes Origin "null"
        resp.headers["X-Frame-Options"] = "DENY"
        resp.headers.setdefault("Cache-Control", "no-store")
        resp.headers["Server"] = "smtpgate"  # not aiohttp's "Python/3.x aiohttp/3.y.z"
        if isinstance(resp, web.HTTPException):
            raise resp
        return resp

    def render(self, request: web.Request, template: str, session: Session | None,
               code: int = 200, **context: Any) -> web.Response:
        flash = [] if session is None else session_flash(session)
        html = self.templates.get_template(template).render(
            session=session, csrf=session.csrf if session else "", flash=flash,
            hostname=self.cfg.hostname, **context)
        return web.Response(text=html, content_type="text/html", status=code)

    def page(self, handler: Callable[[web.Request, Session], Awaitable[web.StreamResponse]]
             ) -> Handler:
        """A page behind the login: no session (or an admin since removed, or given
        new credentials) goes to the login page; a POST without this session's CSRF
        token is refused, 403."""

        async def wrapped(request: web.Request) -> web.StreamResponse:
            session = self.sessions.get(request.cookies.get(self.cookie))
            if session is not None:
                who = session.admin
                admin = await asyncio.to_thread(
                    lambda: self.service(who, "session").get_web_admin(who))
                if admin is None or not self.sessions.same_credentials(session, admin):
                    self.sessions.end(session.id)
                    session = None
            if session is None:
                if request.method == "POST":
                    # Refused, nothing changed; the login form rather than a dead
                    # end (a page left open while a restart or the lifetime ended it).
                    return self._login_form(
                        request, "Your session has ended (a restart, a logout, "
                        "admin.session_idle_timeout or admin.session_lifetime): log in "
                        "again; nothing was changed.",
                        status=403)
                raise web.HTTPSeeOther("/login")
            if request.method == "POST":
                _same_origin(request)
                form = await _read_form(request)
                token = form.get("csrf")
                if not self.sessions.csrf_ok(session, token if isinstance(token, str) else None):
                    log.warning("web admin: POST %s without a valid CSRF token (admin %s, "
                                "from %s): refused", request.path, session.admin,
                                self.client(request).address)
                    return self.render(
                        request, "refused.html", session, code=403, back=_form_page(request),
                        why="This form was not drawn for this session (a page from before "
                            "a logout and a new login, or another site's): refused.")
                request["form"] = form
            return await handler(request, session)

        return wrapped

    # --- login -----------------------------------------------------------------------

    def _login_form(self, request: web.Request, error: str = "", status: int = 200
                    ) -> web.Response:
        token = secrets.token_urlsafe(24)
        resp = self.render(request, "login.html", None, code=status, login_token=token,
                           error=error)
        resp.set_cookie(self.login_cookie, token, httponly=True, samesite="Strict",
                        secure=self.secure(request), path=self._login_cookie_path,
                        max_age=3600)
        return resp

    @property
    def _login_cookie_path(self) -> str:
        """``/login``, where the token is read; ``/`` for the ``__Host-`` name, which
        a browser takes only with Path=/."""
        return "/" if self.login_cookie == _HOST_LOGIN_COOKIE else "/login"

    async def login_page(self, request: web.Request) -> web.StreamResponse:
        if self.sessions.get(request.cookies.get(self.cookie)) is not None:
            raise web.HTTPSeeOther("/")
        return self._login_form(request)

    async def login(self, request: web.Request) -> web.StreamResponse:
        _same_origin(request)
        form = await _read_form(request)
        token, cookie = form.get("login_token"), request.cookies.get(self.login_cookie)
        if not (isinstance(token, str) and cookie and tokens_match(cookie, token)):
            # Nothing is checked and nobody logged in; a fresh form, since the
            # usual cause is another login tab that replaced this form's cookie.
            log.info("web admin: login form without its cookie's token from %s: "
                     "a fresh form sent", self.client(request).address)
            return self._login_form(request, "This login form had expired (another "
                                    "login page was opened since); please try again.",
                                    status=403)
        name = str(form.get("name", "")).strip().lower()[:64]
        password = str(form.get("password", ""))
        code = str(form.get("code", "")).strip()
        ip = self.client(request).address
        # One attempt per address, and one per admin name, at a time: concurrent
        # ones would all pass the guard's check before any failure is counted (40
        # guesses from one address against a limit of 6; from 40 addresses against
        # a lockout threshold of 10). The address first, then the name, always in
        # that order, so no two attempts wait for each other.
        async with self._turn("address:" + self.guard.keys(ip).address):
            guard_key = _guard_key(name)
            if not guard_key:
                return await self._login(request, name, password, code, ip)
            async with self._turn(guard_key):
                return await self._login(request, name, password, code, ip)

    @contextlib.asynccontextmanager
    async def _turn(self, key: str) -> AsyncIterator[None]:
        """Wait for the attempts of ``key`` before this one; forgotten when none is left."""
        turn = self._logins.setdefault(key, _Turn())
        turn.users += 1
        try:
            async with turn.lock:
                yield
        finally:
            turn.users -= 1
            if turn.users == 0:
                del self._logins[key]

    async def _login(self, request: web.Request, name: str, password: str, code: str,
                     ip: str) -> web.StreamResponse:
        guard_key = _guard_key(name)
        check = await self.guard.check(ip, guard_key)
        if check.refusal is not None:
            log.warning("web admin: login of %r from %s refused by the guard: %s",
                        name, ip, check.refusal.reason)
            # As the SMTP path logs it: fail2ban and the report count it as blocked.
            await self._log_attempt(request, ip, name, "tempfail",
                                    f"blocked: {check.refusal.reason}")
            return self._login_form(
                request, "Too many failed logins from your address or for this admin; "
                "try again later.", status=429)
        if check.delay:
            await asyncio.sleep(check.delay)
        service = self.service(name or "-", "login")
        admin = await asyncio.to_thread(service.get_web_admin, name)
        async with self._verifying_trusted if check.trusted else self._verifying:
            ok = await asyncio.to_thread(service.verify_web_admin_password, admin, password)
        why = "no such admin" if admin is None else "" if ok else "bad password"
        if ok and admin is not None:
            step = self._totp_step(admin, code)
            # A code is good once: the step is spent in the account store, so a
            # restart (or another process) does not make it good again.
            ok = step is not None and await asyncio.to_thread(
                service.use_web_admin_totp_step, admin.name, step)
            # The password was right: the auth log says so (the page never does).
            why = "" if ok else "bad TOTP code" if step is None else "TOTP code used already"
        if admin is None or not ok:
            await self._log_attempt(request, ip, name, "failure", why)
            # Counted for a name of no admin too: a lockout only real names got
            # would tell which names exist (the SMTP path counts unknown names alike).
            await self.guard.failure(check, counts_account=bool(guard_key))
            log.warning("web admin: failed login as %r from %s", name, ip)
            return self._login_form(request, "Wrong name, password or code.", status=401)
        await self.guard.success(check, _guard_key(admin.name))
        await self._log_attempt(request, ip, admin.name, "success", "")
        await asyncio.to_thread(service.record, "web admin login", admin.name, {"address": ip})
        # The session whose cookie this login replaces (a login tab left open,
        # another admin's on a shared machine) ends: it would otherwise stay good
        # for whoever copied the cookie until its idle timeout.
        replaced = request.cookies.get(self.cookie)
        if replaced:
            self.sessions.end(replaced)
            _FLASH.pop(replaced, None)
        session = self.sessions.create(admin.name, credentials_of(admin))
        log.info("web admin: %s logged in from %s", admin.name, ip)
        resp = web.HTTPSeeOther("/")
        # No Max-Age: a cookie of the browser's session, kept in memory, not written
        # to the profile and gone when the browser is closed. The server ends the
        # session itself (``Sessions``: lifetime, idle timeout). With Max-Age set to
        # the lifetime (until 2026-12), an admin who closed the browser on a shared
        # machine left the next user of it logged in, for up to the idle timeout.
        resp.set_cookie(self.cookie, session.id, httponly=True, samesite="Strict",
                        secure=self.secure(request), path="/")
        # With Secure for the __Host- name, or a browser ignores the deletion.
        resp.del_cookie(self.login_cookie, path=self._login_cookie_path,
                        secure=self.secure(request))
        raise resp

    async def _log_attempt(self, request: web.Request, ip: str, name: str, result: str,
                           reason: str) -> None:
        """One login attempt in the auth log (``web/login_log.py``). The port and
        TLS version are the connection's, unknown (0, none) behind a proxy."""
        peer = request.transport.get_extra_info("peername") if request.transport else None
        port = peer[1] if isinstance(peer, tuple) and ip == request.remote else 0
        ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
        tls = ssl_object.version() if ssl_object is not None else None
        metrics.admin_login(_ADMIN_LOGIN_RESULTS[result])
        await asyncio.to_thread(
            record_login, auth_log_path(self.cfg), client_ip=ip, client_port=port, tls=tls,
            name=name, result=result, reason=reason)

    def _totp_step(self, admin: WebAdmin, code: str) -> int | None:
        """The 30 s time step, this one or a neighbour, whose code ``code`` is; None
        if none. Whether it was used before is the store's to say."""
        if not (len(code) == 6 and code.isascii() and code.isdigit()):
            return None
        totp = pyotp.TOTP(admin.totp_secret)
        now = self.clock()
        for offset in (0, -1, 1):
            step = int(now // 30) + offset
            if hmac.compare_digest(totp.at(step * 30), code):
                return step
        return None

    async def logout_request(self, request: web.Request) -> web.StreamResponse:
        """Log out (``logout``, behind the session and CSRF checks of ``page``). A
        Log out sent after the session ended (its idle timeout, a restart) is
        already what was asked: to the login page, the dead cookie deleted. Until
        2026-12 it was the 403 of any form sent without a session, "log in again;
        nothing was changed", which reads as if the admin were still logged in."""
        if self.sessions.get(request.cookies.get(self.cookie)) is None:
            raise self._logged_out(request)
        return await self.page(self.logout)(request)

    async def logout(self, request: web.Request, session: Session) -> web.StreamResponse:
        self.sessions.end(session.id)
        _FLASH.pop(session.id, None)
        raise self._logged_out(request)

    def _logged_out(self, request: web.Request) -> web.HTTPSeeOther:
        """To the login page, the session cookie deleted."""
        resp = web.HTTPSeeOther("/login")
        # A browser ignores a __Host- cookie without Secure, deletions included.
        resp.del_cookie(self.cookie, path="/", secure=self.secure(request))
        return resp

    # --- overview and charts ------------------------------------------------------------

    def _attempts(self) -> list[authlog_view.Attempt]:
        path = self.cfg.auth.log_file
        return authlog_view.read_attempts(None if path is None else self.cfg.path(path))

    async def overview(self, request: web.Request, session: Session) -> web.StreamResponse:
        hours = _int(request.query.get("hours"), 24, 1, 24 * 30)
        attempts = await asyncio.to_thread(self._attempts)
        now = datetime.now(UTC)
        since = now - timedelta(hours=hours)
        g = self.cfg.guard
        ips, nets = authlog_view.top_offenders(attempts, since, v4_prefix=g.subnet_ipv4_prefix,
                                               v6_prefix=g.subnet_ipv6_prefix)
        usage = await self._usage()
        # The figures `smtpgate status` gives after the processes: the queue and
        # the guard's blocks in force, read as it reads them.
        assert self._spool is not None
        manager = QueueManager(self._spool, reporting_mta=self.cfg.hostname)
        entries = await asyncio.to_thread(manager.entries)
        queue = {"messages": len(entries), "held": sum(1 for e in entries if e.state.held),
                 "bytes": sum(e.size for e in entries)}
        try:
            blocks: int | None = len(await self.call(session.admin, "read",
                                                     lambda s: s.guard_blocks()))
        except (GuardStoreError, StoreError):
            blocks = None
        return self.render(
            request, "overview.html", session, queue=queue, blocks=blocks,
            hours=hours, server=status.read(self.status_path),
            log_file=self.cfg.auth.log_file,
            timeline=charts.timeline(authlog_view.over_time(attempts, now, hours=hours),
                                     label=f"logins in the last {hours} h"),
            top_ips=charts.bars([(k, v, None) for k, v in ips],
                                label="failures by address", width=480),
            top_nets=charts.bars([(k, v, None) for k, v in nets],
                                 label="failures by subnet", width=480),
            sprays=authlog_view.spraying(attempts, since, g.spray_accounts),
            spray_accounts=g.spray_accounts,
            legacy=authlog_view.legacy_users(attempts, since),
            usage=charts.bars(usage, label="messages in the last hour against the limit",
                              colour=charts.LIMIT) if usage is not None else None,
        )

    async def _usage(self) -> list[tuple[str, int, int | None]] | None:
        """(account, messages in the sliding hour, limit or None) for accounts that sent."""
        counters = self._counters
        if counters is None:
            return None
        accounts = await asyncio.to_thread(self.service("-", "read").list_accounts)
        keys = [f"acct:{a.name}" for a in accounts]
        try:
            used = await asyncio.to_thread(counters.usage, keys, int(time.time() // 60) - 59)
        except RateCountersError:
            return None
        default = self.cfg.limits.messages_per_hour
        rows: list[tuple[str, int, int | None]] = []
        for a in accounts:
            n = used.get(f"acct:{a.name}", (0, 0))[0]
            limit = default if a.max_messages_per_hour is None else a.max_messages_per_hour
            if n:
                rows.append((a.name, n, limit or None))
        return sorted(rows, key=lambda r: -r[1])[:20]

    # --- accounts -------------------------------------------------------------------------

    async def accounts(self, request: web.Request, session: Session, *,
                       status_code: int = 200, typed: str = "") -> web.StreamResponse:
        q = request.query.get("q", "").strip().lower()
        found = await self.call(session.admin, "read", lambda s: s.list_accounts())
        if q:
            found = [a for a in found if q in a.name]
        return self.render(request, "accounts.html", session, code=status_code, q=q,
                           accounts=found[:500], more=len(found) > 500, typed=typed)

    async def account_add(self, request: web.Request, session: Session
                          ) -> web.StreamResponse:
        """A new account with a password (the policy applies), as ``user add``."""
        form = request["form"]
        name = str(form.get("name", "")).strip()
        password = str(form.get("password", ""))
        try:
            account = await self.call(session.admin, "add",
                                      lambda s: s.add_account(name, password))
        except (AdminError, ValueError, StoreError) as e:
            flash_add(session, "error", f"add {name!r}: {e}")
            return await self.accounts(request, session, status_code=400, typed=name)
        flash_add(session, "ok", f"account {account.name} added")
        raise web.HTTPSeeOther(f"/accounts/{_quote(account.name)}")

    async def account(self, request: web.Request, session: Session, *,
                      secret: tuple[str, str] | None = None, status_code: int = 200
                      ) -> web.StreamResponse:
        name = request.match_info["name"]

        def read(s: AccountAdmin) -> dict[str, Any]:
            a = s.require_account(name)
            return {"account": a, "aliases": s.aliases(a.name),
                    "domains": s.granted_domains(a.name), "apps": s.app_passwords(a.name),
                    "changes": s.admin_log(target=a.name, limit=20)}

        try:
            data = await self.call(session.admin, "read", read)
        except NoSuchAccount:
            raise web.HTTPNotFound(text="no such account") from None
        acct = data["account"]
        history = authlog_view.of_account(await asyncio.to_thread(self._attempts), acct.name)
        return self.render(request, "account.html", session, code=status_code, secret=secret,
                           history=history, limits=self.cfg.limits, **data)

    async def account_change(self, request: web.Request, session: Session
                             ) -> web.StreamResponse:
        name = request.match_info["name"]
        action = request.match_info["action"]
        form = request["form"]

        def field(key: str) -> str:
            v = form.get(key, "")
            return v.strip() if isinstance(v, str) else ""

        def rate(key: str, what: str) -> int | None:
            # ASCII digits only: int() also reads "٣" and " 3_0 ".
            v = field(key)
            if v == "":
                return None
            if not (v.isascii() and v.isdigit()):
                raise ValueError(f"{what} per hour: a whole number (0: unlimited), "
                                 "or empty for the default")
            return int(v)

        ops: dict[str, Callable[[AccountAdmin], object]] = {
            "lock": lambda s: s.lock(name, field("reason") or "locked in the web admin"),
            "unlock": lambda s: s.unlock(name),
            "password": lambda s: s.set_password(name, _confirmed_password(form)),
            "app-password": lambda s: s.add_app_password(name, field("app")),
            "revoke": lambda s: s.revoke_app_password(name, field("app")),
            "alias-add": lambda s: s.add_alias(name, field("alias")),
            "alias-remove": lambda s: s.remove_alias(name, field("alias")),
            "domain-grant": lambda s: s.grant_domain(name, field("domain")),
            "domain-revoke": lambda s: s.revoke_domain(name, field("domain")),
            "mechanisms": lambda s: s.set_allowed_mechanisms(
                name, field("mechanisms").replace(",", " ").split() or None),
            "limits": lambda s: s.change_limits(
                name, [MessageRate(rate("messages", "messages")),
                       RecipientRate(rate("recipients", "recipients"))]),
        }
        if action == "remove":  # as `user remove`; the page is gone, back to the list
            def remove(s: AccountAdmin) -> str:
                account = s.require_account(name).name  # as the queue names it
                s.remove_account(name)
                return account

            try:
                account = await self.call(session.admin, action, remove)
            except NoSuchAccount:
                raise web.HTTPNotFound(text="no such account") from None
            except (AdminError, StoreError) as e:
                flash_add(session, "error", f"remove: {e}")
                raise web.HTTPSeeOther(f"/accounts/{_quote(name)}") from None
            flash_add(session, "ok", f"account {name} removed")
            await self._flash_queued(session, account)
            raise web.HTTPSeeOther("/accounts")
        op = ops.get(action)
        if op is None:
            raise web.HTTPNotFound(text="no such action")
        try:
            result = await self.call(session.admin, action, op)
        except NoSuchAccount:
            raise web.HTTPNotFound(text="no such account") from None
        except (AdminError, ValueError, StoreError) as e:  # a policy refusal is a ValueError
            flash_add(session, "error", f"{action}: {e}")
            return await self.account(request, session, status_code=400)
        if action == "app-password":
            record, secret = cast("tuple[AppPassword, str]", result)
            flash_add(session, "ok", f"app password {record.name!r} added")
            return await self.account(request, session, secret=(record.name, secret))
        if result is False and action == "alias-add":
            # Not an error: what was asked for holds, as `user alias add` says (exit 0).
            flash_add(session, "ok", f"{action}: {_may_already(name, field('alias'))}")
        elif result is False:  # the service's "nothing of that name" (the CLI's error)
            flash_add(session, "error", f"{action}: {_NOTHING_DONE.get(action, 'nothing to do')}")
        else:
            flash_add(session, "ok", f"{action}: done")
            if action == "password" and cast("Account", result).cram_md5_enabled:
                flash_add(session, "error", _cram_md5_kept(cast("Account", result).name))
            if action == "lock":
                await self._flash_queued(session, await self.call(
                    session.admin, "read", lambda s: s.require_account(name).name))
        raise web.HTTPSeeOther(f"/accounts/{_quote(name)}")

    async def _flash_queued(self, session: Session, name: str) -> None:
        """After a lock or a removal, as ``user lock`` and ``user remove`` say it: the
        messages account ``name`` submitted that the queue will still deliver
        (neither touches them). Best effort: a spool that cannot be read says
        nothing."""
        assert self._spool is not None
        manager = QueueManager(self._spool, reporting_mta=self.cfg.hostname)
        try:
            ids = await asyncio.to_thread(manager.to_deliver_for, name)
        except (OSError, SpoolError):
            return
        if ids:
            flash_add(session, "error", f"{count(len(ids), 'message')} {name} submitted "
                      f"{'is' if len(ids) == 1 else 'are'} still queued and will be "
                      "delivered: the Queue page lists them; 'smtpgate queue hold ID' "
                      "keeps one back, 'smtpgate queue delete ID' removes it")

    # --- guard, auth log, queue, audit, admin log ------------------------------------

    async def guard_page(self, request: web.Request, session: Session) -> web.StreamResponse:
        blocks = await self.call(session.admin, "read", lambda s: s.guard_blocks())
        return self.render(request, "guard.html", session, blocks=blocks,
                           account_kinds=ACCOUNT_KINDS)

    async def unblock(self, request: web.Request, session: Session) -> web.StreamResponse:
        key = str(request["form"].get("key", ""))
        kind = str(request["form"].get("kind", ""))
        try:
            if kind == "account" and key.startswith("admin:"):
                await self.call(session.admin, "guard unlock",
                                lambda s: s.unlock_web_admin(key))
            elif kind == "account":
                await self.call(session.admin, "guard unlock", lambda s: s.lift_lockout(key))
            else:
                await self.call(session.admin, "guard unblock", lambda s: s.unblock(key))
            flash_add(session, "ok", f"lifted: {key}")
            if kind == "account" and not key.startswith("admin:"):
                await self._flash_still_locked(session, key)
        except (AdminError, StoreError, GuardStoreError, ValueError) as e:
            flash_add(session, "error", str(e))
        raise web.HTTPSeeOther("/guard")

    async def _flash_still_locked(self, session: Session, key: str) -> None:
        """After a lockout lifted on the Guard page: the account's administrative
        lock, if it has one, stays (``AccountAdmin.lift_lockout``); say so, with
        its reason and where it is lifted. Best effort: an account that cannot be
        read says nothing more."""
        try:
            account = await self.call(session.admin, "read", lambda s: s.get_account(key))
        except StoreError:
            return
        if account is not None and account.locked:
            flash_add(session, "error", f"{account.name} stays locked by an administrator "
                      f"({account.lock_reason or 'no reason given'}): Unlock on its page "
                      "lifts that")

    async def authlog(self, request: web.Request, session: Session) -> web.StreamResponse:
        q = request.query
        f = authlog_view.Filter(q.get("account", "").strip(), q.get("address", "").strip(),
                                q.get("result", "").strip(), q.get("mechanism", "").strip())
        rows = authlog_view.filtered(await asyncio.to_thread(self._attempts), f)
        return self.render(request, "authlog.html", session, f=f, rows=rows,
                           results=_RESULTS, log_file=self.cfg.auth.log_file)

    async def queue(self, request: web.Request, session: Session) -> web.StreamResponse:
        assert self._spool is not None
        manager = QueueManager(self._spool, reporting_mta=self.cfg.hostname)
        now = time.time()
        entries = [e.as_json(now) for e in await asyncio.to_thread(manager.entries)]
        return self.render(request, "queue.html", session, entries=entries)

    async def audit(self, request: web.Request, session: Session) -> web.StreamResponse:
        return self.render(request, "audit.html", session, report=self.last_audit,
                           when=self.last_audit_time)

    async def run_audit(self, request: web.Request, session: Session) -> web.StreamResponse:
        targets = []
        for lst in self.cfg.listeners:
            host, port = lst.host_port
            if host in ("0.0.0.0", "::", ""):
                host = "127.0.0.1" if host != "::" else "::1"
            targets.append(Target(host, port, lst.tls))
        opts = AuditOptions(tls_name=self.cfg.hostname, timeout=10.0, ehlo_name="localhost")
        self.last_audit = await run_audit(targets, opts)
        self.last_audit_time = time.time()
        await self.call(session.admin, "audit", lambda s: s.record(
            "audit run", "listeners", {"grade": self.last_audit.grade if self.last_audit
                                       else "-"}))
        raise web.HTTPSeeOther("/audit")

    async def admin_log(self, request: web.Request, session: Session) -> web.StreamResponse:
        entries = await self.call(session.admin, "read", lambda s: s.admin_log(limit=200))
        return self.render(request, "adminlog.html", session, entries=entries[::-1])


# --- helpers ------------------------------------------------------------------------------


class _Turn:
    """The login attempts of one address: one holds the lock, ``users`` counts all."""

    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


_FLASH: dict[str, list[tuple[str, str]]] = {}
#: Sessions with a message waiting. A message is taken by the page its action
#: redirects to; one whose redirect was never followed (a closed tab, a script)
#: would stay for ever, so the oldest go first past this many.
_FLASH_MAX = 1024


def flash_add(session: Session, kind: str, text: str) -> None:
    """A message for the next page this session sees."""
    if session.id not in _FLASH and len(_FLASH) >= _FLASH_MAX:
        del _FLASH[next(iter(_FLASH))]
    _FLASH.setdefault(session.id, []).append((kind, text))


def session_flash(session: Session) -> list[tuple[str, str]]:
    return _FLASH.pop(session.id, [])


async def _read_form(request: web.Request
                     ) -> MultiDictProxy[str | bytes | bytearray | web.FileField]:
    """The POSTed form. aiohttp decodes it strictly and raises on a body no browser
    sends for these pages (bytes that are not UTF-8, an unknown charset, a broken
    multipart body, a part whose Content-Disposition is not form-data): that is the
    client's error, 400, not a 500 and a traceback."""
    try:
        return await request.post()
    # UnicodeDecodeError is a ValueError; aiohttp's BadContentDispositionHeader a Warning.
    except (ValueError, LookupError, BadContentDispositionHeader) as e:
        log.info("web admin: unreadable form in POST %s from %s (%s): 400",
                 request.path, request.remote, type(e).__name__)
        raise web.HTTPBadRequest(text="The form could not be read.\n") from None


def _same_origin(request: web.Request) -> None:
    """A browser names the page a POST comes from (``Origin``); one from another site
    is refused before its form is read (besides the CSRF token, which it lacks)."""
    origin = request.headers.get("Origin")
    if origin is None:
        return  # not a browser, or an old one: the CSRF token decides
    try:
        netloc = urlsplit(origin).netloc
    except ValueError:  # "http://[::1/": no URL, so no page of this site
        netloc = None
    if origin == "null" or netloc != request.host:
        raise web.HTTPForbidden(text="cross-origin request refused")


def _visible(value: object) -> object:
    """Every value a template prints, through ``smtpgate.visible``: a relay's refusal
    on the Queue page, or a value stored before the checks that now refuse such
    input, could otherwise reverse what a cell shows. Markup (the charts, escaped
    already) and non-strings pass."""
    if not isinstance(value, str) or isinstance(value, Markup):
        return value
    return visible(value)


def _form_page(request: web.Request) -> str:
    """The page whose form posts to ``request``'s path (a path of this site only:
    never taken from the request's headers)."""
    parts = request.path.strip("/").split("/")
    if parts[0] == "accounts" and len(parts) == 3:
        return f"/accounts/{_quote(request.match_info.get('name', ''))}"
    if parts[0] in ("accounts", "guard", "audit"):
        return "/" + parts[0]
    return "/"


def _quote(name: str) -> str:
    from urllib.parse import quote

    return quote(name, safe="@")


def _int(v: str | None, default: int, lo: int, hi: int) -> int:
    try:
        return max(lo, min(hi, int(v or default)))
    except ValueError:
        return default


def _stamp(v: object) -> str:
    if v is None:
        return "-"
    if isinstance(v, (int, float)):
        v = datetime.fromtimestamp(v, UTC)
    if isinstance(v, datetime):
        return v.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    return str(v)


__all__ = ["AdminSite", "totp_uri"]
