"""Which attempt gates a penalty is waited in (auth/login.py).

A penalised attempt from an address the account does not know waits its penalty
inside its address's gate only: its address's next attempts follow it at the
penalty's pace, but the account's and the subnet's gates are taken after it,
and the guard asked again then. A refusal found by that second check waits its
delay without them too. Real SQLite account store and guard; the penalty's
sleep is held open by the test, so what is held during it can be looked at.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from smtpgate.auth.login import LoginAttempts
from smtpgate.auth.service import AuthContext
from smtpgate.config import GuardConfig
from smtpgate.sasl.base import VerifyPassword
from smtpgate.sasl.exchange import AuthResult, Outcome
from tests.unit.alice_logins import ALICE, alice_logins

PENALTY = 10.0
ATTACKER = "192.0.2.20"


def ctx(ip: str) -> AuthContext:
    return AuthContext("submission", ip, 40000, "TLSv1.3", f"s-{ip}")


@dataclass
class Sleeps:
    """The login path's sleep: each one waits until the test lets it go."""

    waiting: list[tuple[float, asyncio.Future[None]]] = field(default_factory=list)

    async def __call__(self, seconds: float) -> None:
        done = asyncio.get_running_loop().create_future()
        self.waiting.append((seconds, done))
        await done

    async def next(self) -> tuple[float, asyncio.Future[None]]:
        async with asyncio.timeout(10):
            while not self.waiting:
                await asyncio.sleep(0.01)
        return self.waiting.pop(0)


@dataclass
class World:
    login: LoginAttempts
    sleeps: Sleeps


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    sleeps = Sleeps()
    guard_cfg = GuardConfig(lockout_threshold=3, penalty_base=PENALTY, penalty_max=PENALTY,
                            distributed_addresses=1000)
    async with alice_logins(tmp_path, guard_cfg, sleeps) as (login, _):
        yield World(login, sleeps)


async def attempt(login: LoginAttempts, ip: str, password: str) -> str:
    """A PLAIN login from ``ip``; the result class it got."""
    one = login.begin(ctx(ip))
    answer = await one.resolve(VerifyPassword(ALICE, password, mechanism="PLAIN"))
    assert answer is not None
    if getattr(answer, "temporary", False):
        result = AuthResult.TEMPFAIL
    else:
        result = AuthResult.SUCCESS if getattr(answer, "ok", False) else AuthResult.FAILURE
    identity = ALICE if result is AuthResult.SUCCESS else ""
    return str((await one.finish(Outcome("PLAIN", result, ALICE, identity, ""))).result)


async def test_a_penalty_holds_its_address_gate_only(world: World) -> None:
    login, sleeps = world.login, world.sleeps
    assert await attempt(login, ATTACKER, "guess 1") == "failure"  # the penalty's cause
    guess = asyncio.ensure_future(attempt(login, ATTACKER, "guess 2"))
    seconds, penalty = await sleeps.next()
    assert seconds == PENALTY
    assert login.gate.busy(f"address {ATTACKER}")
    assert not login.gate.busy(f"account {ALICE}")
    # The owner from a new address (same /24) goes at once, past the penalty.
    assert await asyncio.wait_for(attempt(login, "192.0.2.30", "pencil"), 5) == "success"
    # The penalised address's next attempt queues behind its penalty.
    follower = asyncio.ensure_future(attempt(login, ATTACKER, "guess 3"))
    await asyncio.sleep(0.05)
    assert not follower.done() and not sleeps.waiting
    penalty.set_result(None)
    assert await asyncio.wait_for(guess, 5) == "failure"
    _, second = await sleeps.next()  # then the follower's own penalty
    second.set_result(None)
    assert await asyncio.wait_for(follower, 5) == "failure"


async def test_failures_counted_during_a_penalty_are_read_after_it(world: World) -> None:
    """Asked again once the penalty is over: the account was locked meanwhile, so
    the guess is refused unverified, and it waits the refusal's delay without
    the account's and the subnet's gates (another new address is refused at
    once, not after it)."""
    login, sleeps = world.login, world.sleeps
    assert await attempt(login, ATTACKER, "guess 1") == "failure"
    guess = asyncio.ensure_future(attempt(login, ATTACKER, "guess 2"))
    _, penalty = await sleeps.next()
    for ip in ("192.0.2.31", "192.0.2.32"):  # lockout_threshold reached
        assert await asyncio.wait_for(attempt(login, ip, f"guess {ip}"), 5) == "failure"
    penalty.set_result(None)
    seconds, refusal = await sleeps.next()  # the refusal's delay
    assert seconds == PENALTY
    assert login.gate.busy(f"address {ATTACKER}")
    assert not login.gate.busy(f"account {ALICE}")
    assert not login.gate.busy("subnet 192.0.2.0/24")
    other = asyncio.ensure_future(attempt(login, "198.51.100.7", "pencil"))
    _, other_refusal = await sleeps.next()  # refused at its first check
    other_refusal.set_result(None)
    assert await asyncio.wait_for(other, 5) == "tempfail"
    refusal.set_result(None)
    assert await asyncio.wait_for(guess, 5) == "tempfail"
