"""The account directories the directory contract suite runs against, and the one
set of accounts every one of them is loaded with (``SEED``).

A backend added later (PostgreSQL, LDAP/Active Directory: issue 10) adds a class
like ``SqliteHarness`` (load ``SEED`` into it the backend's own way: through the
admin service, or LDIF plus smtpgate's local store; open instances; make changes
"elsewhere") and its name to ``HARNESSES``; the suite does not change.

``bind-only`` is a test double, not a product: an in-memory directory that keeps
passwords and only checks them (as an LDAP bind does), so that the suite's
bind-only branches, and the auth service's, run before a real LDAP backend exists.
"""

from __future__ import annotations

import hmac
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from smtpgate.admin import (
    AccessChange,
    AccountAdmin,
    MessageRate,
    RateChange,
    RecipientRate,
    RequireOAuth,
    RestrictListeners,
    RestrictNetworks,
)
from smtpgate.auth import postgres_schema, postgres_store
from smtpgate.auth.admin_store import AccountStore
from smtpgate.auth.credentials import CRAM_MD5
from smtpgate.auth.directory import (
    Account,
    AccountDirectory,
    AppPassword,
    CertificateRecord,
    StoreUnavailable,
)
from smtpgate.auth.names import lookup_key
from smtpgate.auth.store import AuditActor, SqliteAccountStore
from smtpgate.config import AccountsConfig, PostgresConfig

CFG = AccountsConfig(
    argon2_memory_kib=8192, argon2_time_cost=1, argon2_parallelism=1, scram_iterations=4096
)
ACTOR = AuditActor("contract", "pytest")
T0 = datetime(2030, 1, 1, tzinfo=UTC)


class Forwarding:
    """A directory (or store) that forwards every call to ``inner``: a test
    overrides the calls it counts, holds or breaks, and calls ``inner``'s."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@dataclass(frozen=True)
class SeedAppPassword:
    name: str
    secret: str
    networks: tuple[str, ...] | None = None
    mechanisms: frozenset[str] | None = None
    max_messages_per_hour: int | None = None
    expires: datetime | None = None


@dataclass(frozen=True)
class SeedAccount:
    name: str
    password: str | None
    locked: str | None = None
    aliases: tuple[str, ...] = ()
    domains: tuple[str, ...] = ()
    mechanisms: frozenset[str] | None = None
    cram_md5: bool = False
    networks: tuple[str, ...] | None = None
    listeners: tuple[str, ...] | None = None
    require_oauth: bool = False
    max_messages_per_hour: int | None = None
    max_recipients_per_hour: int | None = None
    app_passwords: tuple[SeedAppPassword, ...] = ()


ALICE, BOB, CAROL, DAVE = (
    "alice@example.org", "bob@example.org", "carol@example.org", "dave@example.org"
)
#: Dave's account is made (and his directory entry written) with a capital: login
#: names have no letter case (auth/names.py), so it is the account dave@example.org.
DAVE_AS_TYPED = "Dave@example.org"
PHONE = "abcd-efgh-jkmn-pqrs-tuvw"
OLD_APP = "wxyz-2345-6789-abcd-efgh"

SEED: tuple[SeedAccount, ...] = (
    SeedAccount(
        ALICE, "correct horse battery",
        aliases=("sales@example.org", "info@example.org"),
        domains=("example.net",),
        max_messages_per_hour=100, max_recipients_per_hour=1000,
        app_passwords=(
            SeedAppPassword("phone", PHONE, networks=("192.0.2.0/24",),
                            mechanisms=frozenset({"PLAIN"}), max_messages_per_hour=5),
            SeedAppPassword("old tablet", OLD_APP, expires=datetime.now(UTC) - timedelta(days=1)),
        ),
    ),
    SeedAccount(
        BOB, "bob's own secret", locked="phished",
        mechanisms=frozenset({"SCRAM-SHA-256", "SCRAM-SHA-256-PLUS"}),
        networks=("10.0.0.0/8", "2001:db8::/32"), listeners=("submission",),
    ),
    SeedAccount(CAROL, None, require_oauth=True),
    SeedAccount(DAVE_AS_TYPED, "dave's secret", cram_md5=True),
)


class Harness(Protocol):
    """One implementation loaded with ``SEED``."""

    name: str

    def open(self) -> AccountDirectory:
        """One more instance on the same data (another worker process, another node)."""
        ...

    def lock(self, account: str, reason: str) -> None:
        """Lock ``account`` the backend's own way, outside the instances opened."""
        ...

    def change_password(self, account: str, password: str) -> None:
        """Change the password the backend's own way, outside the instances opened."""
        ...

    def other_logins(self, account: str) -> list[str]:
        """Login names of ``account`` besides its address (an LDAP ``uid``, AD's
        ``sAMAccountName``): each must log in as the account and resolve to it."""
        ...

    def close(self) -> None: ...


# --- SQLite: loaded through the admin service, as `smtpgate user ...` does --------------


class SqliteHarness:
    name = "sqlite"

    def other_logins(self, account: str) -> list[str]:
        return []  # an account has one name, its address

    def __init__(self, tmp_path: Path) -> None:
        self._path = tmp_path / "accounts.sqlite"
        self._admin = AccountAdmin(SqliteAccountStore(self._path, CFG), CFG, actor=ACTOR)
        self._opened: list[AccountStore] = []
        for a in SEED:
            self._load(a)

    def _load(self, a: SeedAccount) -> None:
        self._admin.add_account(a.name, a.password, cram_md5_enabled=a.cram_md5,
                                allowed_mechanisms=a.mechanisms)
        self._load_settings(a, aliases=a.aliases)

    def _load_settings(self, a: SeedAccount, *, aliases: Sequence[str]) -> None:
        """What smtpgate adds to an account (the LDAP harness's overlay too)."""
        admin = self._admin
        for alias in aliases:
            admin.add_alias(a.name, alias)
        for domain in a.domains:
            admin.grant_domain(a.name, domain)
        access: list[AccessChange] = []
        if a.networks is not None:
            access.append(RestrictNetworks(a.networks))
        if a.listeners is not None:
            access.append(RestrictListeners(a.listeners))
        if a.require_oauth:
            access.append(RequireOAuth(True))
        admin.change_access(a.name, access)
        rates: list[RateChange] = [MessageRate(a.max_messages_per_hour),
                                   RecipientRate(a.max_recipients_per_hour)]
        admin.change_limits(a.name, rates)
        if a.locked:
            admin.lock(a.name, a.locked)
        store = self._new_store()
        try:
            with store.transaction(ACTOR) as w:  # known secrets, for the suite to try
                for p in a.app_passwords:
                    w.add_app_password(
                        a.name, p.name, p.secret, expires=p.expires, networks=p.networks,
                        mechanisms=p.mechanisms, max_messages_per_hour=p.max_messages_per_hour,
                    )
        finally:
            store.close()

    def _new_store(self) -> AccountStore:
        return SqliteAccountStore(self._path, CFG)

    def open(self) -> AccountDirectory:
        store = self._new_store()
        self._opened.append(store)
        return store

    def lock(self, account: str, reason: str) -> None:
        self._admin.lock(account, reason)

    def change_password(self, account: str, password: str) -> None:
        self._admin.set_password(account, password)

    def close(self) -> None:
        for s in self._opened:
            s.close()
        self._admin.close()


# --- PostgreSQL: a database of its own on the tests' server, loaded the same way --------


class PostgresHarness(SqliteHarness):
    name = "postgresql"

    def __init__(self, tmp_path: Path) -> None:
        from tests.postgres_server import shared_cluster

        cluster = shared_cluster()
        self._pg = PostgresConfig(
            dsn=cluster.create_database(), password_file=cluster.write_password_file(tmp_path),
            timeout=2,
        )
        postgres_schema.migrate(self._pg)
        self._admin = AccountAdmin(self._new_store(), CFG, actor=ACTOR)
        self._opened = []
        for a in SEED:
            self._load(a)

    def _new_store(self) -> AccountStore:
        return postgres_store.PostgresAccountStore(self._pg, CFG)


# --- bind-only: a test double of a directory that keeps passwords ---------------------


@dataclass
class _Entry:
    account: Account
    password: str | None
    aliases: list[str]
    domains: list[str]
    apps: list[tuple[AppPassword, str]]
    #: Kept "locally" for a directory that hands out no hash (SCRAM keys, ...).
    local_creds: dict[str, str] = field(default_factory=dict)


class _Shared:
    """What the "directory server" holds; every instance sees it at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.entries: dict[str, _Entry] = {}


class MemoryBindDirectory:
    """``AccountDirectory`` over ``_Shared``: passwords are checked, never handed out."""

    verifies_passwords = True

    def __init__(self, shared: _Shared) -> None:
        self._shared = shared
        self._closed = False

    def _entry(self, name: str) -> _Entry | None:
        if self._closed:
            raise StoreUnavailable("directory connection closed")
        return self._shared.entries.get(lookup_key(name))

    def get_account(self, name: str) -> Account | None:
        e = self._entry(name)
        return None if e is None else replace(e.account, schemes=frozenset(e.local_creds))

    def get_credential(self, name: str, scheme: str) -> str | None:
        e = self._entry(name)
        return None if e is None else e.local_creds.get(scheme)

    def login_identity(self, name: str) -> str:
        e = self._entry(name)
        return lookup_key(name) if e is None else e.account.name

    def verify_password(self, name: str, password: str) -> bool:
        e = self._entry(name)
        # An empty password would be an unauthenticated bind (RFC 4513 §5.1.2),
        # which an LDAP server answers with success: never a valid password.
        if e is None or e.password is None or not password:
            return False
        return hmac.compare_digest(e.password.encode(), password.encode())

    def aliases(self, name: str) -> list[str]:
        e = self._entry(name)
        return [] if e is None else sorted(e.aliases)

    def granted_domains(self, name: str) -> list[str]:
        e = self._entry(name)
        return [] if e is None else sorted(e.domains)

    def alias_owner(self, address: str) -> str | None:
        return next((n for n, e in self._shared.entries.items() if address in e.aliases), None)

    def certificate(self, fingerprint: str) -> CertificateRecord | None:
        return None  # a bind-only directory in tests: no EXTERNAL registrations

    def match_app_password(self, name: str, password: str) -> AppPassword | None:
        e = self._entry(name)
        if e is None:
            return None
        found = None
        for record, secret in e.apps:
            if hmac.compare_digest(secret.encode(), password.encode()):
                found = record
        return found

    def app_passwords(self, name: str | None = None) -> list[AppPassword]:
        entries = self._shared.entries.values() if name is None else filter(None, [self._entry(name)])
        return [record for e in entries for record, _ in e.apps]

    def record_login(self, name: str, mechanism: str, when: datetime) -> None:
        with self._shared.lock:
            e = self._entry(name)
            if e is not None and (e.account.last_login is None or e.account.last_login <= when):
                e.account = replace(e.account, last_login=when, last_mechanism=mechanism.upper())

    def record_app_password_use(self, app_id: int, when: datetime, address: str) -> None:
        with self._shared.lock:
            if self._closed:
                raise StoreUnavailable("directory connection closed")
            for e in self._shared.entries.values():
                for i, (record, secret) in enumerate(e.apps):
                    if record.id == app_id and (record.last_used is None or record.last_used <= when):
                        e.apps[i] = (replace(record, last_used=when, last_address=address), secret)

    def put_credentials(self, name: str, creds: Mapping[str, str], *, generation: int) -> bool:
        with self._shared.lock:
            e = self._entry(name)
            if e is None or e.account.generation != generation:
                return False
            wanted = dict(creds)
            if not e.account.cram_md5_enabled:
                wanted.pop(CRAM_MD5, None)
            e.local_creds.update(wanted)
            return True

    def close(self) -> None:
        self._closed = True


class BindOnlyHarness:
    name = "bind-only"

    def other_logins(self, account: str) -> list[str]:
        return []

    def __init__(self, tmp_path: Path) -> None:
        self._shared = _Shared()
        ids = iter(range(1, 1000))
        for a in SEED:
            key = lookup_key(a.name)
            account = Account(
                name=key, created=T0, updated=T0, generation=1,
                locked=a.locked is not None, lock_reason=a.locked,
                locked_at=T0 if a.locked else None, password_changed=None,
                last_login=None, last_mechanism=None,
                allowed_mechanisms=a.mechanisms, cram_md5_enabled=a.cram_md5,
                schemes=frozenset(), allowed_networks=a.networks,
                allowed_listeners=None if a.listeners is None else frozenset(a.listeners),
                require_oauth=a.require_oauth,
                max_messages_per_hour=a.max_messages_per_hour,
                max_recipients_per_hour=a.max_recipients_per_hour,
            )
            apps = [
                (AppPassword(next(ids), key, p.name, T0, p.expires, p.networks, p.mechanisms,
                             p.max_messages_per_hour, None, None, None), p.secret)
                for p in a.app_passwords
            ]
            self._shared.entries[key] = _Entry(
                account, a.password, [lookup_key(x) for x in a.aliases], list(a.domains), apps
            )

    def open(self) -> AccountDirectory:
        return MemoryBindDirectory(self._shared)

    def _bump(self, account: str, **changes: object) -> None:
        with self._shared.lock:
            e = self._shared.entries[lookup_key(account)]
            e.account = replace(e.account, generation=e.account.generation + 1, **changes)  # type: ignore[arg-type]

    def lock(self, account: str, reason: str) -> None:
        self._bump(account, locked=True, lock_reason=reason, locked_at=datetime.now(UTC))

    def change_password(self, account: str, password: str) -> None:
        e = self._shared.entries[lookup_key(account)]
        e.password = password
        e.local_creds.clear()  # derived from the old password
        self._bump(account)

    def close(self) -> None:
        pass


HARNESSES = {
    "sqlite": SqliteHarness,
    "postgresql": PostgresHarness,
    "bind-only": BindOnlyHarness,
}

from tests.contract.ldap_harness import LdapHarness  # builds on the above

HARNESSES["ldap"] = LdapHarness
