"""Account names: RFC 5321 §2.4 case rules and what we refuse."""

from __future__ import annotations

import pytest

from smtpgate.auth.names import (
    InvalidAccountName,
    canonical_name,
    look_alike_key,
    lookup_key,
    name_key,
    new_account_name,
)
from smtpgate.smtp.address import AddressError, parse_mailbox


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


@pytest.mark.parametrize(("given", "key"), [
    ("Alice@Example.ORG", "alice@example.org"),   # an address: its canonical spelling
    ("GHOST", "ghost"),                           # a plain name (uid, sAMAccountName)
    ("Ghost.Example.Org", "ghost.example.org"),
    ("ghost", "ghost"),
    ("Ghost@@x", "Ghost@@x"),                     # no address, and not plain: as it is
])
def test_name_key_is_one_spelling_as_the_directory_compares(given: str, key: str) -> None:
    """An unknown plain name is counted and salted under its lower case, as a
    directory finds a real one (docs/protection.md): else GHOST after ghost's
    lockout, or another salt, would tell that the uid ghost does not exist."""
    assert name_key(given) == key


def test_a_local_part_lower_cased_into_a_decomposed_letter_is_composed_again() -> None:
    """U+01F0 (j with caron) has no capital: its upper case is "J" + U+030C, whose
    lower case is decomposed. The name typed either way is one account."""
    typed_lower = "r\u01f0@example.org"
    typed_upper = typed_lower.upper()
    assert typed_upper == "RJ\u030c@EXAMPLE.ORG"
    assert canonical_name(typed_upper) == canonical_name(typed_lower) == typed_lower


NOT_MAILBOXES = ["a)b(c\\d@localhost", "a,b@example.org", "a:b@example.org",
                 "<b>x</b>@example.org", "a[1]@example.org", "a;b@example.org"]


@pytest.mark.parametrize("bad", NOT_MAILBOXES)
def test_rfc5321_s4_1_2_a_new_account_name_is_a_dot_string(bad: str) -> None:
    """Before: ``user add 'a)b(c\\d@localhost'`` made an account that logged in but
    whose own address no MAIL FROM could give (specials outside quotes), so it sent
    only from its aliases. A new name is refused, saying which characters; an
    existing one still has its one spelling for every command."""
    canonical_name(bad)  # still a name to look up and remove
    with pytest.raises(InvalidAccountName, match="allows only in a quoted local part") as e:
        new_account_name(bad)
    assert "could never send mail as itself" in str(e.value)


@pytest.mark.parametrize("name", [
    "alice@example.org", "a.b+tag@example.org", "o'neil@example.org",
    "!#$%&'*+-/=?^_`{|}~@example.org", "jos\u00e9@b\u00fccher.example", "a/b@x.org",
    *NOT_MAILBOXES,
])
def test_a_new_account_name_is_exactly_what_mail_from_takes(name: str) -> None:
    """The refusal agrees with the envelope parser (RFC 6531 UTF-8 allowed)."""
    try:
        parse_mailbox(canonical_name(name), utf8=True)
        sendable = True
    except AddressError:
        sendable = False
    try:
        new_account_name(name)
        made = True
    except InvalidAccountName:
        made = False
    assert made == sendable


@pytest.mark.parametrize("invisible", [
    "\u034f",  # COMBINING GRAPHEME JOINER (a mark)
    "\ufe0f",  # VARIATION SELECTOR-16 (a mark)
    "\u115f", "\u1160",  # HANGUL CHOSEONG / JUNGSEONG FILLER (letters)
    "\u17b4",  # KHMER VOWEL INHERENT AQ
    "\u2800",  # BRAILLE PATTERN BLANK (a symbol drawn blank)
])
def test_a_new_name_with_a_character_drawn_as_nothing_is_refused(invisible: str) -> None:
    """``canonical_name`` refuses format characters (the zero-width space), but
    these, which a reader also draws as nothing or as a blank, made a new account
    that reads as alice@example.org (found by the h29i18n review: ``user add
    alice<U+115F>@example.org`` was 'added account')."""
    name = f"alice{invisible}@example.org"
    with pytest.raises(InvalidAccountName, match=f"U\\+{ord(invisible):04X} .*draws as nothing"):
        new_account_name(name)
    assert canonical_name(name) == name  # a name stored before still answers
    assert look_alike_key(name) == "alice@example.org"
