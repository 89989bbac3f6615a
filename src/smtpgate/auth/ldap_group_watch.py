"""Notice a ``group_filter`` (or ``enabled_filter``) the service account cannot
evaluate, and say so once.

Why: a group filter such as ``(memberOf=cn=mail,ou=groups,dc=example,dc=org)``
is evaluated by the directory on the user's entry with the service account's
rights. If that account may not read ``memberOf`` (an ACL that hides it), or the
directory does not maintain it (OpenLDAP without the memberof overlay), the
filter is false for everyone: every user is a non-member, every login 535, and
nothing in the log says why, since each refusal looks like a user outside the
group.

How: after a login's entry is found outside the filter, the attributes the
filter names are read on that entry (one base search, only for non-members and
only until the question is settled). An entry that matches the filter, or shows
one of those attributes, settles it: the filter can be evaluated. When
``THRESHOLD`` different entries outside the filter show none of them (or the
directory refuses to show them: insufficientAccessRights), the server log gets
one warning naming ``accounts.ldap.group_filter`` and the attribute. Several
users in no group at all look the same, hence a warning ("check"), not an error,
and a threshold above one.

``enabled_filter`` is watched the same way: an entry outside it should show
what disabled it. docs/directories.md's OpenLDAP example,
``(!(pwdAccountLockedTime=000001010000Z))``, names an attribute only the ppolicy
overlay defines; without it the filter is undefined for every entry, and every
account looks disabled.
"""

from __future__ import annotations

import logging
import re
import threading

from ldap3 import BASE, Connection

#: Entries outside the filter, none showing its attributes, before the warning.
THRESHOLD = 3
#: An attribute description before a filter item's operator (RFC 4515 §3: attr,
#: optional ``:dn``/``:rule`` of an extensible match, then ``=``, ``~=``, ``>=``,
#: ``<=`` or ``:=``).
_ITEM = re.compile(r"\(\s*([A-Za-z][A-Za-z0-9-]*|[0-9]+(?:\.[0-9]+)+)(?:;[A-Za-z0-9;-]*)?"
                   r"(?::[^=()]*)?[~<>]?=")
#: insufficientAccessRights (RFC 4511 §4.1.9, Appendix A.2).
_INSUFFICIENT_ACCESS = 50


def filter_attributes(flt: str) -> tuple[str, ...]:
    """The attribute names a filter tests, in order, each once, without
    ``objectClass`` (every entry has it; it says nothing about access)."""
    out: list[str] = []
    for name in _ITEM.findall(flt):
        if name.lower() != "objectclass" and name.lower() not in (o.lower() for o in out):
            out.append(name)
    return tuple(out)


class GroupFilterWatch:
    """The state of one directory's ``group_filter``: settled, or entries outside it
    that showed none of its attributes. Thread-safe."""

    def __init__(self, flt: str, label: str, log: logging.Logger, *, timeout: int,
                 key: str = "accounts.ldap.group_filter",
                 missing: str = "does not keep it (OpenLDAP: the memberof overlay)",
                 effect: str = "every user is a non-member") -> None:
        self._attributes = filter_attributes(flt)
        #: The warning's words: the filter's key, why a directory may lack its
        #: attributes, and what that does to every login.
        self._key, self._missing, self._effect = key, missing, effect
        self._label = label
        self._log = log
        self._timeout = timeout
        self._lock = threading.Lock()
        #: True once the filter is known to be evaluable, or the warning is out.
        self._settled = not self._attributes
        #: Entries outside the filter that showed none of its attributes.
        self._bare: set[str] = set()
        self._refused = False

    def member(self) -> None:
        """An entry matched the filter: it can be evaluated."""
        self._settled = True

    def non_member(self, conn: Connection, dn: str) -> None:
        """``dn`` is outside the filter: read the filter's attributes on it (on
        ``conn``, the service account's) while the question is open."""
        if self._settled:
            return
        conn.search(dn, "(objectClass=*)", BASE, attributes=list(self._attributes),
                    time_limit=self._timeout)
        code = (conn.result or {}).get("result")
        shown = code == 0 and any(
            r.get("type") == "searchResEntry" and any(r.get("raw_attributes", {}).get(a)
                                                    for a in self._attributes)
            for r in conn.response or [])
        with self._lock:
            if self._settled:
                return
            if shown:
                self._settled = True
                return
            self._refused |= code == _INSUFFICIENT_ACCESS
            self._bare.add(dn.lower())
            if len(self._bare) < THRESHOLD:
                return
            self._settled = True
        names = ", ".join(self._attributes)
        refused = " (insufficientAccessRights)" if self._refused else ""
        self._log.warning(
            "%s: %s: %d entries found outside it show the service account no %s%s; if "
            "it may not read %s (an ACL), or the directory %s, %s and every login gets "
            "535: check the filter, and give the service account read access to %s",
            self._label, self._key, THRESHOLD, names, refused, names, self._missing,
            self._effect, names)
