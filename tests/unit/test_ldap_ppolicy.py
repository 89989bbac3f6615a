"""``auth/ldap_ppolicy.py``'s decisions on an entry's ppolicy state (the slapd
case is in tests/integration/test_ldap_directory.py)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from smtpgate.auth.ldap_ppolicy import Policy, generalized_time, lock_reason

NOW = datetime(2026, 12, 2, 12, 0, 0, tzinfo=UTC)


def test_generalized_time_as_ppolicy_writes_it() -> None:
    assert generalized_time("20261202115959Z") == datetime(2026, 12, 2, 11, 59, 59, tzinfo=UTC)
    assert generalized_time("20261202115959.5Z") == datetime(2026, 12, 2, 11, 59, 59, 500000,
                                                            tzinfo=UTC)
    assert generalized_time("20261202115959") is None  # no zone: not ppolicy's
    assert generalized_time("yesterday") is None


@pytest.mark.parametrize(("entry", "policy", "locked"), [
    ({}, Policy(60, 60), False),
    ({"pwdaccountlockedtime": ["000001010000Z"]}, None, True),  # the administrator's lock
    ({"pwdaccountlockedtime": ["20261202115930Z"]}, Policy(lockout_duration=60), True),
    ({"pwdaccountlockedtime": ["20261202115800Z"]}, Policy(lockout_duration=60), False),
    ({"pwdaccountlockedtime": ["20261202115800Z"]}, Policy(lockout_duration=0), True),
    ({"pwdaccountlockedtime": ["20261202115930Z"]}, None, False),  # its end unknown
    ({"pwdchangedtime": ["20261101120000Z"]}, Policy(max_age=86400), True),
    ({"pwdchangedtime": ["20261202110000Z"]}, Policy(max_age=86400), False),
    ({"pwdchangedtime": ["20261101120000Z"]}, Policy(max_age=0), False),  # never expires
])
def test_lock_reason(entry: dict[str, list[str]], policy: Policy | None, locked: bool) -> None:
    assert bool(lock_reason(entry, policy, NOW)) is locked
