"""Web admin sessions: kept in the serving process, named by a random cookie.

A session is a 256-bit random id (the cookie's value) mapped to the admin, its
expiry, its CSRF token and a fingerprint of the credentials it logged in with
(``credentials_of``). Nothing in the cookie is trusted: a forged, expired or
unknown id is no session at all, and one admin's id says nothing about another's.
Keeping them in memory means a restart logs everyone out, and removing an admin
(``smtpgate admin remove``) ends its sessions at their next request (the admin
is looked up on every request). So does giving the name new credentials: an
admin whose password or TOTP key leaked is reset by ``admin remove`` and ``admin
add``, and a session opened with the old ones, perhaps the thief's, must not
survive under the new ones even if it made no request in between.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from hashlib import sha256

from smtpgate.auth.admin_store import WebAdmin

#: Sessions kept at most; the oldest go first (a bound on memory, not a limit
#: anyone reaches by logging in properly).
MAX_SESSIONS = 1000


@dataclass(slots=True)
class Session:
    id: str
    admin: str
    csrf: str
    #: When it logged in; it ends ``Sessions.lifetime`` later, the lifetime in
    #: force at each request (a reload that shortens it ends old sessions too).
    created: float
    #: ``credentials_of`` the admin at login.
    credentials: str
    #: Its last request; it ends ``Sessions.idle_timeout`` after it.
    last_seen: float = 0.0


def credentials_of(admin: WebAdmin) -> str:
    """A digest of the admin's password hash and TOTP key: another after ``admin
    remove`` and ``admin add`` (a new salt, a new key), never the secrets themselves
    kept a second time."""
    return sha256(f"{admin.password_hash}\0{admin.totp_secret}".encode()).hexdigest()


class Sessions:
    def __init__(self, lifetime: float, *, idle_timeout: float = 0.0,
                 clock: Callable[[], float] = time.time) -> None:
        #: Seconds; a reload may change it (``[admin] session_lifetime``).
        self.lifetime = lifetime
        #: Seconds without a request that end a session; 0: none. A reload may
        #: change it (``[admin] session_idle_timeout``). Why: an admin page left
        #: open on an unlocked desk, or a cookie taken from a machine left on, is
        #: good for the whole lifetime otherwise.
        self.idle_timeout = idle_timeout
        self._clock = clock
        self._by_id: dict[str, Session] = {}

    def create(self, admin: str, credentials: str) -> Session:
        if len(self._by_id) >= MAX_SESSIONS:
            oldest = min(self._by_id.values(), key=lambda s: s.created)
            del self._by_id[oldest.id]
        now = self._clock()
        s = Session(secrets.token_urlsafe(32), admin, secrets.token_urlsafe(32),
                    now, credentials, now)
        self._by_id[s.id] = s
        return s

    def get(self, sid: str | None) -> Session | None:
        """The live session of ``sid`` (this request counts as its activity); None
        for an unknown one, or one past its lifetime or idle too long."""
        if not sid:
            return None
        s = self._by_id.get(sid)
        if s is None:
            return None
        now = self._clock()
        if (s.created + self.lifetime <= now
                or (self.idle_timeout > 0 and s.last_seen + self.idle_timeout <= now)):
            del self._by_id[sid]
            return None
        s.last_seen = now
        return s

    def end(self, sid: str) -> None:
        self._by_id.pop(sid, None)

    @staticmethod
    def same_credentials(session: Session, admin: WebAdmin) -> bool:
        """The admin still has the credentials the session logged in with."""
        return hmac.compare_digest(session.credentials, credentials_of(admin))

    @staticmethod
    def csrf_ok(session: Session, token: str | None) -> bool:
        """The form's token is this session's (compared in constant time)."""
        return tokens_match(session.csrf, token)


def tokens_match(ours: str, theirs: str | None) -> bool:
    """``theirs`` is the token ``ours``, compared in constant time. Tokens are ASCII
    (``secrets.token_urlsafe``); what a client sends need not be, in a form or in a
    cookie, and aiohttp keeps a header's undecodable bytes as lone surrogates, which
    cannot be encoded: a value that is not ASCII is simply no match."""
    if not theirs or not (ours.isascii() and theirs.isascii()):
        return False
    return hmac.compare_digest(ours.encode(), theirs.encode())
