"""Which attribute tells that a directory password changed (``stamp_attributes``),
and whether a ``user rotate`` deadline is met (``password_changed_since``). The
slapd case, a wrong password under ppolicy, is in
tests/integration/test_ldap_directory.py."""

from __future__ import annotations

import pytest

from smtpgate.auth.ldap_directory import stamp_attributes
from smtpgate.auth.ldap_store import password_changed_since
from smtpgate.config import LdapConfig

URL = "ldaps://ldap.example.org"


@pytest.mark.parametrize(("table", "attributes"), [
    # ppolicy (the default) writes pwdFailureTime at each failed bind, which moves
    # entryCSN: pwdChangedTime first, entryCSN for an entry without one.
    ({}, ("pwdChangedTime", "entryCSN")),
    ({"ppolicy": False}, ("entryCSN",)),
    ({"password_changed_attribute": "entryCSN"}, ("entryCSN",)),  # as the site says
    ({"password_changed_attribute": "pwdChangedTime"}, ("pwdChangedTime",)),
    ({"flavour": "active_directory"}, ("pwdLastSet",)),
])
def test_the_stamp_is_pwdchangedtime_where_ppolicy_writes_one(
        table: dict[str, object], attributes: tuple[str, ...]) -> None:
    cfg = LdapConfig.model_validate({"url": URL, **table})
    assert stamp_attributes(cfg) == attributes


def test_an_empty_password_changed_attribute_is_refused_naming_the_key() -> None:
    with pytest.raises(ValueError, match="password_changed_attribute"):
        LdapConfig.model_validate({"url": URL, "password_changed_attribute": ""})


CSN = "20261204120000.500000Z#000000#000#000000"


@pytest.mark.parametrize(("noted", "stamp", "changed"), [
    (CSN, CSN, False),
    (CSN, "20261204120001.000000Z#000000#000#000000", True),  # entryCSN as before
    ("20261204120000Z", "20261204120000Z", False),
    ("20261204120000Z", "20261204130000Z", True),
    # Noted under entryCSN before the upgrade, pwdChangedTime now: the password
    # changed iff pwdChangedTime is later than the CSN's time; the upgrade alone
    # did not meet the deadline.
    (CSN, "20261201080000Z", False),
    (CSN, "20261204120000Z", False),  # the CSN's own second: the strict side
    (CSN, "20261204120001Z", True),
    (None, "20261204120000Z", True),  # nothing noted: as before
    ("not a csn#", "20261204120000Z", True),
])
def test_a_rotate_deadline_is_met_by_a_new_password_only(
        noted: str | None, stamp: str, changed: bool) -> None:
    assert password_changed_since(noted, stamp) is changed
