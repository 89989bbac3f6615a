"""SASLprep (RFC 4013): the stringprep (RFC 3454) profile for SASL names and passwords.

Why it matters here: SCRAM's ``Normalize(password)`` (RFC 5802 §2.2) is SASLprep,
so a server that stores keys derived from a differently prepared password fails
every non-ASCII login from a correct client. The tables come from the stdlib
``stringprep`` module and normalisation uses ``unicodedata.ucd_3_2_0``, because
stringprep is defined against Unicode 3.2 and current NFKC differs for some
characters.
"""

from __future__ import annotations

import stringprep
import unicodedata


class SaslprepError(ValueError):
    """The string contains a prohibited character, an unassigned code point (stored
    strings only), or violates the bidirectional rule."""


# RFC 4013 §2.3: prohibited output, tables C.1.2 through C.9 (C.1.1, ASCII space,
# is allowed).
_PROHIBITED = (
    stringprep.in_table_c12,
    stringprep.in_table_c21_c22,
    stringprep.in_table_c3,
    stringprep.in_table_c4,
    stringprep.in_table_c5,
    stringprep.in_table_c6,
    stringprep.in_table_c7,
    stringprep.in_table_c8,
    stringprep.in_table_c9,
)


def saslprep(text: str, *, allow_unassigned: bool = False) -> str:
    """Prepare ``text`` with SASLprep.

    ``allow_unassigned`` selects the "query" rules of RFC 3454 §7 (unassigned code
    points pass); the default is the stricter "stored string" rule, which SCRAM
    requires for passwords (RFC 5802 §2.2). An empty result is returned as is:
    callers decide that it fails authentication.

    Raises:
        SaslprepError: see the class docstring.
    """
    if text.isascii() and all(0x20 <= ord(ch) < 0x7F for ch in text):
        # Fast path: printable ASCII maps to itself and passes every check.
        return text
    # RFC 4013 §2.1: map non-ASCII spaces (C.1.2) to SPACE, and B.1 to nothing.
    mapped = "".join(
        " " if stringprep.in_table_c12(ch) else ch for ch in text if not stringprep.in_table_b1(ch)
    )
    # RFC 4013 §2.2: normalisation form KC (with Unicode 3.2 data, RFC 3454 §4).
    normalized = unicodedata.ucd_3_2_0.normalize("NFKC", mapped)
    for ch in normalized:
        if any(table(ch) for table in _PROHIBITED):
            raise SaslprepError(f"prohibited character U+{ord(ch):04X}")
        # RFC 4013 §2.5 / RFC 3454 §7: unassigned code points (A.1) are prohibited
        # in stored strings.
        if not allow_unassigned and stringprep.in_table_a1(ch):
            raise SaslprepError(f"unassigned code point U+{ord(ch):04X}")
    _check_bidi(normalized)
    return normalized


def _check_bidi(text: str) -> None:
    """RFC 4013 §2.4 / RFC 3454 §6: the bidirectional rule."""
    rand_al = [stringprep.in_table_d1(ch) for ch in text]
    if not any(rand_al):
        return
    # RFC 3454 §6 (2): a string with RandALCat characters must not contain LCat ones.
    if any(stringprep.in_table_d2(ch) for ch in text):
        raise SaslprepError("mixed right-to-left and left-to-right characters")
    # RFC 3454 §6 (3): ... and must start and end with a RandALCat character.
    if not (rand_al[0] and rand_al[-1]):
        raise SaslprepError("right-to-left string must start and end with an RTL character")
