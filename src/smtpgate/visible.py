r"""Text someone else wrote, made safe to show a person: control, format and
separator characters (Unicode Cc, Cf, Zl, Zp, Cs: ESC, U+202E, U+2028, a lone
surrogate ...) become ``\xNN``, ``\uNNNN`` or ``\UNNNNNNNN``.

A relay's refusal, a HELO name, a header, a lock reason stored before reasons were
checked: none of it was written by the admin who reads it. Printed raw, an ESC
drives root's terminal and a U+202E reverses the rest of the line
(``\u202egnp.exe`` reads "exe.png"). HTML escaping covers neither. The web admin
prints every template value through ``visible``, the CLI every line of text output
(``smtpgate.cli.output``). ``name_from_shown`` reads an account name back from the
form the account commands show it in, so that the name a list shows can be given
back to the next command.
"""

from __future__ import annotations

import re
import sys
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


_ESCAPE = re.compile(r"\\(?:(\\)|x([0-9a-fA-F]{2})|u([0-9a-fA-F]{4})|U([0-9a-fA-F]{8}))")


def name_from_shown(value: str) -> str:
    r"""The account name ``cli/output.name_shown`` shows as ``value`` (``visible``,
    with a backslash itself written ``\\``): ``\\`` is a backslash, ``\xNN``,
    ``\uNNNN`` and ``\UNNNNNNNN`` the character of that code point. A name typed
    without a backslash is itself.

    Raises:
        ValueError: a backslash that starts none of those (the message says where).
    """
    if "\\" not in value:
        return value
    out: list[str] = []
    pos = 0
    while (i := value.find("\\", pos)) >= 0:
        out.append(value[pos:i])
        m = _ESCAPE.match(value, i)
        code = -1 if m is None or m[1] else int(m[2] or m[3] or m[4], 16)
        if m is None or code > sys.maxunicode:
            raise ValueError(
                f"the backslash at character {i + 1} starts no escape: as `user list` shows "
                "a name, \\\\ is a backslash and \\xNN, \\uNNNN or \\UNNNNNNNN a character")
        out.append("\\" if code < 0 else chr(code))
        pos = m.end()
    out.append(value[pos:])
    return "".join(out)
