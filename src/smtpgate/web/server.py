"""Binding and running the web admin's listener (``[admin] listen``).

Which process serves it: the one that delivers. With one process that is the
server itself; with several workers it is the delivery process, which the
supervisor restarts like any child. The main process binds the socket once, with
a plain bind before any worker starts (no SO_REUSEPORT), so a second smtpgate on
the same address fails at start-up instead of sharing it, and the SMTP workers,
which bind only their own listeners, never race for it; the serving process
inherits it (``fork``) and a restarted delivery process takes the same socket.

On a loopback address the admin speaks plain HTTP; on any other it speaks HTTPS
with the server's certificate and key (``[tls] cert``/``key``), read at start.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import ssl
from pathlib import Path

from aiohttp import web

from smtpgate.config import Config
from smtpgate.errors import StartupError
from smtpgate.web.site import AdminSite

log = logging.getLogger("smtpgate.web")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind_admin_socket(cfg: Config) -> socket.socket | None:
    """The admin listener's socket, bound and listening (None: the web admin is off).

    Raises:
        StartupError: the address cannot be bound.
    """
    endpoint = cfg.admin.endpoint
    if endpoint is None:
        return None
    host, port = endpoint
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(64)
        sock.setblocking(False)
    except OSError as e:
        sock.close()
        raise StartupError("admin.listen", f"cannot listen on {cfg.admin.listen}: "
                                           f"{e.strerror or e}") from None
    return sock


def tls_context(cfg: Config) -> ssl.SSLContext | None:
    """None on loopback; else a server context with the server's certificate.

    Raises:
        StartupError: the certificate or key cannot be loaded.
    """
    endpoint = cfg.admin.endpoint
    if endpoint is None or is_loopback(endpoint[0]):
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = (ssl.TLSVersion.TLSv1_3 if cfg.tls.min_version == "1.3"
                           else ssl.TLSVersion.TLSv1_2)
    try:
        ctx.load_cert_chain(cfg.path(cfg.tls.cert), cfg.path(cfg.tls.key))
    except (OSError, ssl.SSLError) as e:
        raise StartupError("tls.cert", f"the web admin cannot load the certificate: {e}") from None
    return ctx


class AdminServer:
    """The running web admin; ``stop()`` ends it and closes its stores."""

    def __init__(self, site: AdminSite, runner: web.AppRunner) -> None:
        self.site = site
        self._runner = runner

    @classmethod
    async def start(cls, cfg: Config, sock: socket.socket, status_path: Path | None
                    ) -> AdminServer:
        ctx = tls_context(cfg)
        site = AdminSite(cfg, tls=ctx is not None, status_path=status_path)
        await site.open()
        runner = web.AppRunner(site.app(), access_log=None, handle_signals=False)
        await runner.setup()
        await web.SockSite(runner, sock, ssl_context=ctx).start()
        log.info("web admin on %s://%s/", "https" if ctx else "http", cfg.admin.listen)
        return cls(site, runner)

    async def stop(self) -> None:
        await self._runner.cleanup()
        await self.site.close()
