"""The channel-binding fallback's state: per address, shared, expiring, failing open.

docs/mechanisms.md ("-PLUS and GNU SASL clients") explains the policy; the wire
behaviour is in test_auth_decided_failures.py (engine) and
tests/integration/test_clients_gnu_sasl.py (real mutt, neomutt and gsasl).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from smtpgate.auth.guard import PLUS_FALLBACK_SECONDS, Guard
from smtpgate.auth.guard_store import GuardStoreError, SqliteGuardStore
from smtpgate.config import GuardConfig
from tests.unit.patient_state import PATIENT_STATE


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def guard(tmp_path: Path) -> AsyncIterator[tuple[Guard, Clock]]:
    clock = Clock()
    g = Guard(SqliteGuardStore(tmp_path / "guard.sqlite"), GuardConfig(), PATIENT_STATE, clock=clock)
    yield g, clock
    await g.close()


async def test_held_back_per_address_until_it_lapses(guard: tuple[Guard, Clock]) -> None:
    g, clock = guard
    assert await g.plus_held_back("192.0.2.7") is None
    await g.hold_back_plus("192.0.2.7")
    assert await g.plus_held_back("192.0.2.7") == clock.now + PLUS_FALLBACK_SECONDS
    assert await g.plus_held_back("192.0.2.8") is None  # another address: -PLUS offered
    clock.now += PLUS_FALLBACK_SECONDS + 1
    assert await g.plus_held_back("192.0.2.7") is None


async def test_ipv6_counts_by_prefix_like_the_guard(guard: tuple[Guard, Clock]) -> None:
    g, _ = guard
    await g.hold_back_plus("2001:db8:1:2::5")
    assert await g.plus_held_back("2001:db8:1:2::99") is not None  # same /64
    assert await g.plus_held_back("2001:db8:1:3::5") is None


async def test_offered_again_and_renewal_is_due_after_a_day(guard: tuple[Guard, Clock]) -> None:
    g, clock = guard
    await g.hold_back_plus("192.0.2.7")
    until = await g.plus_held_back("192.0.2.7")
    assert not g.plus_fallback_due(until) and not g.plus_fallback_due(None)
    clock.now += 86400 + 1
    assert g.plus_fallback_due(until)
    await g.offer_plus_again("192.0.2.7")
    assert await g.plus_held_back("192.0.2.7") is None


async def test_shared_by_every_process_on_the_file(tmp_path: Path) -> None:
    """What one worker stores, another (its own store on the same file) reads."""
    path = tmp_path / "guard.sqlite"
    a = Guard(SqliteGuardStore(path), GuardConfig(), PATIENT_STATE)
    b = Guard(SqliteGuardStore(path), GuardConfig(), PATIENT_STATE)
    try:
        await a.hold_back_plus("192.0.2.7")
        assert await b.plus_held_back("192.0.2.7") is not None
    finally:
        await a.close()
        await b.close()


def test_prune_drops_lapsed_entries(tmp_path: Path) -> None:
    store = SqliteGuardStore(tmp_path / "guard.sqlite")
    try:
        store.set_plus_fallback("192.0.2.7", 100.0)
        store.set_plus_fallback("192.0.2.8", 300.0)
        store.prune(200.0, 60.0, 60.0)
        rows = store._conn().execute("SELECT address FROM plus_fallback").fetchall()
        assert rows == [("192.0.2.8",)]
    finally:
        store.close()


class BrokenStore(SqliteGuardStore):
    def plus_fallback(self, address: str, now: float) -> float | None:
        raise GuardStoreError("disk on fire")

    def set_plus_fallback(self, address: str, until: float | None) -> None:
        raise GuardStoreError("disk on fire")


async def test_faults_fail_open(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A database fault means -PLUS is advertised, as without the fallback."""
    g = Guard(BrokenStore(tmp_path / "g.sqlite"), GuardConfig())
    try:
        await g.hold_back_plus("192.0.2.7")
        assert await g.plus_held_back("192.0.2.7") is None
        assert g.stats.faults == 2 and caplog.text.count("guard database writes not answering") == 1
    finally:
        await g.close()
