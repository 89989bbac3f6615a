"""The auth service: answers the credential queries of SASL mechanisms.

Theory of operation
-------------------
A server mechanism returns ``NeedCredentials(query)``; the session awaits
``AuthService.resolve(query, ctx)`` and hands the answer back to the
mechanism. ``resolve`` never raises: a backend fault becomes a *temporary*
answer (``Verdict(ok=False, temporary=True)`` or ``NotFound(temporary=True)``,
454 on the wire), never a wrong-credentials answer (535), so that an outage
neither locks users out for good nor counts against them.

Blocking work runs off the event loop, on these executors:

- ``hash_threads`` workers for Argon2id and PBKDF2 (the C code releases the GIL),
  and as many at a lower CPU priority for the verifications of attempts the
  guard does not trust; a ``VerificationScheduler`` (``verify_scheduler.py``)
  decides which verification runs next, so that the owner's never queue
  behind a guesser's and at most ``hash_threads`` run at once;
- two workers for account reads: two, so that one read stuck behind a busy
  database does not stall every login, and not more, since a read takes tens
  of microseconds; a directory with a ``read_bound`` (PostgreSQL) has each
  read answered within it, or 454;
- one writer for bookkeeping (last login, re-derived secrets): a single thread
  runs the writes in the order they were made, and the store's SQL refuses to
  move a last-login time backwards for what comes from other processes. Last
  logins are group-committed: those that arrive while a write is under way go
  out together in the next one (one hop per batch, not per login).

Every failure path for a password does one Argon2id verification (against the
account's hash or the decoy), so response times do not tell an unknown or
locked account from a wrong password. Only a verified password is cached
(``cache.py`` explains the cache and why lock state is read on every login).

Account policy (issue 4), applied before any secret is checked, so that a
refusal costs a decoy verification and tells a guesser nothing:

- conditional access: allowed networks, listeners and mechanisms, and
  "require OAuth"; a refusal is an ordinary 535 on the wire, with the real
  reason (``access policy: ...``) in the auth log;
- password age: an expired password (``[passwords].max_age_days``, the
  account's override, or a rotation's deadline) stops working for PLAIN,
  LOGIN, CRAM-MD5 and SCRAM;
- app passwords: a PLAIN/LOGIN password shaped like one is first compared with
  the account's app passwords (an HMAC each, no Argon2), whose own expiry and
  scope then apply.

``resolve_detailed`` returns, besides the answer, what the session and the
guard need: which class of refusal it was (one that did not depend on the
secret is not counted against the account) and which app password logged in.

Passwords: for a hash-holding directory (SQLite) the service verifies the
Argon2id hash the directory hands out, with the cache above and coalescing of
identical attempts; for a bind-only directory (``verifies_passwords``, an LDAP
bind) it asks ``verify_password`` after the cache misses. Either way, after a
good PLAIN/LOGIN password it derives the secrets the account lacks (SCRAM keys,
the opted-in CRAM-MD5 secret, an Argon2id hash with current parameters; never
a hash for a bind-only directory) and hands them to ``put_credentials``: the
directory stores secrets, the service derives them (``auth/directory.py``).
An account imported from Dovecot or Cyrus (``smtpgate user import``) may hold
a ``legacy`` hash instead of an Argon2id one: it is verified with
``legacy_hashes.verify`` (not cached before it verifies, not coalesced: a
one-off per account), and the upgrade above then stores an Argon2id hash and
the SCRAM keys, which replace it.

Ownership: the service takes over ``directory`` and ``log``; ``close()`` drains
the pending writes and closes both.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import inspect
import logging
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Protocol, TypeVar, TypeVarTuple, runtime_checkable

from smtpgate import mechanism_facts, metrics
from smtpgate.auth import legacy_hashes
from smtpgate.auth.accounts import open_account_store
from smtpgate.auth.authlog import AuthLog
from smtpgate.auth.cache import CredentialCache
from smtpgate.auth.credentials import (
    APP_PASSWORD_RE,
    ARGON2ID,
    CRAM_MD5,
    SCRAM_SCHEMES,
    CredentialDataError,
    decode_cram_md5,
    decode_scram,
    derive,
    encode_scram,
    wanted_schemes,
)
from smtpgate.auth.directory import (
    Account,
    AccountDirectory,
    AppPassword,
    StoreError,
    StoreUnavailable,
)
from smtpgate.auth.legacy_hashes import LEGACY
from smtpgate.auth.loop_reads import Missed, loop_reads_for
from smtpgate.auth.names import login_spellings, lookup_key, name_key, prepared_name
from smtpgate.auth.networks import in_networks, parse_ip, parse_networks
from smtpgate.auth.passwords import (
    PasswordHasher,
    PasswordMatch,
    StoredHashError,
    prepare_password,
    verify_on_one_thread_here,
)
from smtpgate.auth.principal import Principal
from smtpgate.auth.sender_profile import SenderProfile
from smtpgate.auth.verify_scheduler import (
    TRUSTED,
    Lane,
    VerificationScheduler,
    lower_thread_priority,
)
from smtpgate.config import AccountsConfig, AuthConfig, Config, PasswordsConfig
from smtpgate.sasl.base import (
    ClientCertificate,
    ConfirmIdentity,
    CredentialAnswer,
    CredentialQuery,
    LookupCramMd5,
    LookupScram,
    NotFound,
    ProofArrived,
    Verdict,
    VerifyCertificate,
    VerifyPassword,
    VerifyToken,
)
from smtpgate.sasl.scram import scram_credentials_from_password

log = logging.getLogger("smtpgate.auth.service")
T = TypeVar("T")
Ts = TypeVarTuple("Ts")

#: Account-read workers (see the module docstring for why two).
DB_THREADS = 2
#: Token-verifier workers. A verification may wait on the issuer (key set fetch,
#: introspection) for up to ``oauth.HTTP_TIMEOUT``; these threads do nothing
#: else, so an issuer that hangs holds up bearer logins only. In the loop's
#: default executor (until 2026-12) it held the threads every process shares
#: for a message's spool writes: a dozen OAUTHBEARER attempts from a dozen
#: addresses while the introspection endpoint hung kept every user's DATA
#: waiting 18 s.
OAUTH_THREADS = 8
#: Seconds last logins are gathered before they are written (``_write_logins``).
LOGINS_LATER = 1.0
#: Bookkeeping writes queued at most; past this (a database stuck for seconds
#: under a login storm) last-login updates are dropped and counted, rather than
#: queued without bound. Logins themselves are unaffected.
MAX_PENDING_WRITES = 10_000

# Reasons: for the auth log only, never sent to the client.
UNKNOWN_USER = "unknown user"
BAD_PASSWORD = "bad password"
ACCOUNT_LOCKED = "account locked"
NO_PASSWORD = "no password set for account"
AUTHZID_REFUSED = "authorization identity differs from account"
CRAM_MD5_NOT_ENABLED = "cram-md5 not enabled for account"
OAUTH_NOT_CONFIGURED = "oauth not configured"
PASSWORD_EXPIRED = "password expired"

#: Refusal classes of ``Resolution.refusal``: the outcome did not depend on the
#: secret, so the guard does not count it toward the account's lockout.
REFUSED_POLICY = "policy"
REFUSED_EXPIRED = "expired"
REFUSED_LOCKED = "locked"
#: A name of no account under CRAM-MD5: not a policy refusal (the metrics count it
#: as a failure), but counted as the attempt at an account that is not opted in to
#: CRAM-MD5 (``REFUSED_POLICY``, nearly every account) is: toward the address only.
REFUSED_UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Resolution:
    """``resolve_detailed``'s result: the answer for the mechanism, and notes."""

    answer: CredentialAnswer
    #: None, or one of the REFUSED_* classes.
    refusal: str | None = None
    #: The app password that verified, if one did.
    app_password: AppPassword | None = None
    #: The issuer of the bearer token that verified, if one did.
    oauth_issuer: str | None = None
    #: That token, and when it stops being accepted (``Principal``).
    oauth_token: str | None = field(default=None, repr=False)
    oauth_expires: float | None = None
    #: The identity a good credential named whether or not the login then went
    #: through (no such account, locked, another name given): a bearer token's, as
    #: the token has it; the account a verified client certificate maps to. The
    #: auth log's user name when the client gave none (``LoginAttempt``):
    #: OAUTHBEARER without ``a=`` and ``AUTH EXTERNAL =`` name nobody themselves.
    named_identity: str | None = None
    #: The account's sender profile, when it was read along with the login's
    #: account (a credential-cache hit: ``_verify_password``); else None.
    profile: SenderProfile | None = None


@dataclass(frozen=True, slots=True)
class AuthContext:
    """Where an AUTH attempt comes from; goes into the auth log."""

    listener: str
    client_ip: str
    client_port: int
    tls_version: str | None
    #: The session id: smtpgate's own, or the MTA's (Postfix's queue id, nginx's
    #: login attempt) for a front door.
    session_id: str
    #: "smtp" for smtpgate's own listeners, else the auth listener's protocol.
    front_door: str = "smtp"
    #: The TLS client certificate the session verified (EXTERNAL maps it).
    client_certificate: ClientCertificate | None = None
    #: Where the attempt's password verification queues: set by the login path
    #: from the guard's check (``verify_scheduler.py``); the front door leaves it.
    lane: Lane = TRUSTED


@dataclass(slots=True)
class AuthStats:
    """Counters for metrics and tests; only touched on the event-loop thread."""

    cache_hits: int = 0
    cache_misses: int = 0
    #: Argon2id verifications run, decoys included.
    hash_verifications: int = 0
    upgrades: int = 0
    tempfails: int = 0
    dropped_writes: int = 0
    #: Bookkeeping writes that the database refused or failed.
    failed_writes: int = 0


@runtime_checkable
class VerifiesTokens(Protocol):
    """What the service needs of a token verifier (``auth/oauth.TokenVerifier``).
    ``verify`` may be sync or async; its result has ``ok`` (bool), ``identity``
    (str) and ``reason`` (str) attributes, and may have ``issuer`` (str)."""

    def verify(self, token: str) -> object: ...


class _Temporary(Exception):
    """A backend fault found inside a handler; ``resolve`` turns it into a 454 answer."""


def _names_another(account: Account, authzid: str, login: str) -> bool:
    """True when a PLAIN or SCRAM ``authzid`` names someone other than ``account``,
    which ``login`` (the authcid) logged in as.

    We have no proxy authorization (RFC 4616 §2 and RFC 5802 §5.1 leave it to the
    server), so the authzid may only name the account itself: its address, or the
    name it logged in with (a directory's plain ``uid``, which clients that always
    send an authzid repeat), in any spelling a login name may have: letter case
    (``auth/names.py``) and SASLprep's mappings (NFD, full-width letters), as the
    user name itself is matched."""
    if not authzid:
        return False
    own = {account.name, name_key(prepared_name(login))}
    return not own & {name_key(authzid), name_key(prepared_name(authzid))}


def _untrusted_thread() -> None:
    """Initializer of the untrusted lane's threads (verify_scheduler.py): a lower
    CPU priority, and all of a hash's lanes on this one thread, so that a guesser's
    Argon2id does not take every core's caches at once (argon2_one_thread.py)."""
    lower_thread_priority()
    verify_on_one_thread_here()


def _mechanism_refusal(
    account: Account, mechanism: str, ctx: AuthContext | None = None
) -> tuple[str, str] | None:
    """Account-level policy, applied to every kind of query: (class, reason) or None."""
    if account.locked:
        # The why (an administrator's reason, or the directory's state: disabled,
        # expired, outside the group) goes to the logs only; the client's reply is
        # one and the same for every lock.
        why = account.lock_reason
        return REFUSED_LOCKED, f"{ACCOUNT_LOCKED}: {why}" if why else ACCOUNT_LOCKED
    if not account.allows(mechanism):
        return REFUSED_POLICY, f"mechanism {mechanism or '(unnamed)'} not allowed for account"
    if account.require_oauth and mechanism not in mechanism_facts.OAUTH:
        return REFUSED_POLICY, f"access policy: account requires OAuth, not {mechanism or '(unnamed)'}"
    if ctx is None:
        return None
    if account.allowed_listeners is not None and ctx.listener not in account.allowed_listeners:
        return REFUSED_POLICY, f"access policy: listener {ctx.listener} not allowed for account"
    if account.allowed_networks is not None and not in_networks(
        parse_ip(ctx.client_ip), parse_networks(account.allowed_networks)
    ):
        return REFUSED_POLICY, f"access policy: address {ctx.client_ip} not in the account's networks"
    return None


class AuthService:
    """Resolves credential queries against an ``AccountDirectory``.

    Not thread-safe: use it from one event loop.
    """

    def __init__(
        self,
        directory: AccountDirectory,
        accounts_cfg: AccountsConfig,
        auth_cfg: AuthConfig,
        log: AuthLog,
        token_verifier: object | None = None,
        *,
        passwords_cfg: PasswordsConfig | None = None,
        reads_on_loop: bool = True,
    ) -> None:
        self._directory = directory
        #: ``[passwords]``; a reload replaces it (``server/app.py``).
        self.passwords = passwords_cfg or PasswordsConfig()
        self._cfg = accounts_cfg
        # [auth].mechanisms and failure_floor are applied by the session layer;
        # kept here for the guard (rate limits, penalties) that will use them.
        self._auth_cfg = auth_cfg
        self._log = log
        if token_verifier is not None and not isinstance(token_verifier, VerifiesTokens):
            raise TypeError("token_verifier must have a verify(token) method")
        self._verifier: VerifiesTokens | None = token_verifier
        self._hasher = PasswordHasher(accounts_cfg)
        self._cache = CredentialCache(accounts_cfg.cache_ttl)
        #: Argon2 runs in flight, so identical concurrent attempts share one.
        self._inflight: dict[bytes, asyncio.Future[PasswordMatch]] = {}
        self._hash_pool = ThreadPoolExecutor(accounts_cfg.hash_threads, "smtpgate-hash")
        self._untrusted_pool = ThreadPoolExecutor(
            accounts_cfg.hash_threads, "smtpgate-hash-untrusted", initializer=_untrusted_thread
        )
        self._lanes = VerificationScheduler(accounts_cfg.hash_threads)
        self._read_pool = ThreadPoolExecutor(DB_THREADS, "smtpgate-db-read")
        #: Created on the first bearer login: most servers never verify a token.
        self._oauth_pool: ThreadPoolExecutor | None = None
        #: Seconds a read hop may take before its login gets 454 (the directory's
        #: ``read_bound``; None: the directory bounds its own calls).
        self._read_bound: float | None = getattr(directory, "read_bound", None)
        #: Raises StoreUnavailable at once while the directory is known not to
        #: answer (PostgreSQL's ``fail_fast``); None: it has no such check.
        self._fail_fast: Callable[[], None] | None = getattr(directory, "fail_fast", None)
        #: Row reads made on the loop (a local SQLite directory only: loop_reads.py).
        self._loop_reads = loop_reads_for(directory, "account database") if reads_on_loop else None
        self._write_pool = ThreadPoolExecutor(1, "smtpgate-db-write")
        self._background: set[asyncio.Future[object]] = set()
        self._pending_writes = 0
        #: Last logins not written yet, the newest per account (``_record_login``).
        self._logins: dict[str, tuple[str, datetime]] = {}
        self._logins_writing = False
        #: Bookkeeping writes failed since the last one that succeeded (``_update_failed``).
        self._updates_failing = 0
        #: Set by ``flush``: write the gathered logins now.
        self._logins_now = asyncio.Event()
        self._upgrading: set[str] = set()
        self._closed = False
        self.stats = AuthStats()
        # Make the decoy hash now, off the loop, so the first unknown account
        # does not pay for it (and stand out by taking twice as long).
        self._hash_pool.submit(self._hasher.prepare_decoy)

    # --- the public API ------------------------------------------------------------

    async def resolve(self, query: CredentialQuery, ctx: AuthContext) -> CredentialAnswer:
        """Answer ``query``; never raises (except cancellation).

        Verdict for VerifyPassword / VerifyToken / ConfirmIdentity / ProofArrived; ScramCredentials,
        CramMd5Secret or NotFound for the look-ups. Backend faults give
        ``temporary=True``.
        """
        return (await self.resolve_detailed(query, ctx)).answer

    async def resolve_detailed(self, query: CredentialQuery, ctx: AuthContext) -> Resolution:
        """``resolve`` with the refusal class and the app password used (see the
        module docstring); never raises (except cancellation)."""
        lookup = isinstance(query, (LookupScram, LookupCramMd5))
        try:
            if self._closed:
                raise _Temporary("auth service is shut down")
            match query:
                case VerifyPassword():
                    return await self._verify_password(query, ctx)
                case LookupScram():
                    return await self._lookup_scram(query, ctx)
                case LookupCramMd5():
                    return await self._lookup_cram_md5(query, ctx)
                case ConfirmIdentity():
                    return await self._confirm(query, ctx)
                case VerifyToken():
                    return await self._verify_token(query, ctx)
                case VerifyCertificate():
                    return await self._verify_certificate(query, ctx)
                case ProofArrived():
                    # The guard's re-check is the login path's (auth/login.py);
                    # the directory has nothing to say before the proof.
                    return Resolution(Verdict(ok=True))
            reason = f"unsupported query {type(query).__name__}"
        except (StoreError, StoredHashError, CredentialDataError, _Temporary) as e:
            reason = str(e)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # our caller is cancelled: let it unwind
            reason = "auth service is shut down"  # close() dropped our queued work
        except Exception as e:
            log.exception("session %s: auth query %s failed", ctx.session_id, type(query).__name__)
            reason = f"internal error ({type(e).__name__})"
        self.stats.tempfails += 1
        if lookup:
            return Resolution(NotFound(reason=reason, temporary=True))
        return Resolution(Verdict(ok=False, reason=reason, temporary=True))

    async def login_identity(self, username: str) -> str:
        """The name the guard counts ``username``'s attempts under: the account it
        logs in as, or its normalised spelling (``AccountDirectory.login_identity``).

        The name is SASLprep'd first: every spelling that logs in to one account
        (``_load``: "josé" in NFD or in full-width letters) must share its count,
        or each would get its own allowance of guesses.

        Raises:
            StoreError: the directory failed (a bind-only one searches for it).
        """
        if self._closed:
            raise StoreError("auth service is shut down")
        username = prepared_name(username)
        if not self._directory.verifies_passwords:
            return self._directory.login_identity(username)  # canonical already: no I/O
        try:
            return await self._read(self._directory.login_identity, username)
        except StoreError:
            raise
        except Exception as e:  # a bug must cost this attempt, not the session
            log.exception("login identity of %r failed", username)
            raise StoreError(f"internal error ({type(e).__name__})") from e

    async def access_refusal(self, identity: str, mechanism: str, ctx: AuthContext) -> str | None:
        """Why ``identity``, logged in elsewhere with ``mechanism``, may not act from
        ``ctx`` (a lock, conditional access, an expired password), or None. For a
        front door that vets a login another server checked (the Postfix policy
        service); an account the directory does not have: None (nothing to apply).
        ``StoreError`` on a fault.

        The password's age applies as at smtpgate's own AUTH, to a password
        mechanism; a token or a certificate is no password. The other server does not
        say which password it took: after PLAIN or LOGIN an app password the login
        could have used (live, allowed with the mechanism and from ``ctx``) lets the
        account through, as it would have logged in here with it."""
        name = lookup_key(identity)

        def load() -> str | None:
            account = self._directory.get_account(name)
            if account is None:
                return None
            if found := _mechanism_refusal(account, mechanism, ctx):
                return found[1]
            if (mechanism in mechanism_facts.OAUTH
                    or mechanism in mechanism_facts.CLIENT_CERTIFICATE):
                return None
            expired = self._expired(account)
            if expired is None or mechanism not in mechanism_facts.CLEARTEXT:
                return expired
            now = datetime.now(UTC)
            ip = parse_ip(ctx.client_ip)
            for app in self._directory.app_passwords(account.name):
                if (not app.expired(now)
                        and (app.mechanisms is None or mechanism in app.mechanisms)
                        and (app.networks is None
                             or in_networks(ip, parse_networks(app.networks)))):
                    return None
            return expired

        return await self._read_row(load)

    async def session_refusal(
        self, principal: Principal, ctx: AuthContext, logged_in: datetime
    ) -> tuple[str | None, SenderProfile | None]:
        """A session's account read again (``[auth] session_recheck``): why the session
        of ``principal``, logged in at ``logged_in``, must end now, or None and its
        current sender profile; ``StoreError`` on a fault.

        It ends for what would refuse the login now: the account removed or locked, a
        mechanism or access rule that no longer lets it in from ``ctx``; for a login
        with the account's own password, that password changed or expired since (an
        app password, a token or a certificate is not the password); for a login with
        an app password, that app password revoked, expired or not allowed from
        ``ctx``'s address any more."""
        name = lookup_key(principal.account)
        mechanism = principal.mechanism
        app = principal.app_password
        if (token_refusal := await self._token_refusal(principal)) is not None:
            return token_refusal, None
        by_password = app is None and not (
            mechanism in mechanism_facts.OAUTH or mechanism in mechanism_facts.CLIENT_CERTIFICATE)

        def load() -> tuple[str | None, SenderProfile | None]:
            account = self._directory.get_account(name)
            if account is None:
                return "account removed", None
            if found := _mechanism_refusal(account, mechanism, ctx):
                return found[1], None
            if by_password:
                changed = account.password_changed
                if changed is not None and changed > logged_in:
                    return "password changed", None
                if expired := self._expired(account):
                    return expired, None
            if app is not None:
                record = next((a for a in self._directory.app_passwords(name) if a.id == app.id),
                              None)
                label = f"app password {app.name!r}"
                if record is None:
                    return f"{label} revoked", None
                if record.expired(datetime.now(UTC)):
                    return f"{label} expired", None
                if record.networks is not None and not in_networks(
                        parse_ip(ctx.client_ip), parse_networks(record.networks)):
                    return f"{label} not allowed from {ctx.client_ip}", None
            return None, self._profile(name, account)

        return await self._read_row(load)

    async def _token_refusal(self, principal: Principal) -> str | None:
        """A session logged in with a bearer token: the token verified again (its
        exp, its signature against the current key set, and with introspection
        whether the issuer still calls it active); why it no longer lets the
        session in, or None. The verifier unreachable is a ``StoreUnavailable``
        (the session goes on, as for a directory fault)."""
        token = principal.oauth_token
        if token is None or self._verifier is None:
            return None
        try:
            result = await self._call_verifier(token)
        except Exception as e:
            raise StoreUnavailable(f"token verifier failed: {type(e).__name__}: {e}") from e
        if getattr(result, "ok", False) is True:
            return None
        return f"token no longer valid: {getattr(result, 'reason', '') or 'rejected'}"

    async def sender_profile(self, identity: str) -> SenderProfile:
        """What ``identity`` may send as, and its rates; ``StoreError`` on a fault."""

        def load() -> SenderProfile:
            name = lookup_key(identity)
            return self._profile(name, self._directory.get_account(name))

        return await self._read_row(load)

    def _profile(self, name: str, account: Account | None) -> SenderProfile:
        """Worker thread: ``name``'s sender profile, its account row already read.

        An alias is never another account's name (docs/policy.md). ``alias add``
        refuses one, but an account made after the alias (``user add``, an import,
        a new directory entry) would otherwise leave the alias's owner sending as
        that account; so an alias that names an account is not owned. A directory
        entry's other login names (a second ``mail`` value) name its own account."""
        aliases = frozenset(
            alias for alias in self._directory.aliases(name)
            if lookup_key(alias) == name or self._names_no_other_account(alias, name)
        )
        return SenderProfile(
            name=name,
            aliases=aliases,
            domains=frozenset(self._directory.granted_domains(name)),
            max_messages_per_hour=account.max_messages_per_hour if account else None,
            max_recipients_per_hour=account.max_recipients_per_hour if account else None,
            owns_name=account.owns_name if account else True,
        )

    async def others_addresses(self, identity: str, addresses: list[str]) -> list[str]:
        """Of ``addresses`` (canonical, in ``identity``'s granted domains), those that
        are another account's name or alias: a domain grant does not cover them, as
        an address's own entry wins over a domain's in Postfix's
        ``smtpd_sender_login_maps`` (docs/policy.md). A subaddress of another
        account's address (``bob+x@``) is taken too: a reader sees bob, and Postfix
        with ``recipient_delimiter = +`` finds bob's entry first. ``StoreError`` on
        a fault."""

        def load() -> list[str]:
            name = lookup_key(identity)
            return [a for a in addresses
                    if any(self._anothers(spelling, name) for spelling in _spellings(a))]

        return await self._read_row(load)

    def _anothers(self, address: str, name: str) -> bool:
        """Worker thread: whether ``address`` is an account or alias not ``name``'s."""
        owner = self._directory.alias_owner(address)
        return not self._names_no_other_account(address, name) or (
            owner is not None and not self._names_no_other_account(owner, name))

    def _names_no_other_account(self, alias: str, name: str) -> bool:
        """Worker thread: whether ``alias`` is no account, or ``name``'s own."""
        other = self._directory.get_account(lookup_key(alias))
        return other is None or other.name == name

    def record(
        self, ctx: AuthContext, mechanism: str, username: str, result: str, reason: str
    ) -> None:
        """Write the auth-log record of one finished AUTH attempt.

        ``result`` is "success", "failure", "tempfail", "cancelled" or "refused".

        Raises:
            ValueError: any other ``result`` (a bug in the caller).
        """
        self._log.write(
            self._log.make_record(
                listener=ctx.listener,
                client_ip=ctx.client_ip,
                client_port=ctx.client_port,
                tls=ctx.tls_version,
                mechanism=mechanism,
                username=username,
                result=result,
                reason=reason,
                session=ctx.session_id,
                front_door=ctx.front_door,
            )
        )

    async def flush(self) -> None:
        """Wait until background writes (last login, secret upgrades) are done; the
        gathered last logins are written at once."""
        self._logins_now.set()
        try:
            while self._background:
                await asyncio.gather(*list(self._background), return_exceptions=True)
        finally:
            self._logins_now.clear()

    def reopen_log(self) -> None:
        """Open the auth log file anew, after log rotation moved it (SIGHUP).

        Raises:
            OSError: the path cannot be opened; the old file stays in use.
        """
        self._log.reopen()

    async def close(self) -> None:
        """Drain background work, stop the worker threads, close the directory and log."""
        if self._closed:
            return
        self._closed = True
        await self.flush()
        pools = [self._hash_pool, self._untrusted_pool, self._read_pool, self._write_pool]
        if self._oauth_pool is not None:
            pools.append(self._oauth_pool)

        def shutdown() -> None:
            for pool in pools:
                pool.shutdown(wait=True, cancel_futures=True)

        await asyncio.get_running_loop().run_in_executor(None, shutdown)
        self._directory.close()
        self._log.close()

    # --- executors -------------------------------------------------------------------

    async def _run(self, pool: ThreadPoolExecutor, fn: Callable[[*Ts], T], *args: *Ts) -> T:
        if self._closed:  # set on this thread before the pools shut down
            raise _Temporary("auth service is shut down")
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    async def _read(self, fn: Callable[[*Ts], T], *args: *Ts) -> T:
        """``fn(*args)`` on a read thread, within the directory's ``read_bound``: a
        server that stops answering without closing the connection (frozen, its
        host gone, a network cut) costs the login 454 after the bound, where the
        thread could wait on its socket for many minutes, the logins queued
        behind it too; a read queued and not started by then is withdrawn.

        Raises:
            StoreUnavailable: no answer within the bound.
        """
        started = time.monotonic()
        failed = True
        try:
            if self._fail_fast is not None:  # on the loop: the threads may be stuck
                self._fail_fast()
            if self._read_bound is None:
                answer = await self._run(self._read_pool, fn, *args)
            else:
                try:
                    answer = await asyncio.wait_for(
                        self._run(self._read_pool, fn, *args), self._read_bound)
                except TimeoutError:
                    raise StoreUnavailable(
                        f"account directory: no answer within {self._read_bound:g} s") from None
            failed = False
            return answer
        except StoreUnavailable as e:
            failed = e.backend_failed
            raise
        finally:
            metrics.backend_call("directory", "read", time.monotonic() - started,
                                 failed=failed)

    async def _read_row(self, fn: Callable[[*Ts], T], *args: *Ts) -> T:
        """``_read`` for a read of rows (never a bind, a hash or a write): made on
        the loop when the directory is a local SQLite file (``loop_reads``)."""
        inline = self._loop_reads
        if inline is not None and not self._closed:
            started = time.monotonic()
            answer = inline.read(fn, *args)
            if not isinstance(answer, Missed):
                metrics.backend_call("directory", "read", time.monotonic() - started,
                                     failed=False)
                return answer
        return await self._read(fn, *args)

    async def _hash(self, fn: Callable[[*Ts], T], *args: *Ts, lane: Lane = TRUSTED) -> T:
        """``fn(*args)`` on a hash thread once ``lane`` has a slot (verify_scheduler.py).
        The slot is held until the thread is done, even if the caller went away,
        so that no more than ``hash_threads`` runs ever compete for the CPU."""
        if self._closed:
            raise _Temporary("auth service is shut down")
        lanes = self._lanes
        await lanes.acquire(lane)
        try:
            if self._closed:  # closed while this waited: the pools are gone
                raise _Temporary("auth service is shut down")
            pool = self._hash_pool if lane.trusted else self._untrusted_pool
            job = pool.submit(fn, *args)
        except BaseException:
            lanes.release(lane)
            raise
        loop = asyncio.get_running_loop()

        def done(_: concurrent.futures.Future[T]) -> None:
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits
                loop.call_soon_threadsafe(lanes.release, lane)

        job.add_done_callback(done)
        return await asyncio.wrap_future(job)

    def _track(self, fut: asyncio.Future[object]) -> None:
        self._background.add(fut)
        fut.add_done_callback(self._background_done)

    def _background_done(self, fut: asyncio.Future[object]) -> None:
        self._background.discard(fut)
        if not fut.cancelled() and (exc := fut.exception()) is not None:
            self._update_failed("", exc)

    def _update_failed(self, what: str, exc: BaseException) -> None:
        """A bookkeeping write failed. Logged once per episode: a database that
        reads but refuses writes (a PostgreSQL standby that a failover left the
        DSN on, ``default_transaction_read_only``, a full disk) fails the write
        of every login that succeeds, and a warning each filled the log at the
        login rate. The episode ends at the next write that succeeds
        (``_update_succeeded``), which says how many failed meanwhile."""
        self.stats.failed_writes += 1
        self._updates_failing += 1
        if self._updates_failing == 1:
            log.warning("background account update failed: %s%s (logins go on; further "
                        "failed updates are counted, not logged, until one succeeds)",
                        what, exc)

    def _update_succeeded(self) -> None:
        if self._updates_failing:
            log.warning("background account updates succeed again; %d failed meanwhile "
                        "(last logins, app password uses or upgraded hashes not written)",
                        self._updates_failing)
            self._updates_failing = 0

    def _write_later(self, fn: Callable[[*Ts], object], *args: *Ts) -> None:
        """Queue a bookkeeping write on the single writer thread (FIFO)."""
        if self._closed or self._pending_writes >= MAX_PENDING_WRITES:
            self.stats.dropped_writes += 1
            return
        self._pending_writes += 1
        fut: asyncio.Future[object] = asyncio.get_running_loop().run_in_executor(
            self._write_pool, fn, *args
        )

        def done(f: asyncio.Future[object]) -> None:
            self._pending_writes -= 1
            if not f.cancelled() and f.exception() is None:
                self._update_succeeded()

        fut.add_done_callback(done)
        self._track(fut)

    def _spawn(self, coro: Coroutine[object, object, object]) -> None:
        self._track(asyncio.ensure_future(coro))

    # --- shared steps ----------------------------------------------------------------

    def _load(self, name: str, scheme: str) -> tuple[Account | None, str | None]:
        """Worker thread: the account and one of its credentials, in one hop.

        A name no account has is tried SASLprep'd (RFC 4616 §2 prepares PLAIN's
        authcid, RFC 5802 §5.1 SCRAM's user name): "josé" sent in NFD finds the
        account SCRAM finds, and an account whose name SASLprep would change
        still logs in by its own spelling."""
        account = self._find_account(name)
        if account is None or scheme not in account.schemes:
            return account, None
        return account, self._directory.get_credential(account.name, scheme)

    def _find_account(self, name: str) -> Account | None:
        """Worker thread: the account a login by ``name`` logs in to, by each of its
        spellings in turn (``names.login_spellings``: as given, then SASLprep'd)."""
        for spelling in login_spellings(name):
            if (account := self._directory.get_account(spelling)) is not None:
                return account
        return None

    def _load_with_profile(
        self, name: str, scheme: str
    ) -> tuple[Account | None, str | None, SenderProfile | None]:
        """Worker thread: ``_load`` and the account's sender profile, in one hop."""
        account, encoded = self._load(name, scheme)
        return account, encoded, None if account is None else self._profile(account.name, account)

    async def _burn(self, password: str, lane: Lane) -> None:
        """Do the work of a verification that is going to fail anyway, in the lane
        a real one would take (an unknown account must look like a wrong password)."""
        self.stats.hash_verifications += 1
        await self._hash(self._hasher.verify_decoy, password, lane=lane)

    def _record_login(self, account: Account, mechanism: str) -> None:
        """Queue the account's last login. Group-committed: the logins of the next
        ``LOGINS_LATER`` seconds (and those that arrive while a write is under way)
        go out together, the newest per account, so that a busy server's logins
        cost the writer one hop a second instead of one each. Bookkeeping only
        (``smtpgate user list``, the web admin): nothing waits for it."""
        if self._closed:
            self.stats.dropped_writes += 1
            return
        self._logins[account.name] = (mechanism, datetime.now(UTC))
        if not self._logins_writing:
            self._logins_writing = True
            self._spawn(self._write_logins())

    async def _write_logins(self) -> None:
        """Write queued last logins until none is left. Not stopped by ``close``,
        which waits for it (``flush``) before the writer thread goes."""
        loop = asyncio.get_running_loop()
        try:
            while self._logins:
                if not self._logins_now.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._logins_now.wait(), LOGINS_LATER)
                batch, self._logins = self._logins, {}
                written, failed = await loop.run_in_executor(
                    self._write_pool, self._write_login_batch, batch)
                if written:
                    self._update_succeeded()
                for name, e in failed:
                    self._update_failed(f"last login of {name}: ", e)
        finally:
            self._logins_writing = False

    def _write_login_batch(
        self, batch: dict[str, tuple[str, datetime]]
    ) -> tuple[int, list[tuple[str, StoreError]]]:
        """On the writer thread: one record per account; a failure costs its own.
        Returns how many were written, and the failures (logged on the loop)."""
        written = 0
        failed: list[tuple[str, StoreError]] = []
        for name, (mechanism, when) in batch.items():
            try:
                self._directory.record_login(name, mechanism, when)
                written += 1
            except StoreError as e:
                failed.append((name, e))
        return written, failed

    # --- handlers --------------------------------------------------------------------

    def _expired(self, account: Account) -> str | None:
        expiry = account.password_expiry(self.passwords.max_age_days)
        if expiry is not None and expiry <= datetime.now(UTC):
            return f"{PASSWORD_EXPIRED} at {expiry.strftime('%Y-%m-%d %H:%M')} UTC"
        return None

    async def _verify_password(self, q: VerifyPassword, ctx: AuthContext) -> Resolution:
        mechanism = q.mechanism.upper()
        lane = ctx.lane
        name = lookup_key(q.username)
        profile = None
        if self._cache.holds(name, q.password):
            # Most likely a login that succeeds (only a password that verified is
            # cached): its first MAIL's profile comes in the same hop. A guess
            # never gets here, so guessing costs no extra read.
            account, encoded, profile = await self._read_row(self._load_with_profile, name, ARGON2ID)
        else:
            account, encoded = await self._read_row(self._load, name, ARGON2ID)
        if account is None:
            await self._burn(q.password, lane)
            return Resolution(Verdict(ok=False, reason=UNKNOWN_USER))
        refusal = _mechanism_refusal(account, mechanism, ctx)
        if refusal is None and _names_another(account, q.authzid, q.username):
            refusal = (REFUSED_POLICY, AUTHZID_REFUSED)
        if refusal is not None:
            await self._burn(q.password, lane)
            return Resolution(Verdict(ok=False, reason=refusal[1]), refusal=refusal[0])
        if APP_PASSWORD_RE.fullmatch(q.password):
            app = await self._read_row(self._directory.match_app_password, account.name, q.password)
            if app is not None:
                return self._app_login(account, app, mechanism, ctx)
        legacy = None
        if encoded is None and LEGACY in account.schemes:
            # An imported hash (``legacy_hashes``), until this login upgrades it.
            legacy = await self._read_row(self._directory.get_credential, account.name, LEGACY)
        if encoded is None and legacy is None and not self._directory.verifies_passwords:
            await self._burn(q.password, lane)
            return Resolution(Verdict(ok=False, reason=NO_PASSWORD))
        if expired := self._expired(account):
            await self._burn(q.password, lane)
            return Resolution(Verdict(ok=False, reason=expired), refusal=REFUSED_EXPIRED)
        stored = encoded if legacy is None else legacy  # what a verification reads
        if self._cache.check(account.name, q.password, account.generation, stored):
            self.stats.cache_hits += 1
        else:
            self.stats.cache_misses += 1
            if legacy is not None:
                match = await self._check_legacy(legacy, q.password, lane)
            else:
                match = await self._check_password(account, encoded, q.password, lane)
            if match is PasswordMatch.NONE:
                return Resolution(Verdict(ok=False, reason=BAD_PASSWORD))
            self._cache.put(account.name, q.password, account.generation, stored)
            # A legacy string is never a current Argon2id hash, nor one made over
            # the password as sent rather than prepared: an upgrade follows.
            self._maybe_upgrade(account, q.password, encoded if legacy is None else legacy,
                                rehash=match is PasswordMatch.AS_SENT)
        self._record_login(account, mechanism)
        return Resolution(Verdict(ok=True, identity=account.name), profile=profile)

    async def _check_legacy(self, legacy: str, password: str, lane: Lane) -> PasswordMatch:
        """An imported hash (``legacy_hashes``) checked against the password as sent,
        then, if that fails and SASLprep changes it, against the prepared password.

        The other system hashed what its user typed, unprepared, so the form as
        sent is the likely match. The prepared form is the one smtpgate's own
        hashes and SCRAM keys are made over: a password set there with a plain
        space still logs in typed with U+00A0 (a Mac's Option-Space), as it will
        once this login has re-hashed it (one more run, for such passwords only).
        A hash made over a U+00A0 itself matches only that until then: which of
        the spaces typed now was one is not known."""
        self.stats.hash_verifications += 1
        if await self._hash(legacy_hashes.verify, legacy, password, lane=lane):
            return PasswordMatch.AS_SENT
        prepared = prepare_password(password)
        if prepared == password:
            return PasswordMatch.NONE
        self.stats.hash_verifications += 1
        ok = await self._hash(legacy_hashes.verify, legacy, prepared, lane=lane)
        return PasswordMatch.PREPARED if ok else PasswordMatch.NONE

    async def _check_password(
        self, account: Account, encoded: str | None, password: str, lane: Lane
    ) -> PasswordMatch:
        """The directory's hash, verified here; or, for a bind-only directory (no
        hash), the directory's own check (of the password as sent: the directory
        prepares it as it prepared what it stores)."""
        if encoded is None:
            ok = await self._read(self._directory.verify_password, account.name, password)
            return PasswordMatch.PREPARED if ok else PasswordMatch.NONE
        return await self._verify_coalesced(account.name, encoded, password, lane)

    async def _verify_coalesced(
        self, name: str, encoded: str, password: str, lane: Lane
    ) -> PasswordMatch:
        """Argon2 verification, run once for identical concurrent attempts.

        A mail client often opens several connections at once with a cold cache;
        without this each of them queues its own Argon2 run behind the others
        (seconds with default parameters). Only attempts with the same account,
        stored hash and password share a result: the key is the cache's keyed HMAC.
        """
        key = self._cache.digest(name, password) + encoded.encode()
        while (pending := self._inflight.get(key)) is not None:
            try:
                return await asyncio.shield(pending)
            except asyncio.CancelledError:
                if pending.cancelled():
                    continue  # its owner went away; run it here instead
                raise
        fut: asyncio.Future[PasswordMatch] = asyncio.get_running_loop().create_future()
        fut.add_done_callback(lambda f: f.cancelled() or f.exception())  # never "unretrieved"
        self._inflight[key] = fut
        try:
            self.stats.hash_verifications += 1
            ok = await self._hash(self._hasher.match, encoded, password, lane=lane)
        except asyncio.CancelledError:
            fut.cancel()
            raise
        except BaseException as e:
            fut.set_exception(e)
            raise
        else:
            fut.set_result(ok)
            return ok
        finally:
            self._inflight.pop(key, None)

    def _app_login(
        self, account: Account, app: AppPassword, mechanism: str, ctx: AuthContext
    ) -> Resolution:
        label = f"app password {app.name!r}"
        now = datetime.now(UTC)
        if app.expired(now):
            return Resolution(Verdict(ok=False, reason=f"{label} expired"), refusal=REFUSED_EXPIRED)
        if app.mechanisms is not None and mechanism not in app.mechanisms:
            return Resolution(
                Verdict(ok=False, reason=f"access policy: {label} not allowed with {mechanism}"),
                refusal=REFUSED_POLICY,
            )
        if app.networks is not None and not in_networks(
            parse_ip(ctx.client_ip), parse_networks(app.networks)
        ):
            return Resolution(
                Verdict(ok=False, reason=f"access policy: {label} not allowed from {ctx.client_ip}"),
                refusal=REFUSED_POLICY,
            )
        self._write_later(self._directory.record_app_password_use, app.id, now, ctx.client_ip)
        self._record_login(account, mechanism)
        return Resolution(Verdict(ok=True, identity=account.name), app_password=app)

    def _maybe_upgrade(
        self, account: Account, password: str, encoded: str | None, *, rehash: bool = False
    ) -> None:
        """After a good PLAIN/LOGIN password: derive what the account lacks (SCRAM
        keys of accounts made before them or kept by a bind-only directory, the
        CRAM-MD5 secret of an account that opted in since) and re-hash an Argon2id
        hash made with old parameters, or (``rehash``) over the password as sent
        rather than prepared. ``encoded`` None: the directory checked the password
        itself, and no hash of it is made."""
        missing = set(wanted_schemes(account.cram_md5_enabled) - account.schemes)
        if encoded is None:
            missing.discard(ARGON2ID)
        elif rehash or self._hasher.needs_rehash(encoded):
            missing.add(ARGON2ID)
        held = frozenset(s for s in SCRAM_SCHEMES.values() if s in account.schemes) - missing
        if self._cfg.withheld_mechanisms & mechanism_facts.SCRAM:
            # SCRAM is not offered ([accounts.ldap] scram = false): keys nobody can
            # use would only be password-derived material kept for nothing.
            missing -= set(SCRAM_SCHEMES.values())
            held = frozenset()
        if (missing or held) and account.name not in self._upgrading and not self._closed:
            self._upgrading.add(account.name)
            self._spawn(self._upgrade(account, password, frozenset(missing), held))

    async def _upgrade(self, account: Account, password: str, schemes: frozenset[str],
                       held_scram: frozenset[str] = frozenset()) -> None:
        try:
            creds = await self._hash(
                partial(derive, strict=False), password, schemes, self._cfg, self._hasher
            ) if schemes else {}
            creds.update(await self._fewer_iterations(account.name, password, held_scram))
            # Guarded by generation: if the password changed while we derived,
            # these secrets belong to the old one and are not stored.
            if creds:
                self._write_later(
                    partial(self._directory.put_credentials, generation=account.generation),
                    account.name,
                    creds,
                )
                self.stats.upgrades += 1
        finally:
            self._upgrading.discard(account.name)

    async def _fewer_iterations(self, name: str, password: str,
                                schemes: frozenset[str]) -> dict[str, str]:
        """SCRAM keys of ``schemes`` made with fewer iterations than
        ``accounts.scram_iterations`` now asks, made again from the password just
        verified, with the same salt.

        Why: after the count is raised, an unknown name announces the new count
        (the decoy) while an account's old keys announce the old one, so a prober
        could tell accounts from unknown names until each password changed. The
        salt stays, so nothing else a prober sees changes at the owner's login."""
        out: dict[str, str] = {}
        by_scheme = {scheme: hash_name for hash_name, scheme in SCRAM_SCHEMES.items()}
        for scheme in sorted(schemes):
            data = await self._read_row(self._directory.get_credential, name, scheme)
            if data is None:
                continue
            try:
                old = decode_scram(data)
            except CredentialDataError:
                continue  # the login that reads it says so
            if old.iterations >= self._cfg.scram_iterations:
                continue
            try:
                new = await self._hash(scram_credentials_from_password, password,
                                       by_scheme[scheme], self._cfg.scram_iterations, old.salt)
            except ValueError:
                continue  # SASLprep refuses the password: SCRAM never worked with it
            out[scheme] = encode_scram(new)
        return out

    def _lookup_refusal(
        self, account: Account, mechanism: str, ctx: AuthContext
    ) -> Resolution | None:
        if refusal := _mechanism_refusal(account, mechanism, ctx):
            return Resolution(NotFound(reason=refusal[1]), refusal=refusal[0])
        if expired := self._expired(account):
            return Resolution(NotFound(reason=expired), refusal=REFUSED_EXPIRED)
        return None

    async def _lookup_scram(self, q: LookupScram, ctx: AuthContext) -> Resolution:
        scheme = SCRAM_SCHEMES.get(q.hash_name)
        if scheme is None:
            raise _Temporary(f"no SCRAM scheme for hash {q.hash_name!r}")
        # Every NotFound names the one spelling of the name (``name_key``), so the
        # decoy salt is the same for each spelling of it, as a real account's is.
        key = lookup_key(q.username)
        decoy = name_key(key)
        account, data = await self._read_row(self._load, key, scheme)
        if account is None:
            return Resolution(NotFound(reason=UNKNOWN_USER, name=decoy))
        if refusal := _mechanism_refusal(account, q.mechanism.upper(), ctx):
            return Resolution(NotFound(reason=refusal[1], name=decoy), refusal=refusal[0])
        if expired := self._expired(account):
            return Resolution(NotFound(reason=expired, name=decoy), refusal=REFUSED_EXPIRED)
        if data is None:
            why = f"no {scheme} keys for account (made at next PLAIN/LOGIN login)"
            return Resolution(NotFound(reason=why, name=decoy))
        return Resolution(decode_scram(data))

    async def _lookup_cram_md5(self, q: LookupCramMd5, ctx: AuthContext) -> Resolution:
        account, data = await self._read_row(self._load, lookup_key(q.username), CRAM_MD5)
        if account is None:
            # Counted as at an account not opted in: were a name of no account
            # counted toward its lockout, its eleventh guess would get 454 where a
            # real account's gets 535, telling a prober which names exist. No
            # digest can log in to either, so nothing is guessed.
            return Resolution(NotFound(reason=UNKNOWN_USER), refusal=REFUSED_UNKNOWN)
        if refused := self._lookup_refusal(account, q.mechanism.upper() or "CRAM-MD5", ctx):
            return refused
        if not account.cram_md5_enabled:
            return Resolution(NotFound(reason=CRAM_MD5_NOT_ENABLED), refusal=REFUSED_POLICY)
        if data is None:
            return Resolution(
                NotFound(reason="no cram-md5 secret for account (made at next password change)")
            )
        return Resolution(decode_cram_md5(data))

    async def _confirm(self, q: ConfirmIdentity, ctx: AuthContext) -> Resolution:
        mechanism = q.mechanism.upper()
        # Found as the lookup before it found it (``_load``): CRAM-MD5 sends the
        # name as typed, and ``ａｌｉｃｅ`` in full-width letters found alice's
        # secret, then "unknown user" here (535) where PLAIN logged in.
        account = await self._read_row(self._find_account, lookup_key(q.username))
        if account is None:
            return Resolution(Verdict(ok=False, reason=UNKNOWN_USER))
        refusal = _mechanism_refusal(account, mechanism, ctx)
        if refusal is None and _names_another(account, q.authzid, q.username):
            refusal = (REFUSED_POLICY, AUTHZID_REFUSED)
        if refusal is not None:
            return Resolution(Verdict(ok=False, reason=refusal[1]), refusal=refusal[0])
        self._record_login(account, mechanism)
        return Resolution(Verdict(ok=True, identity=account.name))

    async def _one_account(self, login: str, name: str) -> bool:
        """Whether ``login``, the name a bearer or EXTERNAL client gave, logs in to
        the account ``name`` its token or certificate names: the same address in
        any spelling, or, with a directory, another login name of the entry (the
        uid its owner logs in with by password; two searches, made only when the
        names differ)."""
        if any(lookup_key(spelling) == name for spelling in login_spellings(login)):
            return True  # SASLprep'd as PLAIN's authzid is (``_names_another``)
        if not self._directory.verifies_passwords:
            return False  # names are stored canonical: one spelling per account
        given = await self._read(self._directory.login_identity, prepared_name(login))
        return given == await self._read(self._directory.login_identity, name)

    async def _verify_token(self, q: VerifyToken, ctx: AuthContext) -> Resolution:
        if self._verifier is None:
            return Resolution(Verdict(ok=False, reason=OAUTH_NOT_CONFIGURED))
        try:
            result = await self._call_verifier(q.token)
        except Exception as e:
            raise _Temporary(f"token verifier failed: {type(e).__name__}: {e}") from e
        if getattr(result, "ok", False) is not True:
            why = str(getattr(result, "reason", "") or "")
            reason = f"token rejected: {why}" if why else "token rejected"
            error = str(getattr(result, "error", "") or "")
            return Resolution(Verdict(ok=False, reason=reason, token_error=error))
        identity = str(getattr(result, "identity", "") or "")
        if not identity:
            return Resolution(Verdict(ok=False, reason="token names no identity"))
        name = lookup_key(identity)
        if q.username and not await self._one_account(q.username, name):
            differs = "token identity differs from the username given"
            return Resolution(Verdict(ok=False, reason=differs), named_identity=identity)
        # A token proves an identity; sending mail still needs a local account,
        # whose lock state and access policy apply as for any login.
        account = await self._read_row(self._directory.get_account, name)
        if account is None:
            return Resolution(Verdict(ok=False, reason=UNKNOWN_USER), named_identity=identity)
        if refusal := _mechanism_refusal(account, q.mechanism.upper(), ctx):
            return Resolution(Verdict(ok=False, reason=refusal[1]), refusal=refusal[0],
                              named_identity=identity)
        self._record_login(account, q.mechanism.upper())
        issuer = str(getattr(result, "issuer", "") or "")
        expires = getattr(result, "expires", None)
        return Resolution(Verdict(ok=True, identity=account.name), oauth_issuer=issuer or None,
                          oauth_token=q.token,
                          oauth_expires=float(expires) if isinstance(expires, int | float)
                          else None)

    async def _verify_certificate(self, q: VerifyCertificate, ctx: AuthContext) -> Resolution:
        """EXTERNAL: the account the session's verified certificate maps to, by its
        registered fingerprint or (``client_cert_san_login``) by its SAN email; a
        removed fingerprint is refused either way (docs/mechanisms.md)."""
        cert = ctx.client_certificate
        if cert is None:
            return Resolution(Verdict(ok=False, reason="no verified client certificate"))
        label = f"certificate sha256:{cert.fingerprint[:16]}"
        record = await self._read_row(self._directory.certificate, cert.fingerprint)
        if record is not None and record.revoked is not None:
            return Resolution(Verdict(ok=False, reason=f"{label} removed from {record.account}"),
                              named_identity=record.account)
        wanted = lookup_key(q.username) if q.username else ""
        if record is not None:
            name = record.account
        elif cert.trust_emails and cert.emails:
            emails = [lookup_key(e) for e in cert.emails]
            if wanted:
                named = [lookup_key(s) for s in login_spellings(q.username)]
                name = next((n for n in named if n in emails), "")
            else:
                name = emails[0] if len(set(emails)) == 1 else ""
            if not name:
                why = "names no such email" if wanted else "has several emails: give an authzid"
                return Resolution(Verdict(ok=False, reason=f"{label} {why}"))
        else:
            return Resolution(Verdict(ok=False, reason=f"{label} not registered to any account"))
        account = await self._read_row(self._directory.get_account, name)
        if account is None:
            return Resolution(Verdict(ok=False, reason=f"{label}: {UNKNOWN_USER} {name}"),
                              named_identity=name)
        refusal = _mechanism_refusal(account, q.mechanism.upper(), ctx)
        # No proxy authorization: the authzid names the account, in any spelling of
        # any of its login names (a directory's uid, which msmtp sends as its
        # `user`, as for PLAIN and SCRAM; until 2026-12 only its address).
        if refusal is None and wanted and not await self._one_account(q.username, account.name):
            refusal = (REFUSED_POLICY, AUTHZID_REFUSED)
        if refusal is not None:
            # Logged under the account (the client usually names none: until
            # 2026-12 such a record had "", a locked account's owner no trace).
            return Resolution(Verdict(ok=False, reason=refusal[1]), refusal=refusal[0],
                              named_identity=account.name)
        self._record_login(account, q.mechanism.upper())
        return Resolution(Verdict(ok=True, identity=account.name))

    async def _call_verifier(self, token: str) -> object:
        """Accept a sync or async ``verify``; a sync one runs on the token threads
        (``OAUTH_THREADS``), since it may wait on the issuer over the network."""
        assert self._verifier is not None
        verify = self._verifier.verify
        if inspect.iscoroutinefunction(verify):
            return await verify(token)
        if self._oauth_pool is None:
            self._oauth_pool = ThreadPoolExecutor(OAUTH_THREADS, "smtpgate-oauth")
        result = await self._run(self._oauth_pool, verify, token)
        if inspect.isawaitable(result):
            result = await result
        return result


def build_auth_service(cfg: Config, token_verifier: object | None = None) -> AuthService:
    """Open the account directory and auth log named in ``cfg`` and wrap them in a service.

    A database server that does not answer yet is no error: logins get 454 4.7.0
    until it does (``open_account_store``'s ``outage_ok``).

    Raises:
        StoreUnavailable: the account database cannot be opened.
        OSError: the auth log cannot be opened.
    """
    log_file = cfg.auth.log_file
    # pydantic reads ``log_file = ""`` as Path("."): both mean "no file".
    log_path = None if log_file is None or str(log_file) in ("", ".") else cfg.path(log_file)
    auth_log = AuthLog(log_path)
    try:
        directory = open_account_store(cfg, outage_ok=True)  # 454 until it answers
    except BaseException:
        auth_log.close()
        raise
    return AuthService(
        directory, cfg.accounts, cfg.auth, auth_log, token_verifier, passwords_cfg=cfg.passwords,
        reads_on_loop=cfg.server.sqlite_reads_on_loop,
    )


def _spellings(address: str) -> tuple[str, ...]:
    """``address``, and the address without its detail when its local part has a
    ``+`` subaddress (``bob+x@example.org``: also ``bob@example.org``)."""
    local, _, domain = address.rpartition("@")
    base = local.split("+", 1)[0]
    if base and base != local and not local.startswith('"'):
        return (address, f"{base}@{domain}")
    return (address,)
