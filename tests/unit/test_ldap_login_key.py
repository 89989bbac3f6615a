"""What a login name is searched as in a directory: an address in its canonical
spelling, a plain name (AD's sAMAccountName) as it is, anything else not at all."""

from __future__ import annotations

import pytest

from smtpgate.auth.ldap_directory import MAX_PLAIN_LOGIN, login_key


@pytest.mark.parametrize("name, key", [
    ("alice@Example.ORG", "alice@example.org"),
    ("alice", "alice"),
    ("Alice.Liddell", "Alice.Liddell"),
    ("*", "*"),            # escaped into the filter, then matches only itself
    ("a)(b", "a)(b"),
    ("a\\b", "a\\b"),
])
def test_searched_as(name: str, key: str) -> None:
    assert login_key(name) == key


@pytest.mark.parametrize("name", [
    "", "alice\0", "\0", "ali ce", "alice\n", "alice\u200b", "a@", "@b", "a@b@c",
    "x" * (MAX_PLAIN_LOGIN + 1),
])
def test_no_login_at_all(name: str) -> None:
    """NUL above all: AD cuts a filter value at an escaped NUL, so ``alice\\00``
    would find alice."""
    assert login_key(name) is None
