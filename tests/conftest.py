"""Test-run wiring shared by every suite."""

from __future__ import annotations

import pytest

#: The tests that use the one Samba AD domain controller of a run
#: (tests/peers/samba_ad.py): AD's LDAP ports cannot move, so two workers must not
#: each provision one. Those of test_ldap_ad.py, and the ``active_directory`` runs of
#: the suites parametrised over every account backend (test_protection.py,
#: test_postgres.py); their other backends spread like any file.
_SAMBA_FILES = {"test_ldap_ad.py"}
_SAMBA_PARAM = "active_directory"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist (``make test`` runs ``-n 2 --dist loadgroup``) every test of
    a file runs in the same worker, so a module-scoped server starts once; the
    tests sharing the Samba DC go to one worker together."""
    for item in items:
        if item.get_closest_marker("xdist_group") is not None:
            continue
        samba = item.path.name in _SAMBA_FILES or f"[{_SAMBA_PARAM}" in item.nodeid or (
            f"-{_SAMBA_PARAM}" in item.nodeid)
        group = "samba-ad" if samba else str(item.path)
        item.add_marker(pytest.mark.xdist_group(group))
