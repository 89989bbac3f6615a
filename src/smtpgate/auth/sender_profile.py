"""What one account may send as: its own address, its aliases, its granted domains.

The account directory provides it (`AuthService.sender_profile`); the sending
policy (``policy/sender.py``, the rate limits) reads it. It lives here, beside the
directory, so that policy imports auth and never the other way round.
Comparison follows ``auth/names.py``: the domain is case-insensitive, the local
part is compared exactly (RFC 5321 §2.4).
"""

from __future__ import annotations

from dataclasses import dataclass

from smtpgate.auth.names import InvalidAccountName, canonical_name


@dataclass(frozen=True, slots=True)
class SenderProfile:
    """What one account may send as, and its sending rates (None: the default)."""

    name: str
    aliases: frozenset[str] = frozenset()
    domains: frozenset[str] = frozenset()
    max_messages_per_hour: int | None = None
    max_recipients_per_hour: int | None = None

    def owns(self, address: str) -> bool:
        try:
            addr = canonical_name(address)
        except InvalidAccountName:
            return False
        if addr == self.name or addr in self.aliases:
            return True
        return addr.rpartition("@")[2] in self.domains
