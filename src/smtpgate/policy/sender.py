"""Sender ownership: which addresses an authenticated account may send as.

What Postfix calls ``smtpd_sender_login_maps`` with
``reject_sender_login_mismatch``: RFC 6409 §6.1 lets a submission server
refuse or fix a sender the user is not allowed to use. An account owns its own
address, its aliases (``smtpgate user alias add``) and every address in the
domains granted to it (``smtpgate user domain grant``): its
`smtpgate.auth.sender_profile.SenderProfile`, which the account directory
provides. The check applies to the envelope sender (MAIL FROM) and to each
address in the From header; this module reads the From header.
"""

from __future__ import annotations

import email.parser
import email.policy
import email.utils

#: Header bytes read at most when looking for From: headers beyond this are
#: not headers a mail client writes, and the parse stays cheap on the loop.
MAX_HEADER_BYTES = 256 * 1024


def header_from_addresses(message: bytes) -> list[str] | None:
    """The addresses in the From header(s) of ``message``; None if it has none.

    An unparsable From yields the raw text, which then owns nothing: a From
    that cannot be read cannot be shown to belong to the account.
    """
    end = message.find(b"\r\n\r\n")
    head = message[: end + 2 if end >= 0 else MAX_HEADER_BYTES][:MAX_HEADER_BYTES]
    parsed = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(head)
    values = parsed.get_all("From")
    if not values:
        return None
    out = []
    for name, addr in email.utils.getaddresses([str(v) for v in values]):
        out.append(addr or name)
    return out or [""]
