"""Header fields a message loses on its way out of the queue (``delivery.drop_fields``).

Why: a client that leaves ``Bcc:`` in the message it submits (a script, a form
mailer, ``mail -t``-style tools) would show every blind copy's address to every
recipient; a ``Return-Path:`` it wrote (a saved message sent again) reads as the
envelope sender to filters and readers; a ``Content-Length:`` from a mbox is wrong
once the message travels. Postfix drops these four from every message
(``message_drop_headers``); so does this, at delivery, for the Maildir, the relay and
LMTP alike. The spool keeps the message as it was received (``queue show``) and a
bounce attaches it as the sender sent it.

Only the header section is read (up to its first empty line), and a message with
none of the fields is passed on as it is, not copied. Written by hand: the ``email``
package would parse and re-serialise the whole message, and change bytes it need not
touch.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from smtpgate.config import DEFAULT_DROP_FIELDS

__all__ = ["DEFAULT_DROP_FIELDS", "field_pattern", "header_end", "without_fields"]


def field_pattern(names: Iterable[str]) -> re.Pattern[bytes] | None:
    """The fields named, each with its folded continuation lines (the spool holds
    CRLF line ends only; a BDAT message may end without one); None for no name."""
    alternatives = b"|".join(re.escape(n.strip().lower().encode("ascii")) for n in names)
    if not alternatives:
        return None
    return re.compile(rb"^(?:" + alternatives + rb")[ \t]*:.*(?:\r\n|\Z)(?:[ \t].*(?:\r\n|\Z))*",
                      re.IGNORECASE | re.MULTILINE)


def header_end(data: bytes) -> int:
    """Where the header section ends: after the CRLF of its last field (0: none)."""
    if data.startswith(b"\r\n"):
        return 0
    end = data.find(b"\r\n\r\n")
    return end + 2 if end >= 0 else len(data)  # no empty line: all header


def without_fields(data: bytes, pattern: re.Pattern[bytes] | None) -> bytes:
    """``data`` without the header fields ``pattern`` matches; ``data`` itself (not a
    copy) when it has none."""
    if pattern is None:
        return data
    head_end = header_end(data)
    head = data[:head_end]
    if not pattern.search(head):
        return data
    return pattern.sub(b"", head) + data[head_end:]
