"""The rate limiter: the budget decision (pure), faults fail open, its own counters."""

from __future__ import annotations

import ast
from collections.abc import Sequence
from pathlib import Path

import pytest

from smtpgate.auth.sender_profile import SenderProfile
from smtpgate.config import LimitsConfig, PolicyConfig
from smtpgate.policy import rates
from smtpgate.policy.rate_counters import RateCountersError
from smtpgate.policy.rates import Budget, RateLimiter, budget_left

A, P = "acct:a@x.org", "app:7"


def test_budget_left_is_the_tightest_over_the_keys() -> None:
    b = budget_left({A: (10, 50), P: (3, 0)}, {A: (4, 20), P: (1, 9)})
    assert b == Budget((A, P), 2, 30, f"{P} sent 1 of 3 messages in the last hour", P, A)
    assert b.by_app_password(b.message_key) and not b.by_app_password(b.recipient_key)


def test_budget_left_zero_is_unlimited_and_unused_keys_count_nothing() -> None:
    assert budget_left({A: (0, 0)}, {A: (999, 999)}) == Budget((A,), None, None, "")
    assert budget_left({A: (5, 0)}, {}) == Budget((A,), 5, None, f"{A} sent 0 of 5 messages in the last hour", A)


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


class RecordingCounters:
    """In memory; records each write and can hold writes until released."""

    def __init__(self) -> None:
        import threading

        self.writes: list[tuple[tuple[str, ...], int, int, int]] = []
        self.used: dict[str, list[int]] = {}
        self.release = threading.Event()
        self.release.set()
        self.fail = False

    def add_usage(self, keys: Sequence[str], bucket: int, messages: int, recipients: int) -> None:
        self.release.wait(5)
        if self.fail:
            raise ValueError("a bug in a counters backend")
        self.writes.append((tuple(keys), bucket, messages, recipients))
        for k in keys:
            used = self.used.setdefault(k, [0, 0])
            used[0] += messages
            used[1] += recipients

    def usage(self, keys: Sequence[str], since_bucket: int) -> dict[str, tuple[int, int]]:
        return {k: (self.used.get(k, [0, 0])[0], self.used.get(k, [0, 0])[1]) for k in keys}

    def close(self) -> None:
        pass


async def test_counts_made_during_a_write_go_out_together_and_each_waits_for_its_own() -> None:
    import asyncio

    counters = RecordingCounters()
    limiter = RateLimiter(counters, LimitsConfig(messages_per_hour=100), store_timeout=5)
    try:
        counters.release.clear()  # the first write stalls on the write thread
        first = asyncio.ensure_future(limiter.count((A,), 1, 2))
        await asyncio.sleep(0.05)
        rest = [asyncio.ensure_future(limiter.count((A, P), 1, 1)) for _ in range(5)]
        await asyncio.sleep(0.05)
        assert not first.done() and not any(t.done() for t in rest)  # nobody answered early
        counters.release.set()
        await asyncio.gather(first, *rest)
        # One write for the first, one for the five that came while it ran.
        assert [w[2:] for w in counters.writes] == [(1, 2), (5, 5)]
        # Returned means counted: the next MAIL sees all six.
        budget = await limiter.budget(SenderProfile("a@x.org"), None)
        assert budget.messages_left == 100 - 6
    finally:
        await limiter.close()


async def test_a_session_that_goes_away_does_not_cancel_the_others_count() -> None:
    import asyncio

    counters = RecordingCounters()
    limiter = RateLimiter(counters, LimitsConfig(messages_per_hour=100), store_timeout=5)
    try:
        counters.release.clear()
        leaving = asyncio.ensure_future(limiter.count((A,), 1, 1))
        staying = asyncio.ensure_future(limiter.count((A,), 1, 1))
        await asyncio.sleep(0.05)
        leaving.cancel()
        counters.release.set()
        await staying
        assert sum(w[2] for w in counters.writes) == 2  # the cancelled one is counted too
    finally:
        await limiter.close()


async def test_a_backend_bug_is_logged_and_the_accepted_messages_are_not_refused_late(
    caplog: pytest.LogCaptureFixture,
) -> None:
    counters = RecordingCounters()
    counters.fail = True
    limiter = RateLimiter(counters, LimitsConfig(messages_per_hour=100), store_timeout=5)
    try:
        await limiter.count((A,), 1, 3)  # returns: its message is on disk already
        assert "cannot count 1 accepted message(s)" in caplog.text
    finally:
        await limiter.close()


async def test_counts_no_limit_applies_to_are_gathered_and_written_later_in_one_write() -> None:
    import asyncio

    from smtpgate.auth.principal import Principal
    from smtpgate.policy.submission import Sending

    class Profiles:
        async def sender_profile(self, identity: str) -> SenderProfile:
            return SenderProfile(identity)

    counters = RecordingCounters()
    limiter = RateLimiter(counters, LimitsConfig(messages_per_hour=0, recipients_per_hour=0),
                          later_seconds=0.2)
    try:
        sending = Sending(Principal("a@x.org", "PLAIN"), Profiles(), session_id="s",
                          client_ip="192.0.2.7")
        for recipients in (1, 2, 3):
            assert await sending.mail("a@x.org", PolicyConfig(), limiter) is None
            assert sending.count(limiter, recipients) is None  # nothing to wait for
        assert counters.writes == []  # gathered, not written yet
        await asyncio.sleep(0.6)
        assert [w[0] + w[2:] for w in counters.writes] == [(A, 3, 6)]  # one write for three
        # A limited account's count is still written before its 250 (the caller awaits).
        limited = RateLimiter(counters, LimitsConfig(messages_per_hour=10), later_seconds=60)
        try:
            s2 = Sending(Principal("a@x.org", "PLAIN"), Profiles(), session_id="s2",
                         client_ip="192.0.2.7")
            assert await s2.mail("a@x.org", PolicyConfig(), limited) is None
            counting = s2.count(limited, 1)
            assert counting is not None
            await counting
            assert counters.writes[-1][2:] == (1, 1)
        finally:
            await limited.close()
    finally:
        await limiter.close()


async def test_gathered_counts_are_written_when_the_limiter_closes() -> None:
    counters = RecordingCounters()
    limiter = RateLimiter(counters, LimitsConfig(messages_per_hour=0, recipients_per_hour=0),
                          later_seconds=3600)
    limiter.count_later((A,), 1, 4)
    limiter.count_later((A, P), 1, 1)
    await limiter.close()
    assert sorted((w[0], w[2:]) for w in counters.writes) == [((A,), (1, 4)), ((A, P), (1, 1))]
    limiter.count_later((A,), 1, 1)  # after close: dropped, no timer left behind
    assert len(counters.writes) == 2
