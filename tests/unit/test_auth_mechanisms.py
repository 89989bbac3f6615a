"""The contract with sasl/: real server mechanisms, answered by AuthService, against
real client mechanisms, on secrets the admin service derived and the store keeps.
Catches a mismatch between what is derived and what the mechanisms compute."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from smtpgate.admin import AccountAdmin
from smtpgate.auth.authlog import AuthLog
from smtpgate.auth.passwords import PasswordHasher
from smtpgate.auth.service import AuthContext, AuthService
from smtpgate.auth.store import AuditActor, SqliteAccountStore
from smtpgate.config import AccountsConfig, AuthConfig
from smtpgate.sasl.base import (
    Challenge,
    ClientMechanism,
    Failure,
    NeedCredentials,
    ServerMechanism,
    Step,
    Success,
)
from smtpgate.sasl.cram_md5 import CramMd5Client, CramMd5Server
from smtpgate.sasl.plain import PlainClient, PlainServer
from smtpgate.sasl.scram import ScramClient, ScramSha1Server, ScramSha256Server

CFG = AccountsConfig(
    argon2_memory_kib=8192, argon2_time_cost=1, argon2_parallelism=1, scram_iterations=4096
)
CTX = AuthContext("submission", "192.0.2.7", 50123, "TLSv1.3", "sess-1")


@pytest.fixture
async def svc(tmp_path: Path) -> AsyncIterator[AuthService]:
    store = SqliteAccountStore(tmp_path / "accounts.sqlite", CFG)
    admin = AccountAdmin(store, CFG, actor=AuditActor("ops", "pytest"))
    admin.add_account("alice@example.org", "pencil")
    admin.add_account("legacy@example.org", "crayon", cram_md5_enabled=True)
    imported = admin.add_account("old@example.org", None)
    store.put_credentials(
        imported.name,
        {"argon2id": PasswordHasher(CFG).hash("chalk")},
        generation=imported.generation,
    )
    s = AuthService(store, CFG, AuthConfig(), AuthLog(None))
    yield s
    await s.close()


async def exchange(svc: AuthService, server: ServerMechanism, client: ClientMechanism) -> Step:
    step = server.start(client.start())
    for _ in range(10):
        match step:
            case NeedCredentials(query):
                step = server.answer(await svc.resolve(query, CTX))
            case Challenge(data):
                step = server.step(client.step(data))
            case Success() | Failure():
                return step
    raise AssertionError("exchange did not finish")


def scram(hash_name: str) -> ServerMechanism:
    return ScramSha1Server() if hash_name == "sha1" else ScramSha256Server()


@pytest.mark.parametrize("hash_name", ["sha1", "sha256"])
async def test_scram_against_stored_keys(svc: AuthService, hash_name: str) -> None:
    ok = await exchange(
        svc, scram(hash_name), ScramClient(hash_name, "alice@example.org", "pencil")
    )
    assert isinstance(ok, Success) and ok.identity == "alice@example.org"
    bad = await exchange(svc, scram(hash_name), ScramClient(hash_name, "alice@example.org", "x"))
    assert isinstance(bad, Failure) and not bad.temporary


async def test_plain_then_scram_for_an_imported_account(svc: AuthService) -> None:
    before = await exchange(
        svc, ScramSha256Server(), ScramClient("sha256", "old@example.org", "chalk")
    )
    assert isinstance(before, Failure) and not before.temporary
    plain = await exchange(svc, PlainServer(), PlainClient("old@example.org", "chalk"))
    assert isinstance(plain, Success)
    await svc.flush()
    after = await exchange(
        svc, ScramSha256Server(), ScramClient("sha256", "old@example.org", "chalk")
    )
    assert isinstance(after, Success) and after.identity == "old@example.org"


async def test_cram_md5_only_for_opted_in_accounts(svc: AuthService) -> None:
    ok = await exchange(svc, CramMd5Server(), CramMd5Client("legacy@example.org", "crayon"))
    assert isinstance(ok, Success) and ok.identity == "legacy@example.org"
    no = await exchange(svc, CramMd5Server(), CramMd5Client("alice@example.org", "pencil"))
    assert isinstance(no, Failure) and "not enabled" in no.reason


async def test_plain_unknown_user_and_wrong_password_fail_alike(svc: AuthService) -> None:
    wrong = await exchange(svc, PlainServer(), PlainClient("alice@example.org", "x"))
    unknown = await exchange(svc, PlainServer(), PlainClient("nobody@example.org", "x"))
    assert isinstance(wrong, Failure) and isinstance(unknown, Failure)
    assert (wrong.temporary, wrong.error_data) == (unknown.temporary, unknown.error_data)
