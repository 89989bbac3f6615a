"""Verified-credential cache: exact match only, expiry, generation, size bound."""

from __future__ import annotations

from smtpgate.auth.cache import CredentialCache


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_hit_only_on_exact_password() -> None:
    c = CredentialCache(60, clock=Clock())
    c.put("a@x", "pencil", 1)
    assert c.check("a@x", "pencil", 1)
    assert not c.check("a@x", "pencil ", 1)
    assert not c.check("a@x", "Pencil", 1)
    assert not c.check("b@x", "pencil", 1)
    assert c.check("a@x", "pencil", 1)  # a wrong guess does not evict the entry


def test_entry_holds_no_password() -> None:
    c = CredentialCache(60)
    c.put("a@x", "pencil", 1)
    entry = c._entries["a@x"]
    assert b"pencil" not in entry.digest and len(entry.digest) == 32


def test_expiry() -> None:
    clock = Clock()
    c = CredentialCache(60, clock=clock)
    c.put("a@x", "pencil", 1)
    clock.now += 59.9
    assert c.check("a@x", "pencil", 1)
    clock.now += 0.2
    assert not c.check("a@x", "pencil", 1)
    assert len(c) == 0


def test_generation_change_invalidates() -> None:
    c = CredentialCache(60)
    c.put("a@x", "pencil", 1)
    assert not c.check("a@x", "pencil", 2)
    assert len(c) == 0


def test_ttl_zero_disables() -> None:
    c = CredentialCache(0)
    assert not c.enabled
    c.put("a@x", "pencil", 1)
    assert not c.check("a@x", "pencil", 1)


def test_least_recently_used_dropped_first() -> None:
    c = CredentialCache(60, max_entries=2)
    c.put("a@x", "1", 0)
    c.put("b@x", "2", 0)
    assert c.check("a@x", "1", 0)  # a is now the most recent
    c.put("c@x", "3", 0)
    assert len(c) == 2
    assert not c.check("b@x", "2", 0)
    assert c.check("a@x", "1", 0) and c.check("c@x", "3", 0)


def test_keys_differ_per_process_instance() -> None:
    a, b = CredentialCache(60), CredentialCache(60)
    assert a._digest("a@x", "p") != b._digest("a@x", "p")


def test_invalidate_and_clear() -> None:
    c = CredentialCache(60)
    c.put("a@x", "1", 0)
    c.put("b@x", "2", 0)
    c.invalidate("a@x")
    assert not c.check("a@x", "1", 0)
    c.clear()
    assert len(c) == 0


def test_another_stored_verifier_at_the_same_generation_is_a_miss() -> None:
    """``user remove`` and ``user add`` of one name: the new account's generation is 0
    again, as the old one's was; the old password must not be a hit against the new
    account's hash (it was, for up to the TTL, until audit h21)."""
    c = CredentialCache(60)
    c.put("a@x", "old", 0, "$argon2id$v=19$m=8192,t=1,p=1$c2FsdDE$aGFzaDE")
    assert c.check("a@x", "old", 0, "$argon2id$v=19$m=8192,t=1,p=1$c2FsdDE$aGFzaDE")
    assert not c.check("a@x", "old", 0, "$argon2id$v=19$m=8192,t=1,p=1$c2FsdDI$aGFzaDI")
    assert len(c) == 0
    c.put("a@x", "bound", 3)  # a backend that checks passwords itself: no verifier read
    assert c.check("a@x", "bound", 3) and not c.check("a@x", "bound", 3, "$argon2id$x")
