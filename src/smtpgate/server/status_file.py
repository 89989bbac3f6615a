"""The status file: what the running server is doing, for ``smtpgate status``.

The main process (the single serving process, or the supervisor) rewrites a
small JSON document beside the pid file every ``INTERVAL`` seconds and whenever
something changes (start, reload, a worker restarted). The CLI reads it; no
socket, no privileges beyond reading the state directory, and it works while the
server is busy. An age over a few intervals tells that the main loop is stuck.

Written to a temporary name and renamed, so a reader never sees half a file;
removed when the server stops, like the pid file.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from smtpgate import __version__
from smtpgate.config import Config
from smtpgate.server import pidfile

#: Seconds between rewrites; ``smtpgate status`` calls a file older than three of
#: these stale.
INTERVAL = 2.0


def status_path(cfg: Config) -> Path:
    """``smtpgate.status.json`` beside the pid file."""
    pid = pidfile.pid_path(cfg)
    return pid.with_name(pid.stem + ".status.json")


@dataclass
class ProcessInfo:
    name: str
    pid: int
    ready: bool
    started: float
    #: Seconds a ready process has said nothing past twice its ``alive`` interval (0:
    #: on time): its event loop is stuck until the watchdog kills it.
    silent: float = 0.0


@dataclass
class DownInfo:
    """A supervised process that is gone and waits for its restart (its back-off)."""

    name: str
    ended: float
    restart_at: float
    #: How it ended, as the log says: "killed by signal 9 (SIGKILL)", "exited with
    #: status 1: ...", "cannot start: ...".
    how: str


@dataclass
class ServerStatus:
    """The document; field names are the JSON keys (docs/operations.md)."""

    pid: int
    version: str
    started: float
    config_file: str | None
    config_loaded: float
    listeners: list[dict[str, Any]]
    auth_listeners: list[dict[str, Any]]
    workers: int
    #: The web admin's and the metrics endpoint's URLs ("" when off).
    admin: str = ""
    metrics: str = ""
    processes: list[ProcessInfo] = field(default_factory=list)
    #: The processes of ``processes`` that are gone, each until its replacement
    #: starts: a worker missing from the list would otherwise look like no worker
    #: at all was ever meant to be there.
    down: list[DownInfo] = field(default_factory=list)
    sessions: int = 0
    updated: float = 0.0
    #: The last reload's outcome, for ``smtpgate reload`` to print: ``at`` (seconds
    #: since the epoch), ``ok``, ``error`` (why it failed), ``kept`` (keys changed in
    #: the file that need a restart), ``notes`` (what start-up would warn of in the
    #: certificate now served, and keys taken only in part).
    last_reload: dict[str, Any] | None = None

    @classmethod
    def starting(cls, cfg: Config, config_file: Path | None, workers: int) -> ServerStatus:
        now = time.time()
        return cls(
            pid=os.getpid(),
            version=__version__,
            started=now,
            config_file=None if config_file is None else str(config_file.resolve()),
            config_loaded=now,
            listeners=listeners_of(cfg),
            auth_listeners=auth_listeners_of(cfg),
            workers=workers,
            admin=cfg.admin.url,
            metrics=cfg.metrics.url,
        )

    def reload_outcome(self, *, ok: bool, error: str | None = None,
                       kept: Sequence[str] = (), notes: Sequence[str] = ()) -> None:
        self.last_reload = {"at": time.time(), "ok": ok, "error": error,
                            "kept": list(kept), "notes": list(notes)}

    def reloaded(self, cfg: Config) -> None:
        """``admin`` and ``metrics`` stay: the process that serves them says where it
        does once it has moved them (`serving`), which a reload may fail to do (the
        new address taken, a port below 1024 for a process that is no longer root)."""
        self.config_loaded = time.time()
        self.listeners = listeners_of(cfg)

    def serving(self, what: str, url: str) -> None:
        """Where the web admin (``what`` "admin") or the metrics endpoint ("metrics")
        is served now, "" for nowhere."""
        if what == "admin":
            self.admin = url
        elif what == "metrics":
            self.metrics = url


def listeners_of(cfg: Config) -> list[dict[str, Any]]:
    """Each listener's name, address and TLS, and whether it expects a PROXY header
    first and from where (``proxy_protocol``, ``trusted_proxies``): a client that
    connects to such a port directly is refused, which ``status`` should say."""
    return [{"name": lst.name, "address": lst.address, "tls": lst.tls,
             "proxy_protocol": lst.proxy_protocol,
             "trusted_proxies": list(lst.trusted_proxies) if lst.proxy_protocol else []}
            for lst in cfg.listeners]


def auth_listeners_of(cfg: Config) -> list[dict[str, Any]]:
    """Each front door, with its PROXY header expectation as `listeners_of`."""
    return [{"name": d.label, "protocol": d.protocol, "address": d.address,
             "proxy_protocol": d.proxy_protocol,
             "trusted_proxies": list(d.trusted_proxies) if d.proxy_protocol else []}
            for d in cfg.auth_listeners]


def proxy_note(listener: dict[str, Any]) -> str:
    """", PROXY header from 10.0.0.2/32" for a listener that expects one (a status
    document of an older version has no such key: nothing)."""
    if not listener.get("proxy_protocol"):
        return ""
    sources = ", ".join(listener.get("trusted_proxies") or []) or "trusted_proxies"
    return f", PROXY header from {sources}"


def write(path: Path, status: ServerStatus) -> None:
    """Replace the file; a failure (full disk) is not the server's problem, so it
    is swallowed: ``status`` then reports the file as stale."""
    status.updated = time.time()
    try:
        # Never through a link the state directory's owner planted (the
        # supervisor writing this may be root): see ``pidfile.replace_file``.
        pidfile.replace_file(path, json.dumps(asdict(status), sort_keys=True) + "\n")
    except OSError:
        pass


def remove(path: Path) -> None:
    """Remove the file if this process wrote it."""
    try:
        if read(path).get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError):
        pass


def read(path: Path) -> dict[str, Any]:
    """The document as written.

    Raises:
        OSError: the file cannot be read.
        ValueError: it is not the JSON object this module writes.
    """
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a status document")  # noqa: TRY004 - bad content, not a bad argument
    return data
