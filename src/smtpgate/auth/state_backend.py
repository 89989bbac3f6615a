"""The guard's state where ``[state] backend`` says: SQLite for one node, Redis for
several (docs/scale-out.md)."""

from __future__ import annotations

import redis

from smtpgate.auth.guard_state import GuardState, GuardStoreError
from smtpgate.auth.guard_store import SqliteGuardStore
from smtpgate.auth.redis_client import connect, read_password
from smtpgate.auth.redis_guard_state import RedisGuardState
from smtpgate.config import Config


def redis_client(cfg: Config) -> redis.Redis:
    """A client for ``[state]``; it connects on first use, so a Redis that is down
    at start-up is found (and survived) by the first call, not here.

    Raises:
        OSError: the password file cannot be read.
    """
    state = cfg.state
    password_file = None if state.password_file is None else cfg.path(state.password_file)
    return connect(state.redis_url, read_password(password_file), cfg.state.timeout)


def open_guard_state(cfg: Config) -> GuardState:
    """Raises:
        GuardStoreError: the SQLite file cannot be opened, or the Redis password file
            cannot be read.
    """
    if cfg.state.backend == "redis":
        try:
            return RedisGuardState(redis_client(cfg), cfg.state.key_prefix)
        except OSError as e:
            raise GuardStoreError(f"state.password_file: cannot read: {e.strerror or e}") from None
    return SqliteGuardStore(cfg.path(cfg.guard.database))
