"""The guard's state where ``[state] backend`` says: SQLite for one node, Redis for
several (docs/scale-out.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from smtpgate.auth.guard_state import GuardState, GuardStoreError
from smtpgate.auth.guard_store import SqliteGuardStore
from smtpgate.config import Config

if TYPE_CHECKING:  # redis is imported only with backend = "redis" (workload D)
    from pathlib import Path

    import redis


def redis_client(cfg: Config, timeout: float | None = None) -> redis.Redis:
    """A client for ``[state]``; it connects on first use, so a Redis that is down
    at start-up is found (and survived) by the first call, not here. ``timeout``:
    instead of ``state.timeout`` (a check that may wait longer than a login).

    Raises:
        OSError: the password file cannot be read.
    """
    from smtpgate.auth.redis_client import connect, read_password

    def file(path: Path | None) -> Path | None:
        return None if path is None else cfg.path(path)

    state = cfg.state
    return connect(state.redis_url, read_password(file(state.password_file)),
                   cfg.state.timeout if timeout is None else timeout,
                   ca_file=file(state.ca_file), cert_file=file(state.cert_file),
                   key_file=file(state.key_file), password_file=file(state.password_file))


def open_guard_state(cfg: Config) -> GuardState:
    """Raises:
        GuardStoreError: the SQLite file cannot be opened, or the Redis password file
            cannot be read.
    """
    if cfg.state.backend == "redis":
        from smtpgate.auth.redis_guard_state import RedisGuardState

        try:
            return RedisGuardState(redis_client(cfg), cfg.state.key_prefix)
        except OSError as e:
            raise GuardStoreError(f"state.password_file: cannot read: {e.strerror or e}") from None
    return SqliteGuardStore(cfg.path(cfg.guard.database))
