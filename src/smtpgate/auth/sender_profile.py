"""What one account may send as: its own address, its aliases, its granted domains.

The account directory provides it (`AuthService.sender_profile`); the sending
policy (``policy/sender.py``, the rate limits) reads it. It lives here, beside the
directory, so that policy imports auth and never the other way round.
Comparison follows ``auth/names.py``: an address is compared in its canonical
spelling, without letter case in the domain (RFC 5321 §2.4) or the local part. An internationalised domain is the same
domain in its A-label (``xn--bcher-kva.example``) and U-label (``bücher.example``)
forms (RFC 5890 §2.3.2.1): a client without SMTPUTF8 can only send the A-label
(RFC 6531 §3.2), so each form owns the other. A quoted local part that needs no
quoting is the same mailbox as the unquoted one (RFC 5321 §4.1.2, RFC 5322
§3.2.4): ``"alice"@example.org`` is alice's.
"""

from __future__ import annotations

from dataclasses import dataclass

from smtpgate.auth.names import InvalidAccountName, canonical_name, u_labels
from smtpgate.smtp.address import without_needless_quotes

__all__ = ["SenderProfile", "u_labels"]


@dataclass(frozen=True, slots=True)
class SenderProfile:
    """What one account may send as, and its sending rates (None: the default)."""

    name: str
    aliases: frozenset[str] = frozenset()
    domains: frozenset[str] = frozenset()
    max_messages_per_hour: int | None = None
    max_recipients_per_hour: int | None = None
    #: False: ``name`` is a login only (`Account.owns_name`), owned only as an alias.
    owns_name: bool = True

    def owns(self, address: str) -> bool:
        """Whether the account may send as ``address`` (MAIL FROM, or a From, Sender
        or Resent-* mailbox). A quoted local part that needs no quoting is the
        address unquoted (``"alice"@x`` is alice@x); one that does is no
        account's (`without_needless_quotes`)."""
        if '"' in address:
            address = without_needless_quotes(address)
        try:
            addr = canonical_name(address)
        except InvalidAccountName:
            return False
        own = (self.name, *self.aliases) if self.owns_name else tuple(self.aliases)
        if addr in own:
            return True
        if addr.rpartition("@")[2] in self.domains:
            return True
        # The other form of an internationalised domain: compared in U-labels.
        if "xn--" not in addr and all("xn--" not in a for a in (*own, *self.domains)):
            return False
        local, _, domain = addr.rpartition("@")
        key = f"{local}@{u_labels(domain)}"
        if any(key == _u_address(a) for a in own):
            return True
        return u_labels(domain) in {u_labels(d) for d in self.domains}


def _u_address(address: str) -> str:
    local, _, domain = address.rpartition("@")
    return f"{local}@{u_labels(domain)}"
