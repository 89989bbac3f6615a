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

from collections.abc import Iterable
from dataclasses import dataclass, replace

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
    #: Addresses in the granted domains found to be another account's name or alias
    #: (canonical, U-label domain): a domain grant does not cover them (`taken`).
    others: frozenset[str] = frozenset()

    def owns(self, address: str) -> bool:
        """Whether the account may send as ``address`` (MAIL FROM, or a From, Sender
        or Resent-* mailbox). A quoted local part that needs no quoting is the
        address unquoted (``"alice"@x`` is alice@x); one that does is no
        account's (`without_needless_quotes`). An address only a domain grant
        covers is owned unless it is in ``others``: the caller looks such
        addresses up first (`by_grant_only`, `taken`)."""
        addr = _canonical(address)
        if addr is None:
            return False
        if self._owned_itself(addr):
            return True
        return self._granted(addr) and _u_address(addr) not in self.others

    def by_grant_only(self, addresses: Iterable[str]) -> list[str]:
        """Of ``addresses``, those that only a domain grant covers, canonical and in
        the U-label spelling names are stored in: each may be another account's,
        which the grant does not cover (docs/policy.md). Empty at once without
        grants."""
        if not self.domains:
            return []
        found: list[str] = []
        for address in addresses:
            addr = _canonical(address)
            if addr is None or self._owned_itself(addr) or not self._granted(addr):
                continue
            if (key := _u_address(addr)) not in found:
                found.append(key)
        return found

    def taken(self, addresses: Iterable[str]) -> SenderProfile:
        """This profile with ``addresses`` (another account's) no longer covered."""
        more = frozenset(_u_address(a) for a in addresses)
        return self if more <= self.others else replace(self, others=self.others | more)

    def _owned_itself(self, addr: str) -> bool:
        """The account's own name or one of its aliases, in either IDN form."""
        own = (self.name, *self.aliases) if self.owns_name else tuple(self.aliases)
        if addr in own:
            return True
        if "xn--" not in addr and all("xn--" not in a for a in own):
            return False
        key = _u_address(addr)
        return any(key == _u_address(a) for a in own)

    def _granted(self, addr: str) -> bool:
        """In a granted domain, in either IDN form."""
        domain = addr.rpartition("@")[2]
        if domain in self.domains:
            return True
        if "xn--" not in domain and all("xn--" not in d for d in self.domains):
            return False
        return u_labels(domain) in {u_labels(d) for d in self.domains}


def _canonical(address: str) -> str | None:
    """``address`` as accounts are compared, or None: no account's."""
    if '"' in address:
        address = without_needless_quotes(address)
    try:
        return canonical_name(address)
    except InvalidAccountName:
        return None


def _u_address(address: str) -> str:
    local, _, domain = address.rpartition("@")
    return f"{local}@{u_labels(domain)}"
