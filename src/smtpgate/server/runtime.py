"""What the connections of one worker process share, as `server/app.py` wires it.

A reload (``_Live.apply`` in app.py) replaces fields in place: sessions in
flight see the new limits and policy from their next decision on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import InitVar, dataclass, field
from typing import TYPE_CHECKING

from smtpgate.auth.guard import Guard
from smtpgate.auth.login import LoginAttempts
from smtpgate.auth.networks import IPNetwork, in_networks, parse_ip
from smtpgate.auth.service import AuthService
from smtpgate.config import LimitsConfig, PolicyConfig
from smtpgate.policy.rates import RateLimiter
from smtpgate.queue.intake import Intake
from smtpgate.queue.space import SpoolSpace
from smtpgate.queue.spool import Spool
from smtpgate.server.limits import ConnectionLimiter
from smtpgate.smtp.engine import EngineSettings
from smtpgate.tls.session import ServerTlsContext

if TYPE_CHECKING:
    from smtpgate.server.connection import SmtpConnection


@dataclass(frozen=True, slots=True)
class ListenerRuntime:
    name: str
    implicit_tls: bool
    settings: EngineSettings
    #: Proxies this listener takes XCLIENT from (``xclient_trusted``).
    xclient_networks: tuple[IPNetwork, ...] = ()

    def trusts_xclient(self, client_ip: str) -> bool:
        return in_networks(parse_ip(client_ip), self.xclient_networks)


@dataclass
class ServerRuntime:
    """What every connection of one worker process shares."""

    hostname: str
    auth: AuthService
    spool: Spool
    tls: ServerTlsContext
    limits: LimitsConfig
    limiter: ConnectionLimiter
    on_stored: Callable[[], None]
    handshake_timeout: float = 30.0
    #: Goes to ``login``; a reload sets ``login.failure_floor``.
    failure_floor: InitVar[float] = 0.25
    add_received: bool = True
    #: ``smtp.received_login``: the Received header names the login.
    received_login: bool = False
    #: ``[auth] session_recheck``: seconds before a session's MAIL reads its account again.
    session_recheck: float = 10.0
    connections: set[SmtpConnection] = field(default_factory=set)
    guard: Guard | None = None
    rates: RateLimiter | None = None
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    #: The free-space reserve MAIL keeps on the spool's file system (None: unchecked).
    space: SpoolSpace | None = None
    #: Fire-and-forget tasks of closed connections (held so they are not collected).
    background: set[asyncio.Task[None]] = field(default_factory=set)
    #: The login path (guard, credentials, auth log, failure floor).
    login: LoginAttempts = field(init=False)
    #: Accepted messages into the spool.
    intake: Intake = field(init=False)

    def __post_init__(self, failure_floor: float) -> None:
        self.login = LoginAttempts(self.auth, self.guard, failure_floor=failure_floor)
        self.intake = Intake(self.spool, self.on_stored)
