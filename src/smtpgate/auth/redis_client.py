"""The connection to Redis that several nodes share (``[state] backend = "redis"``).

The guard state and the sending counters run their calls on worker threads of
their own (the interfaces are synchronous, `guard_state.py`), so they use
redis-py's synchronous client there: the event loop never waits on Redis, and a
call that does not answer within ``[state] timeout`` raises at once, which the
guard turns into its degraded mode (docs/scale-out.md). No automatic retries:
a retry would only stretch the wait a login sees.

One Redis server (or a primary with replicas behind Sentinel or a fixed
address), not Redis Cluster: the Lua scripts touch keys derived from their
arguments, which Cluster's key slots forbid.
"""

from __future__ import annotations

from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.credentials import CredentialProvider
from redis.retry import Retry


def read_password(path: Path | None) -> str | None:
    """The password file's first line (None: no file, no password).

    Raises:
        OSError: the file cannot be read.
    """
    if path is None:
        return None
    lines = path.read_text(encoding="utf-8").splitlines()
    return lines[0] if lines else ""


class PasswordFileCredentials(CredentialProvider):
    """The user name from the URL and the password file's first line, read again for
    each new connection. Why: the password was read once, at start-up, so a
    rotated Redis password (``requirepass`` or an ACL user's, changed in Redis and
    in ``state.password_file``) failed every connection a node made afterwards
    (its first after a Redis restart, a timeout, a connection the pool replaced)
    with ``invalid username-password pair``, logged as Redis "not answering", until
    each node was restarted. A file that cannot be read at that moment (being
    replaced) gives the last password read."""

    def __init__(self, username: str | None, path: Path, password: str) -> None:
        self._username = username
        self._path = path
        self._last = password

    def get_credentials(self) -> tuple[str] | tuple[str, str]:
        try:
            self._last = read_password(self._path) or ""
        except OSError:
            pass  # keep the last one read; a wrong one is refused as before
        return (self._username, self._last) if self._username else (self._last,)


def _without_user(url: str) -> tuple[str, str | None]:
    """``url`` without its user name (redis-py takes a URL's user over a credential
    provider's and refuses both), and that name (None: the default user)."""
    from urllib.parse import unquote, urlsplit, urlunsplit

    parts = urlsplit(url)
    user, at, host = parts.netloc.rpartition("@")
    if not at:
        return url, None
    name = unquote(user.partition(":")[0])
    return urlunsplit(parts._replace(netloc=host)), name or None


def connect(url: str, password: str | None, timeout: float, *,
            ca_file: Path | None = None, cert_file: Path | None = None,
            key_file: Path | None = None, password_file: Path | None = None) -> redis.Redis:
    """A client for ``url`` (``redis://`` or ``rediss://`` for TLS); connects on
    first use. ``password`` overrides one in the URL (there should be none); with
    ``password_file`` (which ``password`` was read from) each new connection reads
    the file again (``PasswordFileCredentials``).
    With TLS, ``ca_file`` replaces the system's CAs (a Redis on a private CA, the
    usual case) and ``cert_file``/``key_file`` answer a Redis that asks for a
    client certificate; the server's certificate and name are always verified."""
    auth: dict[str, object] = {"password": password}
    if password_file is not None and password is not None:
        url, user = _without_user(url)
        auth = {"credential_provider": PasswordFileCredentials(user, password_file, password)}
    tls: dict[str, object] = {}
    if ca_file is not None:
        tls["ssl_ca_certs"] = str(ca_file)
    if cert_file is not None and key_file is not None:
        tls.update(ssl_certfile=str(cert_file), ssl_keyfile=str(key_file))
    return redis.Redis.from_url(
        url,
        **tls,
        **auth,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        retry_on_timeout=False,
        health_check_interval=30,
        decode_responses=False,
    )
