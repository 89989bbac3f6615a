"""Web admin sessions: kept in the serving process, named by a random cookie.

A session is a 256-bit random id (the cookie's value) mapped to the admin, its
expiry and its CSRF token. Nothing in the cookie is trusted: a forged, expired or
unknown id is no session at all, and one admin's id says nothing about another's.
Keeping them in memory means a restart logs everyone out, and removing an admin
(``smtpgate admin remove``) ends its sessions at their next request (the admin
is looked up on every request).
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

#: Sessions kept at most; the oldest go first (a bound on memory, not a limit
#: anyone reaches by logging in properly).
MAX_SESSIONS = 1000


@dataclass(slots=True)
class Session:
    id: str
    admin: str
    csrf: str
    expires: float


class Sessions:
    def __init__(self, lifetime: float, *, clock: Callable[[], float] = time.time) -> None:
        #: Seconds; a reload may change it (``[admin] session_lifetime``).
        self.lifetime = lifetime
        self._clock = clock
        self._by_id: dict[str, Session] = {}

    def create(self, admin: str) -> Session:
        if len(self._by_id) >= MAX_SESSIONS:
            oldest = min(self._by_id.values(), key=lambda s: s.expires)
            del self._by_id[oldest.id]
        s = Session(secrets.token_urlsafe(32), admin, secrets.token_urlsafe(32),
                    self._clock() + self.lifetime)
        self._by_id[s.id] = s
        return s

    def get(self, sid: str | None) -> Session | None:
        """The live session of ``sid``; None for an unknown or expired one."""
        if not sid:
            return None
        s = self._by_id.get(sid)
        if s is None:
            return None
        if s.expires <= self._clock():
            del self._by_id[sid]
            return None
        return s

    def end(self, sid: str) -> None:
        self._by_id.pop(sid, None)

    @staticmethod
    def csrf_ok(session: Session, token: str | None) -> bool:
        """The form's token is this session's (compared in constant time)."""
        return bool(token) and hmac.compare_digest(session.csrf.encode(), (token or "").encode())
