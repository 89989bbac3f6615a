"""RFC 4515 escaping of the login put into ``user_filter`` (auth/ldap_directory.py)."""

from __future__ import annotations

import pytest

from smtpgate.auth.ldap_directory import escape_filter_value


@pytest.mark.parametrize(
    ("value", "escaped"),
    [
        ("alice@example.org", "alice@example.org"),
        ("*", "\\2a"),
        ("a*@example.org", "a\\2a@example.org"),
        ("alice@example.org)(mail=*", "alice@example.org\\29\\28mail=\\2a"),
        ("(uid=*)", "\\28uid=\\2a\\29"),
        ("al\\2aice", "al\\5c2aice"),
        ("a\0b", "a\\00b"),
        ("jörg@example.org", "jörg@example.org"),  # UTF-8 is data as it is
    ],
)
def test_filter_syntax_becomes_data(value: str, escaped: str) -> None:
    assert escape_filter_value(value) == escaped


def test_no_special_character_survives() -> None:
    out = escape_filter_value("*()\\\0" * 3)
    assert not set(out) & set("*()\0")
    assert out.count("\\") == 15
