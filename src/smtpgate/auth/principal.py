"""Who is logged in: one frozen value from AUTH to the last log line of the session.

A login attempt (`auth/login.py`) makes a `Principal` when it succeeds, whichever
front door it came through (SMTP AUTH today; the Dovecot auth protocol and nginx's
auth_http next). Everything after the login reads this one value: the sending
policy (sender ownership, rate limits), the Received header, the envelope, the
rate counters and the logs. Before it, the account was the engine's identity
string and the app password a separate field of the connection, kept in step by
hand.

A leaf module: it imports nothing of the project, so the policy and the queue can
import it without importing the auth service.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class AppPasswordUse:
    """The app password a principal logged in with: what its limits and logs need
    (never its secret, and nothing that changes while the session lasts)."""

    id: int
    name: str
    #: Its own sending limits (None or 0: only the account's apply).
    max_messages_per_hour: int | None = None
    max_recipients_per_hour: int | None = None


@dataclass(frozen=True, slots=True)
class Principal:
    """One logged-in user."""

    #: The account's canonical name (the directory's, not what the client typed).
    account: str
    #: The SASL mechanism it proved itself with, upper case.
    mechanism: str
    #: Set when the password was one of the account's app passwords.
    app_password: AppPasswordUse | None = None
    #: Set when it logged in with a bearer token: the issuer that signed it.
    oauth_issuer: str | None = None
    #: The bearer token itself, verified again at the session's recheck (an issuer
    #: with introspection says there whether it was revoked); never logged.
    oauth_token: str | None = field(default=None, repr=False)
    #: When that token stops being accepted (its ``exp`` plus the issuer's leeway,
    #: seconds since the epoch): the session ends at its first MAIL from then.
    oauth_expires: float | None = None
