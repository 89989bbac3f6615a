"""SASLprep (RFC 4013) examples and rules."""

from __future__ import annotations

import pytest

from smtpgate.sasl.saslprep import SaslprepError, saslprep

# RFC 4013 §3 examples: input, output (None = must fail).
RFC4013_S3_EXAMPLES = [
    ("I\u00adX", "IX"),  # SOFT HYPHEN mapped to nothing
    ("user", "user"),  # no transformation
    ("USER", "USER"),  # case preserved, will not match #2
    ("\u00aa", "a"),  # output is NFKC, input in ISO 8859-1
    ("\u2168", "IX"),  # output is NFKC, will match #1
    ("\u0007", None),  # error - prohibited character
    ("\u0627\u0031", None),  # error - bidirectional check
]


@pytest.mark.parametrize(("text", "expected"), RFC4013_S3_EXAMPLES)
def test_rfc4013_s3_examples(text: str, expected: str | None) -> None:
    if expected is None:
        with pytest.raises(SaslprepError):
            saslprep(text)
    else:
        assert saslprep(text) == expected


def test_rfc4013_s2_1_non_ascii_space_maps_to_space() -> None:
    assert saslprep("a\u00a0b\u3000c") == "a b c"


def test_rfc4013_s2_3_prohibited_output() -> None:
    for ch in ("\u0000", "\u007f", "\ue000", "\ufffd", "\u200e", "\U000e0001"):
        with pytest.raises(SaslprepError):
            saslprep(f"a{ch}b")


def test_rfc3454_s7_unassigned_allowed_only_in_queries() -> None:
    unassigned = "\u0221"  # unassigned in Unicode 3.2 (table A.1)
    with pytest.raises(SaslprepError):
        saslprep(unassigned)
    assert saslprep(unassigned, allow_unassigned=True) == unassigned


def test_rfc3454_s6_rtl_string_is_allowed_when_well_formed() -> None:
    assert saslprep("\u0627\u0628") == "\u0627\u0628"


def test_rfc3454_s6_rtl_must_not_mix_with_ltr() -> None:
    with pytest.raises(SaslprepError):
        saslprep("\u0627a\u0628")


def test_saslprep_empty_string_returns_empty() -> None:
    assert saslprep("") == ""
    assert saslprep("\u00ad") == ""


def test_saslprep_is_idempotent_on_examples() -> None:
    for text, expected in RFC4013_S3_EXAMPLES:
        if expected is not None:
            assert saslprep(saslprep(text)) == saslprep(text)
