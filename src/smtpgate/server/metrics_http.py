"""The Prometheus endpoint (``[metrics] listen``): its socket, its files, its scrape.

Which process answers: the one that delivers, as for the web admin
(``web/server.py``): the single serving process, or with several workers the
delivery process. The main process binds the socket before anything forks (a
plain bind, no SO_REUSEPORT: a second smtpgate on the address fails at start-up,
and the SMTP workers, which bind only their own listeners, never race for it),
and the serving process inherits it.

Several processes count (`smtpgate.metrics`): each writes its values to a file of
its own in the metrics directory (prometheus_client's multiprocess mode), and a
scrape adds the files up. The directory, ``smtpgate.metrics`` beside the pid
file, is emptied at start-up. A supervised child keeps its files under its slot's
name (``w1``, ``delivery``: ``metrics.count_as``): the supervisor drops the live
gauges of one that exited (``mark_dead``), and its replacement counts on from
the counters it left, so that totals never go down and a crash-looping worker
leaves no files behind. A scrape also reads what no process counts:
the queue (the spool directory) and the guard's active blocks (its state), on a
thread of its own, off the event loop.

A reload may move, open or close the endpoint: the serving process binds the new
address itself (as the user it runs as), and keeps the old one if it cannot.

Slow and many connections, as for the web admin (``web/http_port.py``): at most
``MAX_CONNECTIONS`` open at once and ``MAX_CONNECTIONS_PER_ADDRESS`` from one
address, the rest closed at once; each request head must arrive within 15 s of
the connection's start or the previous answer (the idle keep-alive limit too).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from smtpgate.auth.guard_state import ACCOUNT_KINDS, BLOCK_KINDS, GuardState, GuardStoreError
from smtpgate.auth.outage_log import OutageLog
from smtpgate.auth.state_backend import open_guard_state
from smtpgate.config import Config
from smtpgate.errors import StartupError
from smtpgate.server import pidfile
from smtpgate.web.conn_cap import ConnectionCap
from smtpgate.web.http_port import (
    MAX_REQUEST_HEADERS,
    REQUEST_HEAD_TIMEOUT,
    SHUTDOWN_TIMEOUT,
    HttpPort,
)
from smtpgate.web.http_socket import (
    bind_endpoint,
    bind_tcp,
    http_logger,
    known_host,
    name_the_server,
    unread_while_answering,
)

if TYPE_CHECKING:  # aiohttp: imported by the process that serves /metrics (workload D)
    from collections.abc import Awaitable, Callable

    from aiohttp import web

    Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

log = logging.getLogger("smtpgate.metrics")

#: Connections /metrics holds open at once, and from one address (an IPv6 /64):
#: a Prometheus server keeps one per target, a pair of them and a curl fit many
#: times over.
MAX_CONNECTIONS = 32
MAX_CONNECTIONS_PER_ADDRESS = 8


def metrics_dir(cfg: Config) -> Path:
    """``smtpgate.metrics`` beside the pid file (the state directory)."""
    pid = pidfile.pid_path(cfg)
    return pid.with_name(pid.stem + ".metrics")


def fresh_dir(cfg: Config) -> Path:
    """The metrics directory, created empty (the files of a previous run go: their
    processes are gone, and a scrape would add them to this run's).

    Raises:
        StartupError: it cannot be made.
    """
    path = metrics_dir(cfg)
    try:
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(mode=0o755)
    except OSError as e:
        raise StartupError("server.pid_file", f"cannot make {path}: {e.strerror or e}") from None
    return path


#: The files prometheus_client's multiprocess mode writes: kind, and process id or
#: supervisor's slot (``metrics.count_as``).
_METRIC_FILE = re.compile(r"(?:counter|histogram|summary|gauge_[a-z]+)_(?:[0-9]+|[a-z]+[0-9]*)\.db")


def slot_name(kind: str, index: int = 0) -> str:
    """The name a supervised child's metric files go by: ``w1``... for the workers,
    ``delivery`` for the delivery process (``metrics.count_as``)."""
    return f"w{index + 1}" if kind == "worker" else kind


def remove_dir(cfg: Config, pid_path: Path) -> None:
    """At a clean stop: remove the metrics directory, whose files are counts of
    processes that are gone (the next start would empty it; nothing reads them
    meanwhile), so that the state directory keeps no leftover of a stopped server.

    Only while ``pid_path`` still names this process: a server started meanwhile
    with the same pid file uses the same directory. Only the files of the form
    the counting writes: anything else there keeps the directory, left alone."""
    path = metrics_dir(cfg)
    try:
        if pid_path.read_text().strip() != str(os.getpid()):
            return
        for name in os.listdir(path):
            if _METRIC_FILE.fullmatch(name):
                os.unlink(path / name)
        os.rmdir(path)
    except OSError:
        pass  # gone already, or not empty: nothing to say at a stop


def mark_dead(cfg: Config, pid: int | str) -> None:
    """A process exited (``pid``: its id, or the slot it filled): its live gauges
    (sessions open) stop counting. Its counters and histograms stay: a slot's
    replacement counts on from them (``metrics.count_as``)."""
    try:
        multiprocess.mark_process_dead(pid, str(metrics_dir(cfg)))  # type: ignore[no-untyped-call]
    except OSError as e:  # pragma: no cover - the directory is ours
        log.warning("metrics: cannot drop the files of process %s: %s", pid, e)


def bind_metrics_socket(cfg: Config) -> socket.socket | None:
    """The endpoint's socket, bound and listening (None: metrics are off).

    Raises:
        StartupError: the address cannot be bound.
    """
    return bind_endpoint(cfg.metrics, "metrics.listen")


class StateCollector(Collector):
    """What a scrape reads rather than counts: the queue and the guard's blocks.
    Runs on the scrape thread only (the guard state is opened there, once).

    A guard state that cannot be read (Redis down: docs/scale-out.md) is logged
    once when a scrape first finds it so, in a summary a minute, and once when a
    scrape reads it again (``OutageLog``): Prometheus scrapes every few seconds,
    and a warning per scrape was hundreds of lines an hour beside the guard's
    own one line for the outage."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self._guard: GuardState | None = None
        self._outage = OutageLog(
            "metrics: the guard state", log,
            effect="smtpgate_guard_blocks_active and smtpgate_guard_accounts_locked "
                   "are left out of scrapes until it answers")

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield from self._queue()
        yield from self._blocks()

    def _queue(self) -> Iterator[GaugeMetricFamily]:
        qdir = self.cfg.path(self.cfg.queue.spool) / "queue"
        try:
            ids = sorted(n for n in os.listdir(qdir) if n.endswith(".msg"))
        except FileNotFoundError:
            ids = []
        except OSError as e:
            log.warning("metrics: cannot list the spool: %s", e)
            return
        size = GaugeMetricFamily("smtpgate_queue_messages", "Messages in the queue.")
        size.add_metric([], len(ids))
        age = GaugeMetricFamily("smtpgate_queue_oldest_age_seconds",
                                "Age of the oldest message in the queue (0 when empty).")
        # A queue id starts with its arrival time in microseconds, in hex (queue/spool.py).
        oldest = _arrival(ids[0]) if ids else None
        age.add_metric([], max(0.0, time.time() - oldest) if oldest is not None else 0.0)
        yield size
        yield age

    def _blocks(self) -> Iterator[GaugeMetricFamily]:
        try:
            if self._guard is None:
                self._guard = open_guard_state(self.cfg)
            blocks = self._guard.active_blocks(time.time())
        except (GuardStoreError, OSError) as e:
            self._outage.failed(str(e))
            return
        self._outage.answered()
        counts = dict.fromkeys(BLOCK_KINDS, 0)
        for b in blocks:
            counts[b.kind] = counts.get(b.kind, 0) + 1
        g = GaugeMetricFamily(
            "smtpgate_guard_blocks_active",
            "Blocks in force now, by kind: address and subnet blocks, account lockouts "
            "(account, account-new), throttles.", labels=["kind"])
        for kind, n in counts.items():
            g.add_metric([kind], n)
        yield g
        locked = GaugeMetricFamily(
            "smtpgate_guard_accounts_locked", "Distinct accounts with a lockout or throttle.")
        locked.add_metric([], len({b.key for b in blocks if b.kind in ACCOUNT_KINDS}))
        yield locked

    def close(self) -> None:
        if self._guard is not None:
            self._guard.close()
            self._guard = None


def _arrival(name: str) -> float | None:
    try:
        return int(name.split("-", 1)[0], 16) / 1e6
    except ValueError:
        return None


class MetricsServer:
    """The running endpoint; ``reconfigure`` follows a reload, ``stop`` ends it."""

    def __init__(self, cfg: Config, serving: Callable[[str], None] = lambda url: None) -> None:
        self.cfg = cfg
        #: Told the URL served after a reload ("" for none; ``smtpgate status``).
        self._serving = serving
        self._state = StateCollector(cfg)
        self._registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(  # type: ignore[no-untyped-call]
            self._registry, path=str(metrics_dir(cfg)))
        self._registry.register(self._state)
        # One thread: the guard state is opened and read there, scrapes go in turn.
        self._pool = ThreadPoolExecutor(1, "smtpgate-metrics")
        self._runner: web.AppRunner | None = None
        self._port: HttpPort | None = None
        self._listen = ""
        self._cap = ConnectionCap(MAX_CONNECTIONS, MAX_CONNECTIONS_PER_ADDRESS)

    @classmethod
    async def start(cls, cfg: Config, sock: socket.socket) -> MetricsServer:
        server = cls(cfg)
        await server._serve(sock, cfg.metrics.listen)
        return server

    async def _serve(self, sock: socket.socket, listen: str) -> None:
        from aiohttp import web

        @web.middleware
        async def known_host_only(request: web.Request, handler: Handler) -> web.StreamResponse:
            known_host(request, self.cfg, self.cfg.metrics, "metrics")
            with unread_while_answering(request):  # scrapes go in turn (one thread)
                return await handler(request)

        app = web.Application(middlewares=[known_host_only])
        name_the_server(app)
        app.router.add_get("/metrics", self._scrape)
        runner = web.AppRunner(app, access_log=None, handle_signals=False,
                               logger=http_logger("smtpgate.metrics.http", "metrics"),
                               keepalive_timeout=REQUEST_HEAD_TIMEOUT,
                               max_headers=MAX_REQUEST_HEADERS,
                               shutdown_timeout=SHUTDOWN_TIMEOUT)
        await runner.setup()
        assert runner.server is not None
        port = HttpPort(sock, runner.server, None, self._cap, "metrics")
        port.start()
        self._runner, self._port, self._listen = runner, port, listen
        log.info("metrics on http://%s/metrics", listen)

    async def _scrape(self, request: web.Request) -> web.Response:
        loop = asyncio.get_running_loop()
        body = await loop.run_in_executor(self._pool, generate_latest, self._registry)
        from aiohttp import web

        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def reconfigure(self, cfg: Config) -> None:
        """A reload: a new ``[metrics] listen`` is bound here and the old one closed;
        if the new one cannot be bound, the old one stays (logged)."""
        self._state.cfg = cfg
        self.cfg = cfg
        if cfg.metrics.listen == self._listen:
            return
        try:
            await self._move(cfg)
        finally:
            self._serving(self.url)

    @property
    def url(self) -> str:
        """Where it answers, as ``[metrics]``'s ``url`` says it ("" for nowhere)."""
        return f"http://{self._listen}/metrics" if self._listen else ""

    async def _move(self, cfg: Config) -> None:
        sock = None
        endpoint = cfg.metrics.endpoint
        if endpoint is not None:
            try:
                sock = (bind_tcp(*endpoint) if self._port is None
                        else await self._port.bind_for_move(endpoint))
            except OSError as e:
                log.error("reload: metrics.listen: cannot listen on %s: %s; still on %s",
                          cfg.metrics.listen, e.strerror or e, self._listen or "nothing")
                return
        await self._close_site()
        if sock is not None:
            await self._serve(sock, cfg.metrics.listen)
        else:
            log.info("metrics endpoint closed")

    async def _close_site(self) -> None:
        if self._port is not None:
            await self._port.stop()
            self._port = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner, self._listen = None, ""

    async def stop(self) -> None:
        await self._close_site()
        await asyncio.get_running_loop().run_in_executor(self._pool, self._state.close)
        self._pool.shutdown(wait=True)


async def maybe_start(cfg: Config, sock: socket.socket | None,
                      serving: Callable[[str], None] = lambda url: None,
                      ) -> MetricsServer | None:
    """The endpoint, on ``sock`` (inherited from the main process); None when the
    processes do not count in files (not started by ``serve``). Without ``sock``
    (metrics off at start, or a delivery process restarted after a reload opened
    or moved the endpoint) it binds ``[metrics] listen`` itself, if set; with
    nothing to listen on, it waits for a reload to open it (``reconfigure``)."""
    if not counting_in_files(cfg):
        return None
    server = MetricsServer(cfg, serving)
    endpoint = cfg.metrics.endpoint
    if sock is None and endpoint is not None:
        try:
            sock = bind_tcp(*endpoint)
        except OSError as e:
            log.error("metrics.listen: cannot listen on %s: %s", cfg.metrics.listen,
                      e.strerror or e)
    if sock is not None:
        await server._serve(sock, cfg.metrics.listen)
    serving(server.url)
    return server


def counting_in_files(cfg: Config) -> bool:
    """Metrics were on at start-up: every process counts in the metrics directory."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") == str(metrics_dir(cfg))
