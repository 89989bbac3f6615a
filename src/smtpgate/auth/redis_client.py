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


def connect(url: str, password: str | None, timeout: float, *,
            ca_file: Path | None = None, cert_file: Path | None = None,
            key_file: Path | None = None) -> redis.Redis:
    """A client for ``url`` (``redis://`` or ``rediss://`` for TLS); connects on
    first use. ``password`` overrides one in the URL (there should be none).
    With TLS, ``ca_file`` replaces the system's CAs (a Redis on a private CA, the
    usual case) and ``cert_file``/``key_file`` answer a Redis that asks for a
    client certificate; the server's certificate and name are always verified."""
    tls: dict[str, object] = {}
    if ca_file is not None:
        tls["ssl_ca_certs"] = str(ca_file)
    if cert_file is not None and key_file is not None:
        tls.update(ssl_certfile=str(cert_file), ssl_keyfile=str(key_file))
    return redis.Redis.from_url(
        url,
        **tls,
        password=password,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        retry_on_timeout=False,
        health_check_interval=30,
        decode_responses=False,
    )
