"""The rate limiter: the budget decision (pure), faults fail open, its own counters."""

from __future__ import annotations

import ast
from collections.abc import Sequence
from pathlib import Path

import pytest

from smtpgate.auth.sender_profile import SenderProfile
from smtpgate.config import LimitsConfig
from smtpgate.policy import rates
from smtpgate.policy.rate_counters import RateCountersError
from smtpgate.policy.rates import Budget, RateLimiter, budget_left

A, P = "acct:a@x.org", "app:7"


def test_budget_left_is_the_tightest_over_the_keys() -> None:
    b = budget_left({A: (10, 50), P: (3, 0)}, {A: (4, 20), P: (1, 9)})
    assert b == Budget((A, P), 2, 30, f"{P} sent 1 of 3 messages in the last hour")


def test_budget_left_zero_is_unlimited_and_unused_keys_count_nothing() -> None:
    assert budget_left({A: (0, 0)}, {A: (999, 999)}) == Budget((A,), None, None, "")
    assert budget_left({A: (5, 0)}, {}) == Budget((A,), 5, None, f"{A} sent 0 of 5 messages in the last hour")


def test_budget_left_may_be_negative_after_an_overshoot() -> None:
    assert budget_left({A: (2, 4)}, {A: (3, 6)}).messages_left == -1


class BrokenCounters:
    def add_usage(self, keys: Sequence[str], bucket: int, messages: int, recipients: int) -> None:
        raise RateCountersError("disk on fire")

    def usage(self, keys: Sequence[str], since_bucket: int) -> dict[str, tuple[int, int]]:
        raise RateCountersError("disk on fire")

    def close(self) -> None:
        pass


async def test_a_counter_fault_fails_open_and_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    limiter = RateLimiter(BrokenCounters(), LimitsConfig(messages_per_hour=1))
    try:
        b = await limiter.budget(SenderProfile("a@x.org"), None)
        assert (b.messages_left, b.recipients_left) == (None, None)
        await limiter.count(b.keys, 1, 1)
        assert caplog.text.count("rate counters reads not answering (disk on fire)") == 1  # once per episode
        assert "limits not applied" in caplog.text
    finally:
        await limiter.close()


def test_the_rate_limiter_depends_on_its_counters_not_on_the_guard() -> None:
    tree = ast.parse(Path(rates.__file__).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert "smtpgate.policy.rate_counters" in imported
    assert not {m for m in imported if m and m.startswith("smtpgate.auth.guard")}
