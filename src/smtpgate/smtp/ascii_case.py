"""Protocol keywords compared without case, in ASCII only.

Why not ``str.upper`` alone: it maps some non-ASCII letters onto ASCII ones
("ı" U+0131 to "I", "ſ" U+017F to "S"), so ``"PLAıN".upper() == "PLAIN"`` and a
keyword spelled with them would be taken for the real one: a second spelling
that filters and logs written for the ASCII keyword do not see. SMTP keywords,
parameter values such as ``BODY=8BITMIME`` and SASL mechanism names are ASCII
(RFC 5321 §2.4, RFC 4422 §3.1); lines are decoded as UTF-8 only for SMTPUTF8
addresses.
"""

from __future__ import annotations


def upper_ascii(text: str) -> str:
    """``text`` upper-cased if it is ASCII; otherwise unchanged, so that it
    matches no keyword."""
    return text.upper() if text.isascii() else text
