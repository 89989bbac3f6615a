"""Binding and running the web admin's listener (``[admin] listen``).

Which process serves it: the one that delivers. With one process that is the
server itself; with several workers it is the delivery process, which the
supervisor restarts like any child. The main process binds the socket once, with
a plain bind before any worker starts (no SO_REUSEPORT), so a second smtpgate on
the same address fails at start-up instead of sharing it, and the SMTP workers,
which bind only their own listeners, never race for it; the serving process
inherits it (``fork``) and a restarted delivery process takes the same socket.

On a loopback address the admin speaks plain HTTP; on any other it speaks HTTPS
with the server's certificate and key (``[tls] cert``/``key``), read at start and
again by a reload.

A reload (``AdminEndpoint.reconfigure``) may move, open or close the listener:
the serving process binds the new address itself (as the user it runs as) and
keeps the old one if it cannot; the sessions in memory survive a move (an admin
stays logged in, unless the move switches between HTTP and HTTPS, which renames
the cookie). The other ``[admin]`` keys, the directory and the guard's
thresholds apply to the next request.

Slow and many connections (``web/http_port.py``): at most ``MAX_CONNECTIONS``
open at once and ``MAX_CONNECTIONS_PER_ADDRESS`` from one client address (a
trusted proxy's count only towards the total), the rest closed at once; the TLS
handshake gets 10 s, and each request head 15 s from the connection's start or
the previous answer, which is also how long an idle keep-alive connection stays.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from smtpgate.config import Config, is_loopback_host
from smtpgate.errors import StartupError
from smtpgate.web.conn_cap import ConnectionCap
from smtpgate.web.http_port import (
    MAX_REQUEST_HEADERS,
    REQUEST_HEAD_TIMEOUT,
    SHUTDOWN_TIMEOUT,
    HttpPort,
)
from smtpgate.web.http_socket import bind_endpoint, bind_tcp, http_logger
from smtpgate.web.proxy import trusted_networks

if TYPE_CHECKING:
    # The site (aiohttp, Jinja2, the audit) is imported by the process that serves
    # it when it starts: the parent that binds the socket forks the workers, which
    # would otherwise each carry it (cli/main.py, workload D).
    from aiohttp import web

    from smtpgate.web.site import AdminSite

log = logging.getLogger("smtpgate.web")

#: Connections the web admin holds open at once, and from one client address
#: (an IPv6 /64). A browser opens up to 6 to a host and keeps them for a while;
#: 16 lets two or three admins share one address (a NAT), and 128 keeps what
#: strangers can hold in the delivery process (which also delivers mail) small.
MAX_CONNECTIONS = 128
MAX_CONNECTIONS_PER_ADDRESS = 16


#: The logger the admin's HTTP server reports its errors on (aiohttp's own).
http_log = http_logger("smtpgate.web.http", "web admin")


def bind_admin_socket(cfg: Config) -> socket.socket | None:
    """The admin listener's socket, bound and listening (None: the web admin is off).

    Raises:
        StartupError: the address cannot be bound.
    """
    return bind_endpoint(cfg.admin, "admin.listen")


def tls_context(cfg: Config) -> ssl.SSLContext | None:
    """None on loopback; else a server context with the server's certificate.

    Raises:
        StartupError: the certificate or key cannot be loaded.
    """
    endpoint = cfg.admin.endpoint
    if endpoint is None or is_loopback_host(endpoint[0]):
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = (ssl.TLSVersion.TLSv1_3 if cfg.tls.min_version == "1.3"
                           else ssl.TLSVersion.TLSv1_2)
    try:  # a password, so that OpenSSL never prompts for one on the terminal
        ctx.load_cert_chain(cfg.path(cfg.tls.cert), cfg.path(cfg.tls.key), password=b"")
    except (OSError, ssl.SSLError) as e:
        raise StartupError("tls.cert", f"the web admin cannot load the certificate: {e}") from None
    return ctx


class AdminServer:
    """The running web admin; ``stop()`` ends it and closes its stores."""

    def __init__(self, site: AdminSite, runner: web.AppRunner, listening: HttpPort,
                 ctx: ssl.SSLContext | None, listen: str, cap: ConnectionCap) -> None:
        self.site = site
        self._runner = runner
        self._listening = listening
        self._ctx = ctx
        self.listen = listen
        #: Shared by the old and the new address across a move.
        self._cap = cap

    @classmethod
    async def start(cls, cfg: Config, sock: socket.socket, status_path: Path | None
                    ) -> AdminServer:
        from aiohttp import web

        from smtpgate.web.site import AdminSite

        ctx = tls_context(cfg)
        site = AdminSite(cfg, tls=ctx is not None, status_path=status_path)
        await site.open()
        runner = web.AppRunner(site.app(), access_log=None, handle_signals=False,
                               logger=http_log, keepalive_timeout=REQUEST_HEAD_TIMEOUT,
                               max_headers=MAX_REQUEST_HEADERS,
                               shutdown_timeout=SHUTDOWN_TIMEOUT)
        await runner.setup()
        cap = ConnectionCap(MAX_CONNECTIONS, MAX_CONNECTIONS_PER_ADDRESS,
                            trusted_networks(cfg.admin.trusted_proxies))
        listening = _listen(runner, sock, ctx, cap)
        log.info("web admin on %s://%s/", "https" if ctx else "http", cfg.admin.listen)
        return cls(site, runner, listening, ctx, cfg.admin.listen, cap)

    async def reconfigure(self, cfg: Config) -> None:
        """A reload: a new ``[admin] listen`` is bound here before the old one is
        closed (if it cannot be bound, the old one stays, logged); the certificate
        is read again; the site takes the rest (``AdminSite.reconfigure``)."""
        self._cap.exempt = trusted_networks(cfg.admin.trusted_proxies)
        if cfg.admin.listen != self.listen:
            await self._move(cfg)
        elif self._ctx is not None:
            # Read again even under the same name: a renewal replaces the file.
            try:  # new handshakes use it
                self._ctx.load_cert_chain(cfg.path(cfg.tls.cert), cfg.path(cfg.tls.key),
                                          password=b"")
            except (OSError, ssl.SSLError) as e:
                log.error("reload: tls.cert: the web admin keeps its certificate: %s", e)
        await self.site.reconfigure(cfg, tls=self._ctx is not None)

    async def _move(self, cfg: Config) -> None:
        endpoint = cfg.admin.endpoint
        assert endpoint is not None, "AdminEndpoint closes a web admin turned off"
        try:
            ctx = tls_context(cfg)
            sock = await self._listening.bind_for_move(endpoint)
        except (OSError, StartupError) as e:
            why = e.strerror or e if isinstance(e, OSError) else e
            log.error("reload: admin.listen: cannot listen on %s: %s; still on %s",
                      cfg.admin.listen, why, self.listen)
            return
        listening = _listen(self._runner, sock, ctx, self._cap)
        await self._listening.stop()  # the old address: closed, requests in flight end
        self._listening, self._ctx, self.listen = listening, ctx, cfg.admin.listen
        log.info("web admin moved to %s://%s/", "https" if ctx else "http", cfg.admin.listen)

    @property
    def url(self) -> str:
        """Where it answers, as ``[admin]``'s ``url`` says it."""
        return f"{'https' if self._ctx is not None else 'http'}://{self.listen}/"

    async def stop(self) -> None:
        await self._listening.stop()  # not one of the runner's sites
        await self._runner.cleanup()
        await self.site.close()


def _listen(runner: web.AppRunner, sock: socket.socket, ctx: ssl.SSLContext | None,
            cap: ConnectionCap) -> HttpPort:
    """Serve ``runner`` on ``sock`` through ``HttpPort`` (web/http_port.py): the
    connection caps and the handshake's deadline; on HTTPS, plain HTTP sent there
    is answered with a 400."""
    assert runner.server is not None, "runner.setup() first"
    port = HttpPort(sock, runner.server, ctx, cap, "web admin")
    port.start()
    return port


class AdminEndpoint:
    """The web admin of the process that serves it, following reloads: it may be
    opened (bound here) by a reload, moved, or closed."""

    def __init__(self, status_path: Path | None,
                 serving: Callable[[str], None] = lambda url: None) -> None:
        self.status_path = status_path
        self.server: AdminServer | None = None
        #: Told the URL served after each start and reload ("" for none): what
        #: ``smtpgate status`` shows, which a failed move must not change.
        self._serving = serving
        # Reloads are applied in the background, one at a time, in order.
        self._lock = asyncio.Lock()

    async def start(self, cfg: Config, sock: socket.socket | None) -> None:
        """On ``sock`` (inherited from the main process); without one, the address
        of ``cfg`` is bound here (a delivery process restarted after a reload
        opened or moved the web admin)."""
        if sock is None:
            if cfg.admin.endpoint is None:
                self._serving("")
                return
            try:
                sock = bind_tcp(*cfg.admin.endpoint)
            except OSError as e:
                log.error("admin.listen: cannot listen on %s: %s", cfg.admin.listen,
                          e.strerror or e)
                self._serving("")
                return
        try:
            self.server = await AdminServer.start(cfg, sock, self.status_path)
        except BaseException:
            sock.close()  # not left listening with nobody answering
            raise
        self._serving(self.server.url)

    async def reconfigure(self, cfg: Config) -> None:
        async with self._lock:
            try:
                await self._reconfigure(cfg)
            except Exception:  # a reload never stops the server
                log.exception("reload: the web admin could not follow the new [admin]")

    async def _reconfigure(self, cfg: Config) -> None:
        if self.server is None:
            await self.start(cfg, None)
        elif cfg.admin.endpoint is None:
            server, self.server = self.server, None
            await server.stop()
            log.info("web admin closed")
            self._serving("")
        else:
            await self.server.reconfigure(cfg)
            self._serving(self.server.url)

    async def stop(self) -> None:
        async with self._lock:
            if self.server is not None:
                await self.server.stop()
                self.server = None
