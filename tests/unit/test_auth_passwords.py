"""Argon2id hashing: verify, rehash detection, decoy, and password policy."""

from __future__ import annotations

import argon2
import pytest

from smtpgate.auth.passwords import (
    PasswordHasher,
    PasswordMatch,
    PasswordPolicyError,
    StoredHashError,
    check_new_password,
    prepare_password,
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


# --- SASLprep: one password whichever form or mechanism carries it -----------------

#: "pass word" typed with a non-breaking space (U+00A0), and "café" in NFC and
#: NFD: SASLprep (RFC 4013) makes each pair one password, as SCRAM's keys do.
NBSP, SPACE = "pass\u00a0word", "pass word"
NFC, NFD = "caf\u00e9", "cafe\u0301"


@pytest.mark.parametrize(("stored", "typed"), [(NBSP, SPACE), (SPACE, NBSP), (NFC, NFD),
                                               (NFD, NFC), (NFD, NFD)])
def test_a_password_in_another_unicode_form_is_the_same_password(stored: str, typed: str) -> None:
    ph = PasswordHasher(FAST)
    h = ph.hash(stored)
    assert ph.match(h, typed) is PasswordMatch.PREPARED
    assert not ph.verify(h, "pass-word")


def test_a_hash_made_over_the_password_as_typed_still_verifies_and_says_so() -> None:
    ph = PasswordHasher(FAST)
    old = argon2.PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1).hash(NBSP)
    assert ph.match(old, NBSP) is PasswordMatch.AS_SENT  # re-hash it, prepared
    assert ph.match(old, SPACE) is PasswordMatch.NONE  # only the form it was made from
    assert ph.match(ph.hash(NBSP), NBSP) is PasswordMatch.PREPARED


def test_prepare_password_keeps_what_saslprep_refuses() -> None:
    assert prepare_password(NBSP) == SPACE
    assert prepare_password("a\x07b") == "a\x07b"  # a control character: kept as sent
    assert prepare_password("\u00ad") == "\u00ad"  # mapped to nothing: kept as sent
    ph = PasswordHasher(FAST)
    assert ph.verify(ph.hash("a\x07b"), "a\x07b")
