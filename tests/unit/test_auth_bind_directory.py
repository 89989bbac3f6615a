"""The auth service over a bind-only directory (one that keeps passwords and only
checks them, as LDAP does): the seam issue 10's LDAP backend plugs into, driven
through the contract suite's test double."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from smtpgate.auth.authlog import AuthLog
from smtpgate.auth.credentials import ARGON2ID, SCRAM_SHA_1, SCRAM_SHA_256
from smtpgate.auth.service import AuthContext, AuthService
from smtpgate.config import AuthConfig
from smtpgate.sasl.base import LookupScram, NotFound, ScramCredentials, Verdict, VerifyPassword
from smtpgate.sasl.scram import scram_credentials_from_password
from tests.contract.directories import ALICE, BOB, CFG, BindOnlyHarness, Forwarding

CTX = AuthContext("submission", "192.0.2.7", 50123, "TLSv1.3", "s")
PW = "correct horse battery"


class Counting(Forwarding):
    """Counts the directory's password checks (binds)."""

    binds = 0

    def verify_password(self, name: str, password: str) -> bool:
        self.binds += 1
        return self.inner.verify_password(name, password)


@pytest.fixture
def harness(tmp_path: Path) -> BindOnlyHarness:
    return BindOnlyHarness(tmp_path)


@pytest.fixture
def directory(harness: BindOnlyHarness) -> Counting:
    return Counting(harness.open())


@pytest.fixture
async def svc(directory: Counting, tmp_path: Path) -> AsyncIterator[AuthService]:
    s = AuthService(directory, CFG, AuthConfig(), AuthLog(None))  # type: ignore[arg-type]
    yield s
    await s.close()


async def login(svc: AuthService, pw: str = PW, user: str = ALICE) -> Verdict:
    v = await svc.resolve(VerifyPassword(user, pw, mechanism="PLAIN"), CTX)
    assert isinstance(v, Verdict)
    return v


async def test_the_directory_checks_the_password_and_the_cache_spares_binds(
    svc: AuthService, directory: Counting
) -> None:
    assert await login(svc) == Verdict(ok=True, identity=ALICE)
    assert await login(svc) == Verdict(ok=True, identity=ALICE)
    assert directory.binds == 1 and svc.stats.cache_hits == 1
    assert await login(svc, "wrong") == Verdict(ok=False, reason="bad password")
    assert directory.binds == 2


async def test_an_empty_password_is_refused(svc: AuthService) -> None:
    v = await login(svc, "")
    assert not v.ok and not v.temporary


async def test_a_locked_account_is_refused_before_any_bind(
    svc: AuthService, directory: Counting
) -> None:
    # Policy first: a guesser cannot use smtpgate to try passwords against the directory.
    assert await login(svc, "bob's own secret", BOB) == Verdict(
        ok=False, reason="account locked: phished")
    assert directory.binds == 0


async def test_scram_keys_are_derived_after_a_good_login_never_a_hash(
    svc: AuthService, directory: Counting
) -> None:
    before = await svc.resolve(LookupScram(ALICE, "sha256", "SCRAM-SHA-256"), CTX)
    assert isinstance(before, NotFound) and not before.temporary
    assert (await login(svc)).ok
    await svc.flush()
    a = directory.get_account(ALICE)  # type: ignore[operator]
    assert {SCRAM_SHA_1, SCRAM_SHA_256} <= a.schemes and ARGON2ID not in a.schemes
    after = await svc.resolve(LookupScram(ALICE, "sha256", "SCRAM-SHA-256"), CTX)
    assert isinstance(after, ScramCredentials)
    assert after == scram_credentials_from_password(PW, "sha256", after.iterations, after.salt)


async def test_a_password_changed_in_the_directory_ends_the_cached_one(
    svc: AuthService, harness: BindOnlyHarness
) -> None:
    assert (await login(svc)).ok  # now cached
    harness.change_password(ALICE, "the new one")
    assert await login(svc) == Verdict(ok=False, reason="bad password")
    assert (await login(svc, "the new one")).ok


async def test_a_directory_fault_is_temporary(svc: AuthService, directory: Counting) -> None:
    directory.inner.close()
    v = await login(svc)
    assert (v.ok, v.temporary) == (False, True)
