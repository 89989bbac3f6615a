"""The admin side of an account backend: the interface ``smtpgate user ...`` writes through.

Theory of operation
-------------------
The read side, ``AccountDirectory`` (``auth/directory.py``), is what logins
need; every backend provides it. A backend that smtpgate manages (SQLite today,
PostgreSQL next; for an LDAP directory, the local store of what smtpgate adds to
its accounts) also provides ``AccountAdminStore``: the reads that listings
need, the admin log, and ``transaction(actor)``, which yields an
``AccountWriter``. Everything done through one writer is committed together,
each change with its admin-log row (who, when, which command, what changed,
never a secret), or, if anything raises, not at all: one administrative
operation, one transaction.

A writer takes derived secrets, never a password, and input already checked and
normalised: deriving secrets, the password policy and input checks are the
admin service's (``smtpgate/admin.py``), written once for every backend.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from smtpgate.auth.directory import (
    Account,
    AccountDirectory,
    AppPassword,
    CertificateRecord,
    StoreError,
)
from smtpgate.auth.names import look_alike, look_alike_key, look_alike_letters


class AccountExists(StoreError):
    """An account, or an account's app password, of that name exists already."""


class NoSuchAccount(StoreError):
    """A change to an account that does not exist."""


class AliasTaken(StoreError):
    """The alias is an account's name or another account's alias."""


class CertificateTaken(StoreError):
    """The client certificate is registered to another account."""


@dataclass(frozen=True, slots=True)
class AuditActor:
    """Who makes administrative changes: the OS user (or admin) and the command."""

    os_user: str
    command: str


def update_web_admin_row(execute: Callable[[str, tuple[str, ...]], Any],
                         audit: Callable[[str, str, dict[str, str]], None], placeholder: str,
                         name: str, password_hash: str | None, totp_secret: str | None) -> bool:
    """Give the admin ``name`` a new password hash and/or TOTP key in a SQL store
    (its cursor's ``execute``, its admin log's ``audit``, its ``placeholder``), logged
    without the secrets; False if nothing changed or there is no such admin."""
    given = {column: value for column, value in
             (("password_hash", password_hash), ("totp_secret", totp_secret))
             if value is not None}
    if not given:
        return False
    sets = ", ".join(f"{column} = {placeholder}" for column in given)
    n = execute(f"UPDATE web_admins SET {sets} WHERE name = {placeholder}",
                (*given.values(), name)).rowcount
    if n:
        audit("web admin credentials replaced", name,
              {"password" if column == "password_hash" else "totp": "new" for column in given})
    return bool(n)


@dataclass(frozen=True, slots=True)
class AdminLogEntry:
    id: int
    time: datetime
    os_user: str
    command: str
    action: str
    target: str
    details: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class WebAdmin:
    """An administrator of the web admin (``smtpgate admin add``): not a mail account,
    and no mail login works with it. ``password_hash`` is Argon2id; ``totp_secret``
    is the base32 TOTP key (RFC 6238), the second factor."""

    name: str
    password_hash: str
    totp_secret: str
    created: datetime


class AccountWriter(Protocol):
    """The changes of one admin transaction (``AccountAdminStore.transaction``).

    Each change appends its admin-log row in the same transaction. Names are
    account names (looked up with ``lookup_key``); every other argument arrives
    checked and normalised by the admin service. Every change of an account that
    does not exist raises ``NoSuchAccount``; a raise anywhere undoes the whole
    transaction.
    """

    # --- reads inside the transaction (consistent with its writes) ---

    def get_account(self, name: str) -> Account | None: ...

    def app_password(self, name: str, app_name: str) -> AppPassword | None: ...

    # --- accounts and their secrets ---

    def create_account(
        self,
        name: str,
        creds: Mapping[str, str],
        *,
        cram_md5_enabled: bool = False,
        allowed_mechanisms: Collection[str] | None = None,
    ) -> None:
        """A new account holding ``creds`` (none: no password yet).

        Raises: AccountExists.
        """
        ...

    def remove_account(self, name: str) -> None:
        """Delete the account and everything it owns."""
        ...

    def replace_credentials(self, name: str, creds: Mapping[str, str]) -> None:
        """A password change: every old secret goes, ``creds`` (derived from the new
        password) come in, a scheduled expiry is cancelled. A CRAM-MD5 secret is
        kept only if the account still opts in."""
        ...

    def lock(self, name: str, reason: str) -> None:
        """Refuse every login; the first lock's time is kept."""
        ...

    def unlock(self, name: str) -> bool:
        """Allow logins again; False if it was not locked."""
        ...

    # --- mechanism policy ---

    def set_allowed_mechanisms(self, name: str, mechanisms: Collection[str] | None) -> None:
        """Restrict the account to ``mechanisms`` (upper case); None lifts it."""
        ...

    def enable_cram_md5(self, name: str, secret: str | None = None) -> None:
        """Opt in to CRAM-MD5, storing ``secret`` (derived from the current password)
        if given; otherwise it is made at the next password change or PLAIN/LOGIN login."""
        ...

    def disable_cram_md5(self, name: str) -> None:
        """Opt out; the secret is deleted at once."""
        ...

    # --- conditional access ---

    def restrict_networks(self, name: str, networks: Sequence[str]) -> None:
        """Logins only from these CIDRs."""
        ...

    def allow_any_network(self, name: str) -> None: ...

    def restrict_listeners(self, name: str, listeners: Collection[str]) -> None:
        """Logins only on these listeners."""
        ...

    def allow_any_listener(self, name: str) -> None: ...

    def set_require_oauth(self, name: str, required: bool) -> None: ...

    # --- sending rates (None: the [limits] default; 0: unlimited) ---

    def set_message_rate(self, name: str, per_hour: int | None) -> None: ...

    def set_recipient_rate(self, name: str, per_hour: int | None) -> None: ...

    # --- password age ---

    def set_password_max_age(self, name: str, days: float | None) -> None:
        """Days a password lasts; None: the global default; 0: forever."""
        ...

    def schedule_password_expiry(self, name: str, when: datetime | None) -> None:
        """The current password stops working at ``when`` (None: cancel)."""
        ...

    # --- sender ownership ---

    def add_alias(self, name: str, alias: str) -> bool:
        """Let the account send as ``alias`` (canonical); False if it already may.

        Raises: AliasTaken.
        """
        ...

    def remove_alias(self, name: str, alias: str) -> bool:
        """False if ``alias`` was not an alias of the account."""
        ...

    def grant_domain(self, name: str, domain: str) -> bool:
        """Let the account send as any address in ``domain`` (lower case); False if
        it already may."""
        ...

    def revoke_domain(self, name: str, domain: str) -> bool:
        """False if ``domain`` was not granted to the account."""
        ...

    # --- app passwords ---

    def add_app_password(
        self,
        name: str,
        app_name: str,
        secret: str,
        *,
        expires: datetime | None = None,
        networks: Sequence[str] | None = None,
        mechanisms: Collection[str] | None = None,
        max_messages_per_hour: int | None = None,
        max_recipients_per_hour: int | None = None,
    ) -> AppPassword:
        """Store app password ``app_name`` (its secret only as a salted hash).

        Raises: AccountExists (the account has one of that name).
        """
        ...

    def revoke_app_password(self, name: str, app_name: str) -> bool:
        """Delete it; False if the account has none of that name."""
        ...

    def expire_app_password(
        self, name: str, app_name: str, when: datetime, *, rename_to: str | None = None
    ) -> bool:
        """Make it stop working at ``when`` (sooner only), optionally renaming it (so
        a new one can take its name); False if the account has none of that name.

        Raises: AccountExists (``rename_to`` is taken).
        """
        ...

    # --- client certificates (SASL EXTERNAL) ---

    def add_certificate(
        self, name: str, fingerprint: str, subject: str, not_after: datetime | None
    ) -> bool:
        """Register the certificate of ``fingerprint`` to the account (a removed one
        comes back); False if it already was.

        Raises: CertificateTaken (registered to another account).
        """
        ...

    def remove_certificate(self, name: str, fingerprint: str) -> bool:
        """Refuse the certificate from now on (its record stays, marked removed);
        False if the account has no such registered certificate."""
        ...

    # --- web admin accounts ---

    def add_web_admin(self, name: str, password_hash: str, totp_secret: str) -> None:
        """Raises AccountExists (an admin of that name exists)."""
        ...

    def remove_web_admin(self, name: str) -> bool:
        """False if there was no admin of that name."""
        ...

    def update_web_admin(self, name: str, *, password_hash: str | None = None,
                         totp_secret: str | None = None) -> bool:
        """Give the admin a new password hash and/or TOTP key; False if there was no
        admin of that name."""
        ...

    def use_totp_step(self, name: str, step: int) -> bool:
        """Record that the admin logged in with the TOTP code of time step ``step``;
        False (nothing changed) if that step or a later one was used already, or
        there is no such admin: a code is good once, across restarts."""
        ...

    # --- changes made elsewhere ---

    def record(self, action: str, target: str, details: Mapping[str, object]) -> None:
        """An admin-log row for a change outside this store (a guard lock lifted)."""
        ...


class AccountAdminStore(Protocol):
    """The admin side of a backend smtpgate manages (see the module docstring).

    Every method may raise ``StoreUnavailable``.
    """

    #: True where a directory keeps the passwords (LDAP, AD): operations that need
    #: a stored secret of the account (CRAM-MD5) are refused for it.
    verifies_passwords: bool

    def transaction(self, actor: AuditActor) -> AbstractContextManager[AccountWriter]:
        """One write transaction on behalf of ``actor``; commits when the block ends,
        undoes everything if it raises."""
        ...

    def get_account(self, name: str) -> Account | None: ...

    def login_identity(self, name: str) -> str:
        """The account's one name, under which the guard keeps its lockouts
        (``AccountDirectory.login_identity``); ``user unlock`` lifts them there."""
        ...

    def list_accounts(self) -> list[Account]: ...

    def aliases(self, name: str) -> list[str]: ...

    def granted_domains(self, name: str) -> list[str]: ...

    def app_passwords(self, name: str | None = None) -> list[AppPassword]:
        """The app passwords of one account, or of all accounts."""
        ...

    def certificates(self, name: str) -> list[CertificateRecord]:
        """The account's client certificates, removed ones included, oldest first."""
        ...

    def verify_password(self, name: str, password: str) -> bool: ...

    def admin_log(
        self, *, since: datetime | None = None, target: str | None = None, limit: int = 1000
    ) -> list[AdminLogEntry]:
        """Admin-log entries, oldest first (the newest ``limit`` of them)."""
        ...

    def web_admins(self) -> list[WebAdmin]:
        """The web admin's administrators, by name."""
        ...

    def close(self) -> None: ...


class AccountStore(AccountDirectory, AccountAdminStore, Protocol):
    """Both sides in one object: what ``auth/accounts.open_account_store`` returns.
    The server uses it as an ``AccountDirectory``, the admin service as an
    ``AccountAdminStore``."""


def case_twin_query(placeholder: str) -> str:
    """The stores' query for an account name or alias that differs from an address
    in letter case only and is not a given account's own, with ``placeholder``
    (``?``, ``%s``) for `case_twin_params`.
    New names are lower-cased (auth/names.py), so this finds only a capitalised
    name kept from before that rule (a pair the upgrade could not merge)."""
    p = placeholder
    return (f"SELECT name AS twin FROM accounts WHERE lower(name) = lower({p}) "
            f"AND name <> {p} AND name <> {p} UNION ALL SELECT address FROM aliases "
            f"WHERE lower(address) = lower({p}) AND address <> {p} AND account <> {p} "
            "LIMIT 1")


def case_twin_params(address: str, owner: str) -> tuple[str, ...]:
    """The parameters of `case_twin_query` (``owner`` "": no account's own)."""
    return (address, address, owner, address, address, owner)


def refuse_taken_name(key: str, alias_of: Sequence[object] | None, twin: str | None,
                      look_alike_of: str | None = None) -> None:
    """A new account's name must be no other account's alias (the alias's holder
    would send as it), nor another name but for letter case (the stores' ``_case_twin``),
    nor one that reads the same (``LookAlikes``).

    Raises:
        AccountExists: it is one of those.
    """
    if alias_of is not None:
        raise AccountExists(f"{key} is an alias of {alias_of[0]}; remove the alias first "
                            f"(smtpgate user alias remove {alias_of[0]} {key})")
    if twin is not None:
        raise AccountExists(f"{key} differs from {twin} only in letter case")
    if look_alike_of is not None:
        raise AccountExists(look_alike_refusal(key, look_alike_of))


def look_alike_refusal(address: str, twin: str) -> str:
    """Why ``address`` may not be a new account or alias beside ``twin``."""
    return (f"{address} reads the same as {twin} (look-alike characters: "
            f"{look_alike_letters(address, twin)}), so either could pass for the other "
            "in a mail reader")


#: Every account name and every alias, each with its account (``LookAlikes``).
ALL_NAMES_QUERY = ("SELECT name AS address, name AS owner FROM accounts "
                   "UNION ALL SELECT address, account FROM aliases")


class LookAlikes:
    """The account names and aliases of a store by ``look_alike_key``, for one
    writer (one transaction): read once when first asked (``ALL_NAMES_QUERY``),
    then kept up to date by the writer, so that an import of many accounts
    compares each with every other and with those it made, in one scan.

    An account whose name reads as another's (``аlice@example.org`` with the
    Cyrillic a beside ``alice@example.org``) sends mail whose From no reader
    can tell from alice's, and an administrator sees two alices in ``user
    list``; so does an alias that reads as another account's name or alias.
    Postfix, Dovecot and mox check nothing of the kind (their names are the
    keys of tables the administrator writes); UTS #39 §4 is what browsers
    and registries use against the same trick on domain names.
    """

    def __init__(self, rows: Iterable[tuple[str, str]]) -> None:
        self._by_key: dict[str, list[tuple[str, str]]] = {}
        for address, owner in rows:
            self.add(address, owner)

    def add(self, address: str, owner: str) -> None:
        """``address`` is now a name (``owner`` itself) or an alias of ``owner``."""
        self._by_key.setdefault(look_alike_key(address), []).append((address, owner))

    def twin(self, address: str, owner: str = "") -> str | None:
        """Another account's name or alias that reads as ``address``; ``owner``'s
        own names may (an account may be given the look-alike of its own name)."""
        for other, who in self._by_key.get(look_alike_key(address), ()):
            if who != owner and look_alike(address, other):
                return other
        return None
