"""The login path over a real SQLite account store and guard, with one account
(alice, password "pencil"): what the attempt-gate tests build on."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from smtpgate.admin import AccountAdmin
from smtpgate.auth.authlog import AuthLog
from smtpgate.auth.guard import Guard
from smtpgate.auth.guard_store import SqliteGuardStore
from smtpgate.auth.login import LoginAttempts
from smtpgate.auth.service import AuthService
from smtpgate.auth.store import AuditActor, SqliteAccountStore
from smtpgate.config import AccountsConfig, AuthConfig, GuardConfig
from tests.unit.patient_state import PATIENT_STATE

ALICE = "alice@example.org"
#: Argon2id at its cheapest: the tests are about the order of checks, not the hash.
CFG = AccountsConfig(
    argon2_memory_kib=8192, argon2_time_cost=1, argon2_parallelism=1, scram_iterations=4096
)


@contextlib.asynccontextmanager
async def alice_logins(tmp_path: Path, guard_cfg: GuardConfig,
                       sleep: Callable[[float], Awaitable[None]],
                       ) -> AsyncIterator[tuple[LoginAttempts, Guard]]:
    """``LoginAttempts`` (no failure floor, ``sleep`` for the penalties) and its guard;
    both closed afterwards."""
    store = SqliteAccountStore(tmp_path / "accounts.sqlite", CFG)
    AccountAdmin(store, CFG, actor=AuditActor("ops", "pytest")).add_account(ALICE, "pencil")
    auth = AuthService(store, CFG, AuthConfig(), AuthLog(tmp_path / "auth.log"), None)
    guard = Guard(SqliteGuardStore(tmp_path / "guard.sqlite"), guard_cfg, PATIENT_STATE)
    try:
        yield LoginAttempts(auth, guard, failure_floor=0.0, sleep=sleep), guard
    finally:
        await guard.close()
        await auth.close()
