"""Opening the account backend that ``[accounts].backend`` names.

The one place that knows which backends exist: the server (its auth service and
its start-up check), every ``smtpgate user ...`` command (through the admin
service), ``init`` and ``report`` open their accounts here. A new backend (the
PostgreSQL and LDAP directories) adds a value to ``AccountsConfig.backend`` and
a branch here, and passes ``tests/contract``; nothing else changes.
"""

from __future__ import annotations

from typing import assert_never

from smtpgate.auth.admin_store import AccountStore
from smtpgate.auth.store import SqliteAccountStore
from smtpgate.config import Config


def open_account_store(cfg: Config) -> AccountStore:
    """The account backend of ``cfg``, both sides (read and admin).

    Raises:
        StoreUnavailable: it cannot be opened (a file that is not a database,
            a missing directory, a schema newer than this version knows).
    """
    backend = cfg.accounts.backend
    if backend == "sqlite":
        return SqliteAccountStore(cfg.path(cfg.accounts.database), cfg.accounts)
    assert_never(backend)
