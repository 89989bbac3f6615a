r"""Text someone else wrote, made safe to show a person: control, format and
separator characters (Unicode Cc, Cf, Zl, Zp, Cs: ESC, U+202E, U+2028, a lone
surrogate ...) become ``\xNN``, ``\uNNNN`` or ``\UNNNNNNNN``.

A relay's refusal, a HELO name, a header, a lock reason stored before reasons were
checked: none of it was written by the admin who reads it. Printed raw, an ESC
drives root's terminal and a U+202E reverses the rest of the line
(``\u202egnp.exe`` reads "exe.png"). HTML escaping covers neither. The web admin
prints every template value through ``visible``, the CLI every line of text output
(``smtpgate.cli.output``).
"""

from __future__ import annotations

import unicodedata

#: The categories shown escaped. Zs (spaces other than " ", U+00A0 ...) stays: it
#: moves nothing and hides nothing that a space does not.
HIDDEN = frozenset(("Cc", "Cf", "Zl", "Zp", "Cs"))


def visible(text: str, keep: str = "") -> str:
    r"""``text`` with every Cc/Cf/Zl/Zp/Cs character escaped, those in ``keep``
    (``"\n"`` for a multi-line output) left as they are."""
    if text.isprintable() and not keep:
        return text
    return "".join(
        c if c == " " or c in keep or unicodedata.category(c) not in HIDDEN
        else f"\\x{ord(c):02x}" if ord(c) < 0x100
        else f"\\u{ord(c):04x}" if ord(c) < 0x10000 else f"\\U{ord(c):08x}"
        for c in text)
