"""All of a hash's lanes on one thread (auth/argon2_one_thread.py): the same verdicts
as argon2-cffi's verify, refusal of what it does not take, and its use by the
untrusted lane's threads only."""

from __future__ import annotations

import threading

import pytest
from argon2 import PasswordHasher as Argon2Hasher
from hypothesis import given, settings
from hypothesis import strategies as st

from smtpgate.auth import passwords
from smtpgate.auth.argon2_one_thread import verify_on_one_thread
from smtpgate.config import AccountsConfig

# Small costs: the lanes and passes are what matters, not the memory.
SMALL = Argon2Hasher(time_cost=2, memory_cost=64, parallelism=4)
#: A fixed hash of "x" with those costs (test ids must not change between runs).
FIXED = "$argon2id$v=19$m=64,t=2,p=4$Zml4ZWQtc2FsdC0xMjM0$HbA7Ddr2S5wTsb10fKYVj+nFnBgHLUPaeCLYIR5Qjo0"


@settings(max_examples=40, deadline=None)
@given(st.text(min_size=1, max_size=40), st.text(min_size=1, max_size=40),
       st.integers(1, 4), st.integers(1, 3))
def test_the_same_verdict_as_argon2_cffi(right: str, other: str, lanes: int, passes: int) -> None:
    encoded = Argon2Hasher(time_cost=passes, memory_cost=8 * lanes * 2,
                           parallelism=lanes).hash(right)
    assert verify_on_one_thread(encoded, right) is True
    assert verify_on_one_thread(encoded, other) is (other == right)


def test_the_fixed_hash_is_one_it_takes() -> None:
    assert verify_on_one_thread(FIXED, "x") is True  # so the refusals below are real


def test_a_default_cost_hash_from_passwords_py() -> None:
    hasher = passwords.PasswordHasher(AccountsConfig())
    encoded = hasher.hash("Correct horse 9 battery")
    assert verify_on_one_thread(encoded, "Correct horse 9 battery") is True
    assert verify_on_one_thread(encoded, "Correct horse 9 batterY") is False


@pytest.mark.parametrize("encoded", [
    FIXED.replace("$argon2id$", "$argon2i$"),  # another type
    FIXED.replace("$v=19$", "$v=16$"),  # another version
    "$argon2id$v=19$m=64,t=2,p=4$!!!!$AAAA",  # not base64
    "$argon2id$v=19$m=64,t=2,p=4,x=1$c2FsdHNhbHQ$YWJjZGVm",  # unknown parameter
    "$argon2id$v=19$m=64,t=0,p=4$c2FsdHNhbHQ$YWJjZGVm",  # zero passes
    "$argon2id$v=19$m=1,t=2,p=4$c2FsdHNhbHQ$YWJjZGVm",  # memory the library refuses
    "argon2id$v=19$m=64,t=2,p=4$c2FsdHNhbHQ$YWJjZGVm",  # no leading $
    "not a hash",
])
def test_what_it_does_not_take_goes_back_to_argon2_cffi(encoded: str) -> None:
    assert verify_on_one_thread(encoded, "x") is None


def test_only_threads_marked_by_the_untrusted_pool_use_it(monkeypatch: pytest.MonkeyPatch) -> None:
    used: list[str] = []

    def spy(encoded: str, password: str) -> bool | None:
        used.append(threading.current_thread().name)
        return verify_on_one_thread(encoded, password)

    monkeypatch.setattr(passwords, "verify_on_one_thread", spy)
    hasher = passwords.PasswordHasher(AccountsConfig())
    encoded = SMALL.hash("pw")
    assert hasher.verify(encoded, "pw") and not used  # an ordinary thread: argon2-cffi

    results: list[bool] = []

    def untrusted() -> None:
        passwords.verify_on_one_thread_here()
        results.extend([hasher.verify(encoded, "pw"), hasher.verify(encoded, "nope")])

    t = threading.Thread(target=untrusted, name="untrusted")
    t.start()
    t.join()
    assert results == [True, False] and used == ["untrusted", "untrusted"]
