"""The LDAP account backend: the directory's accounts, with smtpgate's local overlay.

Theory of operation
-------------------
The directory (``auth/ldap_directory.py``) is the authority on who exists, their
password (checked by a bind), their addresses and whether they are enabled; it
is never written. Everything smtpgate adds to an account (its lock by ``user
lock``, app passwords, aliases and domains granted locally, rates, mechanism
policy, access rules, last login, and the SCRAM keys derived after a good
PLAIN/LOGIN bind) is kept in the overlay, an ordinary ``SqliteAccountStore``
(``[accounts].database``) keyed by the directory identity. Its record of an
account is made on first need (a login, or the first ``user ...`` change). A
record whose directory entry is gone is ignored: the account no longer exists.

- An account is locked if the overlay locks it, or the entry is outside
  ``enabled_filter`` or ``group_filter``.
- ``generation`` mixes the overlay's generation with the entry's
  ``password_changed_attribute`` and its enabled/member state, so a password
  changed in the directory (or an entry disabled there) invalidates the auth
  service's verified-login cache at the next read.
- An entry that shows no ``password_changed_attribute`` gets a new generation at
  each read: its logins are never cached and it gets no SCRAM keys, since
  nothing would tell that its password changed.
- SCRAM keys are stored with the value of ``password_changed_attribute`` they
  were derived under; under any other value they are stale and hidden, so SCRAM
  with them fails like a wrong password, and the next PLAIN/LOGIN bind (which the
  auth service follows with ``put_credentials``) stores fresh ones.
- No password, Argon2id hash or CRAM-MD5 secret is ever stored: ``user add``,
  ``user passwd`` and CRAM-MD5 are refused ("passwords live in the directory").
- ``user rotate`` sets the overlay's password deadline and notes the value of
  ``password_changed_attribute`` it is for (``ROTATED_STAMP``): the directory
  password stops working through smtpgate at the deadline, until it changes in
  the directory (`password_changed_since`).
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime

from smtpgate.auth.admin_store import (
    AccountWriter,
    AdminLogEntry,
    AuditActor,
    NoSuchAccount,
    WebAdmin,
)
from smtpgate.auth.credentials import SCRAM_SCHEMES
from smtpgate.auth.directory import (
    Account,
    AppPassword,
    CertificateRecord,
    StoreError,
    StoreUnavailable,
)
from smtpgate.auth.ldap_directory import (
    BIND_PASSWORD_KEY,
    CA_FILE_KEY,
    DirectoryEntry,
    DirectoryMisconfigured,
    LdapDirectory,
    read_password_file,
)
from smtpgate.auth.ldap_ppolicy import generalized_time
from smtpgate.auth.names import lookup_key, name_key
from smtpgate.auth.store import SqliteAccountStore
from smtpgate.config import Config

#: Who makes the overlay record of an account at its first login.
LOGIN_ACTOR = AuditActor("smtpgate", "directory login")
_SCRAM = frozenset(SCRAM_SCHEMES.values())
#: Overlay record of the directory password a `user rotate` deadline applies to
#: (the ``password_changed_attribute`` value then): a new password ends it.
ROTATED_STAMP = "ldap-rotated-stamp"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class DirectoryReadOnly(StoreError):
    """An operation that would change what the directory keeps (its passwords)."""

    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.hint = hint


def _passwords_elsewhere(name: str) -> DirectoryReadOnly:
    return DirectoryReadOnly(
        f"{name}: passwords live in the directory; smtpgate never stores them",
        "change the password in the LDAP directory (e.g. ldappasswd); app passwords "
        "('smtpgate user app-password add') work for directory accounts",
    )


def password_changed_since(noted: str | None, stamp: str) -> bool:
    """Whether the directory password changed since ``user rotate`` noted the stamp
    ``noted``, the entry's stamp being ``stamp`` now. Another value says so, but
    for a deadline noted under entryCSN (the default until 2026-12) when the stamp
    is now ppolicy's pwdChangedTime: the attribute changed, not the password, and
    the deadline would be met by the upgrade alone. There the password changed iff
    pwdChangedTime is later than the time the CSN holds (the entry's last write
    then, at or after its last password change); pwdChangedTime has whole
    seconds, so a change in that CSN's own second counts as none, the strict side."""
    if noted == stamp:
        return False
    if noted is not None and "#" in noted and "#" not in stamp:
        then = generalized_time(noted.partition("#")[0])  # CSN: time#count#sid#mod
        changed = generalized_time(stamp)
        if then is not None and changed is not None:
            return changed > then
    return True


def _wrap(stamp: str, data: str) -> str:
    return json.dumps({"directory_stamp": stamp, "keys": data}, sort_keys=True)


def _unwrap(stamp: str, stored: str | None) -> str | None:
    """The SCRAM data, if it was derived under ``stamp``."""
    if stored is None:
        return None
    try:
        doc = json.loads(stored)
    except ValueError:
        return None
    if not isinstance(doc, dict) or doc.get("directory_stamp") != stamp:
        return None
    keys = doc.get("keys")
    return keys if isinstance(keys, str) else None


class LdapAccountStore:
    """``AccountStore`` (both sides) over an LDAP directory and the local overlay.

    Takes over both (``close()`` closes them). Thread-safe as they are.
    """

    verifies_passwords = True

    def __init__(self, directory: LdapDirectory, overlay: SqliteAccountStore) -> None:
        self._dir = directory
        self._local = overlay
        self._closed = False

    # --- plumbing --------------------------------------------------------------------

    def _entry(self, name: str) -> DirectoryEntry | None:
        if self._closed:
            raise StoreUnavailable("LDAP account store closed")
        return self._dir.find(lookup_key(name))

    def fail_fast(self) -> None:
        """``StoreUnavailable`` at once while the directory is not answering
        (``LdapDirectory.fail_fast``); the auth service asks it on its event loop."""
        self._dir.fail_fast()

    def _scram(self, entry: DirectoryEntry, scheme: str) -> str | None:
        if not entry.stamp:
            return None  # keys no password change would make stale (see `_merge`)
        return _unwrap(entry.stamp, self._local.get_credential(entry.identity, scheme))

    def _merge(self, entry: DirectoryEntry, local: Account | None) -> Account:
        # No overlay record yet: what a new one holds (generation 0, the column's
        # default), so the generation does not move when the first login makes it.
        base = local or Account(
            name=entry.identity, created=_EPOCH, updated=_EPOCH, generation=0, locked=False,
            lock_reason=None, locked_at=None, password_changed=None, last_login=None,
            last_mechanism=None, allowed_mechanisms=None, cram_md5_enabled=False,
            schemes=frozenset(),
        )
        locked, reason = base.locked, base.lock_reason
        if not entry.enabled:
            locked, reason = True, reason or entry.lock_reason or (
                "disabled in the directory (enabled_filter)")
        if not entry.member:
            locked, reason = True, reason or "not a member (group_filter)"
        mix = f"{base.generation}\0{entry.stamp}\0{entry.enabled}\0{entry.member}\0{entry.dn}"
        if not entry.stamp:
            # Nothing on the entry changes with its password (the attribute hidden
            # by an ACL, or absent): no login may serve the next one, or a password
            # changed in the directory would still work (cached, or by SCRAM keys
            # derived from it). Each read is a generation of its own.
            mix += f"\0{secrets.token_hex(8)}"
        generation = int.from_bytes(hashlib.blake2b(mix.encode(), digest_size=7).digest())
        schemes = frozenset(
            s for s in base.schemes & _SCRAM if self._scram(entry, s) is not None
        )
        expires = base.password_expires
        if expires is not None and password_changed_since(
            self._local.get_credential(entry.identity, ROTATED_STAMP), entry.stamp
        ):
            expires = None  # the password changed in the directory since `user rotate`
        return replace(
            base, name=entry.identity, generation=generation, locked=locked,
            lock_reason=reason, cram_md5_enabled=False, schemes=schemes,
            password_expires=expires,
            # The name is a login (AD's UPN); a sender only if the entry lists it.
            owns_name=entry.identity in entry.addresses,
        )

    def _ensure_local(self, entry: DirectoryEntry, actor: AuditActor) -> Account:
        """The overlay record of ``entry``, made if missing."""
        local = self._local.get_account(entry.identity)
        if local is None:
            with self._local.transaction(actor) as w:
                if w.get_account(entry.identity) is None:
                    w.create_account(entry.identity, {})
            local = self._local.get_account(entry.identity)
            if local is None:
                raise StoreUnavailable(f"overlay record of {entry.identity} not made")
        return local

    # --- read side (AccountDirectory) --------------------------------------------------

    def get_account(self, name: str) -> Account | None:
        entry = self._entry(name)
        if entry is None:
            return None
        return self._merge(entry, self._local.get_account(entry.identity))

    def get_credential(self, name: str, scheme: str) -> str | None:
        entry = self._entry(name)
        if entry is None or scheme not in _SCRAM:
            return None  # no hash, no CRAM-MD5 secret: the directory keeps the password
        return self._scram(entry, scheme)

    def verify_password(self, name: str, password: str) -> bool:
        # One look-up: the search and the user's bind share operation_timeout.
        with self._dir.deadline():
            entry = self._entry(name)
            return entry is not None and self._dir.bind(entry.dn, password)

    def login_identity(self, name: str) -> str:
        # A search as the service account, no bind: the directory's lockout is not
        # touched. Every login name of an entry gives the entry's one name.
        entry = self._entry(name)
        return name_key(name) if entry is None else entry.canonical

    def aliases(self, name: str) -> list[str]:
        entry = self._entry(name)
        if entry is None:
            return []
        own = set(entry.addresses) | set(self._local.aliases(entry.identity))
        own.discard(entry.identity)
        return sorted(own)

    def granted_domains(self, name: str) -> list[str]:
        entry = self._entry(name)
        return [] if entry is None else self._local.granted_domains(entry.identity)

    def alias_owner(self, address: str) -> str | None:
        # An entry's own addresses (mail, mailLocalAddress, proxyAddresses) first;
        # the aliases added with the CLI live in the overlay.
        if self._closed:
            raise StoreUnavailable("LDAP account store closed")
        return self._dir.address_holder(address) or self._local.alias_owner(address)

    def match_app_password(self, name: str, password: str) -> AppPassword | None:
        entry = self._entry(name)
        return None if entry is None else self._local.match_app_password(entry.identity, password)

    def record_login(self, name: str, mechanism: str, when: datetime) -> None:
        key = lookup_key(name)
        if self._local.get_account(key) is None:
            entry = self._entry(key)
            if entry is None:
                return
            key = self._ensure_local(entry, LOGIN_ACTOR).name
        self._local.record_login(key, mechanism, when)

    def record_app_password_use(self, app_id: int, when: datetime, address: str) -> None:
        self._local.record_app_password_use(app_id, when, address)

    def certificate(self, fingerprint: str) -> CertificateRecord | None:
        """Client certificates live in the overlay, under the entry's identity."""
        return self._local.certificate(fingerprint)

    def certificates(self, name: str) -> list[CertificateRecord]:
        entry = self._entry(name)
        return [] if entry is None else self._local.certificates(entry.identity)

    def put_credentials(self, name: str, creds: Mapping[str, str], *, generation: int) -> bool:
        entry = self._entry(name)
        if entry is None:
            return False
        local = self._ensure_local(entry, LOGIN_ACTOR)
        if self._merge(entry, local).generation != generation:
            return False  # the password (or the overlay) changed meanwhile
        wanted = {s: _wrap(entry.stamp, d) for s, d in creds.items() if s in _SCRAM}
        return self._local.put_credentials(entry.identity, wanted, generation=local.generation)

    def close(self) -> None:
        self._closed = True
        try:
            self._dir.close()
        finally:
            self._local.close()

    # --- admin side (AccountAdminStore) -----------------------------------------------

    @contextmanager
    def transaction(self, actor: AuditActor) -> Iterator[AccountWriter]:
        with self._local.transaction(actor) as w:
            writer = _OverlayWriter(w, self._entry)
            yield writer
        for entry in writer.rotated:  # committed: note which password the deadline is for
            local = self._local.get_account(entry.identity)
            if local is not None:
                self._local.put_credentials(
                    entry.identity, {ROTATED_STAMP: entry.stamp}, generation=local.generation
                )

    def list_accounts(self) -> list[Account]:
        """The directory accounts smtpgate has a record of (logged in, or changed by
        ``user ...``), as the directory has them now. A record under another login
        name of an entry than its account name (made by a login with its second
        ``mail`` value before every name of an entry was one account) is no
        account: listed, it would show the entry twice."""
        out = []
        for local in self._local.list_accounts():
            entry = self._entry(local.name)
            if entry is not None and entry.identity == local.name:
                out.append(self._merge(entry, local))
        return out

    def app_passwords(self, name: str | None = None) -> list[AppPassword]:
        return self._local.app_passwords(name)

    def admin_log(
        self, *, since: datetime | None = None, target: str | None = None, limit: int = 1000
    ) -> list[AdminLogEntry]:
        return self._local.admin_log(since=since, target=target, limit=limit)

    def web_admins(self) -> list[WebAdmin]:
        """Web admin accounts live in the overlay, never in the directory."""
        return self._local.web_admins()


class _OverlayWriter:
    """The overlay's writer, for directory accounts: a change to an account the
    directory has makes its overlay record first; password changes are refused."""

    def __init__(self, w: AccountWriter, find: Callable[[str], DirectoryEntry | None]) -> None:
        self._w = w
        self._find = find
        #: Entries given a password deadline (``user rotate``) in this transaction.
        self.rotated: list[DirectoryEntry] = []

    def _entry(self, name: str) -> DirectoryEntry:
        entry = self._find(name)
        if entry is None:
            raise NoSuchAccount(f"no account {name} in the directory")
        if self._w.get_account(entry.identity) is None:
            self._w.create_account(entry.identity, {})
        return entry

    def _key(self, name: str) -> str:
        return self._entry(name).identity

    def get_account(self, name: str) -> Account | None:
        """The overlay record of a directory account (made now if missing: the
        admin service reads it to check the account exists before a change)."""
        if self._find(name) is None:
            return None
        return self._w.get_account(self._key(name))

    def app_password(self, name: str, app_name: str) -> AppPassword | None:
        return self._w.app_password(name, app_name)

    def create_account(
        self,
        name: str,
        creds: Mapping[str, str],
        *,
        cram_md5_enabled: bool = False,
        allowed_mechanisms: Collection[str] | None = None,
    ) -> None:
        raise DirectoryReadOnly(
            f"{name}: accounts and passwords live in the directory; smtpgate never stores them",
            "add the user to the LDAP directory; its settings here are made on first use",
        )

    def remove_account(self, name: str) -> None:
        """Forget what smtpgate keeps about the account (the entry stays)."""
        self._w.remove_account(lookup_key(name))

    def replace_credentials(self, name: str, creds: Mapping[str, str]) -> None:
        raise _passwords_elsewhere(name)

    def lock(self, name: str, reason: str) -> None:
        self._w.lock(self._key(name), reason)

    def unlock(self, name: str) -> bool:
        return self._w.unlock(self._key(name))

    def set_allowed_mechanisms(self, name: str, mechanisms: Collection[str] | None) -> None:
        self._w.set_allowed_mechanisms(self._key(name), mechanisms)

    def enable_cram_md5(self, name: str, secret: str | None = None) -> None:
        raise DirectoryReadOnly(
            f"{name}: CRAM-MD5 is never available for directory accounts",
            "it needs a plaintext-equivalent secret, which a directory account never has; "
            "use SCRAM-SHA-256 (its keys are made at the next PLAIN/LOGIN login)",
        )

    def disable_cram_md5(self, name: str) -> None:
        self._w.disable_cram_md5(self._key(name))

    def restrict_networks(self, name: str, networks: Sequence[str]) -> None:
        self._w.restrict_networks(self._key(name), networks)

    def allow_any_network(self, name: str) -> None:
        self._w.allow_any_network(self._key(name))

    def restrict_listeners(self, name: str, listeners: Collection[str]) -> None:
        self._w.restrict_listeners(self._key(name), listeners)

    def allow_any_listener(self, name: str) -> None:
        self._w.allow_any_listener(self._key(name))

    def set_require_oauth(self, name: str, required: bool) -> None:
        self._w.set_require_oauth(self._key(name), required)

    def set_message_rate(self, name: str, per_hour: int | None) -> None:
        self._w.set_message_rate(self._key(name), per_hour)

    def set_recipient_rate(self, name: str, per_hour: int | None) -> None:
        self._w.set_recipient_rate(self._key(name), per_hour)

    def set_password_max_age(self, name: str, days: float | None) -> None:
        raise _passwords_elsewhere(name)

    def schedule_password_expiry(self, name: str, when: datetime | None) -> None:
        """The directory password stops working *through smtpgate* at ``when`` (app
        passwords go on), until it is changed in the directory."""
        entry = self._entry(name)
        self._w.schedule_password_expiry(entry.identity, when)
        if when is not None:
            self.rotated.append(entry)

    def add_alias(self, name: str, alias: str) -> bool:
        return self._w.add_alias(self._key(name), alias)

    def remove_alias(self, name: str, alias: str) -> bool:
        return self._w.remove_alias(self._key(name), alias)

    def grant_domain(self, name: str, domain: str) -> bool:
        return self._w.grant_domain(self._key(name), domain)

    def revoke_domain(self, name: str, domain: str) -> bool:
        return self._w.revoke_domain(self._key(name), domain)

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
        return self._w.add_app_password(
            self._key(name), app_name, secret, expires=expires, networks=networks,
            mechanisms=mechanisms, max_messages_per_hour=max_messages_per_hour,
            max_recipients_per_hour=max_recipients_per_hour,
        )

    def revoke_app_password(self, name: str, app_name: str) -> bool:
        return self._w.revoke_app_password(self._key(name), app_name)

    def expire_app_password(
        self, name: str, app_name: str, when: datetime, *, rename_to: str | None = None
    ) -> bool:
        return self._w.expire_app_password(self._key(name), app_name, when, rename_to=rename_to)

    def add_certificate(
        self, name: str, fingerprint: str, subject: str, not_after: datetime | None
    ) -> bool:
        return self._w.add_certificate(self._key(name), fingerprint, subject, not_after)

    def remove_certificate(self, name: str, fingerprint: str) -> bool:
        return self._w.remove_certificate(self._key(name), fingerprint)

    def add_web_admin(self, name: str, password_hash: str, totp_secret: str) -> None:
        self._w.add_web_admin(name, password_hash, totp_secret)

    def remove_web_admin(self, name: str) -> bool:
        return self._w.remove_web_admin(name)

    def update_web_admin(self, name: str, *, password_hash: str | None = None,
                         totp_secret: str | None = None) -> bool:
        return self._w.update_web_admin(name, password_hash=password_hash,
                                        totp_secret=totp_secret)

    def use_totp_step(self, name: str, step: int) -> bool:
        return self._w.use_totp_step(name, step)

    def record(self, action: str, target: str, details: Mapping[str, object]) -> None:
        self._w.record(action, target, details)


def open_ldap_store(cfg: Config, *, quiet: bool = False,
                    one_shot: bool = False) -> LdapAccountStore:
    """The LDAP backend of ``cfg``: the directory of ``[accounts.ldap]`` and the overlay
    in ``[accounts].database``. Connects once now, so that wrong service-account
    credentials stop start-up with a message naming the key; a directory that
    cannot be reached is only logged (logins get 454 until it answers).

    ``quiet`` (the commands that report the failure themselves, ``status``): the
    directory's outages are not logged, and one at opening is raised.
    ``one_shot`` (the admin commands): not logged either, no fail-fast window
    (``open_account_store`` says why), and one at opening is not raised.

    Raises:
        DirectoryMisconfigured: the directory refused the service account
            (``ServiceBindRefused``), or has no ``base_dn`` (``BaseDnNotFound``).
        StoreUnavailable: the password file or the overlay cannot be read.
    """
    lc = cfg.accounts.ldap
    if one_shot:
        lc = lc.model_copy(update={"retry_max": 0})
    password = ""
    path = None if lc.bind_password_file is None else cfg.path(lc.bind_password_file)
    if path is not None:
        try:
            password = read_password_file(path)
        except OSError as e:
            raise StoreUnavailable(f"{BIND_PASSWORD_KEY} {path}: {e.strerror or e}") from e
    ca = None if lc.ca_file is None else cfg.path(lc.ca_file)
    if ca is not None:
        try:
            ca.read_bytes()
        except OSError as e:  # not an outage: no connection would ever verify
            raise DirectoryMisconfigured(CA_FILE_KEY, f"{CA_FILE_KEY} {ca}: "
                                         f"{e.strerror or e}") from None
    directory = LdapDirectory(lc, bind_password=password, ca_file=ca, bind_password_file=path,
                              outage_log=not (quiet or one_shot))
    try:
        directory.check_service_account()
    except DirectoryMisconfigured:
        directory.close()
        raise
    except StoreUnavailable:
        if quiet:
            directory.close()
            raise
        # Logged once already, as the first line of the directory's outage
        # (auth/outage_log.py), which also says when it answers again.
    try:
        overlay = SqliteAccountStore(cfg.path(cfg.accounts.database), cfg.accounts)
    except BaseException:
        directory.close()
        raise
    return LdapAccountStore(directory, overlay)
