"""The LDAP client of the LDAP account backend: find a user, check a password by binding.

Theory of operation
-------------------
A login name is looked up by *search-then-bind*: the service account (or an
anonymous connection) searches ``base_dn`` with ``user_filter``, where
``{login}`` is the name escaped per RFC 4515 (so ``*``, ``(``, ``)`` and ``\\``
are data, never filter syntax; a name holding NUL or another control character
is no login at all), and the entry found must hold the whole name, letter case
aside, in one of ``login_attributes`` (a filter matching loosely, by substring or
approximately, never logs in as someone else). The
password is then checked by a simple bind as that entry's DN on a separate
connection; the directory keeps the password, smtpgate never sees a hash.

All of it is data: the login attribute(s), the address attributes (with
optional prefixes such as AD's ``smtp:`` stripped), the enabled filter and the
group filter (each evaluated on the user's entry, base scope), and the
attribute that changes with the password. The Active Directory presets set
these; this module knows no directory flavour.

Connections: two small pools (searches as the service account; user binds),
each connection opened on demand with a connect timeout, over ldaps or StartTLS
with the certificate and its name checked. A connection that fails (directory
restarted, network cut, timeout) is dropped and the operation is tried once
more on a fresh one; if that fails too the caller gets ``StoreUnavailable``
naming the cause (454 on the wire, never 535), and the next login tries again,
so logins recover by themselves.

Fail fast (``auth/fail_fast.py``): after a look-up got no answer (a connection
refused or lost, or ``operation_timeout`` passed), the next ones are refused at
once (``fail_fast``, which the auth service asks on its event loop) until a probe
on a thread of its own (an anonymous read of the root DSE, ``_answers``) or any
look-up gets an answer, the window doubling from 1 s up to ``retry_max``. A
directory that accepts connections and never replies would otherwise cost every
login its whole ``operation_timeout``, one after another on the read threads.
An answer that refuses (a certificate, the service account's password) is an
answer: it is a configuration error, not an outage to wait out.

``operation_timeout`` bounds one look-up as a whole (``deadline``): everything
a ``find`` or a ``bind`` does (connecting, StartTLS, the service account's
bind, each search, the retry on a fresh connection), and a caller's several
calls made under one ``deadline`` (``LdapAccountStore.verify_password``: the
search, then the user's bind). ldap3 bounds each socket read only, so a
directory that stopped answering cost a look-up that bound once per step: the
pooled connection's search, then the fresh one's StartTLS or bind, then the
user's bind, three times the setting for one password check. At the deadline
the sockets in use are shut down, which ends whatever read waits on them. The service
account's password file is read again for each new search connection, so a
rotated password is picked up without a restart.

Why ldap3: pure Python (nothing to build against libldap, so it installs
wherever smtpgate does), maintained, typed stubs, StartTLS and ldaps with an
explicit CA and hostname check, per-connection timeouts, and raw attribute
values. Its synchronous connections suit the auth service, which already runs
every directory call on its worker threads, off the event loop.
"""

from __future__ import annotations

import logging
import math
import re
import socket
import ssl
import threading
import time
import unicodedata
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

from ldap3 import BASE, NONE, SIMPLE, SUBTREE, Connection, Server, Tls
from ldap3.core.exceptions import LDAPException

from smtpgate.auth.directory import StoreUnavailable
from smtpgate.auth.fail_fast import FailFast
from smtpgate.auth.ldap_group_watch import GroupFilterWatch
from smtpgate.auth.ldap_ppolicy import ENTRY_ATTRIBUTES as PPOLICY_ATTRIBUTES
from smtpgate.auth.ldap_ppolicy import PolicyReader
from smtpgate.auth.ldap_ppolicy import lock_reason as ppolicy_lock_reason
from smtpgate.auth.ldap_primary_group import ATTRIBUTES as PRIMARY_GROUP_ATTRIBUTES
from smtpgate.auth.ldap_primary_group import PrimaryGroupCheck
from smtpgate.auth.names import (
    InvalidAccountName,
    a_label_spelling,
    canonical_name,
    lookup_key,
)
from smtpgate.auth.outage_log import OutageLog
from smtpgate.config import LdapConfig
from smtpgate.ldap_presets import ACTIVE_DIRECTORY, AUTO_STAMP, ENTRY_CSN, PWD_CHANGED_TIME

log = logging.getLogger("smtpgate.auth.ldap")
T = TypeVar("T")

#: Bind results that mean "this password is not the entry's" (RFC 4511 §4.1.9).
_WRONG_PASSWORD = {48, 49, 50}  # inappropriateAuthentication, invalidCredentials, insufficientAccess
#: Entries a search may return; a filter matching more makes the name ambiguous.
_MAX_ENTRIES = 5
#: LDAP result code sizeLimitExceeded (RFC 4511 §4.1.9).
_SIZE_LIMIT_EXCEEDED = 4

BIND_PASSWORD_KEY = "accounts.ldap.bind_password_file"
BASE_DN_KEY = "accounts.ldap.base_dn"
#: LDAP result code noSuchObject (RFC 4511 §4.1.9): for a search, the base is missing.
_NO_SUCH_OBJECT = 32
#: LDAP result code referral (RFC 4511 §4.1.9): another server holds the base.
_REFERRAL = 10


class DirectoryMisconfigured(StoreUnavailable):
    """The directory answers, but not as the configuration expects: a configuration
    error naming its ``key``, not an outage. ``config check``, start-up and reload
    stop on it; a login meeting it gets 454 (never 535: the user is not at fault)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


#: Seconds between two WARNINGs about one ambiguous login name.
AMBIGUOUS_LOG_EVERY = 60.0
#: Names remembered for that; past it the memory starts afresh (a WARNING more).
_AMBIGUOUS_REMEMBERED = 1_000


class AmbiguousLogin(StoreUnavailable):
    """Several entries hold the login (or more match ``user_filter`` than a search
    returns): the directory's data or the filter is at fault, not the user, whose
    right password would otherwise be a counted 535 until the guard blocked them.
    454 for that name only, as Dovecot's LDAP passdb does; no outage, no fail-fast,
    no backend error counted (the directory answered)."""

    backend_failed = False


class ServiceBindRefused(DirectoryMisconfigured):
    """The directory refused the service account's credentials
    (``accounts.ldap.bind_dn`` / ``bind_password_file``)."""

    def __init__(self, message: str) -> None:
        super().__init__(BIND_PASSWORD_KEY, message)


class BaseDnNotFound(DirectoryMisconfigured):
    """``base_dn`` names no entry the service account can see (noSuchObject): every
    name would be "unknown", so every login would fail as a wrong password."""

    def __init__(self, label: str, base_dn: str) -> None:
        super().__init__(BASE_DN_KEY, (
            f"{label}: base_dn {base_dn!r} does not exist, or the service account may "
            f"not read it (noSuchObject): check {BASE_DN_KEY} and the directory's ACL"))


class CertificateRefused(DirectoryMisconfigured):
    """The directory's TLS certificate was not accepted: not signed by a CA of
    ``ca_file`` (or expired), or not for the URL's host. Waiting does not change
    that, so it is a configuration error naming the key, not an outage."""


CA_FILE_KEY = "accounts.ldap.ca_file"
URL_KEY = "accounts.ldap.url"
_VERIFY_FAILED = re.compile(r"certificate verify failed: ([^(']*)")


def certificate_refusal(
    e: BaseException, label: str, host: str, ca_file: Path | None,
) -> CertificateRefused | None:
    """``e`` as a `CertificateRefused`, if a certificate check is what failed.

    ldap3 passes the ``ssl`` error on only as text (for ldaps, inside the list of
    the attempts it made), so the text is read: OpenSSL's CERTIFICATE_VERIFY_FAILED,
    naming a wrong host ("mismatch") or anything else about the certificate."""
    text = str(e)
    if "mismatch, certificate is not valid for" in text:
        return CertificateRefused(URL_KEY, (
            f"{label}: its TLS certificate is not for {host!r}: {URL_KEY} must name "
            "the directory as its certificate does (a name in its subjectAltName)"))
    if "CERTIFICATE_VERIFY_FAILED" in text:
        m = _VERIFY_FAILED.search(text)
        reason = f"certificate verify failed: {m.group(1).strip()}" if m else (
            "certificate verify failed")
        where = str(ca_file) if ca_file is not None else "the system store"
        return CertificateRefused(CA_FILE_KEY, (
            f"{label}: its TLS certificate was refused ({reason}): {CA_FILE_KEY} must "
            f"hold the CA that signed it (now {where}), and the certificate must be "
            "valid now"))
    return None


class _CheckedTls(Tls):
    """ldap3's TLS set-up, with the certificate's name checked by OpenSSL in the
    handshake. ldap3 checks the name itself after the handshake and, when it
    refuses it, leaves the new TLS socket open where nothing can close it;
    OpenSSL's check closes it with the failed handshake. The CA file is read at
    each handshake, so a replaced one is used by the next connection."""

    def __init__(self, host: str, ca_file: Path | None) -> None:
        super().__init__(validate=ssl.CERT_REQUIRED, version=ssl.PROTOCOL_TLS_CLIENT,
                         ca_certs_file=None if ca_file is None else str(ca_file))
        self._host = host
        self._ca_file = ca_file

    def wrap_socket(self, connection: Connection, do_handshake: bool = False) -> None:
        context = ssl.create_default_context(
            cafile=None if self._ca_file is None else str(self._ca_file))
        context.check_hostname = True
        context.verify_mode = ssl.CERT_REQUIRED
        plain = connection.socket
        try:
            connection.socket = context.wrap_socket(
                plain, server_hostname=self._host, do_handshake_on_connect=do_handshake)
        except BaseException:
            plain.close()
            raise


class BaseDnReferred(DirectoryMisconfigured):
    """The directory answers a search of ``base_dn`` with a referral: another server
    holds it. Referrals are never followed (the user's password would go to a
    server the configuration does not name), so ``base_dn`` or ``url`` is wrong."""

    def __init__(self, label: str, base_dn: str, referrals: object) -> None:
        where = ", ".join(str(r) for r in referrals) if isinstance(referrals, list) else "?"
        super().__init__(BASE_DN_KEY, (
            f"{label}: base_dn {base_dn!r} is not held by this directory (a referral to "
            f"{where}); referrals are not followed: check {BASE_DN_KEY}, or point "
            f"accounts.ldap.url at the directory that holds it"))


def _refuse_referral(label: str, base_dn: str, result: Mapping[str, object]) -> None:
    """Raise `BaseDnReferred` if ``result`` is a referral (RFC 4511 §4.1.10)."""
    if result.get("result") == _REFERRAL:
        raise BaseDnReferred(label, base_dn, result.get("referrals"))


def escape_filter_value(value: str) -> str:
    """``value`` as an assertion value of an RFC 4515 filter: ``*``, ``(``, ``)``,
    ``\\`` and NUL become ``\\XX`` escapes, so they match themselves only."""
    out = []
    for c in value:
        out.append(f"\\{ord(c):02x}" if c in "*()\\\0" else c)
    return "".join(out)


@dataclass(frozen=True, slots=True)
class DirectoryEntry:
    """What the backend needs of one user entry."""

    dn: str
    #: The account name: the entry's first login value that is an address,
    #: canonical, whichever of its login names found it.
    identity: str
    #: Addresses the entry owns, canonical, sorted (the identity included if listed).
    addresses: tuple[str, ...]
    #: The value of ``password_changed_attribute`` ("" if the entry has none).
    stamp: str
    #: False: outside ``enabled_filter``, expired, or a ``locked_flags`` bit set.
    enabled: bool
    #: False: outside ``group_filter``.
    member: bool
    #: The entry's one name whichever login found it: its first login value that
    #: is an address (AD: the UPN). The guard counts and locks under it, so two
    #: login names of one entry share one count.
    canonical: str = ""
    #: Why the entry is not enabled, when its status attributes say ("": they do not,
    #: or ``enabled_filter`` decided).
    lock_reason: str = ""


#: Active Directory's accountExpires: 100-ns intervals since 1601-01-01 UTC; 0 and
#: the largest 64-bit value mean "never" (MS-ADA1, Account-Expires).
_FILETIME_EPOCH = datetime(1601, 1, 1, tzinfo=UTC)
_FILETIME_NEVER = 0x7FFFFFFFFFFFFFFF


def account_expired(value: str, now: datetime) -> bool | None:
    """Whether an accountExpires ``value`` lies before ``now``; None if it is not a
    number (the caller refuses the account: an unreadable expiry is not "never")."""
    try:
        ticks = int(value)
    except ValueError:
        return None
    if ticks <= 0 or ticks >= _FILETIME_NEVER:
        return False
    try:
        expires = _FILETIME_EPOCH + timedelta(microseconds=ticks // 10)
    except OverflowError:  # past the year 9999
        return False
    return expires <= now


def stamp_attributes(cfg: LdapConfig) -> tuple[str, ...]:
    """The attributes whose value changes with the password, in the order they are
    preferred. ``auto``: with ppolicy, pwdChangedTime, which ppolicy writes with each
    change of the password and nothing else; entryCSN for an entry without one (no
    ppolicy, or a password set before the overlay was loaded). entryCSN changes with
    every write to the entry, and ppolicy writes pwdFailureTime at each failed bind:
    as the stamp alone, one wrong password (anyone's) made the account's SCRAM keys
    stale, forgot its cached login and met its ``user rotate`` deadline."""
    if cfg.password_changed_attribute != AUTO_STAMP:
        return (cfg.password_changed_attribute,)
    return (PWD_CHANGED_TIME, ENTRY_CSN) if cfg.ppolicy else (ENTRY_CSN,)


def _values(attrs: Mapping[str, list[bytes]], name: str) -> list[str]:
    wanted = name.lower()
    for key, raw in attrs.items():
        if key.lower() == wanted:
            return [v.decode("utf-8", "replace") for v in raw]
    return []


def read_password_file(path: Path) -> str:
    """The first line of ``path``.

    Raises:
        OSError: it cannot be read.
    """
    return path.read_text(encoding="utf-8").splitlines()[0] if path.stat().st_size else ""


def _parenthesised(flt: str) -> str:
    """A filter as an item of an ``(|...)`` (ldap3 also takes one without parentheses)."""
    return flt if flt.startswith("(") else f"({flt})"


#: Longest plain (non-address) login searched for; AD's sAMAccountName has 20 at most.
MAX_PLAIN_LOGIN = 256


def login_key(name: str) -> str | None:
    """What ``name`` is searched as: its canonical spelling if it is an address,
    else itself if it is a plain name (no ``@``, whitespace or control character,
    NUL included: AD cuts a filter value at an escaped NUL), else None (no account)."""
    try:
        return canonical_name(name)
    except InvalidAccountName:
        pass
    if not name or len(name) > MAX_PLAIN_LOGIN or "@" in name:
        return None
    if any(c.isspace() or unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in name):
        return None
    return name


class LdapDirectory:
    """Searches and binds against one directory; thread-safe (connections are pooled,
    each used by one thread at a time)."""

    def __init__(
        self, cfg: LdapConfig, *, bind_password: str, ca_file: Path | None,
        bind_password_file: Path | None = None, outage_log: bool = True,
    ) -> None:
        """``outage_log`` False: outages are not logged (``config check``, ``status``
        and the other commands say what failed in their own words, once)."""
        self._cfg = cfg
        self._bind_password = bind_password
        #: Read again for each new service connection (``_service_password``).
        self._bind_password_file = bind_password_file
        parsed = urllib.parse.urlsplit(cfg.url)
        ldaps = parsed.scheme == "ldaps"
        host = parsed.hostname or ""
        port = parsed.port or (636 if ldaps else 389)
        tls = _CheckedTls(host, ca_file)
        self._where = (host, port, ldaps, tls)
        self._ca_file = ca_file
        self._label = f"LDAP directory {cfg.url}"
        #: An entry without ``password_changed_attribute`` was logged (`_say_stampless`).
        self._stampless_said = False
        #: When each ambiguous login name was last logged (`_say_ambiguous`).
        self._ambiguous_said: dict[str, float] = {}
        #: A directory down under login load fails every login: logged once, then a
        #: summary a minute, then once when it answers (``outage_log``).
        # At start-up the check (``preflight.check_ldap``, unlogged) says it once;
        # ``open_ldap_store`` adds no line of its own.
        self._outage = OutageLog(self._label, log if outage_log else _unlogged(),
                                 effect="logins get 454 4.7.0 until it answers")
        #: After a look-up got no answer, the next ones are refused at once until
        #: a probe (or a look-up) gets one: a silent directory costs one login its
        #: timeout, not each. Stuck: a look-up past its deadline, which cuts it.
        self._fail_fast = FailFast(self._answers, most=cfg.retry_max,
                                   stuck_after=cfg.operation_timeout + 1)
        self._search_pool = _Pool(cfg.pool_size, self._service_connection, cfg.operation_timeout,
                                  idle_timeout=cfg.idle_timeout)
        #: A group_filter nobody matches because its attribute is hidden: said once.
        self._group_watch = GroupFilterWatch(cfg.group_filter, self._label, log,
                                             timeout=max(1, int(cfg.operation_timeout)))
        #: The same for an enabled_filter on an attribute the directory lacks.
        self._enabled_watch = GroupFilterWatch(
            cfg.enabled_filter, self._label, log, timeout=max(1, int(cfg.operation_timeout)),
            key="accounts.ldap.enabled_filter",
            missing="does not know it (OpenLDAP: pwdAccountLockedTime and the other pwd* "
            "attributes exist only with the ppolicy overlay loaded)",
            effect="every entry is outside the filter, as if disabled,")
        self._bind_pool = _Pool(cfg.pool_size, self._plain_connection, cfg.operation_timeout,
                                idle_timeout=cfg.idle_timeout)
        status = {cfg.expires_attribute, cfg.locked_flags_attribute, cfg.reset_attribute} - {""}
        if cfg.ppolicy:
            status |= set(PPOLICY_ATTRIBUTES)
        #: AD: a ``group`` is also held through the primary group (primaryGroupID).
        self._primary_group = (
            PrimaryGroupCheck(cfg.group, timeout=max(1, int(cfg.operation_timeout)))
            if cfg.flavour == ACTIVE_DIRECTORY and cfg.group else None)
        if self._primary_group is not None:
            status |= set(PRIMARY_GROUP_ATTRIBUTES)
        #: The attributes whose value is the entry's stamp, the first one it has
        #: (``_stamp``).
        self._stamp_attributes = stamp_attributes(cfg)
        self._attributes = sorted(
            {*cfg.login_attributes, *cfg.address_attributes, *self._stamp_attributes,
             *status}
        )
        #: OpenLDAP ppolicy's lockouts and expiry, for logins that make no bind.
        self._policies = PolicyReader(cfg.ppolicy_default_dn, self._label, log,
                                      timeout=max(1, int(cfg.operation_timeout)))
        #: The look-up under way on this thread (``deadline``).
        self._local = threading.local()

    @contextmanager
    def deadline(self) -> Iterator[None]:
        """One look-up: every operation within it, on this thread, ends by
        ``operation_timeout`` from now in all; nested, the outer one holds."""
        if getattr(self._local, "deadline", None) is not None:
            yield
            return
        current = _Deadline(self._cfg.operation_timeout)
        self._local.deadline = current
        try:
            yield
        finally:
            self._local.deadline = None
            current.close()

    def _current(self) -> _Deadline | None:
        found: _Deadline | None = getattr(self._local, "deadline", None)
        return found

    # --- connections ----------------------------------------------------------------

    def _new_server(self) -> Server:
        # A fresh Server per connection: one that failed to connect remembers its
        # address as unavailable for minutes, which would outlast the outage.
        host, port, ldaps, tls = self._where
        connect_timeout: float = self._cfg.connect_timeout
        current = self._current()
        if current is not None:
            connect_timeout = max(0.1, min(connect_timeout, current.remaining()))
        return Server(host, port=port, use_ssl=ldaps, tls=tls, get_info=NONE,
                      connect_timeout=connect_timeout)

    def _plain_connection(self) -> Connection:
        """Open, TLS up (StartTLS if configured), not bound."""
        conn = Connection(
            # Whole seconds: ldap3 packs the receive timeout as integers (SO_RCVTIMEO).
            self._new_server(), receive_timeout=math.ceil(self._cfg.operation_timeout), read_only=True,
            raise_exceptions=False, auto_referrals=False, check_names=False, authentication=SIMPLE,
        )
        current = self._current()
        if current is not None:
            current.watch(conn)
        try:
            conn.open()
        except BaseException:
            _drop_socket(conn)
            raise
        try:
            started = not self._cfg.starttls or conn.start_tls()
        except BaseException:
            _close(conn)
            raise
        if not started:
            _close(conn)
            raise _Fault(f"StartTLS refused: {conn.result}")
        return conn

    def _service_connection(self) -> Connection:
        conn = self._plain_connection()
        if not self._cfg.bind_dn:
            return conn
        password = self._service_password()
        if not password:
            # An empty password makes the bind unauthenticated (RFC 4513 §5.1.2):
            # never sent; and no outage either, which waiting would end.
            _close(conn)
            where = self._bind_password_file or BIND_PASSWORD_KEY
            raise DirectoryMisconfigured(BIND_PASSWORD_KEY, (
                f"{self._label}: the service account {self._cfg.bind_dn!r} has an empty "
                f"password ({where} is empty): write its password to {BIND_PASSWORD_KEY}"))
        conn.user, conn.password = self._cfg.bind_dn, password.encode("utf-8")  # as in bind()
        if conn.bind():
            return conn
        result = conn.result or {}
        conn.unbind()
        if result.get("result") in _WRONG_PASSWORD:
            raise ServiceBindRefused(
                f"{self._label} refused the service account {self._cfg.bind_dn!r} "
                f"({result.get('description')}): check accounts.ldap.bind_dn and the "
                f"password in {BIND_PASSWORD_KEY}"
            )
        raise _Fault(f"service bind failed: {result.get('description')} {result.get('message')}")

    def _service_password(self) -> str:
        """The service account's password, from its file as it is now: a password the
        directory's administrator rotated (and wrote to the file) is used by the
        next connection, without a restart or a reload; if the file cannot be read
        now, the one read before, and a warning."""
        if self._bind_password_file is not None:
            try:
                self._bind_password = read_password_file(self._bind_password_file)
            except OSError as e:
                log.warning("%s %s: %s; the service account binds with the password "
                            "read before", BIND_PASSWORD_KEY, self._bind_password_file,
                            e.strerror or e)
        return self._bind_password

    def fail_fast(self) -> None:
        """Raises ``StoreUnavailable`` at once while a look-up got no answer lately
        and no probe has seen the directory answer since; cheap and never blocking,
        so the auth service calls it on its event loop before sending a look-up to
        a thread (which may all be waiting on a silent directory)."""
        cause = self._fail_fast.refusal()
        if cause is not None:
            raise StoreUnavailable(f"{self._label} unavailable: {cause} (not asked again "
                                   "until it answers a probe: accounts.ldap.retry_max)")

    def _answers(self) -> bool:
        """Whether the directory answers at all: a new connection (TLS up) and an
        anonymous base search of the root DSE within ``operation_timeout``. Any
        result, a refusal included, is an answer; no login is made, so no
        lockout counts it. Never raises (``FailFast``'s probe)."""
        try:
            with self.deadline():
                conn = self._plain_connection()
                try:
                    conn.search("", "(objectClass=*)", BASE, attributes=["1.1"])
                    result = conn.result
                    return isinstance(result, dict) and "result" in result
                finally:
                    _close(conn)
        except Exception:  # noqa: BLE001 - a probe must not raise: no answer
            return False

    def _run(self, pool: _Pool, op: Callable[[Connection], T], *, at_start: bool = False) -> T:
        """``op`` on a pooled connection; on a connection failure, once more on a fresh
        one; then ``StoreUnavailable`` with the cause.

        A ``DirectoryMisconfigured`` while serving (``at_start`` False) goes to the
        outage log too, so the server log says what to fix and when it works again;
        at start-up, its caller's error is its one line. Within the look-up's
        ``deadline`` (this call's own if none is under way)."""
        if not at_start:
            self.fail_fast()
        with self.deadline(), self._fail_fast.operation():
            current = self._current()
            assert current is not None
            return self._attempts(pool, op, current, at_start=at_start)

    def _attempts(self, pool: _Pool, op: Callable[[Connection], T], current: _Deadline, *,
                  at_start: bool) -> T:
        for attempt in (1, 2):
            try:
                if current.remaining() <= 0:
                    raise _Fault("no time left", answered=False)
                # The retry never takes a pooled connection: after a directory
                # restart every one of them is dead, and a second dead one would
                # answer 454 for a directory that is up again.
                with pool.connection(fresh=attempt == 2, wait=current.remaining()) as conn:
                    current.watch(conn)
                    answer = op(conn)
            except DirectoryMisconfigured as e:
                if not at_start:
                    self._outage.failed(str(e).removeprefix(f"{self._label}: "))
                raise
            except (LDAPException, OSError, _Fault) as e:
                refused = certificate_refusal(e, self._label, self._where[0], self._ca_file)
                if refused is not None:
                    if not at_start:
                        self._outage.failed(str(refused).removeprefix(f"{self._label}: "))
                    raise refused from e
                cause = f"{type(e).__name__}: {e}"
                # The idle ones were opened to the same server before the failure,
                # and most likely share its fate: opened again when needed.
                pool.drop_idle()
                if current.passed or current.remaining() <= 0:
                    cause = (f"no answer within {current.seconds:g} s "
                             "(accounts.ldap.operation_timeout, for the whole look-up)")
                    self._outage.failed(cause)
                    self._fail_fast.failed(cause)
                    raise StoreUnavailable(f"{self._label} unavailable: {cause}") from e
                if attempt == 2:
                    self._outage.failed(cause)
                    if not (isinstance(e, _Fault) and e.answered):
                        self._fail_fast.failed(cause)
                    raise StoreUnavailable(f"{self._label} unavailable: {cause}") from e
            else:
                self._outage.answered()
                self._fail_fast.answered()
                return answer
        raise AssertionError("unreachable")

    # --- the operations -----------------------------------------------------------------

    def check_service_account(self) -> None:
        """Open one search connection now (start-up), and look at ``base_dn``.

        Raises:
            ServiceBindRefused: wrong service credentials.
            BaseDnNotFound: ``base_dn`` is not there for the service account.
            StoreUnavailable: the directory cannot be reached.
        """
        cfg = self._cfg

        def look(conn: Connection) -> None:
            conn.search(cfg.base_dn, "(objectClass=*)", BASE, attributes=["1.1"],
                        time_limit=max(1, int(cfg.operation_timeout)))
            code = (conn.result or {}).get("result")
            if code == _NO_SUCH_OBJECT:
                raise BaseDnNotFound(self._label, cfg.base_dn)
            _refuse_referral(self._label, cfg.base_dn, conn.result or {})
            if code != 0:
                raise _Fault(f"search of base_dn failed: {conn.result}")

        self._run(self._search_pool, look, at_start=True)

    def find(self, name: str) -> DirectoryEntry | None:
        """The entry whose login is ``name``, or None.

        ``name`` is an address, or a plain name such as AD's ``sAMAccountName``
        (see `login_key`); the account's identity is the entry's first login
        attribute value that is an address (AD's UPN, the first ``mail``), whichever
        login name found it, so that every name of the entry is one account: a
        second ``mail`` value found by its own login used to be an account of its
        own, outside what ``user lock``, rates and access rules set on the first.

        Raises:
            AmbiguousLogin: several entries hold the name.
            StoreUnavailable: the directory failed or did not answer in time.
        """
        key = login_key(name)
        if key is None:
            return None
        cfg = self._cfg
        flt = cfg.user_filter.replace("{login}", escape_filter_value(key))
        if "@" in key and not key.rpartition("@")[2].isascii():
            # An internationalised domain is searched in both spellings (auth/names.py):
            # a directory may hold either; _is_login compares canonical spellings.
            other = cfg.user_filter.replace(
                "{login}", escape_filter_value(a_label_spelling(key)))
            flt = f"(|{_parenthesised(flt)}{_parenthesised(other)})"

        def search(conn: Connection) -> DirectoryEntry | str | None:
            ok, code = self._search_entries(conn, flt)
            if code == _SIZE_LIMIT_EXCEEDED:
                # Entries not returned may hold the login too: one found among those
                # returned would be "the first", so the name is ambiguous.
                return (f"more than {_MAX_ENTRIES} entries match {flt} for the login "
                        f"{key!r} (narrow accounts.ldap.user_filter)")
            if not ok and code != 0:
                raise _Fault(f"search failed: {conn.result}")
            found = [
                r for r in conn.response or []
                if r.get("type") == "searchResEntry" and self._is_login(r, key)
            ]
            if len(found) > 1:
                return (f"{len(found)} entries hold the login {key!r} "
                        f"({', '.join(str(r['dn']) for r in found)})")
            if not found:
                return None
            raw: dict[str, list[bytes]] = found[0]["raw_attributes"]
            dn = str(found[0]["dn"])
            canonical = self._address_login(raw)
            identity = canonical
            if identity is None:
                return None  # a plain name on an entry without an address login
            stamp = self._stamp(raw)
            if not stamp:
                self._say_stampless(dn)
            locked = self._status_lock(raw) or self._ppolicy_lock(conn, raw)
            member = self._matches(conn, dn, cfg.group_filter)
            if not member and self._primary_group is not None:
                member = self._primary_group.holds(conn, raw)
            if cfg.group_filter:
                if member:
                    self._group_watch.member()
                else:
                    self._group_watch.non_member(conn, dn)
            enabled = not locked and self._matches(conn, dn, cfg.enabled_filter)
            if cfg.enabled_filter and not locked:
                if enabled:
                    self._enabled_watch.member()
                else:
                    self._enabled_watch.non_member(conn, dn)
            return DirectoryEntry(
                dn=dn, identity=identity, addresses=self._addresses(raw),
                stamp=stamp,
                enabled=enabled,
                member=member,
                canonical=identity,
                lock_reason=locked,
            )

        # An ambiguity is returned, not raised, so that the healthy connection
        # goes back to the pool and the look-up counts as answered.
        found = self._run(self._search_pool, search)
        if isinstance(found, str):
            self._say_ambiguous(key, found)
            raise AmbiguousLogin(f"{self._label}: {found}")
        return found

    def _search_entries(self, conn: Connection, flt: str) -> tuple[bool, object]:
        """Search ``base_dn``'s subtree for ``flt`` with the entries' attributes: ldap3's
        answer and the result code. A missing base raises ``BaseDnNotFound`` (the
        base is missing, not the user: 454 and the log say so, where "unknown
        user" would fail every login as a wrong password), a referral refuses."""
        cfg = self._cfg
        ok = conn.search(
            cfg.base_dn, flt, SUBTREE, attributes=self._attributes,
            size_limit=_MAX_ENTRIES, time_limit=max(1, int(cfg.operation_timeout)),
        )
        code = (conn.result or {}).get("result")
        if code == _NO_SUCH_OBJECT:
            raise BaseDnNotFound(self._label, cfg.base_dn)
        _refuse_referral(self._label, cfg.base_dn, conn.result or {})
        return bool(ok), code

    def address_holder(self, address: str) -> str | None:
        """The identity of an account whose entry holds ``address`` (canonical) in
        an address attribute (``mail``, ``mailLocalAddress``, AD's ``proxyAddresses``
        with its prefixes), or None. A domain grant does not cover another
        account's address (docs/policy.md); an entry that is no account (a group,
        a contact: `find` does not find it by its identity) holds none.

        Raises:
            StoreUnavailable: the directory failed or did not answer in time.
        """
        cfg = self._cfg
        spellings = {address}
        if not address.rpartition("@")[2].isascii():
            spellings.add(a_label_spelling(address))
        values = {f"{p}{s}" for p in ("", *cfg.address_prefixes) for s in spellings}
        flt = "(|" + "".join(f"({a}={escape_filter_value(v)})"
                             for a in cfg.address_attributes for v in sorted(values)) + ")"

        def search(conn: Connection) -> list[str]:
            ok, code = self._search_entries(conn, flt)
            if not ok and code not in (0, _SIZE_LIMIT_EXCEEDED):
                raise _Fault(f"search failed: {conn.result}")
            found = []
            for r in conn.response or []:
                if r.get("type") != "searchResEntry":
                    continue
                raw: dict[str, list[bytes]] = r["raw_attributes"]
                if address in self._addresses(raw) and (who := self._address_login(raw)):
                    found.append(who)
            return found

        for identity in self._run(self._search_pool, search):
            entry = self.find(identity)
            if entry is not None:
                return entry.identity
        return None

    def _stamp(self, raw: Mapping[str, list[bytes]]) -> str:
        """The value of the entry's first stamp attribute that it shows ("": none)."""
        for attr in self._stamp_attributes:
            values = _values(raw, attr)
            if values:
                return values[0]
        return ""

    def _say_stampless(self, dn: str) -> None:
        """A WARNING, once per process, about an entry without the attribute that
        changes with its password: its logins cost a bind each, and SCRAM fails."""
        if self._stampless_said:
            return
        self._stampless_said = True
        attr = " nor ".join(self._stamp_attributes)
        log.warning(
            "%s: accounts.ldap.password_changed_attribute: the entry %s shows the service "
            "account no %s, so nothing tells when its password changes: logins of such "
            "entries are not cached (each costs a bind) and get no SCRAM keys; set the "
            "key to an attribute the entries have (entryCSN, pwdChangedTime with ppolicy, "
            "AD's pwdLastSet) and let the service account read it (said once)",
            self._label, dn, attr)

    def _say_ambiguous(self, key: str, what: str) -> None:
        """A WARNING once a minute per name (DEBUG in between): every attempt is in
        the auth log already, and anyone who learns such a name could otherwise
        write two lines to the server log with each try."""
        now = time.monotonic()
        last = self._ambiguous_said.get(key)
        if last is not None and now - last < AMBIGUOUS_LOG_EVERY:
            log.debug("%s: %s (logged at most once a minute)", self._label, what)
            return
        if len(self._ambiguous_said) >= _AMBIGUOUS_REMEMBERED:
            self._ambiguous_said.clear()
        self._ambiguous_said[key] = now
        log.warning("%s: %s; logins with this name get 454 until the directory or the "
                    "filter is fixed (said again in a minute if so)", self._label, what)

    def bind(self, dn: str, password: str) -> bool:
        """True if ``password`` is the password of ``dn``.

        Raises:
            StoreUnavailable: the directory failed or did not answer in time.
        """
        if not password:
            return False  # an unauthenticated bind (RFC 4513 §5.1.2) would "succeed"
        if "\0" in password:
            return False  # Samba compares up to the NUL: "password\0anything" would do
        try:
            # As octets: ldap3 SASLprep's a str itself (NFKC, U+00A0 to a space; a
            # control character raises), and the directory compares the octets it
            # was given when the password was set.
            secret = password.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate: no directory holds one
            return False

        def simple_bind(conn: Connection) -> bool:
            conn.user, conn.password = dn, secret
            try:
                if conn.bind():
                    return True
            finally:
                conn.password = None  # not kept in the pool
            result = conn.result or {}
            if result.get("result") in _WRONG_PASSWORD:
                return False
            raise _Fault(f"bind failed: {result.get('description')} {result.get('message')}")

        return self._run(self._bind_pool, simple_bind)

    def close(self) -> None:
        self._fail_fast.close()
        self._search_pool.close()
        self._bind_pool.close()

    # --- helpers --------------------------------------------------------------------------

    def _is_login(self, r: dict[str, object], key: str) -> bool:
        """Whether the entry holds ``key`` as a whole value of a login attribute: an
        address as account names compare (auth/names.py), a plain name without letter
        case, as directories compare ``sAMAccountName`` and ``uid`` (Windows logs
        ``ALICE`` in as ``alice``); the entry's identity is its address either way."""
        raw = r.get("raw_attributes")
        if not isinstance(raw, Mapping):  # ldap3 gives a case-insensitive mapping
            return False
        if "@" not in key:
            wanted = key.lower()
            return any(v.lower() == wanted
                       for a in self._cfg.login_attributes for v in _values(raw, a))
        return any(
            lookup_key(v) == key for a in self._cfg.login_attributes for v in _values(raw, a)
        )

    def _address_login(self, raw: Mapping[str, list[bytes]]) -> str | None:
        """The first value of the login attributes, in their order, that is an address."""
        for attr in self._cfg.login_attributes:
            for v in _values(raw, attr):
                try:
                    return canonical_name(v)
                except InvalidAccountName:
                    continue
        return None

    def _addresses(self, raw: dict[str, list[bytes]]) -> tuple[str, ...]:
        """With ``address_prefixes``, a value with a listed prefix counts without it, a
        value of another type (a ':' before its '@': ``X500:``, ``sip:``; an unquoted
        address never holds one) not at all, and an untyped one (``mail``) as it is."""
        prefixes = [p.lower() for p in self._cfg.address_prefixes]
        out: set[str] = set()
        for attr in self._cfg.address_attributes:
            for v in _values(raw, attr):
                if prefixes:
                    hit = next((p for p in prefixes if v.lower().startswith(p)), None)
                    if hit is not None:
                        v = v[len(hit):]
                    elif ":" in v.partition("@")[0]:
                        continue
                try:
                    out.add(canonical_name(v))
                except InvalidAccountName:
                    continue
        return tuple(sorted(out))

    def _status_lock(self, raw: Mapping[str, list[bytes]]) -> str:
        """Why the entry's status attributes lock it, or "": expired
        (``expires_attribute``), a password to change first (``reset_attribute``),
        or a bit of ``locked_flags`` set. SCRAM and cached
        logins make no bind, so the directory's own refusal of such an account (AD:
        "data 701/775/532") would never be seen; this reads the state instead."""
        cfg = self._cfg
        if cfg.expires_attribute:
            for v in _values(raw, cfg.expires_attribute):
                expired = account_expired(v, datetime.now(UTC))
                if expired is None:
                    return f"{cfg.expires_attribute} unreadable ({v[:32]!r})"
                if expired:
                    return f"expired in the directory ({cfg.expires_attribute})"
        if cfg.reset_attribute and any(
            v.strip().upper() == "TRUE" for v in _values(raw, cfg.reset_attribute)
        ):
            # ppolicy lets such a password only change itself, yet its bind succeeds.
            return (f"password set by an administrator, to be changed by its user "
                    f"first ({cfg.reset_attribute})")
        if cfg.locked_flags_attribute and cfg.locked_flags:
            for v in _values(raw, cfg.locked_flags_attribute):
                try:
                    bits = int(v)
                except ValueError:
                    return f"{cfg.locked_flags_attribute} unreadable ({v[:32]!r})"
                if bits & cfg.locked_flags:
                    return (f"locked out or password expired in the directory "
                            f"({cfg.locked_flags_attribute} {bits:#x})")
        return ""

    def _ppolicy_lock(self, conn: Connection, raw: Mapping[str, list[bytes]]) -> str:
        """Why OpenLDAP ppolicy's state locks the entry now, or "" (``ldap_ppolicy``)."""
        if not self._cfg.ppolicy:
            return ""
        entry = {a.lower(): _values(raw, a) for a in PPOLICY_ATTRIBUTES}
        if not entry["pwdaccountlockedtime"] and not entry["pwdchangedtime"]:
            return ""  # nothing to decide: no policy read
        policy = self._policies.policy(conn, entry)
        return ppolicy_lock_reason(entry, policy, datetime.now(UTC))

    def _matches(self, conn: Connection, dn: str, flt: str) -> bool:
        if not flt:
            return True
        conn.search(dn, flt, BASE, attributes=["1.1"],
                    time_limit=max(1, int(self._cfg.operation_timeout)))
        code = (conn.result or {}).get("result")
        if code not in (0, 32):
            raise _Fault(f"search of {flt!r} failed: {conn.result}")
        return any(r.get("type") == "searchResEntry" for r in conn.response or [])


def _unlogged() -> logging.Logger:
    """A logger outside the logging tree that drops what it is given: Python's
    last-resort handler would print it on a command's stderr, beside the
    command's own message about the same failure."""
    quiet = logging.Logger("smtpgate.auth.ldap.unlogged")  # noqa: LOG001 - not in the tree
    quiet.addHandler(logging.NullHandler())
    return quiet


class _Fault(Exception):
    """An LDAP operation failed for a reason other than the credentials.
    ``answered``: the directory said so (a refusal is an answer, ``fail_fast``
    does not count it); False when nothing was heard (no time, no connection)."""

    def __init__(self, message: str, *, answered: bool = True) -> None:
        super().__init__(message)
        self.answered = answered


class _Deadline:
    """The end of one look-up: the connections it opens or takes are shut down when
    it passes, so a read blocked on a directory that stopped answering ends then."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._at = time.monotonic() + seconds
        self._lock = threading.Lock()
        self._conns: list[Connection] = []
        self._done = False
        self.passed = False
        self._timer = threading.Timer(seconds, self._cut)
        self._timer.daemon = True
        self._timer.start()

    def remaining(self) -> float:
        return self._at - time.monotonic()

    def watch(self, conn: Connection) -> None:
        with self._lock:
            self._conns.append(conn)

    def _cut(self) -> None:
        with self._lock:
            if self._done:
                return
            self.passed = True
            conns = list(self._conns)
        for conn in conns:
            sock = getattr(conn, "socket", None)
            if isinstance(sock, socket.socket):
                try:
                    # The plain socket's shutdown, also under TLS: SSLSocket's own
                    # would drop its TLS state under the thread reading from it.
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)
                except OSError:
                    pass  # closed or never connected

    def close(self) -> None:
        with self._lock:
            self._done = True
            self._conns.clear()
        self._timer.cancel()


class _Pool:
    """At most ``size`` connections, opened on demand, each used by one thread at a time.

    One kept unused longer than ``idle_timeout`` is closed, not used: a middlebox
    may have forgotten it silently, and a look-up on it would hear nothing until
    its deadline, with no time left for the retry on a fresh connection."""

    def __init__(self, size: int, factory: Callable[[], Connection], wait: float, *,
                 idle_timeout: float = 60.0) -> None:
        self._factory = factory
        self._slots = threading.BoundedSemaphore(size)
        #: Idle connections with when each was put back, the most recent last.
        self._idle: list[tuple[Connection, float]] = []
        self._lock = threading.Lock()
        self._wait = wait
        self._idle_timeout = idle_timeout
        self._closed = False

    @contextmanager
    def connection(self, *, fresh: bool = False,
                   wait: float | None = None) -> Iterator[Connection]:
        """A connection for one operation; ``fresh``: a new one, never an idle one.
        A free one is waited for ``wait`` seconds at most (the look-up's time
        left), never more than the pool's own bound."""
        if self._closed:
            raise StoreUnavailable("LDAP directory connection closed")
        bound = self._wait if wait is None else max(0.0, min(wait, self._wait))
        if not self._slots.acquire(timeout=bound):
            raise _Fault(f"no free connection within {bound:g} s", answered=False)
        try:
            conn = None if fresh else self._take_idle()
            if conn is None:
                conn = self._factory()
            try:
                yield conn
            except BaseException:
                _close(conn)  # its state is unknown: never reused
                raise
            with self._lock:
                if self._closed:
                    _close(conn)
                else:
                    self._idle.append((conn, time.monotonic()))
        finally:
            self._slots.release()

    def _take_idle(self) -> Connection | None:
        """The most recently used idle connection, if it is recent enough; those
        idle too long are closed (put back in order, so all of them, since the
        most recent one is the youngest)."""
        with self._lock:
            if not self._idle:
                return None
            conn, since = self._idle.pop()
            stale: list[Connection] = []
            if time.monotonic() - since > self._idle_timeout:
                stale = [conn, *(c for c, _ in self._idle)]
                self._idle = []
        if not stale:
            return conn
        for old in stale:
            _close(old)
        return None

    def drop_idle(self) -> None:
        """Close the idle connections (those in use are dropped if they fail)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn, _ in idle:
            _close(conn)

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self.drop_idle()


def _drop_socket(conn: Connection) -> None:
    """Close the socket of a connection that failed to open: ldap3 keeps it on the
    connection (``conn.socket``) and closes it only when garbage-collected, one open
    descriptor per refused attempt while the directory is down."""
    sock = getattr(conn, "socket", None)
    if sock is not None:
        try:
            sock.close()
        except OSError:
            pass


def _close(conn: Connection) -> None:
    try:
        conn.unbind()
    except (LDAPException, OSError):
        pass
