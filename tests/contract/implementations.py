"""The implementations the contract suites run against, by name.

A state store added later (Redis, issue 12) adds its name to ``GUARD_STATES``
and ``RATE_COUNTERS``, a branch to each ``open_*`` and to ``target_for``; the
suites themselves do not change. A *target* is what every instance of one
store opens (a file, a URL): instances in other threads and processes open the
same target and must see one another's writes, as nodes sharing a store do.
"""

from __future__ import annotations

from pathlib import Path

from smtpgate.auth.guard_state import GuardState
from smtpgate.auth.guard_store import SqliteGuardStore
from smtpgate.policy.rate_counters import RateCounters
from smtpgate.policy.sqlite_counters import SqliteRateCounters

GUARD_STATES = ("sqlite",)
RATE_COUNTERS = ("sqlite",)


def target_for(name: str, tmp_path: Path) -> str:
    """A fresh, empty target for one test."""
    if name == "sqlite":
        return str(tmp_path / "guard.sqlite")
    raise ValueError(f"unknown implementation {name!r}")


def open_guard_state(name: str, target: str) -> GuardState:
    if name == "sqlite":
        return SqliteGuardStore(Path(target))
    raise ValueError(f"unknown implementation {name!r}")


def open_rate_counters(name: str, target: str) -> RateCounters:
    if name == "sqlite":
        return SqliteRateCounters(Path(target))
    raise ValueError(f"unknown implementation {name!r}")
