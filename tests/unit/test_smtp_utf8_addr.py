"""RFC 6533 §3's utf-8 address forms (smtp/utf8_addr.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smtpgate.smtp import utf8_addr
from smtpgate.smtp.address import AddressError


def test_the_7bit_form_escapes_non_ascii_and_the_specials() -> None:
    assert utf8_addr.encode("a+b=c\\d e@例.example", unitext=False) == (
        "a\\x{2B}b\\x{3D}c\\x{5C}d\\x{20}e@\\x{4F8B}.example")


def test_the_8bit_form_keeps_utf8_and_escapes_the_specials() -> None:
    assert utf8_addr.encode("用户+1@例子.广告", unitext=True) == "用户\\x{2B}1@例子.广告"


def test_escapes_decode_in_either_case_of_hex() -> None:
    assert utf8_addr.decode("\\x{4f8b}\\x{2B}@x", unitext=False) == "例+@x"


@pytest.mark.parametrize("value, unitext", [
    ("用户@x", False),
    ("a b@x", True),
    ("a\\x{0A}b@x", True),
    ("a\\x{85}b@x", True),  # a C1 control
    ("a\\x{110000}@x", True),
    ("", True),
])
def test_what_cannot_be_an_address_is_refused(value: str, unitext: bool) -> None:
    with pytest.raises(AddressError):
        utf8_addr.decode(value, unitext=unitext)


_ADDRESS = st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=40)


@given(_ADDRESS, st.booleans())
def test_decode_undoes_encode(address: str, unitext: bool) -> None:
    encoded = utf8_addr.encode(address, unitext=unitext)
    assert utf8_addr.decode(encoded, unitext=unitext) == address
    if not unitext:
        assert encoded.isascii() and "+" not in encoded and "=" not in encoded
