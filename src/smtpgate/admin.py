"""Administrative operations on accounts: the service the CLI calls, and a web admin will.

Theory of operation
-------------------
Each public method that changes something is one operation and one transaction
of the account store (``AccountAdminStore.transaction``, ``auth/admin_store.py``):
it happens whole, each change with its admin-log row, or, when anything is
refused or fails half-way, not at all. What an operation needs before it writes
happens first, outside the transaction, so that Argon2 never holds the write
lock and a refusal costs nothing:

- input is checked and normalised here (addresses, CIDRs, mechanism names,
  app-password names and scopes), once for every backend;
- a new password must pass ``auth/passwords.check_new_password`` (what no client
  could send) and, when the service has a policy (the CLI passes
  ``[passwords]``), ``policy/passwords.check_password_policy``;
- secrets are derived from it here (``auth/credentials.derive``: Argon2id, the
  SCRAM keys, the CRAM-MD5 secret of an account that opted in) and handed to
  the store, which never sees a password.

The guard's blocks and lockouts live in their own database. Lifting them
(``unlock``, ``unblock``) happens inside the account transaction that records
it, so a guard that fails undoes the account side too; lifting is idempotent, so
running the command again after any failure is safe.

Layering: this module uses both ``auth/`` and ``policy/`` (the password
policy), so it sits above them, below ``cli/`` (a thin shell over it) and a
future web admin.
"""

from __future__ import annotations

import base64
import getpass
import ipaddress
import logging
import os
import re
import secrets
import sys
import time
import urllib.parse
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Protocol, Self

from smtpgate import mechanism_facts
from smtpgate.auth.accounts import open_account_store
from smtpgate.auth.admin_store import (
    AccountAdminStore,
    AccountExists,
    AccountWriter,
    AdminLogEntry,
    AuditActor,
    NoSuchAccount,
    WebAdmin,
)
from smtpgate.auth.credentials import (
    APP_PASSWORD_MECHANISMS,
    ARGON2ID,
    CRAM_MD5,
    derive,
    generate_app_password,
    wanted_schemes,
)
from smtpgate.auth.directory import Account, AppPassword, CertificateRecord
from smtpgate.auth.guard import ADMIN_KEY_PREFIX
from smtpgate.auth.guard_state import Block, GuardStoreError
from smtpgate.auth.imports import ImportEntry
from smtpgate.auth.names import (
    InvalidAccountName,
    canonical_name,
    invisible_problem,
    login_spellings,
    lookup_key,
    mailbox_problem,
    new_account_name,
)
from smtpgate.auth.passwords import PasswordHasher, PasswordPolicyError, check_new_password
from smtpgate.auth.scram_names import scram_spelling
from smtpgate.auth.state_backend import open_guard_state
from smtpgate.config import AccountsConfig, Config, PasswordsConfig
from smtpgate.policy.passwords import check_password_policy
from smtpgate.smtp.address import AddressError, parse_mailbox
from smtpgate.tls.client_certs import normalise_fingerprint, read_certificate

log = logging.getLogger("smtpgate.admin")


class AdminError(Exception):
    """An operation was refused and nothing changed; ``hint`` says what to do instead."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint


def _sendable_name(name: str) -> str:
    """The canonical spelling of a new account's ``name``, refused (InvalidAccountName)
    when it could not be a MAIL FROM, and (AdminError) when SCRAM clients would send
    it as another name (``auth/scram_names.py``)."""
    key = new_account_name(name)
    sent = scram_spelling(key)
    if sent != key:
        raise AdminError(
            f"{key}: SCRAM clients send this name as {sent} (SASLprep, RFC 4013, "
            "maps its compatibility characters), so the account could never log in "
            "with SCRAM",
            f"add it as {sent}",
        )
    return key


class NotFoundError(AdminError):
    """What the operation was to act on (an app password, a block) does not exist."""


def default_actor() -> AuditActor:
    """The OS user running this process, and its command line without options."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid={os.getuid()}"
    words = [os.path.basename(sys.argv[0]) if sys.argv else "smtpgate"]
    for arg in sys.argv[1:4]:
        if arg.startswith("-"):
            break
        words.append(arg)
    return AuditActor(user, " ".join(words))


class GuardLocks(Protocol):
    """What the admin service needs of the guard's state (``auth/guard_state.GuardState``
    provides it)."""

    def active_blocks(self, now: float) -> list[Block]: ...

    def unlock_account(self, account: str) -> int: ...

    def forget_addresses(self, account: str) -> int: ...

    def unblock(self, key: str) -> int: ...

    def close(self) -> None: ...


# --- changes of conditional access and rates: one value per change, no tri-states ----


@dataclass(frozen=True, slots=True)
class RestrictNetworks:
    """Logins only from these networks (CIDR, or an address)."""

    networks: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class AnyNetwork:
    """Lift the network restriction."""


@dataclass(frozen=True, slots=True)
class RestrictListeners:
    """Logins only on these listeners (by name)."""

    listeners: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class AnyListener:
    """Lift the listener restriction."""


@dataclass(frozen=True, slots=True)
class RequireOAuth:
    """Allow only OAUTHBEARER/XOAUTH2 logins (True), or any mechanism again (False)."""

    required: bool


AccessChange = RestrictNetworks | AnyNetwork | RestrictListeners | AnyListener | RequireOAuth


@dataclass(frozen=True, slots=True)
class MessageRate:
    """Messages per hour: a number (0: unlimited), or None for ``[limits]``'s default."""

    per_hour: int | None


@dataclass(frozen=True, slots=True)
class RecipientRate:
    """Recipients per hour: a number (0: unlimited), or None for ``[limits]``'s default."""

    per_hour: int | None


RateChange = MessageRate | RecipientRate

#: The highest rate stored: the databases' integer column (PostgreSQL ``integer``;
#: SQLite refuses a Python int past 64 bits with OverflowError, a 500 in the web
#: admin). Far beyond any real limit; 0 is the way to say unlimited.
MAX_RATE = 2**31 - 1


def _check_rate(per_hour: int | None) -> None:
    if per_hour is not None and not 0 <= per_hour <= MAX_RATE:
        raise ValueError(f"a rate is 0 (unlimited) to {MAX_RATE} per hour")


@dataclass(frozen=True, slots=True)
class Rotation:
    """What a rotation did: the new app password (its secret is shown once), and
    which old secret stops working when."""

    app_password: AppPassword
    secret: str
    #: "app password 'phone'" or "the account password".
    retired: str
    deadline: datetime


def _earlier(scheduled: datetime | None, deadline: datetime) -> datetime:
    """When a rotated secret stops working: the rotation's ``deadline``, or the
    time it was already to stop if that comes first (a rotation never lengthens a
    secret's life)."""
    return deadline if scheduled is None else min(scheduled, deadline)


def _free_app_name(w: AccountWriter, name: str, stem: str, end: str = "", sep: str = "-") -> str:
    """``stem + end``, or the first of ``stem + sep + 2 + end``, ``... 3 ...`` the
    account has no app password of.

    The names a rotation makes up are from the time to the second, so two
    rotations within one second asked for the same one and the second failed
    with 'pass another --name' though no name had been passed. A name the admin
    chose is never changed this way: taken, it is refused.
    """
    candidate, n = stem + end, 1
    while w.app_password(name, candidate) is not None:
        n += 1
        candidate = f"{stem}{sep}{n}{end}"
    return candidate


#: The longest lock reason kept, in characters: a line in ``user list``, the
#: admin log and the web admin's account page.
MAX_LOCK_REASON = 200


def sender_alias(address: str) -> str:
    """``address`` as an alias is stored: its canonical spelling, if a client can
    send it as MAIL FROM.

    An alias is only ever compared with a sender, so one that is not an RFC 5321
    mailbox (``<b>x</b>@localhost``: RFC 5322 specials unquoted in the local part)
    would be stored and never match anything. An alias is held to the envelope's
    grammar, with UTF-8 allowed (RFC 6531), which the server accepts with SMTPUTF8;
    a new account's name is too (``names.new_account_name``).

    Raises: InvalidAccountName, saying why and what would do.
    """
    alias = canonical_name(address)
    if problem := invisible_problem(alias):
        raise InvalidAccountName(f"{problem}; it cannot be an alias")
    try:
        parse_mailbox(alias, utf8=True)
    except AddressError as e:
        raise InvalidAccountName(
            f"{address!r} cannot be a sender address, so it cannot be an alias: {e} "
            "(RFC 5321 §4.1.2: the local part is letters, digits and "
            "!#$%&'*+-/=?^_`{|}~, in runs separated by single dots)") from None
    return alias


def lock_reason(reason: str) -> str:
    """``reason`` stripped, if it is 1-``MAX_LOCK_REASON`` printable characters.

    A reason is typed by one admin (in the web admin, perhaps not root) and shown
    to the others, on their terminals by ``admin-log`` and ``user list``: an escape
    sequence there would drive the terminal, a newline forge a line, a bidi
    override (U+202E) reverse what follows. ``str.isprintable`` refuses every
    control, format and separator character but the space.

    Raises: AdminError.
    """
    text = reason.strip()
    if not text or len(text) > MAX_LOCK_REASON or not text.isprintable():
        raise AdminError(
            f"a lock reason is 1-{MAX_LOCK_REASON} printable characters "
            "(no control characters, line breaks or bidi overrides)",
            "write the reason on one plain line")
    return text


#: A web admin's name: lower-case letters, digits and ``._@-``, 1-64 characters.
_WEB_ADMIN_NAME = re.compile(r"[a-z0-9][a-z0-9._@-]{0,63}")


def web_admin_name(name: str) -> str:
    """The name as stored (lower case). Raises ValueError for one that is not valid."""
    n = name.strip().lower()
    if not _WEB_ADMIN_NAME.fullmatch(n):
        raise ValueError("an admin name is 1-64 of a-z, 0-9 and . _ @ -, starting with a "
                         "letter or digit")
    return n


def _typable_in_a_browser(password: str) -> None:
    """Refuse a web admin password with a line break: a browser's password field
    drops CR and LF (HTML's value sanitization), so the login form could never send
    it (``admin add --password-stdin`` reads up to the end, second lines included).

    Raises:
        PasswordPolicyError: naming the rule.
    """
    if "\r" in password or "\n" in password:
        raise PasswordPolicyError("the password holds a line break, which a browser's "
                                  "password field cannot send")


def totp_uri(name: str, secret: str, issuer: str) -> str:
    """The ``otpauth://`` enrolment URI of a TOTP key (RFC 6238: SHA-1, 6 digits, 30 s,
    what every authenticator app reads)."""
    label = urllib.parse.quote(issuer, safe="") + ":" + urllib.parse.quote(name, safe="")
    query = urllib.parse.urlencode({"secret": secret, "issuer": issuer, "algorithm": "SHA1",
                                    "digits": 6, "period": 30})
    return f"otpauth://totp/{label}?{query}"


def with_channel_binding_variants(mechanisms: Iterable[str]) -> set[str]:
    """``mechanisms`` plus the ``-PLUS`` variant of each SCRAM one: the same stored
    keys plus channel binding, so a restriction never locks out a client for being
    *more* careful."""
    out = {m.upper() for m in mechanisms}
    for m in list(out):
        plus = f"{m}-PLUS"
        if mechanism_facts.facts(plus) is not None:
            out.add(plus)
    return out


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _networks(networks: Iterable[str]) -> list[str]:
    """Canonical CIDRs. Raises ValueError for one that is not a network or address."""
    return [str(ipaddress.ip_network(n, strict=False)) for n in networks]


def _mechanisms(mechanisms: Collection[str] | None) -> list[str] | None:
    if mechanisms is None:
        return None
    upper = sorted({m.upper() for m in mechanisms})
    for m in upper:
        if mechanism_facts.facts(m) is None:
            raise ValueError(f"unknown mechanism {m!r}")
    return upper


def _domain(domain: str) -> str:
    """A domain as grants store it. Raises InvalidAccountName, naming what was given
    (the check runs on a made-up address, whose messages would name that instead:
    until audit h21 an empty NAME was "'x@' is not an address", and an address
    given for a domain "'x@bob' before the last '@' holds another '@'")."""
    bare = domain.strip().lower().lstrip("@")
    if not bare:
        raise InvalidAccountName(f"{domain!r} is no domain name (expected a domain such as "
                                 "example.org)")
    if "@" in bare:
        raise InvalidAccountName(
            f"{domain!r} is an address, not a domain: grant its domain "
            f"({bare.rpartition('@')[2] or 'the part after the @'}) to let the account send "
            "as every address in it, or add the address as an alias (user alias add)")
    return canonical_name(f"x@{bare}").split("@", 1)[1]


class _DummyHash:
    """A hash of a random password with the service's parameters, made once, so that a
    login as an unknown admin spends the same Argon2 time as a wrong password."""

    def __init__(self) -> None:
        self._encoded: str | None = None

    def get(self, hasher: PasswordHasher) -> str:
        if self._encoded is None:
            self._encoded = hasher.hash(secrets.token_urlsafe(16))
        return self._encoded


_DUMMY_HASH = _DummyHash()


class AccountAdmin:
    """The administrative operations on one account store, on behalf of ``actor``.

    Takes over ``store`` (``close()`` closes it). ``password_policy``: the
    ``[passwords]`` rules new passwords must pass (None: only what no client could
    send is refused, for imports and tests). ``open_guard``: opens the guard's
    state when a lock is to be lifted (None: there is no guard to consult).
    """

    def __init__(
        self,
        store: AccountAdminStore,
        accounts_cfg: AccountsConfig,
        *,
        actor: AuditActor,
        password_policy: PasswordsConfig | None = None,
        open_guard: Callable[[], GuardLocks] | None = None,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self._store = store
        self._cfg = accounts_cfg
        self._hasher = PasswordHasher(accounts_cfg)
        self._actor = actor
        self._policy = password_policy
        self._open_guard = open_guard
        self._clock = clock

    def close(self) -> None:
        self._store.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def record(self, action: str, target: str, details: Mapping[str, object]) -> None:
        """An admin-log row for a change outside the account store (``smtpgate
        queue delete``, ...), under this service's actor."""
        with self._tx() as w:
            w.record(action, target, details)

    # --- plumbing ------------------------------------------------------------------

    def _tx(self) -> AbstractContextManager[AccountWriter]:
        return self._store.transaction(self._actor)

    @contextmanager
    def _guard(self) -> Iterator[GuardLocks | None]:
        if self._open_guard is None:
            yield None
            return
        guard = self._open_guard()
        try:
            yield guard
        finally:
            guard.close()

    def _derive(self, password: str, name: str, cram_md5_enabled: bool) -> dict[str, str]:
        """The policy checks, then the stored forms of a new password (slow: Argon2id)."""
        check_new_password(password)
        if self._policy is not None:
            check_password_policy(password, name, self._policy)
        return derive(password, wanted_schemes(cram_md5_enabled), self._cfg, self._hasher)

    # --- reads ---------------------------------------------------------------------

    def get_account(self, name: str) -> Account | None:
        return self._store.get_account(name)

    def account_spelling(self, name: str) -> str:
        """The spelling under which a login of ``name`` finds its account
        (``names.login_spellings``: as given, else SASLprep'd), or ``name`` when
        none does. Why: ``ａｌｉｃｅ@example.org`` in full-width letters logs in
        as alice, and the account commands said "no account" for it."""
        spellings = login_spellings(name)
        if len(spellings) == 1:
            return name  # no other spelling: no need to read anything
        for spelling in spellings:
            if self._store.get_account(spelling) is not None:
                return spelling
        return name

    def require_account(self, name: str) -> Account:
        """Raises NoSuchAccount."""
        account = self._store.get_account(name)
        if account is None:
            raise NoSuchAccount(f"no account {name}")
        return account

    def require_password(self, account: Account) -> None:
        """Raises AdminError if ``account`` has no password (for an operation that
        needs the current one)."""
        if ARGON2ID not in account.schemes:
            raise AdminError(
                f"account {account.name} has no password",
                f"set one with 'smtpgate user passwd {account.name}' first",
            )

    def require_cram_md5_possible(self, account: Account, *, with_password: bool) -> None:
        """Raises AdminError if CRAM-MD5 cannot be enabled for ``account``: never for a
        directory account, and not with its current password if it has none."""
        if self._store.verifies_passwords:
            raise AdminError(
                f"{account.name}: CRAM-MD5 is not available for directory accounts",
                "it needs a plaintext-equivalent secret and the directory keeps the "
                "password; the client can use SCRAM-SHA-256 after one PLAIN or LOGIN login",
            )
        if with_password:
            self.require_password(account)

    def list_accounts(self) -> list[Account]:
        return self._store.list_accounts()

    def aliases(self, name: str) -> list[str]:
        return self._store.aliases(name)

    def login_identity(self, name: str) -> str:
        """The account's one name, found without reading its row (a row this
        version cannot read is still removed under it)."""
        return self._store.login_identity(name)

    def granted_domains(self, name: str) -> list[str]:
        return self._store.granted_domains(name)

    def app_passwords(self, name: str | None = None) -> list[AppPassword]:
        return self._store.app_passwords(name)

    def admin_log(
        self, *, since: datetime | None = None, target: str | None = None, limit: int = 1000
    ) -> list[AdminLogEntry]:
        """What administrators changed, oldest first (the newest ``limit`` entries)."""
        return self._store.admin_log(
            since=since, target=None if target is None else lookup_key(target), limit=limit
        )

    def guard_blocks(self) -> list[Block]:
        """The guard's blocks and lockouts in force now."""
        with self._guard() as guard:
            return [] if guard is None else guard.active_blocks(time.time())

    # --- web admin accounts (``smtpgate admin add``; docs/operations.md) ----------------

    def web_admins(self) -> list[WebAdmin]:
        return self._store.web_admins()

    def get_web_admin(self, name: str) -> WebAdmin | None:
        try:
            key = web_admin_name(name)
        except ValueError:
            return None
        return next((a for a in self._store.web_admins() if a.name == key), None)

    def add_web_admin(self, name: str, password: str) -> tuple[WebAdmin, str]:
        """Create a web admin with an Argon2id hash of ``password`` (the password policy
        applies) and a new TOTP key; returns it and the key (base32, show it once).

        Raises: ValueError (a bad name), PasswordPolicyError, AccountExists.
        """
        key = web_admin_name(name)
        check_new_password(password)
        _typable_in_a_browser(password)
        if self._policy is not None:
            check_password_policy(password, key, self._policy)
        encoded = self._hasher.hash(password)
        totp = base64.b32encode(secrets.token_bytes(20)).decode("ascii")
        with self._tx() as w:
            w.add_web_admin(key, encoded, totp)
        self._start_clean([f"{ADMIN_KEY_PREFIX}{key}"])  # the key its logins count under
        added = self.get_web_admin(key)
        assert added is not None
        return added, totp

    def remove_web_admin(self, name: str) -> bool:
        """False if there was no admin of that name. The addresses it logged in from
        are forgotten (``_web_admin_credentials_replaced``)."""
        key = web_admin_name(name)
        with self._guard() as guard, self._tx() as w:
            return self._web_admin_credentials_replaced(
                guard, w, key, w.remove_web_admin(key))

    def _web_admin_credentials_replaced(self, guard: GuardLocks | None, w: AccountWriter,
                                        key: str, changed: bool) -> bool:
        """After a new password or TOTP key for admin ``key``, or its removal: the
        guard forgets the addresses it logged in from (its known addresses, with the
        higher ``known_lockout_threshold`` and the trusted verification slot), as
        ``set_password`` does for a mail account. A reset after a leak must not leave
        them to whoever logged in with the old secrets, nor a name removed and
        added again to its new holder. Until 2026-12 they stayed. ``changed``
        (returned): whether there was such an admin."""
        if changed and guard is not None:
            self._forget_addresses(guard, w, f"{ADMIN_KEY_PREFIX}{key}")
        return changed

    def set_web_admin_password(self, name: str, password: str) -> bool:
        """A new password for the admin (the password policy applies; its TOTP key
        stays). Its open sessions end at their next request (``web/sessions.py``).
        False if there is no such admin. Raises: ValueError, PasswordPolicyError."""
        key = web_admin_name(name)
        check_new_password(password)
        _typable_in_a_browser(password)
        if self._policy is not None:
            check_password_policy(password, key, self._policy)
        encoded = self._hasher.hash(password)
        with self._guard() as guard, self._tx() as w:
            return self._web_admin_credentials_replaced(
                guard, w, key, w.update_web_admin(key, password_hash=encoded))

    def reset_web_admin_totp(self, name: str) -> str | None:
        """A new TOTP key for the admin (a lost or copied phone); returns it (base32,
        show it once), or None if there is no such admin. Its open sessions end."""
        totp = base64.b32encode(secrets.token_bytes(20)).decode("ascii")
        key = web_admin_name(name)
        with self._guard() as guard, self._tx() as w:
            changed = w.update_web_admin(key, totp_secret=totp)
            return totp if self._web_admin_credentials_replaced(guard, w, key, changed) else None

    def unlock_web_admin(self, name: str) -> int:
        """Lift the guard's lockouts of the admin's logins (kept under ``admin:NAME``,
        never a mail account's name). Raises: NotFoundError (nothing to lift)."""
        return self.lift_lockout(f"admin:{web_admin_name(name.removeprefix('admin:'))}")

    def use_web_admin_totp_step(self, name: str, step: int) -> bool:
        """Spend the admin's TOTP time step ``step`` (kept in the account store, so a
        code used once is refused after a restart too); False if it, or a later
        step, was spent already."""
        with self._tx() as w:
            return w.use_totp_step(web_admin_name(name), step)

    def verify_web_admin_password(self, admin: WebAdmin | None, password: str) -> bool:
        """Argon2id verification (slow, on purpose); an unknown admin costs the same."""
        if admin is None:
            self._hasher.verify(_DUMMY_HASH.get(self._hasher), password)
            return False
        return self._hasher.verify(admin.password_hash, password)

    # --- accounts and passwords ------------------------------------------------------

    def add_account(
        self,
        name: str,
        password: str | None,
        *,
        cram_md5_enabled: bool = False,
        allowed_mechanisms: Collection[str] | None = None,
    ) -> Account:
        """Create an account; with ``password`` None it has no credentials yet.

        Raises: InvalidAccountName, AdminError (a name SCRAM clients would send
        as another), PasswordPolicyError, ValueError (an unknown mechanism),
        AccountExists.
        """
        name = _sendable_name(name)
        allowed = _mechanisms(allowed_mechanisms)
        creds = {} if password is None else self._derive(password, name, cram_md5_enabled)
        with self._tx() as w:
            w.create_account(
                name, creds, cram_md5_enabled=cram_md5_enabled, allowed_mechanisms=allowed
            )
        self._new_accounts_start_clean([name])
        return self.require_account(name)

    def _start_clean(self, keys: Collection[str]) -> None:
        """Lift the lockouts and throttle the guard holds under the keys of new
        accounts (or web admins, ``admin:NAME``) and forget the failures counted
        against them, as ``remove_account`` does for a name that goes: guesses at a
        name that was no account yet were guesses at nothing, and must not refuse
        its owner's first login (from an address new to the account, as every
        address is). Done after the accounts are committed and best effort: a guard
        that cannot be opened or written does not undo them (a lockout ends by
        itself, and ``user unlock`` lifts it), it is a warning."""
        if self._open_guard is None or not keys:
            return
        try:
            with self._guard() as guard, self._tx() as w:
                if guard is None:
                    return
                for key in keys:
                    n = guard.unlock_account(key)
                    if n:
                        w.record("guard lockout lifted", key, {"blocks": n})
        except GuardStoreError as e:
            log.warning("the guard's lockouts of %s could not be lifted: %s; "
                        "'smtpgate user unlock' lifts them", ", ".join(keys), e)

    def _new_accounts_start_clean(self, names: Collection[str]) -> None:
        """``_start_clean`` for new accounts, under the name the guard counts them by.
        A directory (a store that ``verifies_passwords``) keeps its lockouts: its
        entry logged in before it had a local record."""
        if not self._store.verifies_passwords:
            self._start_clean([self._store.login_identity(n) for n in names])

    def check_new_account(self, name: str) -> str:
        """The canonical spelling of ``name`` if an account of that name could be
        made now; for a command to ask before it prompts for the password.

        The store is asked by making the account in a transaction that is then
        undone, so every backend refuses here exactly as ``add_account`` will (an
        existing account, another's alias, a directory that keeps its own).

        Raises: InvalidAccountName, AccountExists, AdminError.
        """
        key = _sendable_name(name)
        try:
            with self._tx() as w:
                w.create_account(key, {})
                raise _Undo
        except _Undo:
            pass
        return key

    def set_password(self, name: str, password: str) -> Account:
        """Replace every secret with ones derived from ``password``; ends a scheduled
        expiry. Raises: NoSuchAccount, PasswordPolicyError."""
        account = self.require_account(name)
        creds = self._derive(password, account.name, account.cram_md5_enabled)
        with self._guard() as guard, self._tx() as w:
            w.replace_credentials(account.name, creds)
            if guard is not None:
                # A reset after a break-in: the intruder's addresses are known ones
                # (the owner's next login makes theirs known again).
                self._forget_addresses(guard, w, self._store.login_identity(account.name))
        return self.require_account(account.name)

    @staticmethod
    def _forget_addresses(guard: GuardLocks, w: AccountWriter, key: str) -> None:
        n = guard.forget_addresses(key)
        if n:
            w.record("guard known addresses forgotten", key, {"addresses": n})

    def remove_account(self, name: str) -> None:
        """Delete the account, its secrets, aliases, grants and app passwords, and
        lift the guard's lockouts and throttle of its name, as ``unlock`` does: an
        account added again under that name is a new one, and must not inherit a
        lockout earned by guesses at the old one. A directory account (a store
        that ``verifies_passwords``: LDAP) keeps them: only its local record is
        forgotten, and its entry goes on logging in.

        Raises: NoSuchAccount.
        """
        with self._guard() as guard, self._tx() as w:
            key = self._store.login_identity(name)  # while the account is there
            w.remove_account(name)
            if guard is not None and not self._store.verifies_passwords:
                n = guard.unlock_account(key)
                if n:
                    w.record("guard lockout lifted", key, {"blocks": n})
                self._forget_addresses(guard, w, key)

    def lock(self, name: str, reason: str) -> None:
        """Refuse every login of the account, from its next attempt on.

        Raises: NoSuchAccount, AdminError (a reason of no or too many characters, or
        one that is not printable).
        """
        with self._tx() as w:
            w.lock(name, lock_reason(reason))

    def unlock(self, name: str) -> bool:
        """Lift the administrative lock and the guard's lockouts and throttle of the
        account; False if there was nothing to lift. Raises: NoSuchAccount."""
        with self._guard() as guard, self._tx() as w:
            changed = w.unlock(name)
            if guard is not None:
                # The guard keeps lockouts under the account's one name, whichever
                # of its login names is given here (docs/protection.md).
                key = self._store.login_identity(name)
                n = guard.unlock_account(key)
                if n:
                    w.record("guard lockout lifted", key, {"blocks": n})
                    changed = True
        return changed

    def lift_lockout(self, key: str) -> int:
        """Lift the guard's lockouts and throttle of the account kept under ``key``
        (its one name, as ``guard list`` and the Guard page show it) and forget its
        failures, and nothing else: an administrative lock (``lock``) stays, which
        ``unlock`` would lift too. How many blocks went.

        Why: the web admin's Guard page lifts the row it shows. Until 2026-12 its
        Lift was ``unlock``: an account locked by an administrator as compromised,
        and locked out by the guard beside it, was unlocked by a Lift of the
        lockout, its lock and reason gone, the page saying only "lifted".

        Raises: NotFoundError (nothing to lift).
        """
        with self._guard() as guard, self._tx() as w:
            n = 0 if guard is None else guard.unlock_account(key)
            if not n:
                raise NotFoundError(f"{key} is not locked out",
                                    "'smtpgate guard list' shows the lockouts in force")
            w.record("guard lockout lifted", key, {"blocks": n})
        return n

    def unblock(self, key: str) -> int:
        """Lift the guard's block of an address or subnet and forget its failures.

        Raises: NotFoundError (nothing blocks ``key``).
        """
        with self._guard() as guard, self._tx() as w:
            n = 0 if guard is None else guard.unblock(key)
            if not n:
                raise NotFoundError(
                    f"{key} is not blocked",
                    "'smtpgate guard list' shows the blocks in force; for an account, "
                    "'smtpgate user unlock' lifts its lockout",
                )
            w.record("guard block lifted", key, {"blocks": n})
        return n

    # --- mechanism policy ------------------------------------------------------------

    def set_allowed_mechanisms(self, name: str, mechanisms: Collection[str] | None) -> None:
        """Exactly these mechanisms (None: every one a listener offers).

        Raises: NoSuchAccount, ValueError (an unknown mechanism).
        """
        allowed = _mechanisms(mechanisms)
        with self._tx() as w:
            w.set_allowed_mechanisms(name, allowed)

    def enable_cram_md5(self, name: str, current_password: str | None = None) -> Account:
        """Opt the account in to CRAM-MD5. With its current password (checked), the
        secret is stored at once; without, at its next password change or PLAIN/LOGIN
        login.

        Raises: NoSuchAccount, AdminError (no password, a wrong one, or the password
        changed meanwhile).
        """
        account = self.require_account(name)
        self.require_cram_md5_possible(account, with_password=current_password is not None)
        secret = None
        if current_password is not None:
            if not self._store.verify_password(account.name, current_password):
                # Enabling needs the password, so "passwd after enabling" could not be
                # followed by an admin who does not know it: a new password comes first.
                raise AdminError(
                    "the password does not match the account's password",
                    "CRAM-MD5's secret is derived from the current password; if it is not "
                    f"known, set a new one first ('smtpgate user passwd {account.name}') "
                    "and enable CRAM-MD5 with that",
                )
            secret = derive(current_password, {CRAM_MD5}, self._cfg, self._hasher)[CRAM_MD5]
        with self._tx() as w:
            now = w.get_account(account.name)
            if now is None:
                raise NoSuchAccount(f"no account {name}")
            if secret is not None and now.generation != account.generation:
                # The secret belongs to the password read above, no longer the current one.
                raise AdminError(
                    f"the password of {account.name} changed while enabling CRAM-MD5",
                    "run the command again",
                )
            w.enable_cram_md5(account.name, secret)
        return self.require_account(account.name)

    def disable_cram_md5(self, name: str) -> None:
        """Opt out of CRAM-MD5; its secret is deleted at once."""
        with self._tx() as w:
            w.disable_cram_md5(name)

    # --- conditional access, rates, password age -------------------------------------

    def change_access(self, name: str, changes: Sequence[AccessChange]) -> Account:
        """Apply ``changes`` together. Raises: NoSuchAccount, ValueError (a network)."""
        normalised: list[AccessChange] = [
            RestrictNetworks(tuple(_networks(c.networks))) if isinstance(c, RestrictNetworks)
            else c
            for c in changes
        ]
        with self._tx() as w:
            if w.get_account(name) is None:
                raise NoSuchAccount(f"no account {name}")
            for c in normalised:
                match c:
                    case RestrictNetworks(networks):
                        w.restrict_networks(name, networks)
                    case AnyNetwork():
                        w.allow_any_network(name)
                    case RestrictListeners(listeners):
                        w.restrict_listeners(name, listeners)
                    case AnyListener():
                        w.allow_any_listener(name)
                    case RequireOAuth(required):
                        w.set_require_oauth(name, required)
        return self.require_account(name)

    def change_limits(self, name: str, changes: Sequence[RateChange]) -> Account:
        """Apply ``changes`` together. Raises: NoSuchAccount, ValueError (negative)."""
        for c in changes:
            _check_rate(c.per_hour)
        with self._tx() as w:
            if w.get_account(name) is None:
                raise NoSuchAccount(f"no account {name}")
            for c in changes:
                match c:
                    case MessageRate(n):
                        w.set_message_rate(name, n)
                    case RecipientRate(n):
                        w.set_recipient_rate(name, n)
        return self.require_account(name)

    def set_password_max_age(self, name: str, days: float | None) -> Account:
        """Days the account's password lasts; None: ``[passwords].max_age_days``; 0: forever."""
        if days is not None and days < 0:
            raise ValueError("a password age is 0 (forever) or more days")
        with self._tx() as w:
            w.set_password_max_age(name, days)
        return self.require_account(name)

    def schedule_password_expiry(self, name: str, when: datetime | None) -> None:
        """The current password stops working at ``when`` (None: cancel)."""
        with self._tx() as w:
            w.schedule_password_expiry(name, when)

    # --- sender ownership ------------------------------------------------------------

    def add_alias(self, name: str, address: str) -> bool:
        """Let the account send as ``address``; False if it already may.

        Raises: NoSuchAccount, InvalidAccountName, AliasTaken.
        """
        alias = sender_alias(address)
        with self._tx() as w:
            return w.add_alias(name, alias)

    def remove_alias(self, name: str, address: str) -> bool:
        """False if ``address`` was not an alias of the account. Raises: NoSuchAccount."""
        with self._tx() as w:
            return w.remove_alias(name, lookup_key(address))

    def grant_domain(self, name: str, domain: str) -> str:
        """Let the account send as any address in ``domain``; returns the domain as
        stored. Raises: NoSuchAccount, InvalidAccountName."""
        d = _domain(domain)
        with self._tx() as w:
            w.grant_domain(name, d)
        return d

    def revoke_domain(self, name: str, domain: str) -> bool:
        """False if ``domain`` was not granted. Raises: NoSuchAccount.

        ``domain`` in either form of an internationalised name (the A-label
        ``xn--bcher-kva.example`` of a grant stored as ``bücher.example``), as
        grants store it; until audit h21 the A-label, which the MAIL FROM of a
        client without SMTPUTF8 shows, was "not granted" and the grant stayed.
        A spelling no grant could be made in now is tried as given (an older row)."""
        bare = domain.strip().lower().lstrip("@")
        try:
            stored = _domain(domain)
        except InvalidAccountName:
            stored = bare
        with self._tx() as w:
            return w.revoke_domain(name, stored) or (
                stored != bare and w.revoke_domain(name, bare))

    # --- app passwords ---------------------------------------------------------------

    def add_app_password(
        self,
        name: str,
        app_name: str,
        *,
        expires: datetime | None = None,
        networks: Collection[str] | None = None,
        mechanisms: Collection[str] | None = None,
        max_messages_per_hour: int | None = None,
        max_recipients_per_hour: int | None = None,
    ) -> tuple[AppPassword, str]:
        """Create an app password; returns its record and its secret (show it once).

        Raises: NoSuchAccount, ValueError (a bad name, network or mechanism),
        AccountExists (the account has an app password of that name).
        """
        app_name = app_name.strip()
        if not app_name or len(app_name) > 64 or any(not ch.isprintable() for ch in app_name):
            raise ValueError("an app password name is 1-64 printable characters")
        _check_rate(max_messages_per_hour)
        _check_rate(max_recipients_per_hour)
        nets = None if networks is None else _networks(networks)
        mechs = None
        if mechanisms is not None:
            mechs = sorted({m.upper() for m in mechanisms})
            for m in mechs:
                if m not in APP_PASSWORD_MECHANISMS:
                    raise ValueError(
                        f"app passwords work with {' and '.join(APP_PASSWORD_MECHANISMS)} "
                        f"only, not {m}"
                    )
        secret = generate_app_password()
        with self._tx() as w:
            record = w.add_app_password(
                name, app_name, secret, expires=expires, networks=nets, mechanisms=mechs,
                max_messages_per_hour=max_messages_per_hour,
                max_recipients_per_hour=max_recipients_per_hour,
            )
        return record, secret

    def revoke_app_password(self, name: str, app_name: str) -> bool:
        """Delete it (logins with it fail from now on); False if there is none of that
        name. Raises: NoSuchAccount."""
        with self._tx() as w:
            return w.revoke_app_password(name, app_name)

    def expire_app_password(
        self, name: str, app_name: str, when: datetime, *, rename_to: str | None = None
    ) -> bool:
        """Make it stop working at ``when`` (sooner only), optionally renamed; False if
        there is none of that name."""
        with self._tx() as w:
            return w.expire_app_password(name, app_name, when, rename_to=rename_to)

    # --- client certificates (SASL EXTERNAL) -------------------------------------------

    def certificates(self, name: str) -> list[CertificateRecord]:
        """The account's client certificates, removed ones included."""
        return self._store.certificates(name)

    def add_certificate(self, name: str, data: bytes) -> tuple[CertificateRecord, bool]:
        """Register the certificate in ``data`` (PEM or DER) to the account; the
        record, and False if it was registered already.

        Raises: NoSuchAccount, CertificateFileError (no certificate in ``data``),
        CertificateTaken (registered to another account).
        """
        facts = read_certificate(data)
        with self._tx() as w:
            added = w.add_certificate(name, facts.fingerprint, facts.subject, facts.not_after)
        for record in self._store.certificates(name):
            if record.fingerprint == facts.fingerprint:
                return record, added
        raise NoSuchAccount(f"no account {name}")  # pragma: no cover - removed meanwhile

    def remove_certificate(self, name: str, fingerprint: str) -> bool:
        """Refuse the certificate from now on; False if the account had no such
        registered certificate. Raises: NoSuchAccount, CertificateFileError (not a
        SHA-256 fingerprint)."""
        fp = normalise_fingerprint(fingerprint)
        with self._tx() as w:
            return w.remove_certificate(name, fp)

    # --- rotation ----------------------------------------------------------------------

    def rotate_app_password(
        self, name: str, app_name: str, *, new_name: str | None = None, grace: timedelta
    ) -> Rotation:
        """Issue a new app password with the old one's scope and rates (named
        ``new_name``, default the old name), and rename the old one and make it stop
        working after ``grace``. All or nothing. The old one's new name is
        ``NAME (rotated DATE)``, ``NAME (rotated DATE #2)`` if that is taken.

        The new one keeps the old one's expiry: a rotation replaces the secret, not
        its lifetime (an app password given ``--expires 30d`` for a contractor's
        laptop stays a 30-day one). One already expired is refused, since its
        successor would be born dead; ``app-password add`` makes a fresh one.

        Raises: NoSuchAccount, NotFoundError (no app password ``app_name``),
        AdminError (it has expired), AccountExists (``new_name`` is taken).
        """
        now = self._clock()
        deadline = now + grace
        secret = generate_app_password()
        with self._tx() as w:
            if w.get_account(name) is None:
                raise NoSuchAccount(f"no account {name}")
            old = w.app_password(name, app_name)
            if old is None:
                raise NotFoundError(f"{lookup_key(name)} has no app password named {app_name!r}",
                                    "'smtpgate app-password list' shows them")
            if old.expires is not None and old.expires <= now:
                raise AdminError(
                    f"app password {app_name!r} of {lookup_key(name)} expired at "
                    f"{old.expires.strftime('%Y-%m-%d %H:%M')} UTC; there is nothing to rotate",
                    "'smtpgate app-password add' issues a new one; nothing was changed")
            retired = _free_app_name(
                w, name, f"{app_name} (rotated {now.strftime('%Y-%m-%d %H:%M:%S')}", ")", " #")
            # The store keeps an earlier expiry of the old one (a grace never
            # lengthens its life); say the time it will really stop.
            w.expire_app_password(name, app_name, deadline, rename_to=retired)
            record = w.add_app_password(
                name, new_name or app_name, secret,
                expires=old.expires,
                networks=old.networks, mechanisms=old.mechanisms,
                max_messages_per_hour=old.max_messages_per_hour,
                max_recipients_per_hour=old.max_recipients_per_hour,
            )
        return Rotation(record, secret, f"app password {app_name!r}", _earlier(old.expires, deadline))

    def rotate_password(
        self, name: str, *, new_name: str | None = None, grace: timedelta
    ) -> Rotation:
        """Issue an app password (named ``new_name``, default ``rotated-DATE``, with
        ``-2``, ``-3`` ... if a rotation in the same second took it) and make the
        account password stop working after ``grace``. All or nothing.

        Raises: NoSuchAccount, AccountExists (``new_name`` is taken).
        """
        now = self._clock()
        secret = generate_app_password()
        with self._tx() as w:
            account = w.get_account(name)
            # A rotation already under way keeps its deadline if it is the earlier:
            # a second rotate (the default grace after --grace 0) used to move it
            # later, and an ended password logged in again.
            deadline = _earlier(None if account is None else account.password_expires,
                                now + grace)
            if new_name is None:
                new_name = _free_app_name(w, name, f"rotated-{now.strftime('%Y%m%d-%H%M%S')}")
            record = w.add_app_password(name, new_name, secret)
            w.schedule_password_expiry(name, deadline)
        return Rotation(record, secret, "the account password", deadline)

    # --- migration (``smtpgate user import``) ------------------------------------------

    def import_accounts(
        self,
        entries: Sequence[ImportEntry],
        *,
        source: str,
        update: bool = False,
        cram_md5_enabled: bool = False,
        dry_run: bool = False,
    ) -> ImportResult:
        """Create the accounts of ``entries`` (read by ``auth/imports.py``), all in
        one transaction: every good entry, or, if anything fails, none.

        A plaintext password is hashed here (Argon2id, SCRAM keys) and never stored;
        the password policy does not apply (these are the users' current passwords).
        An existing account is skipped, or with ``update`` gets the imported secrets
        in place of its own. ``dry_run``: the same transaction with the entries'
        secrets left unhashed, then undone, so the store refuses (another's alias, a
        case twin) exactly as the import will, and the dry run reports what it will do.
        """
        if not dry_run:
            entries = [replace(e, credentials=self._import_secrets(e, cram_md5_enabled))
                       for e in entries]
        created: list[ImportEntry] = []
        updated: list[ImportEntry] = []
        skipped: list[tuple[ImportEntry, str]] = []

        def sort(e: ImportEntry, exists: bool) -> bool:
            """Into its list; True if it is to be written."""
            if exists and not update:
                skipped.append((e, "account exists (use --update to replace its password)"))
                return False
            (updated if exists else created).append(e)
            return True

        try:
            with self._tx() as w:
                for e in entries:
                    exists = w.get_account(e.name) is not None
                    if not sort(e, exists):
                        continue
                    creds = e.credentials or {}
                    if exists:
                        w.replace_credentials(e.name, creds)
                    else:
                        # as _sendable_name refuses it
                        problem = mailbox_problem(e.name) or invisible_problem(e.name)
                        if problem:
                            created.remove(e)
                            skipped.append((e, problem))
                            continue
                        sent = scram_spelling(e.name)
                        if sent != e.name:  # as _sendable_name refuses it
                            created.remove(e)
                            skipped.append((e, f"SCRAM clients send this name as {sent}"))
                            continue
                        try:
                            w.create_account(e.name, creds, cram_md5_enabled=cram_md5_enabled)
                        except AccountExists as refused:  # another's alias, or case twin
                            created.remove(e)
                            skipped.append((e, str(refused)))
                            continue
                    w.record("account imported", e.name, {
                        "source": source, "scheme": e.scheme, "line": e.line,
                    })
                if dry_run:
                    raise _Undo
        except _Undo:
            pass
        else:
            self._new_accounts_start_clean([e.name for e in created])
        return ImportResult(tuple(created), tuple(updated), tuple(skipped))

    def _import_secrets(self, e: ImportEntry, cram_md5_enabled: bool) -> dict[str, str]:
        """The credential rows of one entry (slow for a plaintext one: Argon2id)."""
        if e.password is None:
            return dict(e.credentials or {})
        # strict=False: a password SASLprep refuses still works with PLAIN/LOGIN.
        return derive(e.password, wanted_schemes(cram_md5_enabled), self._cfg, self._hasher,
                      strict=False)


class _Undo(Exception):
    """Raised inside a transaction to roll it back (``check_new_account``, a dry-run
    import)."""


@dataclass(frozen=True, slots=True)
class ImportResult:
    """What ``import_accounts`` did (or, in a dry run, would do)."""

    created: tuple[ImportEntry, ...]
    updated: tuple[ImportEntry, ...]
    #: Entries left alone, and why.
    skipped: tuple[tuple[ImportEntry, str], ...]


def open_admin(cfg: Config, actor: AuditActor) -> AccountAdmin:
    """The admin service on the account backend of ``cfg``, with ``[passwords]``
    as its policy and the guard database of ``[guard]``, for a command run once
    (``one_shot``: each call's error is the command's to report).

    Raises:
        StoreUnavailable: the account backend cannot be opened.
    """
    return admin_on(open_account_store(cfg, one_shot=True), cfg, actor)


def admin_on(store: AccountAdminStore, cfg: Config, actor: AuditActor) -> AccountAdmin:
    """The admin service of ``open_admin`` on a store already open (the web admin keeps
    one open and makes a service per request, with the logged-in admin as ``actor``)."""
    return AccountAdmin(
        store,
        cfg.accounts,
        actor=actor,
        password_policy=cfg.passwords,
        open_guard=lambda: open_guard_state(cfg),
    )
