"""The attempt gate's lease in Redis (``auth/shared_gate.py``), against a real
Redis: two processes' attempts on one key go one at a time, a lease given back
lets the next one through at once, and a Redis that does not answer makes the
gate step aside instead of holding up logins."""

from __future__ import annotations

import asyncio
import time

from smtpgate.auth.redis_client import connect
from smtpgate.auth.shared_gate import SharedGate
from tests.peers.redis_server import PASSWORD, new_prefix, shared_redis
from tests.ports import free_port


def _gate(prefix: str, port: int | None = None, **kw: float) -> SharedGate:
    """A gate on a client made as the server makes it (no retries)."""
    url = f"redis://127.0.0.1:{port or shared_redis().port}/0"
    return SharedGate(connect(url, PASSWORD, 0.25), prefix, **kw)


def test_a_key_held_by_one_process_waits_for_its_release() -> None:
    prefix = new_prefix()
    a, b = _gate(prefix), _gate(prefix)

    async def run() -> tuple[float, bool, bool]:
        token_a, waited_a = await a.acquire("account erin@example.org")
        assert token_a is not None
        started = time.monotonic()
        second = asyncio.ensure_future(b.acquire("account erin@example.org"))
        await asyncio.sleep(0.2)
        assert not second.done()  # held by a
        a.release("account erin@example.org", token_a)
        token_b, waited_b = await second
        assert token_b is not None
        b.release("account erin@example.org", token_b)
        return time.monotonic() - started, waited_a, waited_b

    try:
        took, waited_a, waited_b = asyncio.run(run())
    finally:
        a.close()
        b.close()
    assert 0.2 <= took < 2.0
    assert (waited_a, waited_b) == (False, True)


def test_a_lease_runs_out_by_itself() -> None:
    prefix = new_prefix()
    a, b = _gate(prefix, lease=0.3), _gate(prefix, lease=5.0)

    async def run() -> tuple[str | None, bool]:
        token, _ = await a.acquire("address 192.0.2.1")
        assert token is not None  # and never given back: a node that died
        return await b.acquire("address 192.0.2.1")

    try:
        token_b, waited = asyncio.run(run())
    finally:
        a.close()
        b.close()
    assert token_b is not None and waited


def test_a_redis_that_does_not_answer_is_stepped_around() -> None:
    gate = _gate(new_prefix(), port=free_port())

    async def run() -> list[tuple[str | None, bool]]:
        return [await gate.acquire("address 192.0.2.2") for _ in range(3)]

    started = time.monotonic()
    try:
        got = asyncio.run(run())
    finally:
        gate.close()
    assert got == [(None, False)] * 3
    assert time.monotonic() - started < 1.0  # one failed try, then aside
