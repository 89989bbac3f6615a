"""Sender ownership: which addresses an authenticated account may send as.

What Postfix calls ``smtpd_sender_login_maps`` with
``reject_sender_login_mismatch``: RFC 6409 §6.1 lets a submission server
refuse or fix a sender the user is not allowed to use. An account owns its own
address, its aliases (``smtpgate user alias add``) and every address in the
domains granted to it (``smtpgate user domain grant``): its
`smtpgate.auth.sender_profile.SenderProfile`, which the account directory
provides. The check applies to the envelope sender (MAIL FROM) and to each
address in the From header; this module reads the From header and decides both.

The decisions are functions of the principal's profile and the envelope (or the
message) that return a reply or None, so that every front door that submits or
vets mail (the SMTP session; a Postfix policy service next) applies the same
rule. Each refusal, and each mismatch ``log`` mode lets through, is logged.
"""

from __future__ import annotations

import email.parser
import email.policy
import email.utils
import logging

from smtpgate.auth.sender_profile import SenderProfile
from smtpgate.config import PolicyConfig
from smtpgate.smtp import replies as R

log = logging.getLogger("smtpgate.policy")

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


def envelope_sender_refusal(
    profile: SenderProfile, sender: str, policy: PolicyConfig, *, where: str
) -> R.Reply | None:
    """MAIL FROM: the refusal for a ``sender`` the account does not own (``""`` is
    the null sender), or None. ``where`` starts the log line (session, client)."""
    mode = policy.sender_ownership
    if mode == "off":
        return None
    owned = profile.owns(sender) if sender else policy.allow_null_sender
    if owned:
        return None
    log.warning(
        "%s: user=%s MAIL FROM:<%s> not owned by the account%s",
        where, profile.name, sender, "" if mode == "enforce" else " (logged only)",
    )
    return R.SENDER_NOT_OWNED if mode == "enforce" else None


def from_header_refusal(
    profile: SenderProfile, message: bytes, policy: PolicyConfig, *, where: str
) -> R.Reply | None:
    """End of DATA: the refusal for a From header naming an address the account
    does not own, or None (a message without From is left to the next hop)."""
    mode = policy.from_header
    if mode == "off":
        return None
    bad = [a for a in header_from_addresses(message) or () if not profile.owns(a)]
    if not bad:
        return None
    log.warning(
        "%s: user=%s From: %s not owned by the account%s",
        where, profile.name, ", ".join(bad), "" if mode == "enforce" else " (logged only)",
    )
    return R.FROM_NOT_OWNED if mode == "enforce" else None
