"""Directory flavours: Active Directory's own names as defaults for ``[accounts.ldap]``.

The LDAP backend (``ldap_directory.py``) is generic: a user filter, the login
attributes, address attributes with optional type prefixes, an enabled filter,
a group filter and an attribute that changes with the password. Active
Directory names all of them differently from OpenLDAP, and two of them need
AD's matching-rule OIDs, which are easy to get wrong by hand.
``flavour = "active_directory"`` fills in, for every key the table does not set
itself:

- ``user_filter`` / ``login_attributes``: a person (not a computer account)
  whose ``userPrincipalName`` or ``sAMAccountName`` is the login;
- ``address_attributes`` / ``address_prefixes``: ``mail`` and
  ``proxyAddresses``, whose ``smtp:`` values (any case; ``SMTP:`` marks the
  primary) are addresses and whose other types (``x400:``, ``X500:``,
  ``sip:`` ...) are not addresses at all;
- ``enabled_filter``: ``userAccountControl`` without bit 0x2
  (ACCOUNTDISABLE), tested with the bitwise-AND matching rule, since AD has no
  "enabled" attribute;
- ``password_changed_attribute``: ``pwdLastSet`` (AD has no ``entryCSN``);
- ``expires_attribute``: ``accountExpires``, and ``locked_flags_attribute`` /
  ``locked_flags``: the UF_LOCKOUT and UF_PASSWORD_EXPIRED bits of the
  constructed ``msDS-User-Account-Control-Computed``: an expired account, one
  AD has locked out and one whose password has expired are refused like a
  disabled one, also for SCRAM and cached logins (which never bind, so AD's
  own refusal would not be seen);
- ``group``: a group DN turned into ``group_filter`` with
  LDAP_MATCHING_RULE_IN_CHAIN, so members of nested groups count (OpenLDAP's
  memberOf overlay is flat, so there the DN is matched directly).

Explicit keys always win: the preset only fills what is missing, so a site can
keep AD's address handling and still write its own login filter. Data and pure
functions only; ``LdapConfig`` calls `apply_preset` before it validates, also for
a server without LDAP accounts, so ldap3 (5.5 MB in every process) is imported
only when a group DN is there to parse.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

OPENLDAP: Final = "openldap"
ACTIVE_DIRECTORY: Final = "active_directory"
FLAVOURS: Final = (OPENLDAP, ACTIVE_DIRECTORY)

#: ``password_changed_attribute``'s default: ppolicy's pwdChangedTime where the entry
#: has it, else entryCSN (``ldap_directory.stamp_attributes``).
AUTO_STAMP: Final = "auto"
PWD_CHANGED_TIME: Final = "pwdChangedTime"
ENTRY_CSN: Final = "entryCSN"

#: LDAP_MATCHING_RULE_BIT_AND: the attribute's integer has all the given bits set.
BIT_AND: Final = "1.2.840.113556.1.4.803"
#: LDAP_MATCHING_RULE_IN_CHAIN: follows member/memberOf links transitively.
IN_CHAIN: Final = "1.2.840.113556.1.4.1941"
#: userAccountControl bit of a disabled account.
ACCOUNTDISABLE: Final = 0x2
#: msDS-User-Account-Control-Computed bits: locked out by AD, password expired.
UF_LOCKOUT: Final = 0x10
UF_PASSWORD_EXPIRED: Final = 0x800000

#: The keys the Active Directory flavour fills in, with their values.
AD_PRESET: Final[Mapping[str, object]] = {
    "user_filter": "(&(objectCategory=person)(objectClass=user)"
    "(|(userPrincipalName={login})(sAMAccountName={login})))",
    "login_attributes": ["userPrincipalName", "sAMAccountName"],
    "address_attributes": ["mail", "proxyAddresses"],
    "address_prefixes": ["smtp:"],
    "enabled_filter": f"(!(userAccountControl:{BIT_AND}:={ACCOUNTDISABLE}))",
    "password_changed_attribute": "pwdLastSet",
    "expires_attribute": "accountExpires",
    "locked_flags_attribute": "msDS-User-Account-Control-Computed",
    "locked_flags": UF_LOCKOUT | UF_PASSWORD_EXPIRED,
    # AD has no pwdReset: "must change at next logon" is pwdLastSet 0, whose bind
    # AD refuses itself (data 773), and which moves pwdLastSet.
    "reset_attribute": "",
    # OpenLDAP's ppolicy attributes do not exist there: locked_flags reads AD's state.
    "ppolicy": False,
}

_ESCAPES: Final = {"\\": r"\5c", "*": r"\2a", "(": r"\28", ")": r"\29", "\0": r"\00"}


def escape_filter_value(value: str) -> str:
    """``value`` as an assertion value in a search filter (RFC 4515 §3): the five
    characters with a meaning there become ``\\XX``, so input is never filter syntax."""
    return "".join(_ESCAPES.get(c, c) for c in value)


def group_filter(flavour: str, group_dn: str) -> str:
    """The filter a user entry must match to be a member of ``group_dn``.

    Raises:
        ValueError: the DN does not parse.
    """
    from ldap3.core.exceptions import LDAPInvalidDnError
    from ldap3.utils.dn import parse_dn

    try:
        parse_dn(group_dn)
    except LDAPInvalidDnError as e:
        raise ValueError(f"accounts.ldap.group: {group_dn!r} is not a DN ({e})") from None
    rule = f":{IN_CHAIN}:" if flavour == ACTIVE_DIRECTORY else ""
    return f"(memberOf{rule}={escape_filter_value(group_dn)})"


def apply_preset(data: object) -> object:
    """The raw ``[accounts.ldap]`` table with the flavour's defaults filled in.

    Called before validation; anything that is not a table is returned as is
    for the validator to reject. ``flavour`` and ``group`` stay in the table.

    Raises:
        ValueError: an unknown flavour, a ``group`` that is not a DN, or both
            ``group`` and ``group_filter``.
    """
    if not isinstance(data, Mapping):
        return data
    out = dict(data)
    flavour = out.get("flavour", OPENLDAP)
    if flavour not in FLAVOURS:
        raise ValueError(
            f"accounts.ldap.flavour: {flavour!r} is not one of {', '.join(FLAVOURS)}"
        )
    if flavour == ACTIVE_DIRECTORY:
        for key, value in AD_PRESET.items():
            out.setdefault(key, list(value) if isinstance(value, list) else value)
    group = out.get("group", "")
    if isinstance(group, str) and group:
        if out.get("group_filter"):
            raise ValueError("accounts.ldap: set group or group_filter, not both")
        out["group_filter"] = group_filter(str(flavour), group)
    return out

