"""The account directory: what login and the sending policy read about accounts.

Theory of operation
-------------------
``AccountDirectory`` is the read side of an account backend: exactly what the
auth service needs to decide a login (the account, its lock state, access
rules and mechanism policy, its credentials or a way to check a password, its
app passwords) and what the sending policy needs (aliases, granted domains,
rates). Administrative writes are not here: they are the admin interface
(``auth/store.py``), which only backends that smtpgate manages provide.

Two kinds of backend fit it:

- **Hash-holding** (SQLite today, PostgreSQL next): ``get_credential(name,
  "argon2id")`` hands out the account's Argon2id hash and the auth service
  verifies it itself, in its hash pool, with its verified-credential cache, its
  coalescing of identical attempts and its re-hashing of old parameters.
  ``verifies_passwords`` is False.
- **Bind-only** (LDAP, Active Directory): the directory keeps the password and
  hands out no hash; only ``verify_password`` (a bind) can check one.
  ``verifies_passwords`` is True, and the service calls it after its cache
  misses. SCRAM keys derived after a good PLAIN/LOGIN login are kept with
  ``put_credentials`` (locally, for such a backend), so SCRAM works from then on.

Every backend implements ``verify_password``; ``tests/contract`` runs one suite
against every implementation. Names passed in are looked up with
``names.lookup_key``: a name that is not a valid address matches no account.
Every method may raise ``StoreUnavailable`` for a backend fault (file, network,
corrupt record), which the service answers with 454, never 535.

The three bookkeeping writes (``record_login``, ``record_app_password_use``,
``put_credentials``) belong here because logins make them; they are not
administrative changes and are not in the admin log.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol


class StoreError(Exception):
    """Base of account backend errors."""


class StoreUnavailable(StoreError):
    """The backend failed (I/O error, corrupt file, busy too long, closed, directory
    down): a temporary fault, never a reason to call the client's credentials wrong."""

    #: Whether the backend itself failed (``smtpgate_backend_errors_total``); False
    #: for a store that answered but whose data the login cannot use (one name on two
    #: directory entries): anyone who learns such a name could otherwise raise the
    #: error rate an outage alert watches, at will.
    backend_failed: bool = True


@dataclass(frozen=True, slots=True)
class Account:
    """One account's state; secrets are fetched separately with ``get_credential``."""

    name: str
    created: datetime
    updated: datetime
    #: Goes up on every password or lock change; caches compare it.
    generation: int
    locked: bool
    lock_reason: str | None
    locked_at: datetime | None
    password_changed: datetime | None
    last_login: datetime | None
    last_mechanism: str | None
    #: Mechanisms this account may use; None means all that a listener offers.
    allowed_mechanisms: frozenset[str] | None
    cram_md5_enabled: bool
    #: The credential schemes stored for the account ('argon2id', 'scram-sha-1', ...).
    schemes: frozenset[str]
    # --- conditional access (None: no restriction) ---
    allowed_networks: tuple[str, ...] | None = None
    allowed_listeners: frozenset[str] | None = None
    #: Only OAUTHBEARER/XOAUTH2 may log in (a high-risk account).
    require_oauth: bool = False
    # --- password age ---
    #: Days a password lasts; None: [passwords].max_age_days; 0: no limit.
    password_max_age_days: float | None = None
    #: Set by `user rotate`: the password stops working at this time.
    password_expires: datetime | None = None
    # --- sending rates (None: the [limits] default; 0: unlimited) ---
    max_messages_per_hour: int | None = None
    max_recipients_per_hour: int | None = None
    #: Whether the account may send as its own name. False for a directory account
    #: whose name (AD's UPN) is a login but none of the entry's mail addresses: in
    #: AD a UPN need not be the user's address, and may be another user's.
    owns_name: bool = True

    def allows(self, mechanism: str) -> bool:
        return self.allowed_mechanisms is None or mechanism.upper() in self.allowed_mechanisms

    def password_expiry(self, default_max_age_days: float) -> datetime | None:
        """When the password stops working, or None if never."""
        out = self.password_expires
        days = default_max_age_days if self.password_max_age_days is None else self.password_max_age_days
        if days > 0 and self.password_changed is not None:
            aged = self.password_changed + timedelta(days=days)
            out = aged if out is None else min(out, aged)
        return out


@dataclass(frozen=True, slots=True)
class AppPassword:
    """One app password's record (never its secret)."""

    id: int
    account: str
    name: str
    created: datetime
    expires: datetime | None
    #: CIDRs it may be used from; None: anywhere the account may log in from.
    networks: tuple[str, ...] | None
    #: Mechanisms it may be used with; None: PLAIN and LOGIN.
    mechanisms: frozenset[str] | None
    max_messages_per_hour: int | None
    max_recipients_per_hour: int | None
    last_used: datetime | None
    last_address: str | None

    def expired(self, now: datetime) -> bool:
        return self.expires is not None and self.expires <= now


@dataclass(frozen=True, slots=True)
class CertificateRecord:
    """A TLS client certificate registered to an account (SASL EXTERNAL).

    Removing one keeps its record with ``revoked`` set, so that the certificate is
    refused even where its SAN email would otherwise log it in."""

    #: SHA-256 of the DER certificate, lower-case hex.
    fingerprint: str
    account: str
    #: The certificate's subject and expiry, as read when it was added (for listings).
    subject: str
    not_after: datetime | None
    added: datetime
    revoked: datetime | None = None


class AccountDirectory(Protocol):
    """The read side of an account backend (see the module docstring).

    Synchronous: the auth service calls it from worker threads. Every method may
    raise ``StoreUnavailable``.
    """

    #: True for a bind-only backend: passwords are checked with ``verify_password``
    #: and ``get_credential(name, "argon2id")`` is always None. False: the service
    #: verifies the Argon2id hash ``get_credential`` returns.
    verifies_passwords: bool

    def get_account(self, name: str) -> Account | None:
        """The account, or None if there is none of that name."""
        ...

    def get_credential(self, name: str, scheme: str) -> str | None:
        """The stored data of one scheme (``credentials.py`` defines them), or None."""
        ...

    def verify_password(self, name: str, password: str) -> bool:
        """True if ``password`` is the account's password. Checks only the password:
        lock state, expiry and access rules are the auth service's to apply.
        False for an unknown account or one without a password."""
        ...

    def login_identity(self, name: str) -> str:
        """The one name of the account ``name`` logs in as (the same for each of its
        login names), or ``name_key(name)`` if no account has that login.

        The guard counts failures and locks under this key (docs/protection.md),
        so that every name of one account (AD's UPN and ``sAMAccountName``, an
        LDAP entry's ``uid`` and each of its ``mail`` values) shares one count. A hash-holding backend's names are already canonical: it
        answers ``name_key(name)`` without I/O. A bind-only backend searches (a
        search does not count toward the directory's own lockout; a bind does).
        """
        ...

    def aliases(self, name: str) -> list[str]:
        """Addresses the account may send as besides its own, sorted."""
        ...

    def granted_domains(self, name: str) -> list[str]:
        """Domains the account may send as any address of, sorted."""
        ...

    def alias_owner(self, address: str) -> str | None:
        """The account whose alias ``address`` (canonical) is, or None; for a
        directory, also the account whose entry holds it as an address value
        (its own ``mail`` among them)."""
        ...

    def match_app_password(self, name: str, password: str) -> AppPassword | None:
        """The app password of account ``name`` that ``password`` is, expired or not
        (the caller decides); None if it is none of them."""
        ...

    def app_passwords(self, name: str | None = None) -> list[AppPassword]:
        """The account's app passwords (None: every account's), expired ones included,
        never their secrets."""
        ...

    def certificate(self, fingerprint: str) -> CertificateRecord | None:
        """The client certificate of that SHA-256 fingerprint (lower-case hex),
        registered or removed; None if it was never registered."""
        ...

    # --- bookkeeping made by logins (not administrative changes) ---------------------

    def record_login(self, name: str, mechanism: str, when: datetime) -> None:
        """Remember the last successful login; never moves the time backwards."""
        ...

    def record_app_password_use(self, app_id: int, when: datetime, address: str) -> None:
        """Remember the last use of an app password; never moves the time backwards."""
        ...

    def put_credentials(self, name: str, creds: Mapping[str, str], *, generation: int) -> bool:
        """Add or replace schemes derived from the *current* password, only if the
        account's generation is still ``generation``; False if it moved on (the
        password changed meanwhile, so these secrets would be stale). A CRAM-MD5
        secret is kept only for an account that opted in."""
        ...

    def close(self) -> None:
        """Release connections; call when no thread uses the directory."""
        ...
