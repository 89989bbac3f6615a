"""Base64 as the protocols that carry SASL frame it, shared by every front door.

SMTP (RFC 4954 §4: ``334`` lines, initial responses, client responses) and the
Dovecot auth protocol (``resp=``, ``CONT``) both carry SASL data in base64, and
both must refuse anything that is not exactly base64: a lenient decoder that
skips stray characters lets a client smuggle data past the length checks and
makes a bad response look like another one. The exchange itself
(``exchange.py``) only ever sees decoded bytes.
"""

from __future__ import annotations

import base64
import binascii
import re

_B64 = re.compile(rb"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")


def decode_base64_strict(line: bytes) -> bytes | None:
    """RFC 4954 §4: None for any non-alphabet character or misplaced padding."""
    if not _B64.fullmatch(line):
        return None
    try:
        return base64.b64decode(line, validate=True)
    except binascii.Error:
        return None


def encode_base64(data: bytes) -> str:
    """The text of a challenge line (``334 <this>``, ``CONT\\t<id>\\t<this>``)."""
    return base64.b64encode(data).decode("ascii")
