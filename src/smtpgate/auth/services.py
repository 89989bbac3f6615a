"""The auth service a serving process uses now, and the ones a reload replaced.

A reload that changes the directory (``[accounts]``) or the OAuth issuers builds
a new `AuthService` and makes it current (``replace``): logins that start after
that use it. A login already under way holds the service it started with
(``hold``/``release``) and finishes with it, so one exchange never sees two
directories (a SCRAM salt from one, the proof checked against the other). A
replaced service is closed once the last login holding it has ended; its worker
threads and directory connections go with it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from datetime import datetime

    from smtpgate.auth.principal import Principal
    from smtpgate.auth.sender_profile import SenderProfile
    from smtpgate.auth.service import AuthContext, AuthService

log = logging.getLogger("smtpgate")


class AuthServices:
    """The current service and the retired ones still in use; one event loop."""

    def __init__(self, current: AuthService) -> None:
        self.current = current
        #: Logins in flight per service (by identity).
        self._holds: dict[int, int] = {}
        #: Replaced services not closed yet (by identity).
        self._retired: dict[int, AuthService] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def hold(self) -> AuthService:
        """The current service, kept open until ``release``."""
        svc = self.current
        self._holds[id(svc)] = self._holds.get(id(svc), 0) + 1
        return svc

    def release(self, svc: AuthService) -> None:
        key = id(svc)
        left = self._holds.get(key, 0) - 1
        if left > 0:
            self._holds[key] = left
            return
        self._holds.pop(key, None)
        if key in self._retired:
            self._close(self._retired.pop(key))

    def replace(self, new: AuthService) -> None:
        """New logins use ``new``; the old service closes when no login holds it."""
        old, self.current = self.current, new
        if self._holds.get(id(old), 0) > 0:
            self._retired[id(old)] = old
        else:
            self._close(old)

    @property
    def retired(self) -> int:
        """Replaced services still open (logins in flight hold them)."""
        return len(self._retired) + len(self._closing)

    async def sender_profile(self, identity: str) -> SenderProfile:
        """From the current directory (a session's first MAIL after a reload reads
        the new one)."""
        return await self.current.sender_profile(identity)

    async def others_addresses(self, identity: str, addresses: list[str]) -> list[str]:
        """``AuthService.others_addresses`` of the current directory."""
        return await self.current.others_addresses(identity, addresses)

    async def session_refusal(
        self, principal: Principal, ctx: AuthContext, logged_in: datetime
    ) -> tuple[str | None, SenderProfile | None]:
        """``AuthService.session_refusal`` of the current directory."""
        return await self.current.session_refusal(principal, ctx, logged_in)

    def _close(self, svc: AuthService) -> None:
        task = asyncio.get_running_loop().create_task(svc.close())
        self._closing.add(task)
        task.add_done_callback(self._closed)

    def _closed(self, task: asyncio.Task[None]) -> None:
        self._closing.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("closing a replaced auth service: %s", task.exception())

    async def close(self) -> None:
        """At shutdown: the current service, every retired one, and those closing."""
        for svc in [self.current, *self._retired.values()]:
            await svc.close()
        self._retired.clear()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
