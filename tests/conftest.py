"""Test-run wiring shared by every suite."""

from __future__ import annotations

import pytest

#: Files whose tests share the one Samba AD domain controller of a run
#: (tests/peers/samba_ad.py): AD's LDAP ports cannot move, so two workers must not
#: each provision one.
_SAMBA_FILES = {"test_ldap_ad.py", "test_protection.py", "test_postgres.py"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist (``make test`` runs ``-n 2 --dist loadgroup``) every test of
    a file runs in the same worker, so a module-scoped server starts once; the
    files sharing the Samba DC go to one worker together."""
    for item in items:
        if item.get_closest_marker("xdist_group") is not None:
            continue
        name = item.path.name
        group = "samba-ad" if name in _SAMBA_FILES else str(item.path)
        item.add_marker(pytest.mark.xdist_group(group))
