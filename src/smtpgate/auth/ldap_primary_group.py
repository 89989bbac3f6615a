"""Active Directory's primary group, for ``group`` membership.

Why: AD links a user to its *primary group* (``Domain Users`` unless an
administrator changed it) by ``primaryGroupID``, the group's RID, and by nothing
else: the group's ``member`` does not list the user, and the user's ``memberOf``
does not list the group, so the in-chain filter ``group`` becomes
(``memberOf:1.2.840.113556.1.4.1941:=DN``) never sees it. Without this check
``group = "CN=Domain Users,..."`` admits nobody, and a user whose primary group
was set to the mail group (or to a group nested in it) is refused as a non-member,
though Windows counts them in.

How: only for an entry found outside the in-chain filter. The primary group's SID
is the user's ``objectSid`` with its last sub-authority (the RID) replaced by
``primaryGroupID`` (a primary group is always in the user's own domain). One
subtree search from the group's domain root then asks whether a group with that
SID is the configured group or nested in it (in-chain on the group's
``memberOf``). The directory does the comparing; nothing is cached, so a change
of primary group or of nesting counts at the next login.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping

from ldap3 import SUBTREE, Connection
from ldap3.core.exceptions import LDAPException, LDAPInvalidDnError
from ldap3.utils.dn import parse_dn

from smtpgate.ldap_presets import IN_CHAIN, escape_filter_value

#: The user attributes the check needs, read with the entry.
ATTRIBUTES = ("objectSid", "primaryGroupID")
#: noSuchObject (RFC 4511 §4.1.9): the domain root is not visible.
_NO_SUCH_OBJECT = 32


def _raw(attrs: Mapping[str, list[bytes]], name: str) -> bytes | None:
    wanted = name.lower()
    for key, values in attrs.items():
        if key.lower() == wanted and values:
            return values[0]
    return None


def primary_group_sid(attrs: Mapping[str, list[bytes]]) -> bytes | None:
    """The binary SID of the entry's primary group, or None (no SID, no
    ``primaryGroupID``, or either unreadable).

    A SID is revision (1 octet), sub-authority count (1), authority (6), then
    the sub-authorities, 4 octets little-endian each, the RID last (MS-DTYP 2.4.2)."""
    sid = _raw(attrs, "objectSid")
    rid = _raw(attrs, "primaryGroupID")
    if sid is None or rid is None or len(sid) < 12 or len(sid) != 8 + 4 * sid[1]:
        return None
    try:
        number = int(rid)
    except ValueError:
        return None
    if not 0 < number < 2**32:
        return None
    return sid[:-4] + struct.pack("<I", number)


def domain_root(dn: str) -> str:
    """The ``DC=`` suffix of ``dn`` (its domain's naming context), or ``dn`` itself."""
    try:
        parts = parse_dn(dn, escape=True)
    except LDAPInvalidDnError:
        return dn
    tail: list[str] = []
    for attr, value, _sep in reversed(parts):
        if attr.lower() != "dc":
            break
        tail.insert(0, f"{attr}={value}")
    return ",".join(tail) or dn


def binary_filter_value(value: bytes) -> str:
    """Octets as an RFC 4515 assertion value: every octet ``\\xx``."""
    return "".join(f"\\{b:02x}" for b in value)


class PrimaryGroupCheck:
    """Whether an entry's primary group is ``group_dn`` or a group nested in it."""

    def __init__(self, group_dn: str, *, timeout: int) -> None:
        self._group = escape_filter_value(group_dn)
        self._base = domain_root(group_dn)
        self._timeout = timeout

    def holds(self, conn: Connection, attrs: Mapping[str, list[bytes]]) -> bool:
        """True if the entry (its raw attributes ``attrs``, read with `ATTRIBUTES`)
        has the group, or one nested in it, as its primary group.

        Raises:
            LDAPException: the directory refused the search (an operation that
                failed, as any other: tried again, then 454).
        """
        sid = primary_group_sid(attrs)
        if sid is None:
            return False
        flt = (f"(&(objectClass=group)(objectSid={binary_filter_value(sid)})"
               f"(|(distinguishedName={self._group})(memberOf:{IN_CHAIN}:={self._group})))")
        conn.search(self._base, flt, SUBTREE, attributes=["1.1"], size_limit=1,
                    time_limit=self._timeout)
        code = (conn.result or {}).get("result")
        if code not in (0, _NO_SUCH_OBJECT, 4):  # 4: sizeLimitExceeded, a match anyway
            raise LDAPException(f"search for the primary group failed: {conn.result}")
        return any(r.get("type") == "searchResEntry" for r in conn.response or [])
