"""The auth listeners: sockets where other servers (Postfix, Exim, nginx) ask
smtpgate to decide logins and submissions (docs/integration.md).

They are bound once, by the parent, before any worker starts, and every worker
serves the same sockets (inherited across ``fork``): an MTA keeps one
connection open for hours (Postfix's smtpd multiplexes its logins over it), so
spreading connections with ``SO_REUSEPORT`` buys nothing, and a unix socket
cannot be shared that way anyway. The parent keeps them open while workers come
and go, so a restarted worker never makes the MTA see a refused connection, and
removes the unix socket files when it stops.

Each protocol module provides ``protocol_factory(door: FrontDoor) -> Callable[[],
asyncio.BaseProtocol]``: the asyncio shell around its sans-IO engine.

Slow and many connections. No door closes a connection that is idle between
requests: Postfix and Exim keep theirs open for hours and would log a lost
connection for each close. But a request line begun and not finished within
``UNFINISHED_TIMEOUT`` (``UnfinishedClock``) closes the connection with a WARNING:
an MTA writes each line whole, so only a stuck or hostile peer leaves one half
sent. And each door holds at most ``max_connections`` connections at once in
each process (``web/conn_cap.py``): one more is closed at once, before a byte is
read, and logged within a budget of ``REFUSALS_LOGGED`` lines a window. No
per-address cap: an MTA's connections all come from one address (or a unix
socket, which has none).
"""

from __future__ import annotations

import asyncio
import errno
import grp
import importlib
import logging
import os
import pwd
import socket
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from smtpgate.auth.networks import parse_networks
from smtpgate.config import AuthListenerConfig, Config
from smtpgate.errors import StartupError
from smtpgate.server import proxied
from smtpgate.server.runtime import ServerRuntime
from smtpgate.web.conn_cap import CappedProtocol, ConnectionCap
from smtpgate.web.log_budget import LogBudget

log = logging.getLogger("smtpgate")

#: Pending connections a front door holds (MTAs and nginx connect to it per login or
#: keep a few connections; the kernel caps it at net.core.somaxconn).
DOOR_BACKLOG = 128
#: Seconds the bytes of an unfinished request line (or, for the policy door, an
#: unfinished request) may wait for the rest: an MTA writes its lines whole, in
#: one write, so a minute is for a stuck or hostile peer only (Postfix itself
#: gives its policy server 100 s, smtpd_policy_service_timeout, for an answer).
UNFINISHED_TIMEOUT = 60.0
#: Connections over a door's cap logged one by one in each window of this many
#: seconds (per door and process); the rest are counted in one line.
REFUSALS_LOGGED = 10
REFUSAL_WINDOW = 60.0


@dataclass
class FrontDoor:
    """What one auth listener's connections share. ``cfg`` is replaced by a reload
    (the listener's own address and protocol need a restart)."""

    listener: AuthListenerConfig
    runtime: ServerRuntime
    cfg: Config
    #: The decoy secret (unknown accounts get SCRAM salts derived from it).
    secret: bytes


ProtocolFactory = Callable[[FrontDoor], Callable[[], asyncio.BaseProtocol]]


class UnfinishedClock:
    """A door connection's deadline for an unfinished request line: ``update``
    after each read says whether part of one is waiting; the clock starts when
    one begins, stops when none is left, and calls ``expired`` (which closes the
    connection) when one has waited ``UNFINISHED_TIMEOUT``. Silence between whole
    requests is never timed."""

    def __init__(self, expired: Callable[[], None]) -> None:
        self._expired = expired
        self._timer: asyncio.TimerHandle | None = None

    def update(self, unfinished: bool) -> None:
        if not unfinished:
            self.stop()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(UNFINISHED_TIMEOUT, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._expired()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def capped(factory: Callable[[], asyncio.BaseProtocol],
           listener: AuthListenerConfig) -> Callable[[], asyncio.BaseProtocol]:
    """``factory`` behind the door's connection cap (``max_connections``), its
    refusals logged within a budget."""
    cap = ConnectionCap(listener.max_connections)
    label = listener.label

    def report(count: int) -> None:
        log.warning("front door %s: %d more connections refused over max_connections = %d "
                    "(more than %d in %g s are not logged one by one)", label, count,
                    listener.max_connections, REFUSALS_LOGGED, REFUSAL_WINDOW)

    budget = LogBudget(REFUSALS_LOGGED, REFUSAL_WINDOW, report)

    def refused(peer: str, why: str) -> None:
        if budget.take():
            log.warning("front door %s: connection from %s refused: %s; raise "
                        "max_connections if the MTA needs more", label, peer or "unix socket",
                        why)

    return lambda: CappedProtocol(factory, cap, refused)


#: The asyncio shell of each protocol, imported on demand: a server with no front
#: door loads none of them.
_MODULES = {
    "dovecot": "smtpgate.server.dovecot_door",
    "auth_http": "smtpgate.server.auth_http_door",
    "postfix_policy": "smtpgate.server.policy_door",
}


def _protocol_factory(protocol: str) -> ProtocolFactory:
    module = importlib.import_module(_MODULES[protocol])
    return cast(ProtocolFactory, module.protocol_factory)


def _clear_stale_socket(path: Path, key: str) -> None:
    """Remove a socket file left by a server that died; refuse to touch a socket
    someone still listens on, a file that is not a socket, or a socket whose state
    a connection cannot tell.

    Only a refused connection (ECONNREFUSED) says nobody listens. A connect refused
    for permission (EACCES: another service's socket, mode 0600, in a directory
    smtpgate may write) or one that does not complete (a full backlog) says
    nothing of the kind, and removing that file would cut the other service off."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise StartupError(key, f"{path} exists and is not a socket", "remove it or choose another path")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(2.0)
    try:
        probe.connect(str(path))
    except ConnectionRefusedError:
        path.unlink(missing_ok=True)  # nobody listens: left behind
        return
    except FileNotFoundError:
        return  # removed meanwhile
    except OSError as e:
        raise StartupError(
            key, f"{path} exists and cannot be probed ({e.strerror or e}): it may be "
            "another server's socket", "remove it if it is stale, or choose another path") from None
    finally:
        probe.close()
    raise StartupError(key, f"{path}: another server listens on it", "stop that one, or choose another path")


#: How a process that is not root gives its socket to the MTA (docs/integration.md).
_OWNER_HINT = ("only root may give a file to another user, and any other user only to "
               "a group it is a member of: make smtpgate's user a member of the group "
               "(systemd: SupplementaryGroups=), or leave user and group unset and "
               "let a set-group-ID directory give the socket its group")


def _bind_unix(door: AuthListenerConfig, path: Path, key: str) -> socket.socket:
    _clear_stale_socket(path, f"{key}.address")
    uid = gid = -1
    try:
        if door.user:
            uid = pwd.getpwnam(door.user).pw_uid
        if door.group:
            gid = grp.getgrnam(door.group).gr_gid
    except KeyError as e:
        field = "user" if door.user and str(e).find(door.user) >= 0 else "group"
        raise StartupError(f"{key}.{field}", f"no such {field}: {e.args[0]}") from None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # Created with no permission for anyone until chmod/chown have run.
    old = os.umask(0o777)
    try:
        sock.bind(str(path))
    except OSError as e:
        sock.close()
        raise StartupError(f"{key}.address", f"cannot bind {path}: {e.strerror or e}") from None
    finally:
        os.umask(old)
    # One call per key, so that a refusal names the key at fault: a process that
    # is not root may give the socket only to a group it is in, never to a user.
    steps: list[tuple[str, str, Callable[[], None]]] = []
    if uid != -1:
        steps.append(("user", "owner", lambda: os.chown(path, uid, -1)))
    if gid != -1:
        steps.append(("group", "group", lambda: os.chown(path, -1, gid)))
    steps.append(("mode", "mode", lambda: os.chmod(path, door.file_mode)))
    for field, what, step in steps:
        try:
            step()
        except OSError as e:
            sock.close()
            path.unlink(missing_ok=True)
            raise StartupError(f"{key}.{field}", f"cannot set the {what} of {path}: "
                               f"{e.strerror or e}", _OWNER_HINT if field != "mode" else "") from None
    return sock


def _bind_tcp(door: AuthListenerConfig, key: str) -> socket.socket:
    host, port = door.host_port
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        hint = "another server holds it" if e.errno == errno.EADDRINUSE else ""
        raise StartupError(f"{key}.address", f"cannot bind {door.address}: {e.strerror or e}", hint) from None
    return sock


def bind_auth_sockets(cfg: Config) -> list[socket.socket]:
    """One listening socket per ``[[auth_listeners]]`` table, in config order.

    Raises:
        StartupError: a socket cannot be bound or given its owner and mode
            (``auth_listeners.N.*``); those bound before it are closed again.
    """
    socks: list[socket.socket] = []
    try:
        for i, door in enumerate(cfg.auth_listeners):
            key = f"auth_listeners.{i}"
            path = door.unix_path
            sock = _bind_unix(door, path, key) if path is not None else _bind_tcp(door, key)
            socks.append(sock)
            sock.listen(DOOR_BACKLOG)
            sock.setblocking(False)
    except BaseException:
        close_auth_sockets(cfg, socks)
        raise
    return socks


def close_auth_sockets(cfg: Config, sockets: list[socket.socket]) -> None:
    """Close the sockets and remove the unix socket files this process created."""
    for door, sock in zip(cfg.auth_listeners, sockets):
        sock.close()
        path = door.unix_path
        if path is not None:
            path.unlink(missing_ok=True)


async def start_front_doors(
    cfg: Config, sockets: list[socket.socket], runtime: ServerRuntime, secret: bytes
) -> tuple[list[FrontDoor], list[asyncio.AbstractServer]]:
    """Serve each auth listener's socket in this process's event loop."""
    loop = asyncio.get_running_loop()
    doors: list[FrontDoor] = []
    servers: list[asyncio.AbstractServer] = []
    for listener, sock in zip(cfg.auth_listeners, sockets):
        door = FrontDoor(listener, runtime, cfg, secret)
        factory = _protocol_factory(listener.protocol)(door)
        if listener.proxy_protocol:
            factory = proxied.wrap(factory, parse_networks(listener.trusted_proxies),
                                   listener.label)
        factory = capped(factory, listener)  # counted from the accept, header or not
        # create_*_server listens again, with 100 unless told.
        if sock.family == socket.AF_UNIX:
            server = await loop.create_unix_server(factory, sock=sock, backlog=DOOR_BACKLOG)
        else:
            server = await loop.create_server(factory, sock=sock, backlog=DOOR_BACKLOG)
        doors.append(door)
        servers.append(server)
        log.info("front door %s: %s on %s", listener.label, listener.protocol, listener.address)
    return doors, servers
