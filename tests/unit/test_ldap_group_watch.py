"""``auth/ldap_group_watch.py``: which attributes a group filter names, and that a
filter shown to work is never warned about (the slapd case, where an ACL hides
``memberOf``, is in tests/integration/test_ldap_directory.py)."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from smtpgate.auth.ldap_group_watch import THRESHOLD, GroupFilterWatch, filter_attributes


@pytest.mark.parametrize(("flt", "names"), [
    ("(memberOf=cn=mail,ou=groups,dc=example,dc=org)", ("memberOf",)),
    ("(memberOf:1.2.840.113556.1.4.1941:=CN=Mail,DC=example,DC=org)", ("memberOf",)),
    ("(&(objectClass=person)(|(memberOf=cn=a)(MEMBEROF=cn=b)(ou=sales)))", ("memberOf", "ou")),
    ("(2.5.4.11=sales)", ("2.5.4.11",)),
    ("", ()),
])
def test_the_attributes_a_filter_names(flt: str, names: tuple[str, ...]) -> None:
    assert filter_attributes(flt) == names


class Conn:
    """A service connection whose base search shows ``shown`` on every entry."""

    def __init__(self, shown: bool) -> None:
        self.shown = shown
        self.searches = 0
        self.result: dict[str, Any] = {"result": 0}
        self.response: list[dict[str, Any]] = []

    def search(self, dn: str, flt: str, scope: object, **kwargs: object) -> bool:
        self.searches += 1
        raw = {"memberOf": [b"cn=other"]} if self.shown else {}
        self.response = [{"type": "searchResEntry", "dn": dn, "raw_attributes": raw}]
        return True


def test_an_entry_showing_the_attribute_settles_it(caplog: pytest.LogCaptureFixture) -> None:
    watch = GroupFilterWatch("(memberOf=cn=mail)", "LDAP", logging.getLogger("t"), timeout=1)
    conn = Conn(shown=True)
    watch.non_member(conn, "uid=a")  # type: ignore[arg-type]
    for i in range(THRESHOLD + 1):
        watch.non_member(Conn(shown=False), f"uid=b{i}")  # type: ignore[arg-type]
    assert not caplog.records


def test_a_member_settles_it_without_a_read(caplog: pytest.LogCaptureFixture) -> None:
    watch = GroupFilterWatch("(memberOf=cn=mail)", "LDAP", logging.getLogger("t"), timeout=1)
    watch.member()
    conn = Conn(shown=False)
    for i in range(THRESHOLD + 1):
        watch.non_member(conn, f"uid=b{i}")  # type: ignore[arg-type]
    assert conn.searches == 0 and not caplog.records
