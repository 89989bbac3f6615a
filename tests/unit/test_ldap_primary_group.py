"""The primary group's SID and the search base (auth/ldap_primary_group.py); the
search itself runs against Samba AD in tests/integration/test_ldap_ad.py."""

from __future__ import annotations

import struct

from smtpgate.auth.ldap_primary_group import (
    binary_filter_value,
    domain_root,
    primary_group_sid,
)

#: S-1-5-21-1-2-3-1105: revision 1, 5 sub-authorities, authority 5.
USER_SID = bytes([1, 5, 0, 0, 0, 0, 0, 5]) + struct.pack("<5I", 21, 1, 2, 3, 1105)


def test_the_primary_group_sid_is_the_users_domain_and_the_rid() -> None:
    sid = primary_group_sid({"objectSid": [USER_SID], "primaryGroupID": [b"513"]})
    assert sid == USER_SID[:-4] + struct.pack("<I", 513)


def test_attribute_names_are_case_insensitive() -> None:
    assert primary_group_sid({"OBJECTSID": [USER_SID], "primarygroupid": [b"513"]})


def test_a_missing_or_unreadable_value_is_no_primary_group() -> None:
    assert primary_group_sid({"objectSid": [USER_SID]}) is None
    assert primary_group_sid({"primaryGroupID": [b"513"]}) is None
    assert primary_group_sid({"objectSid": [USER_SID], "primaryGroupID": [b"x"]}) is None
    assert primary_group_sid({"objectSid": [USER_SID], "primaryGroupID": [b"0"]}) is None
    assert primary_group_sid({"objectSid": [USER_SID[:-1]], "primaryGroupID": [b"513"]}) is None


def test_the_search_starts_at_the_groups_domain() -> None:
    assert domain_root("CN=Mail Users,OU=Groups,DC=ad,DC=example,DC=org") == (
        "DC=ad,DC=example,DC=org")
    assert domain_root("CN=x\\,y,DC=example") == "DC=example"
    assert domain_root("cn=mail,o=example") == "cn=mail,o=example"


def test_binary_values_are_escaped_octet_by_octet() -> None:
    assert binary_filter_value(b"\x01\x28*") == "\\01\\28\\2a"
