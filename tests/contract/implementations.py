"""The implementations the contract suites run against, by name.

A state store added later (Redis, issue 12) adds its name to ``GUARD_STATES``
and ``RATE_COUNTERS``, a branch to each ``open_*`` and to ``target_for``; the
suites themselves do not change. A *target* is what every instance of one
store opens (a file, a URL): instances in other threads and processes open the
same target and must see one another's writes, as nodes sharing a store do.
"""

from __future__ import annotations

from pathlib import Path

import redis

from smtpgate.auth.guard_state import GuardState
from smtpgate.auth.guard_store import SqliteGuardStore
from smtpgate.auth.redis_client import connect
from smtpgate.auth.redis_guard_state import RedisGuardState
from smtpgate.policy.rate_counters import RateCounters
from smtpgate.policy.redis_counters import RedisRateCounters
from smtpgate.policy.sqlite_counters import SqliteRateCounters

GUARD_STATES = ("sqlite", "redis")
RATE_COUNTERS = ("sqlite", "redis")


def _redis(target: str) -> tuple[redis.Redis, str]:
    """A client of the test run's Redis for ``URL#PREFIX``: each test gets a key
    prefix of its own on the one server."""
    from tests.peers.redis_server import PASSWORD

    url, prefix = target.split("#", 1)
    return connect(url, PASSWORD, timeout=5.0), prefix


def target_for(name: str, tmp_path: Path) -> str:
    """A fresh, empty target for one test."""
    if name == "sqlite":
        return str(tmp_path / "guard.sqlite")
    if name == "redis":
        from tests.peers.redis_server import new_prefix, shared_redis

        return f"{shared_redis().url}#{new_prefix()}"
    raise ValueError(f"unknown implementation {name!r}")


def open_guard_state(name: str, target: str) -> GuardState:
    if name == "sqlite":
        return SqliteGuardStore(Path(target))
    if name == "redis":
        return RedisGuardState(*_redis(target))
    raise ValueError(f"unknown implementation {name!r}")


def open_rate_counters(name: str, target: str) -> RateCounters:
    if name == "sqlite":
        return SqliteRateCounters(Path(target))
    if name == "redis":
        return RedisRateCounters(*_redis(target))
    raise ValueError(f"unknown implementation {name!r}")
