"""Account names: RFC 5321 §2.4 case rules and what we refuse."""

from __future__ import annotations

import pytest

from smtpgate.auth.names import InvalidAccountName, canonical_name, lookup_key


@pytest.mark.parametrize(
    ("given", "canonical"),
    [
        ("alice@example.com", "alice@example.com"),
        # RFC 5321 §2.4: the domain is case-insensitive, the local part is not.
        ("Alice@Example.COM", "alice@example.com"),  # no letter case in login names
        ("a.b+tag@sub.EXAMPLE.org", "a.b+tag@sub.example.org"),
        ("josé@BÜCHER.example", "josé@bücher.example"),
    ],
)
def test_canonical_name(given: str, canonical: str) -> None:
    assert canonical_name(given) == canonical


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "alice",
        "@example.com",
        "alice@",
        "al ice@example.com",
        "alice\r\n@example.com",
        "alice@exa mple.com",
        "alice@example..com",
        "alice@-example.com",
        "alice@exam_ple.com",
        '"a@b"@example.com',
        ".alice@example.com",
        "a..b@example.com",
        "a" * 65 + "@example.com",
        "alice@" + "a" * 64 + ".com",
        "alice\u202e@example.com",
        "ali\u2028ce@example.com",  # line separator
        "ali\u2029ce@example.com",  # paragraph separator
        "alice@exam\u2028ple.com",
    ],
)
def test_invalid_names_refused(bad: str) -> None:
    with pytest.raises(InvalidAccountName):
        canonical_name(bad)


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        ("alice@example.org@example.org", "'alice@example.org' before the last '@' holds another '@'"),
        ('"a b"@example.org', "whitespace"),
        ('"ab"@example.org', "quoted local parts are not supported"),
    ],
)
def test_the_refusal_says_what_is_wrong_with_the_name(bad: str, why: str) -> None:
    """A domain pasted twice was refused as "quoted local parts are not supported"."""
    with pytest.raises(InvalidAccountName, match=why):
        canonical_name(bad)


def test_lookup_key_passes_invalid_names_through() -> None:
    assert lookup_key("Bob@EXAMPLE.com") == "bob@example.com"
    assert lookup_key("not an address") == "not an address"


def test_a_local_part_lower_cased_into_a_decomposed_letter_is_composed_again() -> None:
    """U+01F0 (j with caron) has no capital: its upper case is "J" + U+030C, whose
    lower case is decomposed. The name typed either way is one account."""
    typed_lower = "r\u01f0@example.org"
    typed_upper = typed_lower.upper()
    assert typed_upper == "RJ\u030c@EXAMPLE.ORG"
    assert canonical_name(typed_upper) == canonical_name(typed_lower) == typed_lower
