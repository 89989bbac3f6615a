"""Wiring: build every component from the config, serve, stop cleanly.

Start-up is all-or-nothing and in this order: the config was validated by the
caller; `smtpgate.preflight` checks the world against it (certificate, files,
databases, directories, delivery); the parent builds the TLS context and opens
(and migrates) the stores once; only then does it bind, and a bind that fails
means another server owns the addresses. Every failure up to here is a
`smtpgate.errors.StartupError` naming the key, raised before anything listens;
the CLI logs it as one line and exits 2.

With ``server.workers = 1`` one process then does everything. With more, the
parent becomes a supervisor (`server.supervisor`): it forks the workers, each
with its own ``SO_REUSEPORT`` sockets, event loop, auth thread pool and spool
writer, plus one delivery process, and watches them. TLS handshakes and Argon2
are CPU-bound, so this is how one host uses more than one core.

Signals (docs/operations.md): SIGTERM/SIGINT stop; SIGHUP reloads the
certificate and the reloadable keys (`server.reload`) and reopens the log
files; SIGUSR1 only reopens the log files.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import signal
import socket
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from smtpgate import mechanism_facts, metrics
from smtpgate.auth.accounts import accounts_key, open_account_store
from smtpgate.auth.authlog import AuthLog
from smtpgate.auth.decoy import load_decoy_secret
from smtpgate.auth.directory import StoreError
from smtpgate.auth.guard import TICK_EVERY, Guard
from smtpgate.auth.guard_state import GuardStoreError
from smtpgate.auth.networks import parse_networks
from smtpgate.auth.oauth import TokenVerifier, error_reply_fields
from smtpgate.auth.service import build_auth_service
from smtpgate.auth.state_backend import open_guard_state
from smtpgate.config import Config, ListenerConfig
from smtpgate.errors import StartupError
from smtpgate.plural import count
from smtpgate.policy.counters_backend import open_rate_counters
from smtpgate.policy.rates import RateLimiter
from smtpgate.queue.factory import make_deliverer
from smtpgate.queue.space import SpoolSpace
from smtpgate.queue.spool import Spool
from smtpgate.queue.worker import DeliveryWorker
from smtpgate.sasl.base import ChannelBinding, ServerMechanism
from smtpgate.sasl.registry import create_server_mechanism, server_mechanism_names
from smtpgate.server import (
    logs,
    metrics_http,
    open_files,
    pidfile,
    privileges,
    proxied,
    status_file,
    systemd,
)
from smtpgate.server import reload as reloading
from smtpgate.server.connection import MAX_PENDING_OUTPUT, SmtpConnection
from smtpgate.server.connection_rate import ConnectionRate
from smtpgate.server.cpu_affinity import bind_worker
from smtpgate.server.front_doors import (
    FrontDoor,
    bind_auth_sockets,
    close_auth_sockets,
    start_front_doors,
)
from smtpgate.server.heap import freeze_startup_heap
from smtpgate.server.heartbeat import Heartbeat
from smtpgate.server.limits import ConnectionLimiter, SharedConnectionLimiter
from smtpgate.server.metrics_http import bind_metrics_socket
from smtpgate.server.runtime import ListenerRuntime, ServerRuntime
from smtpgate.server.status_file import DownInfo, ProcessInfo, ServerStatus
from smtpgate.server.supervisor import (
    EXIT_OK,
    EXIT_STARTUP,
    ChildSpec,
    Launch,
    StatusWriter,
    Supervisor,
    one_line,
)
from smtpgate.smtp.engine import EngineSettings
from smtpgate.tls.session import ServerTlsContext, TlsConfigError
from smtpgate.web.server import AdminEndpoint, bind_admin_socket

if TYPE_CHECKING:
    from smtpgate.preflight import Problem

log = logging.getLogger("smtpgate")

#: Kept for callers that set up logging through this module.
setup_logging = logs.setup_logging


def offered_mechanisms(cfg: Config, listener: ListenerConfig) -> tuple[str, ...]:
    """Enabled and implemented mechanisms, strongest first (the registry's order)."""
    wanted = {m.upper() for m in (listener.mechanisms or cfg.auth.mechanisms)}
    if listener.client_certificates is not None:
        wanted |= mechanism_facts.CLIENT_CERTIFICATE  # EXTERNAL: docs/mechanisms.md
    else:
        wanted -= mechanism_facts.CLIENT_CERTIFICATE  # no certificate is ever asked for
    wanted -= cfg.accounts.withheld_mechanisms  # SCRAM with no keys to check it
    return tuple(m for m in server_mechanism_names() if m in wanted)


def prime_metrics(cfg: Config) -> None:
    """The label sets ``cfg`` can produce, at 0 (``metrics.prime``): each listener's
    sessions in clear (STARTTLS listeners only) and under each TLS version
    ``tls.min_version`` allows; each mechanism a listener offers, at the SMTP door,
    and each of ``auth.mechanisms`` at each front door, with every result."""
    versions = ("TLSv1.2", "TLSv1.3") if cfg.tls.min_version == "1.2" else ("TLSv1.3",)
    sessions = [(lst.name, v) for lst in cfg.listeners
                for v in (("none", *versions) if lst.tls == "starttls" else versions)]
    logins = {(m, "smtp") for lst in cfg.listeners for m in offered_mechanisms(cfg, lst)}
    doors = {m.upper() for m in cfg.auth.mechanisms} - cfg.accounts.withheld_mechanisms
    logins |= {(m, door.protocol) for door in cfg.auth_listeners for m in doors}
    metrics.prime((lst.name for lst in cfg.listeners), sessions=sessions,
                  logins=sorted(logins))


def make_token_verifier(cfg: Config) -> TokenVerifier | None:
    """The OAuth token verifier, when issuers are configured (paths relative to the config)."""
    if not cfg.auth.oauth_issuers:
        return None
    issuers = [iss if iss.ca_file is None
               else iss.model_copy(update={"ca_file": cfg.path(iss.ca_file)})
               for iss in cfg.auth.oauth_issuers]
    return TokenVerifier(issuers, read_file=lambda p: cfg.path(Path(p)).read_bytes())


def engine_settings(cfg: Config, listener: ListenerConfig, secret: bytes) -> EngineSettings:
    """The engine's settings for one listener. ``secret`` is the decoy secret
    (`smtpgate.auth.decoy`), read at start-up and kept by a reload."""
    hostname = cfg.hostname
    iterations = cfg.accounts.scram_iterations
    scope, openid = error_reply_fields(cfg.auth)

    def factory(name: str, cb: ChannelBinding, plus_advertised: bool) -> ServerMechanism:
        return create_server_mechanism(
            name,
            channel_binding=cb,
            hostname=hostname,
            plus_advertised=plus_advertised,
            decoy_secret=secret,
            decoy_iterations=iterations,
            oauth_scope=scope,
            openid_configuration=openid,
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
        binarymime=cfg.delivery.mode == "maildir",
        max_pending_output=MAX_PENDING_OUTPUT,
        note_missing_fields=cfg.smtp.add_missing_headers,
    )


def spool_space(cfg: Config) -> SpoolSpace:
    """The free-space reserve MAIL keeps (``queue.min_free_space``), measured once
    now; a file system whose space cannot be read is not checked until it can."""
    space = SpoolSpace(cfg.path(cfg.queue.spool),
                       cfg.queue.free_space_reserve(cfg.limits.max_message_size))
    try:
        space.measure_now()
    except OSError as e:
        log.warning("queue.spool: cannot read the free space of %s: %s", space.directory, e)
    return space


def log_warnings(found: list[Problem]) -> None:
    """Principle 3: every loosening of a secure default, and every other warning
    `config check` prints (a certificate expiring or expired), is named at start-up."""
    for problem in found:
        if problem.severity == "warning":
            # An outage (the account database down) stops every login: an ERROR.
            (log.error if problem.outage else log.warning)("%s: %s", problem.key,
                                                           problem.message)


def build_guard(cfg: Config) -> Guard:
    """The guard on its state (``[state] backend``: its own SQLite file, or Redis).

    Raises:
        GuardStoreError: the file cannot be opened.
    """
    guard = Guard(open_guard_state(cfg), cfg.guard, cfg.state,
                  reads_on_loop=cfg.server.sqlite_reads_on_loop)
    if cfg.state.backend == "redis":
        # The attempt gate for the cluster (auth/shared_gate.py); redis_client
        # cannot fail here: open_guard_state read the password file just now.
        from smtpgate.auth.shared_gate import SharedGate
        from smtpgate.auth.state_backend import redis_client

        guard.shared_gate = SharedGate(redis_client(cfg), cfg.state.key_prefix)
    return guard


def build_rates(cfg: Config) -> RateLimiter:
    """The rate limiter, its counters beside the guard's state (the guard's file,
    opened by ``build_guard`` first, which brings the schema up to date; or Redis).

    Raises:
        RateCountersError: the file cannot be opened.
    """
    return RateLimiter(open_rate_counters(cfg), cfg.limits,
                       store_timeout=cfg.state.timeout,
                       reads_on_loop=cfg.server.sqlite_reads_on_loop)


#: Connections the kernel completes and holds for a listener until the worker accepts
#: them (the kernel caps it at net.core.somaxconn): a burst of clients (a restart, a
#: mail client fleet waking up) waits there instead of having its SYNs dropped, which
#: costs each such client a one-second retransmission or more.
LISTEN_BACKLOG = 1024


def bind_sockets(
    cfg: Config, *, reuse_port: bool = False, listen: bool = True
) -> list[socket.socket]:
    """One listening socket per listener. With ``reuse_port`` every worker binds its
    own set and the kernel spreads new connections across them (SO_REUSEPORT); with
    one shared socket, whichever worker wakes first takes a whole burst.

    ``listen=False`` only binds: the check that the addresses are free, without
    a listen queue that would accept connections nobody will serve (a
    connection arriving then is refused, not accepted and reset).

    Raises:
        StartupError: an address cannot be bound (``listeners.N.address``).
    """
    socks: list[socket.socket] = []
    for i, lst in enumerate(cfg.listeners):
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
            raise StartupError(
                f"listeners.{i}.address",
                f"listener {lst.name!r} cannot bind {lst.address}: {e.strerror or e}",
                _BIND_HINTS.get(e.errno or 0, ""),
            ) from None
        if listen:
            sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
        socks.append(sock)
    _refuse_shared_ports(cfg, socks)
    return socks


def _refuse_shared_ports(cfg: Config, socks: list[socket.socket]) -> None:
    """Two listeners of ours on one port and overlapping addresses ('localhost:587'
    and '127.0.0.1:587', or '0.0.0.0:587' beside either) are an error: the kernel
    does not always refuse them. The parent's check binds without listening, where
    SO_REUSEADDR lets the second bind succeed, and the workers bind with
    SO_REUSEPORT, which does too; the two listeners would then share the port's
    connections, a client getting STARTTLS or implicit TLS at random.

    Raises:
        StartupError: ``listeners.N.address`` of the second listener.
    """
    seen: list[tuple[int, ipaddress.IPv4Address | ipaddress.IPv6Address, str]] = []
    for i, (lst, sock) in enumerate(zip(cfg.listeners, socks, strict=True)):
        name = sock.getsockname()
        ip, port = ipaddress.ip_address(name[0]), int(name[1])
        for other_port, other_ip, other_name in seen:
            if port == other_port and _same_or_covered(ip, other_ip):
                for s in socks:
                    s.close()
                raise StartupError(
                    f"listeners.{i}.address",
                    f"listener {lst.name!r} ({lst.address}) and listener {other_name!r} "
                    f"both bind port {port} on {ip if ip == other_ip else 'overlapping addresses'}",
                    "give each listener a port of its own",
                )
        seen.append((port, ip, lst.name))


def _same_or_covered(
    a: ipaddress.IPv4Address | ipaddress.IPv6Address,
    b: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> bool:
    """One address, or one a wildcard covering the other (``::`` covers IPv4 too:
    Linux binds it dual-stack)."""
    if a == b or any(x.version == 6 and x.is_unspecified for x in (a, b)):
        return True
    return a.version == b.version and (a.is_unspecified or b.is_unspecified)


_BIND_HINTS = {
    errno.EADDRINUSE: "another server (or another smtpgate) holds it: stop that one, "
    "or choose another address",
    errno.EACCES: "ports below 1024 need root or CAP_NET_BIND_SERVICE (the contrib "
    "systemd unit grants it)",
    errno.EADDRNOTAVAIL: "no interface of this host has that address",
}


def _new_loop_runner() -> Callable[[Coroutine[Any, Any, None]], None]:
    try:
        import uvloop

        return uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.run


def check_before_binding(cfg: Config) -> ServerTlsContext:
    """Everything that can fail at start-up, done before anything binds or forks:
    the pre-flight checks, then the TLS context, the stores (opened, migrated and
    closed again, so no SQLite connection crosses a fork), the auth log, the OAuth
    issuers and the deliverer. Returns the TLS context.

    Raises:
        StartupError: naming the key of the first problem (the others follow it
            in the message, each with its key).
    """
    from smtpgate.preflight import errors, run_checks

    found = run_checks(cfg)
    problems = errors(found)
    if problems:
        first, *more = problems
        also = "".join(f"; also {p.key}: {p.message}" for p in more)
        raise StartupError(first.key, first.message + also)
    log_warnings(found)
    try:
        tls = reloading.build_tls(cfg)
    except TlsConfigError as e:
        raise StartupError(e.key, str(e).removeprefix(f"{e.key}: ")) from None
    try:
        # A database down now was logged above (preflight): serve starts anyway, and
        # is not kept waiting for it a second time here.
        if not any(p.outage for p in found):
            open_account_store(cfg, outage_ok=True).close()
    except StoreError as e:
        # A backend's error may name its own key (a password file, say).
        raise StartupError(getattr(e, "key", None) or accounts_key(cfg), str(e)) from None
    try:
        open_guard_state(cfg).close()
    except GuardStoreError as e:
        key = "state.password_file" if cfg.state.backend == "redis" else "guard.database"
        raise StartupError(key, str(e)) from None
    log_path = _auth_log_path(cfg)
    if log_path is not None:
        try:
            AuthLog(log_path).close()
        except OSError as e:
            raise StartupError("auth.log_file", f"cannot open {log_path}: {e.strerror}") from None
    try:
        make_token_verifier(cfg)
    except (OSError, ValueError) as e:
        raise StartupError("auth.oauth_issuers", str(e)) from None
    make_deliverer(cfg)  # raises DeliverySetupError, a StartupError
    load_decoy_secret(cfg)  # made now if missing: before any fork, so all share one
    return tls


def _auth_log_path(cfg: Config) -> Path | None:
    f = cfg.auth.log_file
    return None if f is None or str(f) in ("", ".") else cfg.path(f)


# --- one serving process ------------------------------------------------------------------


@dataclass
class ReloadHooks:
    """How a serving process takes SIGHUP and SIGUSR1."""

    #: The config file to read again; None: reopen the logs only.
    config_path: Path | None
    #: Told whether the reload worked, and if not why (the supervisor waits for
    #: every process, and ``smtpgate reload`` prints the first why).
    done: Callable[[bool, str], None] = lambda ok, why: None
    #: Under a supervisor, which already validated and logged the new config:
    #: only errors are logged here.
    quiet: bool = False
    #: Told where the web admin ("admin") and the metrics ("metrics") are served
    #: now ("" for nowhere), by the process that serves them.
    serving: Callable[[str, str], None] = lambda what, url: None


class _Live:
    """What a reload may replace in one serving process."""

    def __init__(
        self,
        cfg: Config,
        runtime: ServerRuntime,
        listeners: dict[str, ListenerRuntime],
        guard: Guard,
        secret: bytes,
        doors: list[FrontDoor],
    ) -> None:
        self.doors = doors
        self.cfg = cfg
        self.runtime = runtime
        self.listeners = listeners
        self.guard = guard
        self.secret = secret
        #: The last ``reload``'s (error, kept, notes), for the status file.
        self.last: tuple[str | None, tuple[str, ...], tuple[str, ...]] = (None, (), ())

    def reopen_logs(self) -> bool:
        ok = True
        try:
            logs.reopen_log_file()
        except OSError as e:
            log.error("reload: server.log_file: cannot reopen: %s", e)
            ok = False
        try:
            self.runtime.auth.reopen_log()
        except OSError as e:
            log.error("reload: auth.log_file: cannot reopen: %s", e)
            ok = False
        return ok

    def reload(self, path: Path, *, quiet: bool) -> bool:
        try:
            new = reloading.load(path, self.cfg)
        except reloading.ReloadError as e:
            log.error("reload failed, keeping the running configuration and certificate: %s", e)
            self.last = (str(e), (), ())
            return False
        if not quiet:
            _log_reload(self.cfg, new)
        ok = self.apply(new.cfg, new.tls)
        error = None if ok else ("the new directory or issuers could not be opened: logins "
                                 "keep the running ones (the server log says why)")
        self.last = (error, new.needs_restart, (*new.warnings, *new.partly))
        return ok

    def apply(self, cfg: Config, tls: ServerTlsContext) -> bool:
        """New handshakes use ``tls``; sessions in flight keep their TLS session and
        their listener settings, and see the new limits and policy from now on.
        A new directory or issuer list gives new logins a new auth service (False:
        it could not be built, and the running one stays)."""
        ok = True
        if reloading.directory_changed(self.cfg, cfg) or reloading.oauth_changed(self.cfg, cfg):
            cfg, ok = self._new_auth(cfg)
        rt = self.runtime
        rt.tls = tls
        rt.hostname = cfg.hostname
        rt.limits = cfg.limits
        rt.limiter.set_limits(cfg.limits.max_connections, cfg.limits.max_connections_per_ip,
                              cfg.limits.connection_rate_per_ip,
                              cfg.limits.connection_rate_exceptions)
        if cfg.limits.max_connections != self.cfg.limits.max_connections:
            open_files.raise_limit(cfg.limits.max_connections)  # this process's own
        rt.handshake_timeout = cfg.tls.handshake_timeout
        rt.login.failure_floor = cfg.auth.failure_floor
        rt.session_recheck = cfg.auth.session_recheck
        rt.auth.passwords = cfg.passwords  # the current service; a new one has them
        rt.add_received = cfg.smtp.received_header
        rt.received_login = cfg.smtp.received_login
        rt.policy = cfg.policy
        if rt.space is not None:  # queue.* is kept as running; the default follows the limit
            rt.space.reserve = cfg.queue.free_space_reserve(cfg.limits.max_message_size)
        self.guard.reconfigure(cfg.guard, cfg.state)
        if rt.rates is not None:
            rt.rates.reconfigure(cfg.limits, cfg.state.timeout)
        for lst in cfg.listeners:
            self.listeners[lst.name] = _listener_runtime(cfg, lst, self.secret)
        for door in self.doors:
            door.cfg = cfg
        self.cfg = cfg
        return ok

    def _new_auth(self, cfg: Config) -> tuple[Config, bool]:
        """Build the auth service of ``cfg`` and make it current (auth/services.py);
        if it cannot be built, ``cfg`` with the running directory and issuers."""
        try:
            auth = build_auth_service(cfg, make_token_verifier(cfg))
        except (StoreError, OSError, ValueError) as e:
            key = (accounts_key(cfg) if reloading.directory_changed(self.cfg, cfg)
                   else "auth.oauth_issuers")
            log.error("reload: %s: %s; logins keep the running directory and issuers", key, e)
            keep = {k: getattr(self.cfg.auth, k) for k in ("mechanisms", *reloading.OAUTH_KEYS)}
            return cfg.model_copy(update={"accounts": self.cfg.accounts,
                                          "auth": cfg.auth.model_copy(update=keep)}), False
        self.runtime.login.services.replace(auth)
        self.runtime.auth = auth
        return cfg, True


def _log_reload(old: Config, new: reloading.Reloaded) -> None:
    """What a successful reload did, once (by the single process or the supervisor)."""
    log.info("reloaded %s; certificate: %s", "configuration", new.tls.description)
    for warning in new.warnings:
        log.warning("reload: %s", warning)
    if new.needs_restart:
        log.warning("reload: %s changed in the file; kept as running until a restart",
                    ", ".join(new.needs_restart))
    for note in new.partly:
        log.warning("reload: %s", note)
    from smtpgate.preflight import loosenings

    before = {(p.key, p.message) for p in loosenings(old)}
    for p in loosenings(new.cfg):
        if (p.key, p.message) not in before:
            log.warning("%s: %s", p.key, p.message)


def _listener_runtime(cfg: Config, lst: ListenerConfig, secret: bytes) -> ListenerRuntime:
    return ListenerRuntime(lst.name, lst.tls == "implicit", engine_settings(cfg, lst, secret),
                           parse_networks(lst.xclient_trusted))


async def serve_sockets(
    cfg: Config,
    sockets: list[socket.socket],
    tls: ServerTlsContext,
    *,
    with_delivery: bool,
    ready: Callable[[], None] | None = None,
    limiter: ConnectionLimiter | None = None,
    hooks: ReloadHooks | None = None,
    auth_sockets: list[socket.socket] | None = None,
    status: ServerStatus | None = None,
    admin_sock: socket.socket | None = None,
    metrics_sock: socket.socket | None = None,
) -> None:
    """Run listeners (and optionally delivery) until SIGTERM/SIGINT. ``ready`` is
    called once the listeners are up and the stores open. ``auth_sockets`` are the
    ``[[auth_listeners]]`` (`server.front_doors`), bound by the caller. ``status``:
    this is the main process, which keeps the status file (`server.status_file`)."""
    loop = asyncio.get_running_loop()
    # The event loop hands work to threads (Argon2, SQLite, the spool writer) and
    # waits for their results; with the default 5 ms GIL switch interval a busy
    # thread can hold a ready callback back for that long. 0.5 ms keeps AUTH and
    # DATA latency low at a small cost in throughput of the threads themselves.
    sys.setswitchinterval(0.0005)
    auth = build_auth_service(cfg, make_token_verifier(cfg))
    guard = build_guard(cfg)
    await guard.warm_up()  # before the listeners: the first login's write is no start-up's
    rates = build_rates(cfg)
    spool = Spool(cfg.path(cfg.queue.spool))
    space = spool_space(cfg)
    worker: DeliveryWorker | None = None
    worker_task: asyncio.Task[None] | None = None
    if with_delivery:
        worker = DeliveryWorker(spool, make_deliverer(cfg), cfg.queue, reporting_mta=cfg.hostname,
                                drop_fields=cfg.delivery.drop_fields,
                                report_size_limit=cfg.limits.max_message_size)
        worker_task = loop.create_task(worker.run())
    if limiter is None:
        limiter = ConnectionLimiter(cfg.limits.max_connections, cfg.limits.max_connections_per_ip,
                                    _connection_rate(cfg))
    runtime = ServerRuntime(
        hostname=cfg.hostname,
        auth=auth,
        spool=spool,
        tls=tls,
        limits=cfg.limits,
        limiter=limiter,
        on_stored=worker.wake if worker else (lambda: None),
        handshake_timeout=cfg.tls.handshake_timeout,
        failure_floor=cfg.auth.failure_floor,
        session_recheck=cfg.auth.session_recheck,
        add_received=cfg.smtp.received_header,
        received_login=cfg.smtp.received_login,
        guard=guard,
        rates=rates,
        policy=cfg.policy,
        space=space,
    )
    secret = load_decoy_secret(cfg)
    # The protocol factories look their listener up here, so a reload can change
    # the settings of connections accepted after it.
    listeners = {lst.name: _listener_runtime(cfg, lst, secret) for lst in cfg.listeners}
    doors, door_servers = await start_front_doors(cfg, auth_sockets or [], runtime, secret)
    live = _Live(cfg, runtime, listeners, guard, secret, doors)
    servers = []
    for lst, sock in zip(cfg.listeners, sockets):
        factory: Callable[[], asyncio.BaseProtocol] = (
            lambda name=lst.name: SmtpConnection(runtime, listeners[name]))  # type: ignore[misc]
        if lst.proxy_protocol:
            factory = proxied.wrap(factory, parse_networks(lst.trusted_proxies), lst.name)
        # The backlog again: create_server listens once more, with 100 unless told.
        servers.append(await loop.create_server(factory, sock=sock, backlog=LISTEN_BACKLOG))
        log.info("listening on %s (%s, %s)", lst.address, lst.name, lst.tls)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    hooks = hooks or ReloadHooks(None)
    served: metrics_http.MetricsServer | None = None
    # The web admin is served by the process that delivers (web/server.py).
    if status is not None:
        hooks = replace(hooks, serving=status.serving)
    admin = (AdminEndpoint(status_file.status_path(cfg), partial(hooks.serving, "admin"))
             if with_delivery else None)
    beat: Heartbeat | None = None

    def on_reload(full: bool) -> None:
        # A no-op in a supervised worker: only the main process talks to systemd.
        if full:
            systemd.reloading()
        ok = live.reopen_logs()
        why = "" if ok else "a log file could not be reopened (the server log says which)"
        if full and hooks.config_path is not None:
            before = live.cfg
            reloaded = live.reload(hooks.config_path, quiet=hooks.quiet)
            # Taken (perhaps with the running directory, if the new one could not
            # be opened here: then ``reloaded`` is False and the error logged).
            if live.cfg is not before:
                prime_metrics(live.cfg)  # mechanisms a reload enabled, at 0 too
                if status is not None:
                    status.reloaded(live.cfg)
                if beat is not None:
                    beat.reloaded(live.cfg)
                if served is not None:
                    _follow(served, live.cfg)
                if admin is not None:
                    _background(admin.reconfigure(live.cfg))
            if status is not None:  # for `smtpgate reload` to print, at once
                error, kept, notes = live.last
                status.reload_outcome(ok=reloaded, error=error, kept=kept, notes=notes)
                status_file.write(status_file.status_path(live.cfg), status)
            ok = reloaded and ok
            why = why if reloaded else (live.last[0] or why)
        hooks.done(ok, why)
        if full:
            systemd.ready("serving; reload done")

    loop.add_signal_handler(signal.SIGHUP, on_reload, True)
    loop.add_signal_handler(signal.SIGUSR1, on_reload, False)
    if admin is not None:
        await admin.start(cfg, admin_sock)
    # The metrics endpoint too (server/metrics_http.py).
    served = (await metrics_http.maybe_start(cfg, metrics_sock, partial(hooks.serving, "metrics"))
              if with_delivery else None)
    prime_metrics(cfg)
    freeze_startup_heap()  # heap.py: the collector skips start-up objects from here
    if ready is not None:
        ready()
    systemd.ready(f"serving on {len(servers)} listeners")
    pinger = _watchdog_task()
    beat = Heartbeat(cfg) if status is not None and cfg.state.backend == "redis" else None
    reporter = None if status is None else loop.create_task(
        _keep_status(cfg, status, runtime, beat))
    tidier = loop.create_task(_tick_guard(guard))
    await stop.wait()
    systemd.stopping()
    for task in (pinger, reporter, tidier):
        if task is not None:
            task.cancel()
    log.info("stopping: no new connections; %d open", len(runtime.connections))
    if worker is not None:
        # Deliveries get the sessions' grace, then are cancelled and stay queued.
        worker.stop(grace=cfg.server.shutdown_grace)
    for srv in servers:
        srv.close()
    for door_server in door_servers:
        door_server.close()
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
    await runtime.login.services.close()  # with any a reload replaced
    await guard.close()
    await rates.close()
    if admin is not None:
        await admin.stop()
    if served is not None:
        await served.stop()
    await spool.close()
    if beat is not None:
        await asyncio.to_thread(beat.stop)  # cluster status: gone now, not in a minute
    log.info("stopped")


def _follow(served: metrics_http.MetricsServer, cfg: Config) -> None:
    """A reload: the metrics endpoint follows ``[metrics] listen`` (in the background)."""
    _background(served.reconfigure(cfg))


def _background(work: Coroutine[Any, Any, None]) -> None:
    """Run a reload's asynchronous part (an endpoint moving) off the signal handler."""
    task = asyncio.get_running_loop().create_task(work)
    _reconfiguring.add(task)
    task.add_done_callback(_reconfiguring.discard)


_reconfiguring: set[asyncio.Task[None]] = set()


async def _keep_status(cfg: Config, status: ServerStatus, runtime: ServerRuntime,
                       beat: Heartbeat | None) -> None:
    path = status_file.status_path(cfg)
    while True:
        status.sessions = len(runtime.connections)
        status_file.write(path, status)
        if beat is not None:
            await asyncio.to_thread(beat.beat, status)
        await asyncio.sleep(status_file.INTERVAL)


async def _tick_guard(guard: Guard) -> None:
    """The guard's housekeeping (its prune, when due) also when no login fails."""
    while True:
        await asyncio.sleep(TICK_EVERY)
        try:
            await guard.tick()
        except Exception:  # a bug here must not end the housekeeping for good
            log.exception("guard: housekeeping failed")


def _watchdog_task() -> asyncio.Task[None] | None:
    """Ping systemd's watchdog from the event loop, so a loop that hangs stops the
    pings (None: no watchdog, or a supervised worker)."""
    every = systemd.watchdog_interval()
    if every is None:
        return None

    async def ping() -> None:
        while True:
            systemd.watchdog()
            await asyncio.sleep(every)

    return asyncio.get_running_loop().create_task(ping())


async def deliver_only(
    cfg: Config,
    *,
    ready: Callable[[], None] | None = None,
    hooks: ReloadHooks | None = None,
    admin_sock: socket.socket | None = None,
    metrics_sock: socket.socket | None = None,
) -> None:
    """The delivery process beside several workers: the spool to its destination,
    until SIGTERM/SIGINT. A reload reopens its log file and moves the metrics
    endpoint (``delivery.*`` and ``queue.*`` need a restart)."""
    loop = asyncio.get_running_loop()
    spool = Spool(cfg.path(cfg.queue.spool))
    worker = DeliveryWorker(spool, make_deliverer(cfg), cfg.queue, reporting_mta=cfg.hostname,
                            drop_fields=cfg.delivery.drop_fields,
                            report_size_limit=cfg.limits.max_message_size)
    task = loop.create_task(worker.run())
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    hooks = hooks or ReloadHooks(None)
    done = hooks.done
    served: metrics_http.MetricsServer | None = None
    admin = AdminEndpoint(status_file.status_path(cfg), partial(hooks.serving, "admin"))
    running = cfg

    def on_reload(full: bool) -> None:
        nonlocal running
        try:
            logs.reopen_log_file()
        except OSError as e:
            log.error("reload: server.log_file: cannot reopen: %s", e)
            done(False, f"server.log_file: cannot reopen: {e}")
            return
        if full and hooks.config_path is not None:
            try:
                new = reloading.load(hooks.config_path, running)
            except reloading.ReloadError as e:
                log.error("reload failed, keeping the running configuration: %s", e)
                done(False, str(e))
                return
            running = new.cfg
            if served is not None:
                _follow(served, running)
            _background(admin.reconfigure(running))
        done(True, "")

    loop.add_signal_handler(signal.SIGHUP, on_reload, True)
    loop.add_signal_handler(signal.SIGUSR1, on_reload, False)
    await admin.start(cfg, admin_sock)
    served = await metrics_http.maybe_start(cfg, metrics_sock, partial(hooks.serving, "metrics"))
    freeze_startup_heap()
    if ready is not None:
        ready()
    await stop.wait()
    worker.stop(grace=cfg.server.shutdown_grace)  # as in serve_sockets
    worker.stop()
    await task
    await admin.stop()
    if served is not None:
        await served.stop()
    await spool.close()
    log.info("stopped")


# --- start-up ---------------------------------------------------------------------------


def run(cfg: Config, config_path: Path | None = None) -> int:
    """Entry point of ``smtpgate serve``; returns the exit status once the server ran
    and stopped (docs/operations.md).

    ``config_path`` is the file a reload reads again (None: a reload only reopens
    the log files).

    Raises:
        StartupError: the server could not start, before anything listened (or a
            single process failed to open what it serves with); nothing is left
            behind, not even the pid file.
    """
    if cfg.server.log_file is not None:
        path = cfg.path(cfg.server.log_file)
        try:
            logs.log_to_file(path)
        except OSError as e:
            raise StartupError("server.log_file", f"cannot open {path}: {e.strerror}") from None
    tls = check_before_binding(cfg)
    open_files.raise_limit(cfg.limits.max_connections)
    # A plain bind first: SO_REUSEPORT would otherwise let a second smtpgate on the
    # same addresses start silently and take half of the connections. With workers
    # the bind is only that check: they listen on sockets of their own.
    single = cfg.server.effective_workers == 1
    sockets = bind_sockets(cfg, listen=single)
    try:
        auth_sockets = bind_auth_sockets(cfg)
    except StartupError:
        for sock in sockets:
            sock.close()
        raise
    try:
        admin_sock = bind_admin_socket(cfg)
    except StartupError:
        for sock in sockets:
            sock.close()
        close_auth_sockets(cfg, auth_sockets)
        raise
    try:
        metrics_sock = bind_metrics_socket(cfg)
        run_as = privileges.resolve(cfg)
        for problem in privileges.reload_problems(cfg, run_as) if run_as is not None else ():
            log.warning("%s: %s", problem.key, problem.message)  # as config check says it
    except StartupError:
        for sock in sockets:
            sock.close()
        close_auth_sockets(cfg, auth_sockets)
        if admin_sock is not None:
            admin_sock.close()
        raise
    # From the moment the pid file names us, a reload must not kill us: ignored
    # until the event loop (or the supervisor) takes the signals over.
    for sig in (signal.SIGHUP, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_IGN)
    pid_path = pidfile.pid_path(cfg)
    try:
        first = pidfile.another_serving(pid_path)
        if first is not None:
            raise StartupError(
                "server.pid_file",
                f"smtpgate serve (pid {first}) already runs with the pid file {pid_path}, "
                "and so with its state directory (status file, metrics, by default the "
                "spool and databases): stop it first (`smtpgate status` shows it), or give "
                "this server its own accounts.database directory or server.pid_file")
        pidfile.write(pid_path)
        # Before any fork and any count: every process counts in files there, with
        # [metrics] listen or not, so that a reload can open the endpoint with the
        # counts since start-up (docs/operations.md, "Metrics", for the cost).
        metrics.use_multiprocess(metrics_http.fresh_dir(cfg))
        if run_as is not None:
            privileges.hand_over(cfg, run_as)
    except (OSError, StartupError) as e:
        for sock in sockets:
            sock.close()
        close_auth_sockets(cfg, auth_sockets)
        for other in (admin_sock, metrics_sock):
            if other is not None:
                other.close()
        pidfile.remove(pid_path)
        if isinstance(e, StartupError):
            raise
        raise StartupError("server.pid_file", f"cannot write {pid_path}: {e.strerror}") from None
    log.info("certificate: %s", tls.description)
    try:
        if cfg.server.effective_workers == 1:
            status = _run_single(cfg, config_path, sockets, tls, auth_sockets, admin_sock,
                                 metrics_sock, run_as)
        else:
            for sock in sockets:
                sock.close()
            status = _run_supervised(cfg, config_path, tls, auth_sockets, admin_sock,
                                     metrics_sock, run_as)
        # A stop, not a crash (a crash keeps the counts for a look): before the pid
        # file goes, while no other server can have taken the directory over.
        metrics_http.remove_dir(cfg, pid_path)
        return status
    finally:
        close_auth_sockets(cfg, auth_sockets)
        for other in (admin_sock, metrics_sock):
            if other is not None:
                other.close()
        status_file.remove(status_file.status_path(cfg))
        pidfile.remove(pid_path)


def _run_single(
    cfg: Config,
    config_path: Path | None,
    sockets: list[socket.socket],
    tls: ServerTlsContext,
    auth_sockets: list[socket.socket],
    admin_sock: socket.socket | None = None,
    metrics_sock: socket.socket | None = None,
    run_as: privileges.RunAs | None = None,
) -> int:
    started = False

    def ready() -> None:
        nonlocal started
        started = True
        logs.end_startup_echo()

    hooks = ReloadHooks(config_path)
    status = ServerStatus.starting(cfg, config_path, 1)
    try:
        _drop(run_as)
        _new_loop_runner()(
            serve_sockets(cfg, sockets, tls, with_delivery=True, ready=ready, hooks=hooks,
                          auth_sockets=auth_sockets, status=status, admin_sock=admin_sock,
                          metrics_sock=metrics_sock)
        )
    except Exception as e:
        if not started and isinstance(e, StartupError):
            raise  # typed: the CLI names the key
        if not started:
            log.error("cannot start: %s", one_line(e))
            return EXIT_STARTUP
        log.exception("stopped by an unexpected error")
        return EXIT_STARTUP
    return EXIT_OK


@dataclass
class _Current:
    """The parent's view of the config and certificate, which a reload replaces, so
    that a restarted worker starts with what the others run."""

    cfg: Config
    tls: ServerTlsContext
    #: The metrics socket bound at start, until a reload moves the endpoint (the
    #: delivery process then binds the new address itself).
    metrics_sock: socket.socket | None = None
    #: The web admin's socket, likewise.
    admin_sock: socket.socket | None = None


def _drop(run_as: privileges.RunAs | None) -> None:
    """Become ``[server] user`` before serving (server/privileges.py).

    Raises:
        StartupError: the kernel refused.
    """
    try:
        privileges.drop(run_as)
    except OSError as e:
        raise StartupError("server.user", f"cannot switch to {run_as.user if run_as else ''!r}"
                                          f": {e.strerror or e}") from None
    if run_as is not None:
        log.debug("serving as %s (uid %d, gid %d)", run_as.user, run_as.uid, run_as.gid)


def _connection_rate(cfg: Config) -> ConnectionRate:
    return ConnectionRate(cfg.limits.connection_rate_per_ip,
                          cfg.limits.connection_rate_exceptions)


def _run_supervised(
    cfg: Config, config_path: Path | None, tls: ServerTlsContext, auth_sockets: list[socket.socket],
    admin_sock: socket.socket | None = None,
    metrics_sock: socket.socket | None = None,
    run_as: privileges.RunAs | None = None,
) -> int:
    current = _Current(cfg, tls, metrics_sock, admin_sock)
    workers = cfg.server.effective_workers
    limiter = SharedConnectionLimiter(
        cfg.limits.max_connections, cfg.limits.max_connections_per_ip, workers,
        _connection_rate(cfg),
    )
    runner = _new_loop_runner()

    def worker_spec(slot: int) -> ChildSpec:
        def prepare() -> Launch:
            mine = bind_sockets(current.cfg, reuse_port=True)
            cfg_now, tls_now = current.cfg, current.tls
            inherited = (current.metrics_sock, current.admin_sock)

            def body(status: StatusWriter) -> int:
                metrics.count_as(metrics_http.slot_name("worker", slot))
                cpu = bind_worker(slot, cfg_now.server.worker_cpu_affinity)
                if cpu is not None:
                    log.info("worker %d bound to CPU %d (server.worker_cpu_affinity)", slot + 1, cpu)
                for other in inherited:
                    # Not ours to serve; kept open here, it would outlive a reload
                    # that moves the endpoint, accepting connections nobody answers.
                    if other is not None:
                        other.close()
                _drop(run_as)
                limiter.attach(slot)
                limiter.set_limits(
                    cfg_now.limits.max_connections, cfg_now.limits.max_connections_per_ip,
                    cfg_now.limits.connection_rate_per_ip,
                    cfg_now.limits.connection_rate_exceptions,
                )
                hooks = ReloadHooks(config_path, done=status.reloaded, quiet=True)
                runner(serve_sockets(cfg_now, mine, tls_now, with_delivery=False,
                                     ready=status.ready, limiter=limiter, hooks=hooks,
                                     auth_sockets=auth_sockets))
                return 0

            def after_fork() -> None:
                for sock in mine:
                    sock.close()

            return Launch(body, after_fork)

        def on_exit() -> None:
            limiter.clear(slot)
            metrics_http.mark_dead(cfg, metrics_http.slot_name("worker", slot))

        return ChildSpec(f"worker {slot + 1}", "worker", prepare, on_exit)

    def delivery_spec() -> ChildSpec:
        def prepare() -> Launch:
            cfg_now, metrics_now, admin_now = current.cfg, current.metrics_sock, current.admin_sock

            def body(status: StatusWriter) -> int:
                metrics.count_as(metrics_http.slot_name("delivery"))
                _drop(run_as)
                hooks = ReloadHooks(config_path, done=status.reloaded, quiet=True,
                                    serving=status.serving)
                runner(deliver_only(cfg_now, ready=status.ready, hooks=hooks,
                                    admin_sock=admin_now, metrics_sock=metrics_now))
                return 0

            return Launch(body)

        return ChildSpec("delivery", "delivery", prepare, lambda: metrics_http.mark_dead(
            cfg, metrics_http.slot_name("delivery")))

    def on_reload(sig: int) -> int | None:
        try:
            logs.reopen_log_file()
        except OSError as e:
            log.error("reload: server.log_file: cannot reopen: %s", e)
        if sig != signal.SIGHUP or config_path is None:
            return signal.SIGUSR1
        try:
            new = reloading.load(config_path, current.cfg)
        except reloading.ReloadError as e:
            log.error("reload failed, keeping the running configuration and certificate: %s", e)
            status.reload_outcome(ok=False, error=str(e))
            status_file.write(where, status)
            return signal.SIGUSR1  # the log files are still reopened everywhere
        _log_reload(current.cfg, new)
        if (new.cfg.metrics.listen != current.cfg.metrics.listen
                and current.metrics_sock is not None):
            # The delivery process moves the endpoint; our copy would keep the old
            # address listening with nobody answering.
            current.metrics_sock.close()
            current.metrics_sock = None
        if new.cfg.admin.listen != current.cfg.admin.listen and current.admin_sock is not None:
            current.admin_sock.close()  # likewise for the web admin
            current.admin_sock = None
        current.cfg, current.tls = new.cfg, new.tls
        # For workers forked from now on (the running ones raise their own and warn).
        open_files.raise_limit(new.cfg.limits.max_connections, warn=False)
        status.reloaded(new.cfg)
        if beat is not None:
            beat.reloaded(new.cfg)
        taken[:] = [(new.needs_restart, (*new.warnings, *new.partly))]
        return signal.SIGHUP

    taken: list[tuple[tuple[str, ...], tuple[str, ...]]] = []

    def on_reload_done(failed: int, why: str) -> None:
        """The outcome ``smtpgate reload`` prints, written once every serving process
        has answered: the parent, as root, may read what the workers, as
        ``server.user``, may not (a key of root's), and until 2026-12 the command
        said "reloaded" while every worker kept the old certificate."""
        kept, notes = taken.pop() if taken else ((), ())
        if failed:
            who = count(failed, "serving process", "serving processes")
            status.reload_outcome(ok=False, error=(
                f"{why or 'the server log says why'} ({who} could not reload)"))
        else:
            status.reload_outcome(ok=True, kept=kept, notes=notes)
        status_file.write(where, status)

    status = ServerStatus.starting(cfg, config_path, workers)
    where = status_file.status_path(cfg)
    beat = Heartbeat(cfg) if cfg.state.backend == "redis" else None

    def on_serving(what: str, url: str) -> None:
        status.serving(what, url)
        status_file.write(where, status)

    def on_tick() -> None:
        status.processes = [ProcessInfo(*p) for p in supervisor.processes()]
        status.down = [DownInfo(*d) for d in supervisor.down()]
        status.sessions = limiter.server_total()
        status_file.write(where, status)
        if beat is not None:
            beat.beat(status)

    supervisor = Supervisor(
        [*(worker_spec(i) for i in range(workers)), delivery_spec()],
        on_reload=on_reload,
        on_reload_done=on_reload_done,
        on_reaped=lambda pid: metrics_http.mark_dead(cfg, pid),
        stop_timeout=cfg.server.shutdown_grace + 30,
        unresponsive_after=cfg.server.worker_watchdog,
        on_tick=on_tick,
        tick_every=status_file.INTERVAL,
        on_serving=on_serving,
    )
    try:
        return supervisor.run()
    finally:
        limiter.close()
        if beat is not None:
            beat.stop()  # cluster status: gone now, not in a minute
