"""The sending counters where ``[state] backend`` says (docs/scale-out.md)."""

from __future__ import annotations

from smtpgate.config import Config
from smtpgate.policy.rate_counters import RateCounters, RateCountersError
from smtpgate.policy.sqlite_counters import SqliteRateCounters


def open_rate_counters(cfg: Config) -> RateCounters:
    """Raises:
        RateCountersError: the SQLite file cannot be opened, or the Redis password
            file cannot be read.
    """
    if cfg.state.backend == "redis":
        # Imported only here: redis stays out of single-node processes (workload D).
        from smtpgate.auth.state_backend import redis_client
        from smtpgate.policy.redis_counters import RedisRateCounters

        try:
            return RedisRateCounters(redis_client(cfg), cfg.state.key_prefix)
        except OSError as e:
            raise RateCountersError(f"state.password_file: cannot read: {e.strerror or e}") from None
    return SqliteRateCounters(cfg.path(cfg.guard.database))
