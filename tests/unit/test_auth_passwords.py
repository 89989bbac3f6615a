"""Argon2id hashing: verify, rehash detection, decoy, and password policy."""

from __future__ import annotations

import pytest

from smtpgate.auth.passwords import (
    PasswordHasher,
    PasswordPolicyError,
    StoredHashError,
    check_new_password,
)
from smtpgate.config import AccountsConfig

FAST = AccountsConfig(argon2_memory_kib=8192, argon2_time_cost=1, argon2_parallelism=1)


def test_hash_is_argon2id_with_configured_parameters() -> None:
    h = PasswordHasher(FAST).hash("pencil")
    assert h.startswith("$argon2id$")
    assert "m=8192,t=1,p=1" in h
    assert "pencil" not in h


def test_verify_good_and_bad() -> None:
    ph = PasswordHasher(FAST)
    h = ph.hash("pencil")
    assert ph.verify(h, "pencil")
    assert not ph.verify(h, "Pencil")
    assert not ph.verify(h, "")


def test_salt_differs_per_hash() -> None:
    ph = PasswordHasher(FAST)
    assert ph.hash("pencil") != ph.hash("pencil")


@pytest.mark.parametrize(
    "corrupt", ["not-a-hash", "$argon2id$v=19$m=8192,t=1,p=1$garbage$garbage", ""]
)
def test_corrupt_stored_hash_is_a_data_fault(corrupt: str) -> None:
    with pytest.raises(StoredHashError):
        PasswordHasher(FAST).verify(corrupt, "pencil")


def test_needs_rehash_after_parameter_change() -> None:
    old = PasswordHasher(FAST).hash("pencil")
    stronger = PasswordHasher(FAST.model_copy(update={"argon2_time_cost": 2}))
    assert stronger.needs_rehash(old)
    assert not PasswordHasher(FAST).needs_rehash(old)
    assert stronger.needs_rehash("garbage")


def test_decoy_never_matches() -> None:
    ph = PasswordHasher(FAST)
    ph.prepare_decoy()
    ph.verify_decoy("")  # returns nothing, raises nothing
    ph.verify_decoy("anything")


@pytest.mark.parametrize("bad", ["", "a\0b"])
def test_unusable_passwords_refused(bad: str) -> None:
    with pytest.raises(PasswordPolicyError):
        check_new_password(bad)


def test_usable_password_accepted() -> None:
    check_new_password(" spaces are fine ")
