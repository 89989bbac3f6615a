#!/usr/bin/env python3
"""The owner's login latency while guesses keep Argon2id busy: verification lanes on
and off, in one process, without sockets or TLS (bench/README.md, issue 13, E).

What it isolates: workload E's owner logins (a known address, a cached password)
against ten concurrent wrong passwords from one new address, each verified with the
default Argon2id parameters (64 MiB, t = 3, 4 lanes, ``hash_threads = 2``). The guard is
real (SQLite in a temp dir) but its lockout and penalties are raised out of the way,
so that guesses keep reaching Argon2id for the whole run: the worst case the lanes are
for (a distributed guesser, or the first burst from each new address). Modes:

* ``alone``: the owner's logins, no guesses;
* ``fifo``: guesses on, every verification in one first-come lane at normal priority
  (what the server did before the lanes);
* ``lanes``: guesses on, the lanes as the server runs them
  (``auth/verify_scheduler.py``).

Each mode runs ``--logins`` owner logins one after the other (a 5 ms pause between
them) and reports p50/p99 of one login (guard check, resolution, conclusion) and how
many guesses were answered meanwhile. Bounded by counts; no network.

Usage::

    .venv/bin/python bench/verify_lanes_bench.py --logins 300
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from smtpgate.admin import AccountAdmin
from smtpgate.auth.authlog import AuthLog
from smtpgate.auth.guard import Guard
from smtpgate.auth.guard_store import SqliteGuardStore
from smtpgate.auth.login import LoginAttempt, LoginAttempts
from smtpgate.auth.service import AuthContext, AuthService
from smtpgate.auth.store import AuditActor, SqliteAccountStore
from smtpgate.config import AccountsConfig, AuthConfig, GuardConfig
from smtpgate.sasl import base as sasl
from smtpgate.sasl.exchange import AuthResult

USER, PASSWORD = "owner@bench.test", "owner-password-1"
OWNER, GUESSER = "127.0.0.1", "127.0.0.9"
MANY = 10**6


class Outcome:
    def __init__(self, result: AuthResult, identity: str = "") -> None:
        self.mechanism, self.result, self.username = "PLAIN", result, USER
        self.identity, self.reason, self.malformed = identity, "", False


async def one(login: LoginAttempts, ip: str, password: str) -> bool:
    attempt = login.begin(AuthContext("submission", ip, 40000, "TLSv1.3", "bench"))
    answer = await attempt.resolve(sasl.VerifyPassword(USER, password, mechanism="PLAIN"))
    ok = isinstance(answer, sasl.Verdict) and answer.ok
    result = AuthResult.SUCCESS if ok else AuthResult.FAILURE
    await attempt.finish(Outcome(result, USER if ok else ""))
    return ok


async def run(mode: str, logins: int, guessers: int, root: Path) -> dict[str, object]:
    cfg = AccountsConfig(hash_threads=2)
    store = SqliteAccountStore(root / f"{mode}.sqlite", cfg)
    AccountAdmin(store, cfg, actor=AuditActor("bench", "bench")).add_account(USER, PASSWORD)
    auth = AuthService(store, cfg, AuthConfig(), AuthLog(None))
    guard = Guard(SqliteGuardStore(root / f"{mode}-guard.sqlite"), GuardConfig(
        penalty_base=0.0, lockout_threshold=MANY, known_lockout_threshold=MANY,
        distributed_addresses=MANY, address_failure_limit=MANY, spray_accounts=MANY,
        subnet_spray_accounts=MANY))
    login = LoginAttempts(auth, guard, failure_floor=0.0)
    original = LoginAttempt._source
    if mode == "fifo":
        LoginAttempt._source = lambda self: self.source  # type: ignore[method-assign]
    stop = asyncio.Event()
    answered = 0

    async def guess() -> None:
        nonlocal answered
        n = 0
        while not stop.is_set():
            n += 1
            assert not await one(login, GUESSER, f"wrong-{n}-{os.urandom(4).hex()}")
            answered += 1

    try:
        assert await one(login, OWNER, PASSWORD)  # known from now on, and cached
        tasks = [asyncio.create_task(guess()) for _ in range(guessers if mode != "alone" else 0)]
        await asyncio.sleep(0.5)  # let the guesses fill the lanes
        took: list[float] = []
        for _ in range(logins):
            t0 = time.perf_counter()
            assert await one(login, OWNER, PASSWORD)
            took.append((time.perf_counter() - t0) * 1000)
            await asyncio.sleep(0.005)
        stop.set()
        await asyncio.gather(*tasks)
    finally:
        LoginAttempt._source = original  # type: ignore[method-assign]
        await guard.close()
        await auth.close()
    took.sort()
    return {"mode": mode, "logins": logins, "p50_ms": round(statistics.median(took), 2),
            "p99_ms": round(took[int(len(took) * 0.99) - 1], 2),
            "guesses_answered": answered, "load": os.getloadavg()[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--logins", type=int, default=300)
    ap.add_argument("--guessers", type=int, default=10)
    ap.add_argument("--modes", default="alone,fifo,lanes")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="lanes-bench-") as tmp:
        for mode in a.modes.split(","):
            print(json.dumps(asyncio.run(run(mode, a.logins, a.guessers, Path(tmp)))), flush=True)


if __name__ == "__main__":
    main()
