"""A SCRAM proof is never judged on a stale guard check, and a client that
stalls before its proof holds up no other login (auth/login.py, ``ProofArrived``).

The exchange is checked by the guard when its client-first comes, and its gate
hold ends after ``attempt_gate.MAX_WAIT`` seconds whatever the client does. A
client that stalled that long before sending its proof used to be judged on that
first check, though guesses from other addresses had locked the account
meanwhile: one more guess beyond ``lockout_threshold`` per stalled exchange. The
proof now waits for the gates again and is refused as any locked login is, before
it is looked at. Real SCRAM, a real SQLite account store and guard.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from smtpgate.auth.attempt_gate import AttemptGate
from smtpgate.auth.guard import Guard
from smtpgate.auth.guard_state import ACCOUNT_NEW
from smtpgate.auth.login import LoginAttempt, LoginAttempts
from smtpgate.auth.service import AuthContext
from smtpgate.config import GuardConfig
from smtpgate.sasl.base import Challenge, NeedCredentials, VerifyPassword
from smtpgate.sasl.exchange import AuthResult, Outcome, ServerExchange
from smtpgate.sasl.scram import ScramClient, ScramSha256Server
from tests.unit.alice_logins import ALICE, alice_logins

HOLD = 0.3  # the gate's MAX_WAIT, shortened


def ctx(n: int) -> AuthContext:
    return AuthContext("submission", f"192.0.2.{n}", 40000 + n, "TLSv1.3", f"s{n}")


@dataclass
class World:
    login: LoginAttempts
    guard: Guard


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    async def no_sleep(seconds: float) -> None:
        return None

    guard_cfg = GuardConfig(lockout_threshold=3, penalty_base=0.0, penalty_max=0.0)
    async with alice_logins(tmp_path, guard_cfg, no_sleep) as (login, guard):
        login.gate = AttemptGate(max_wait=HOLD)
        yield World(login, guard)


async def drive(attempt: LoginAttempt, ex: ServerExchange,
                step: object) -> Challenge | Outcome:
    """Answer the exchange's queries through the login path until it needs the client."""
    while isinstance(step, NeedCredentials):
        answer = await attempt.resolve(step.query)
        assert answer is not None
        step = ex.answer(answer)
    assert isinstance(step, (Challenge, Outcome))
    return step


async def guess(login: LoginAttempts, n: int) -> str:
    """A wrong PLAIN password from a new address; the result class it got."""
    attempt = login.begin(ctx(n))
    answer = await attempt.resolve(VerifyPassword(ALICE, f"guess {n}", mechanism="PLAIN"))
    assert answer is not None
    outcome = Outcome("PLAIN", AuthResult.TEMPFAIL if getattr(answer, "temporary", False)
                      else AuthResult.FAILURE, ALICE, "", "")
    return str((await attempt.finish(outcome)).result)


@pytest.mark.parametrize("password", ["pencil", "wrong"])
async def test_a_proof_after_the_hold_ended_is_refused_if_the_account_locked_meanwhile(
    world: World, password: str,
) -> None:
    login = world.login
    client = ScramClient("sha256", ALICE, password)
    ex = ServerExchange("SCRAM-SHA-256", ScramSha256Server())
    staller = login.begin(ctx(10))
    first = await drive(staller, ex, ex.start(client.start()))
    assert isinstance(first, Challenge)  # the salt: the staller holds the account's gate
    # Three guesses from other new addresses go one at a time once its hold ends.
    results = await asyncio.gather(*(guess(login, n) for n in (11, 12, 13)))
    assert sorted(results) == ["failure"] * 3  # the account is now locked for new addresses
    final = await drive(staller, ex, ex.respond(client.step(first.data)))
    # The proof was not judged: the locked account's temporary refusal, the same
    # e= whether the password was right or wrong.
    assert isinstance(final, Challenge) and final.data == b"e=other-error"
    outcome = ex.respond(b"")
    assert isinstance(outcome, Outcome) and outcome.result is AuthResult.TEMPFAIL
    done = await staller.finish(outcome)
    assert done.result is AuthResult.TEMPFAIL and done.refusal is not None
    assert done.refusal.kind == ACCOUNT_NEW


async def test_a_client_stalling_before_its_proof_holds_up_no_other_login(
    world: World,
) -> None:
    """The gates are let go when the salt goes out: an attacker who starts SCRAM
    exchanges and leaves them without a proof delayed each new-address login of
    the owner by the whole hold (30 s); now by nothing. Its proof, when it comes,
    is checked again (one more guard read) and then judged."""
    login = world.login
    login.gate = AttemptGate()  # the real hold, 30 s
    stallers = []
    for n in (10, 11):
        client = ScramClient("sha256", ALICE, "pencil")
        ex = ServerExchange("SCRAM-SHA-256", ScramSha256Server())
        attempt = login.begin(ctx(n))
        first = await drive(attempt, ex, ex.start(client.start()))
        assert isinstance(first, Challenge)
        stallers.append((client, ex, attempt, first))

    async def owner() -> str:
        attempt = login.begin(ctx(30))
        answer = await attempt.resolve(VerifyPassword(ALICE, "pencil", mechanism="PLAIN"))
        assert answer is not None and getattr(answer, "ok", False)
        done = await attempt.finish(Outcome("PLAIN", AuthResult.SUCCESS, ALICE, ALICE, ""))
        return str(done.result)

    assert await asyncio.wait_for(owner(), 5) == "success"
    client, ex, attempt, first = stallers[0]
    checks = world.guard.stats.checks
    final = await drive(attempt, ex, ex.respond(client.step(first.data)))
    assert isinstance(final, Challenge) and final.data.startswith(b"v=")
    assert world.guard.stats.checks == checks + 1
    outcome = ex.respond(b"")
    assert isinstance(outcome, Outcome)
    assert (await attempt.finish(outcome)).result is AuthResult.SUCCESS


async def test_proofs_sent_together_after_their_salts_are_judged_one_at_a_time(
    world: World,
) -> None:
    """Six exchanges from six new addresses all get their salt (no gate is held
    while they wait), then send wrong proofs at once: each proof waits for the
    account's gate and reads the record the one before it committed, so exactly
    ``lockout_threshold`` (3) are judged and the rest refused unjudged."""
    login = world.login
    login.gate = AttemptGate()
    started = []
    for n in range(40, 46):
        client = ScramClient("sha256", ALICE, f"guess {n}")
        ex = ServerExchange("SCRAM-SHA-256", ScramSha256Server())
        attempt = login.begin(ctx(n))
        first = await drive(attempt, ex, ex.start(client.start()))
        assert isinstance(first, Challenge)
        started.append((client, ex, attempt, first))

    async def prove(client: ScramClient, ex: ServerExchange, attempt: LoginAttempt,
                    first: Challenge) -> bytes:
        final = await drive(attempt, ex, ex.respond(client.step(first.data)))
        assert isinstance(final, Challenge)
        outcome = ex.respond(b"")
        assert isinstance(outcome, Outcome)
        await attempt.finish(outcome)
        return final.data

    said = await asyncio.wait_for(asyncio.gather(*(prove(*s) for s in started)), 10)
    assert sorted(said) == [b"e=invalid-proof"] * 3 + [b"e=other-error"] * 3
