"""Wiring: build every component from the config, serve, stop cleanly.

With ``server.workers = 1`` one process does everything. With more, the parent
binds the listening sockets, forks that many workers that share them (each with
its own event loop, auth thread pool and spool writer), and itself runs only
the delivery worker and supervision. TLS handshakes and Argon2 are CPU-bound, so
this is how one host uses more than one core.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from smtpgate.auth.guard import Guard
from smtpgate.auth.guard_store import SqliteGuardStore
from smtpgate.auth.oauth import TokenVerifier
from smtpgate.auth.service import build_auth_service
from smtpgate.config import Config, ListenerConfig
from smtpgate.policy.rates import RateLimiter
from smtpgate.queue.factory import make_deliverer
from smtpgate.queue.spool import Spool
from smtpgate.queue.worker import DeliveryWorker
from smtpgate.sasl.base import ChannelBinding, ServerMechanism
from smtpgate.sasl.registry import create_server_mechanism, server_mechanism_names
from smtpgate.server.connection import (
    ListenerRuntime,
    ServerRuntime,
    SmtpConnection,
)
from smtpgate.server.limits import ConnectionLimiter
from smtpgate.smtp.engine import EngineSettings
from smtpgate.tls.session import ServerTlsContext, make_server_context

log = logging.getLogger("smtpgate")


def setup_logging(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s")
    )
    root = logging.getLogger("smtpgate")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def offered_mechanisms(cfg: Config, listener: ListenerConfig) -> tuple[str, ...]:
    """Enabled and implemented mechanisms, strongest first (the registry's order)."""
    wanted = {m.upper() for m in (listener.mechanisms or cfg.auth.mechanisms)}
    return tuple(m for m in server_mechanism_names() if m in wanted)


def make_token_verifier(cfg: Config) -> TokenVerifier | None:
    """The OAuth token verifier, when issuers are configured (paths relative to the config)."""
    if not cfg.auth.oauth_issuers:
        return None
    return TokenVerifier(
        cfg.auth.oauth_issuers, read_file=lambda p: cfg.path(Path(p)).read_bytes()
    )


def decoy_secret(cfg: Config) -> bytes:
    """A secret that is stable across restarts and workers, for SCRAM's fake salts
    of unknown users (a salt that changed on restart would reveal the account does
    not exist). Derived from the TLS private key so there is no extra file to keep."""
    try:
        key = cfg.path(cfg.tls.key).read_bytes()
    except OSError:
        key = b""
    return hmac.new(key, b"smtpgate scram decoy salt v1", hashlib.sha256).digest()


def engine_settings(cfg: Config, listener: ListenerConfig) -> EngineSettings:
    hostname = cfg.hostname
    secret = decoy_secret(cfg)
    iterations = cfg.accounts.scram_iterations
    scope = cfg.auth.oauth_scope

    def factory(name: str, cb: ChannelBinding, plus_advertised: bool) -> ServerMechanism:
        return create_server_mechanism(
            name,
            channel_binding=cb,
            hostname=hostname,
            plus_advertised=plus_advertised,
            decoy_secret=secret,
            decoy_iterations=iterations,
            oauth_scope=scope,
        )

    return EngineSettings(
        hostname=hostname,
        mechanism_factory=factory,
        mechanisms=offered_mechanisms(cfg, listener),
        banner=cfg.smtp.banner,
        max_message_size=cfg.limits.max_message_size,
        max_recipients=cfg.limits.max_recipients,
        max_errors=cfg.limits.max_errors,
        starttls=listener.tls == "starttls",
        auth_in_clear=listener.auth_in_clear,
        normalize_bare_lf=cfg.smtp.bare_line_endings == "normalize",
    )


def log_loosenings(cfg: Config) -> None:
    """Principle 3: every loosening of a secure default is named at start-up (the
    list is `smtpgate.preflight.loosenings`, which ``config check`` prints too)."""
    from smtpgate.preflight import loosenings

    for problem in loosenings(cfg):
        log.warning("%s: %s", problem.key, problem.message)


def build_guard(cfg: Config) -> Guard:
    """The guard on its own SQLite file (``[guard].database``).

    Raises:
        GuardStoreError: the file cannot be opened.
    """
    return Guard(SqliteGuardStore(cfg.path(cfg.guard.database)), cfg.guard)


def bind_sockets(cfg: Config, *, reuse_port: bool = False) -> list[socket.socket]:
    """One listening socket per listener. With ``reuse_port`` every worker binds its
    own set and the kernel spreads new connections across them (SO_REUSEPORT); with
    one shared socket, whichever worker wakes first takes a whole burst."""
    socks: list[socket.socket] = []
    for lst in cfg.listeners:
        host, port = lst.host_port
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            sock.bind((host, port))
        except OSError as e:
            sock.close()
            for other in socks:
                other.close()
            raise SystemExit(f"listeners.{lst.name}: cannot bind {lst.address}: {e.strerror}")
        sock.listen(1024)
        sock.setblocking(False)
        socks.append(sock)
    return socks


def _new_loop_runner() -> Callable[[Coroutine[Any, Any, None]], None]:
    try:
        import uvloop

        return uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.run


async def serve_sockets(
    cfg: Config,
    sockets: list[socket.socket],
    tls: ServerTlsContext,
    *,
    with_delivery: bool,
    ready: Callable[[], None] | None = None,
) -> None:
    """Run listeners (and optionally delivery) until SIGTERM/SIGINT."""
    loop = asyncio.get_running_loop()
    # The event loop hands work to threads (Argon2, SQLite, the spool writer) and
    # waits for their results; with the default 5 ms GIL switch interval a busy
    # thread can hold a ready callback back for that long. 0.5 ms keeps AUTH and
    # DATA latency low at a small cost in throughput of the threads themselves.
    sys.setswitchinterval(0.0005)
    auth = build_auth_service(cfg, make_token_verifier(cfg))
    guard = build_guard(cfg)
    spool = Spool(cfg.path(cfg.queue.spool))
    worker: DeliveryWorker | None = None
    worker_task: asyncio.Task[None] | None = None
    if with_delivery:
        worker = DeliveryWorker(spool, make_deliverer(cfg), cfg.queue)
        worker_task = loop.create_task(worker.run())
    runtime = ServerRuntime(
        hostname=cfg.hostname,
        auth=auth,
        spool=spool,
        tls=tls,
        limits=cfg.limits,
        limiter=ConnectionLimiter(cfg.limits.max_connections, cfg.limits.max_connections_per_ip),
        on_stored=worker.wake if worker else (lambda: None),
        handshake_timeout=cfg.tls.handshake_timeout,
        failure_floor=cfg.auth.failure_floor,
        add_received=cfg.smtp.received_header,
        guard=guard,
        rates=RateLimiter(guard, cfg.limits),
        policy=cfg.policy,
    )
    servers = []
    for lst, sock in zip(cfg.listeners, sockets):
        lr = ListenerRuntime(lst.name, lst.tls == "implicit", engine_settings(cfg, lst))
        servers.append(
            await loop.create_server(
                lambda lr=lr: SmtpConnection(runtime, lr),  # type: ignore[misc]
                sock=sock,
            )
        )
        log.info("listening on %s (%s, %s)", lst.address, lst.name, lst.tls)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if ready is not None:
        ready()
    await stop.wait()
    log.info("stopping: no new connections; %d open", len(runtime.connections))
    if worker is not None:
        # Deliveries get the sessions' grace, then are cancelled and stay queued.
        worker.stop(grace=cfg.server.shutdown_grace)
    for srv in servers:
        srv.close()
    for conn in list(runtime.connections):
        conn.shutdown()
    deadline = loop.time() + cfg.server.shutdown_grace
    while runtime.connections and loop.time() < deadline:
        await asyncio.sleep(0.05)
    for conn in list(runtime.connections):
        conn.shutdown(force=True)
    # Spool writes in flight finish (their clients then get 421 after the 250).
    deadline = loop.time() + 5
    while runtime.connections and loop.time() < deadline:
        await asyncio.sleep(0.05)
    if worker is not None and worker_task is not None:
        worker.stop()
        await worker_task
    if runtime.background:
        await asyncio.gather(*runtime.background, return_exceptions=True)
    await auth.close()
    await guard.close()
    await spool.close()
    log.info("stopped")


async def deliver_only(cfg: Config, children: list[int]) -> None:
    """The parent of several workers: delivery, and forwarding signals to children."""
    loop = asyncio.get_running_loop()
    spool = Spool(cfg.path(cfg.queue.spool))
    worker = DeliveryWorker(spool, make_deliverer(cfg), cfg.queue)
    task = loop.create_task(worker.run())
    stop = asyncio.Event()

    def on_signal(sig: int) -> None:
        for pid in children:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    await stop.wait()
    worker.stop(grace=cfg.server.shutdown_grace)  # as in serve_sockets
    await asyncio.to_thread(_reap, children)
    worker.stop()
    await task
    await spool.close()


def _die_with_parent(parent: int) -> None:
    """A worker must not outlive a parent killed with SIGKILL: it would keep the
    listening sockets and the restarted server could not bind them (Linux only)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _reap(children: list[int]) -> None:
    for pid in children:
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass


def run(cfg: Config) -> int:
    """Entry point of ``smtpgate serve``."""
    log_loosenings(cfg)
    tls = make_server_context(cfg.path(cfg.tls.cert), cfg.path(cfg.tls.key), cfg.tls.min_version)
    # A plain bind first: SO_REUSEPORT would otherwise let a second smtpgate on the
    # same addresses start silently and take half of the connections.
    sockets = bind_sockets(cfg)
    runner = _new_loop_runner()
    workers = cfg.server.effective_workers
    if workers == 1:
        runner(serve_sockets(cfg, sockets, tls, with_delivery=True))
        return 0
    for sock in sockets:
        sock.close()
    per_worker = [bind_sockets(cfg, reuse_port=True) for _ in range(workers)]
    children = []
    parent = os.getpid()
    for mine in per_worker:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - exercised by integration tests
            _die_with_parent(parent)
            for other in per_worker:
                if other is not mine:
                    for sock in other:
                        sock.close()
            try:
                runner(serve_sockets(cfg, mine, tls, with_delivery=False))
            finally:
                os._exit(0)
        children.append(pid)
    for socks in per_worker:
        for sock in socks:
            sock.close()
    log.info("started %d worker processes: %s", len(children), children)
    runner(deliver_only(cfg, children))
    return 0
