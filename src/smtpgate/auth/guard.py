"""The guard: penalties, lockouts and blocks against password guessing.

Theory of operation
-------------------
The session asks the guard twice per AUTH attempt:

1. ``check(client_ip, username)`` when the mechanism first needs a credential,
   *before* the auth service runs Argon2id or PBKDF2. A refusal ends the
   attempt with a temporary ``454 4.7.0`` (never a misleading 535) and costs
   one small SQLite read: a flood of guesses against a block burns no hashing
   CPU. Otherwise the check says how long to wait first (the penalty).
2. ``failure(check, counts_account)`` or ``success(check, identity)`` when the
   attempt has ended, before its reply goes out, so that the next attempt (on
   any connection, in any worker) sees it.

What is counted, and the lockout policy (docs/protection.md says it for
administrators):

- Penalty, per client address (IPv4 /32, IPv6 /64): after n recent failures
  the next AUTH from there waits ``min(penalty_max, penalty_base * 2**(n-1))``
  seconds (Dovecot's auth_penalty). The wait is an ``asyncio.sleep`` in that
  session only. A success from the address forgets its penalty. An attempt the
  guard refuses is answered after ``penalty_max``: refusing is cheap, but a
  client that got its refusal at once would hammer (TLS handshakes included).
- Lockout, per account: keyed on the account's one name (the login path
  resolves the name typed with ``AccountDirectory.login_identity``, so AD's UPN
  and ``sAMAccountName`` share one count; a name of no account is counted under
  itself, normalised). Failures from addresses the account has logged in
  from before ("known", within ``known_address_days``) are counted apart from
  failures from all other ("new") addresses. ``lockout_threshold`` new-address
  failures lock the account *for new addresses only*; the owner's known
  addresses keep working. ``known_lockout_threshold`` known-address failures
  lock it for every address. So an attacker who has never been on one of the
  owner's networks can, at worst, keep the owner from logging in from a new
  network for ``lockout_duration``; they can never lock the owner out of a
  network the owner has used. Names that are no account are counted the same,
  so a lockout reveals nothing about which accounts exist.
- Spraying, per address and per subnet (/24, /48 by default): failures against
  ``spray_accounts`` distinct names block the address; against
  ``subnet_spray_accounts`` names, the subnet (except for addresses known to
  the account being tried). ``address_failure_limit`` failures of any kind
  block the address too.
- Distributed guessing, per account: failures from ``distributed_addresses``
  distinct new addresses throttle the account: a new address may try only if
  no new address failed against it in the last ``throttle_interval`` seconds.

Verification order: ``GuardCheck.trusted`` (a known address without recent
failures, or an allowlisted one) puts an attempt's password verification ahead
of all others (``verify_scheduler.py``), and every other attempt waits its
turn, one at a time per address. The guard throttles a flood to a trickle,
but each guess it lets through still costs a full Argon2id run, and the owner's
logins must not wait behind those. This changes no count and no reply.

Only wrong secrets count toward an account's lockout; refusals that do not
depend on the secret (conditional access, an expired or administratively
locked password) count toward the address only, since guessing cannot get past
them anyway. Allowlisted networks are invisible to the guard.

Where the policy lives: here. The state (``guard_state.GuardState``, SQLite
for one node) only records and counts: ``failure`` records the attempt and gets
its counts back, ``blocks_due`` (pure) compares them with the thresholds, and
the state is asked to start the blocks due; ``decide`` (pure) reads a
snapshot. A reload changes thresholds here and nothing in the state.

Faults: every state call is bounded (``[state] timeout``, ``bounded_calls``): a
state that fails or does not answer in time starts an *episode*, logged once
at its start and once at its end, during which no call waits behind a stuck
one. Meanwhile ``[state] on_unavailable`` decides (here, above the state
interface, so any backend gets the same rule):

- ``known`` (default): an address the account logged in from (within
  ``known_address_days``: as the snapshot says while reads still answer, else
  as this process remembers from its snapshots and successes, ``guard_memory``)
  proceeds; any other attempt gets the temporary failure (454 4.7.0, never a
  535) after a penalty. Failures and refusals are counted in this
  process's memory meanwhile: the per-address penalty grows as usual, and
  ``known_lockout_threshold`` failures against one account refuse it too.
- ``open``: every attempt proceeds, with the in-memory penalty and lockout.
- ``closed``: every attempt gets the temporary failure.

``failure``/``success`` that cannot be written are dropped (the memory keeps
what the episode needs). An unavailable guard must not become a denial of
service for the users it knows, nor an open door for guessing.

Clock steps: the state keeps wall-clock times, shared by every worker and kept
across restarts. When the clock steps back (a step of a day, say) a block started
before the step would last a day longer; a block whose start lies more than
``CLOCK_SLACK`` ahead of now can only come from before such a step, so ``check``
starts it again from now for its own length (``restart_stepped``: lifted and
started anew, which also forgets the failures from the future that would keep
counting), and a throttle ignores a failure that far ahead. A step forward
shortens the blocks and windows by the step: from the times alone a step cannot
be told from time passing while the server was down. docs/protection.md, "Clock
steps", says this for administrators.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, TypeVar

from smtpgate import metrics
from smtpgate.auth.authlog import neutralize
from smtpgate.auth.bounded_calls import StoreCalls, StoreUnavailable
from smtpgate.auth.guard_memory import GuardMemory
from smtpgate.auth.guard_state import (
    ACCOUNT,
    ACCOUNT_KINDS,
    ACCOUNT_NEW,
    ADDRESS,
    SUBNET,
    THROTTLE,
    Block,
    FailureCounts,
    GuardState,
    GuardStoreError,
    RecordedFailure,
    Snapshot,
    Windows,
)
from smtpgate.auth.loop_reads import loop_reads_for
from smtpgate.auth.names import lookup_key
from smtpgate.auth.networks import ClientKeys, client_keys, in_networks, parse_ip, parse_networks
from smtpgate.config import GuardConfig, StateConfig

if TYPE_CHECKING:
    from smtpgate.auth.shared_gate import SharedGate

log = logging.getLogger("smtpgate.guard")
T = TypeVar("T")

#: Prune old records at most this often (seconds), from the write path.
PRUNE_EVERY = 60.0
#: Seconds between the serving process's calls of ``Guard.tick``.
TICK_EVERY = 15.0
#: Seconds a process waits at start for its first write to the state (``warm_up``).
WARM_UP_WAIT = 5.0

#: How long -PLUS stays held back from an address whose client could not bind
#: (docs/mechanisms.md). A choice, not a rule: long enough that a mutt user meets
#: the failed first try once per network, not once per message; renewed (at most
#: daily) by each login from there, so a client in daily use never meets it again.
PLUS_FALLBACK_SECONDS = 30 * 86400
#: Renew a held-back -PLUS when less than this is left of it.
PLUS_FALLBACK_RENEW = PLUS_FALLBACK_SECONDS - 86400
#: The account keys of web admin logins (``web/site.py``): ``admin:NAME``.
ADMIN_KEY_PREFIX = "admin:"


def mail_login_key(name: str) -> str:
    """The account key a mail login (SMTP AUTH, a front door) is counted under:
    ``name``, except a name in the web admin's namespace (``admin:...``, which no
    mail account can have: ``user add`` refuses ':' in a local part), which gets
    "" (the failure counts against the address only, as the web admin does for a
    name no admin can have). Guesses at SMTP AUTH as ``admin:root`` from anywhere
    on the Internet locked the web admin ``root`` out, though it listens on
    loopback."""
    return "" if name[:len(ADMIN_KEY_PREFIX)].lower() == ADMIN_KEY_PREFIX else name


#: Seconds a recorded time may lie ahead of this process's clock (several nodes'
#: clocks sharing one state never agree to the millisecond) before it counts as
#: written before a step back of the clock ("Clock steps" above).
CLOCK_SLACK = 60.0


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why an attempt is refused before any credential is checked."""

    #: One of the block kinds in ``guard_state`` (address, subnet, account, ...).
    kind: str
    #: For the auth log.
    reason: str


@dataclass(frozen=True, slots=True)
class GuardCheck:
    """The guard's view of one AUTH attempt, from ``check`` to its outcome."""

    keys: ClientKeys
    #: The account the client's name logs in as (or that name, normalised, if it is
    #: no account's), "" if none: what lockouts are counted and kept under.
    account: str
    allowlisted: bool = False
    known: bool = False
    refusal: Refusal | None = None
    #: Seconds to wait before checking the credentials (the penalty).
    delay: float = 0.0
    penalty_failures: int = 0
    #: Last success of the account from this address (Unix time), if any.
    known_since: float | None = None
    #: Why the attempt gets a temporary failure because the state is unavailable
    #: (``[state] on_unavailable``); "" otherwise. Not a refusal: it is answered and
    #: logged as a backend fault (454 4.7.0), never as a block fail2ban would count.
    unavailable: str = ""

    @property
    def trusted(self) -> bool:
        """The owner's kind of attempt: an allowlisted client (or no guard), or an
        address the account has logged in from with no recent failures. Its
        password verification goes before those of all other attempts
        (``verify_scheduler.py``); nothing else about the attempt changes."""
        return self.allowlisted or (self.known and self.penalty_failures == 0)


@dataclass(slots=True)
class GuardStats:
    checks: int = 0
    refusals: int = 0
    failures: int = 0
    blocks_started: int = 0
    #: Calls answered without the state (it failed, or did not answer in time).
    faults: int = 0


def penalty_delay(failures: int, base: float, cap: float) -> float:
    """Seconds to wait after ``failures`` recent failures: 0, base, 2*base, ... up to cap."""
    if failures <= 0 or base <= 0:
        return 0.0
    return float(min(cap, base * 2 ** min(failures - 1, 30)))


def decide(snap: Snapshot, *, now: float, known_seconds: float, throttle_interval: float) -> tuple[bool, Refusal | None]:
    """(known, refusal) for a snapshot; the pure part of ``check``."""
    known = snap.known_since is not None and snap.known_since > now - known_seconds
    for kind in (ADDRESS, ACCOUNT, SUBNET, ACCOUNT_NEW, THROTTLE):
        for b in snap.blocks:
            if b.kind != kind:
                continue
            if kind == ADDRESS:
                return known, Refusal(kind, f"address blocked until {_stamp(b.until)}: {b.reason}")
            if kind == ACCOUNT:
                return known, Refusal(kind, f"account locked until {_stamp(b.until)}: {b.reason}")
            if known:
                continue  # the rest spare the account's known addresses
            if kind == SUBNET:
                return known, Refusal(kind, f"subnet {b.key} blocked until {_stamp(b.until)}: {b.reason}")
            if kind == ACCOUNT_NEW:
                return known, Refusal(
                    kind, f"account locked for new addresses until {_stamp(b.until)}: {b.reason}"
                )
            last = snap.last_new_failure
            if last is not None and now - throttle_interval < last <= now + CLOCK_SLACK:
                return known, Refusal(kind, f"account throttled for new addresses: {b.reason}")
    return known, None


def _known_key(check: GuardCheck, identity: str) -> str:
    """Whom a success makes the address known to: the key ``check`` read its
    snapshot under (the account's one name, ``login_identity``), so the next
    check under any of its login names sees it; the identity if none was given."""
    return check.account or lookup_key(identity)


def _degraded_text(cfg: StateConfig) -> str:
    """What the guard does during an episode, for its log line."""
    return {
        "known": "logins only from addresses known to the account (others get 454)",
        "open": "logins from every address, with penalties and lockouts counted in memory",
        "closed": "every login refused with 454",
    }[cfg.on_unavailable]


def _stamp(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


@dataclass(frozen=True, slots=True)
class Thresholds:
    """What ``blocks_due`` compares a failure's counts with (from ``[guard]``)."""

    lockout_threshold: int
    known_lockout_threshold: int
    lockout_window: float
    lockout_duration: float
    distributed_addresses: int
    throttle_duration: float
    spray_accounts: int
    subnet_spray_accounts: int
    address_failure_limit: int
    spray_window: float
    block_duration: float
    penalty_window: float

    @property
    def windows(self) -> Windows:
        """How far back the state counts for these thresholds."""
        return Windows(lockout=self.lockout_window, spray=self.spray_window,
                       penalty=self.penalty_window)


def blocks_due(f: RecordedFailure, n: FailureCounts, t: Thresholds) -> list[Block]:
    """The blocks a recorded failure's counts call for; the pure part of ``failure``.

    Account rules apply only to a failure that counts toward a named account; a
    known address counts toward the full lock, a new one toward the new-address
    lock and the throttle. An address blocked for spraying is not also blocked
    for flooding (one reason is enough). A subnet is never blocked for what one
    address did when the two are the same key.
    """
    now = f.time
    due: list[Block] = []

    def block(kind: str, key: str, duration: float, reason: str) -> None:
        due.append(Block(kind, key, now, now + duration, reason))

    if f.account and f.counts_account:
        if not f.known and n.account_new >= t.lockout_threshold:
            block(ACCOUNT_NEW, f.account, t.lockout_duration,
                  f"{n.account_new} failed logins from new addresses")
        if f.known and n.account_known >= t.known_lockout_threshold:
            block(ACCOUNT, f.account, t.lockout_duration,
                  f"{n.account_known} failed logins from known addresses")
        if not f.known and n.account_new_addresses >= t.distributed_addresses:
            block(THROTTLE, f.account, t.throttle_duration,
                  f"{n.account_new_addresses} new addresses failed against the account")
    if n.address_accounts >= t.spray_accounts:
        block(ADDRESS, f.address, t.block_duration,
              f"password spraying: failed against {n.address_accounts} accounts")
    elif n.address_failures >= t.address_failure_limit:
        block(ADDRESS, f.address, t.block_duration, f"{n.address_failures} failed logins")
    if n.subnet_accounts >= t.subnet_spray_accounts and f.subnet != f.address:
        block(SUBNET, f.subnet, t.block_duration,
              f"password spraying: subnet failed against {n.subnet_accounts} accounts")
    return due


def count_failure(state: GuardState, f: RecordedFailure, t: Thresholds) -> list[Block]:
    """Record ``f``, then start the blocks its counts call for; return those that
    started (not those already in force). Blocking I/O: the guard runs it on its
    thread. Two round trips when a threshold is reached, one otherwise."""
    due = blocks_due(f, state.record_failure(f, t.windows), t)
    return state.start_blocks(due) if due else []


def restart_stepped(state: GuardState, blocks: Sequence[Block], now: float) -> list[Block]:
    """Start ``blocks`` again from ``now``, each for its own length: the blocks of a
    snapshot one of which began more than ``CLOCK_SLACK`` after ``now`` (the clock
    went back since). Their keys are lifted first (``unblock``, ``unlock_account``:
    the failures recorded from the future go too); of concurrent callers one
    restarts each block. Blocking I/O: run on the guard's write thread."""
    for key, account in {(b.key, b.kind in ACCOUNT_KINDS) for b in blocks}:
        (state.unlock_account if account else state.unblock)(key)
    return state.start_blocks(
        [replace(b, since=now, until=now + max(0.0, b.until - b.since)) for b in blocks])


def thresholds(cfg: GuardConfig) -> Thresholds:
    return Thresholds(
        lockout_threshold=cfg.lockout_threshold,
        known_lockout_threshold=cfg.known_lockout_threshold,
        lockout_window=cfg.lockout_window,
        lockout_duration=cfg.lockout_duration,
        distributed_addresses=cfg.distributed_addresses,
        throttle_duration=cfg.throttle_duration,
        spray_accounts=cfg.spray_accounts,
        subnet_spray_accounts=cfg.subnet_spray_accounts,
        address_failure_limit=cfg.address_failure_limit,
        spray_window=cfg.spray_window,
        block_duration=cfg.block_duration,
        penalty_window=cfg.penalty_window,
    )


class Guard:
    """Async front of a ``GuardState``; use from one event loop.

    The state runs on two worker threads, one for reads and one for writes: its
    calls are a few indexed SQLite statements (or one Redis round trip) each,
    and a stuck write (another process's lock) holds up no read. A login's
    write is awaited before its reply, so the next check sees it. Each call is bounded
    by ``[state] timeout`` (``bounded_calls``); see "Faults" above for what the
    guard does without an answer. ``close()`` closes the state.
    """

    def __init__(
        self, store: GuardState, cfg: GuardConfig, state: StateConfig | None = None, *,
        clock: Callable[[], float] = time.time, reads_on_loop: bool = True,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._cfg = cfg
        self._state = state or StateConfig()
        self._clock = clock
        self._allow = parse_networks(cfg.allowlist)
        self._thresholds = thresholds(cfg)
        self._calls = StoreCalls(
            "guard database", self._state.timeout, (GuardStoreError,),
            degraded=_degraded_text(self._state), log=log,
            loop_reads=loop_reads_for(store, "guard database") if reads_on_loop else None,
        )
        # Its failure windows on the monotonic clock (guard_memory.py, "Clocks").
        self._memory = GuardMemory(clock=monotonic)
        #: Background write probes (``_probe_writes``), kept until done.
        self._probes: set[asyncio.Task[None]] = set()
        # The first prune a minute after start, not with the first failure: the
        # workers start together, and their first logins' writes queued behind
        # two prunes of the same file stalled past the state timeout (454s).
        self._last_prune = clock()
        self._closed = False
        self.stats = GuardStats()
        #: The attempt gate's leases in the state shared by several nodes (Redis:
        #: ``shared_gate.py``); None with one node's state.
        self.shared_gate: SharedGate | None = None

    @property
    def store(self) -> GuardState:
        return self._store

    def reconfigure(self, cfg: GuardConfig, state: StateConfig | None = None) -> None:
        """New thresholds, windows, allowlist and ``[state]`` bound and mode (a
        reload); the store stays."""
        self._cfg = cfg
        if state is not None:
            self._state = state
        self._allow = parse_networks(cfg.allowlist)
        self._thresholds = thresholds(cfg)
        self._calls.configure(self._state.timeout, _degraded_text(self._state))

    @property
    def unavailable(self) -> bool:
        """The state is not answering (an episode is under way)."""
        return self._calls.unavailable

    def keys(self, client_ip: str) -> ClientKeys:
        c = self._cfg
        return client_keys(
            client_ip,
            ipv6_prefix=c.ipv6_prefix,
            v4_subnet=c.subnet_ipv4_prefix,
            v6_subnet=c.subnet_ipv6_prefix,
        )

    def allowlisted(self, client_ip: str) -> bool:
        return in_networks(parse_ip(client_ip), self._allow)

    async def _read(self, fn: Callable[..., T], *args: object) -> T:
        """``fn(*args)`` on the state's read thread, bounded.

        Raises:
            StoreUnavailable: the state failed or did not answer in time.
        """
        return await self._calls.reads.call(fn, *args)

    async def _write(self, fn: Callable[..., T], *args: object) -> T:
        """As ``_read``, on the write thread (a stuck write holds up no read)."""
        return await self._calls.writes.call(fn, *args)

    def watches(self, client_ip: str) -> bool:
        """False when the guard ignores this client (disabled, or allowlisted)."""
        return self._cfg.enabled and not self.allowlisted(client_ip)

    def bare_check(self, client_ip: str) -> GuardCheck:
        """A check without a database read, for an attempt that failed before it
        named an account (malformed exchange): counted against the address only."""
        allow = not self._cfg.enabled or self.allowlisted(client_ip)
        return GuardCheck(self.keys(client_ip), "", allowlisted=allow)

    def success_needs_write(self, check: GuardCheck, identity: str) -> bool:
        """False when ``success`` would write nothing (so the caller need not wait)."""
        if check.allowlisted or not identity:
            return False
        fresh = (
            _known_key(check, identity) == check.account
            and check.known_since is not None
            and self._clock() - check.known_since < 86400
        )
        return not fresh or check.penalty_failures > 0

    # --- the three calls --------------------------------------------------------

    async def check(self, client_ip: str, username: str) -> GuardCheck:
        """Before any credential work: refuse, or say how long to wait first."""
        account = lookup_key(username) if username else ""
        keys = self.keys(client_ip)
        if not self._cfg.enabled or self.allowlisted(client_ip):
            return GuardCheck(keys, account, allowlisted=True)
        self.stats.checks += 1
        now = self._clock()
        try:
            snap = await self._read(
                self._store.snapshot, keys.address, keys.subnet, account, now, self._cfg.penalty_window
            )
        except StoreUnavailable:
            return self._degraded_check(keys, account, now, None)
        if snap.known_since is not None:
            self._memory.saw_known(account, keys.address, snap.known_since)
        if any(b.since > now + CLOCK_SLACK for b in snap.blocks):
            snap = await self._restart_stepped(snap, now)
        known, refusal = decide(
            snap,
            now=now,
            known_seconds=self._cfg.known_address_days * 86400,
            throttle_interval=self._cfg.throttle_interval,
        )
        if refusal is not None:
            self.stats.refusals += 1
            # A refusal is answered after the longest penalty: it is cheap for
            # us, and a client that could have it at once would hammer away.
            return GuardCheck(keys, account, known=known, refusal=refusal,
                              delay=self._cfg.penalty_max,
                              penalty_failures=snap.penalty_failures, known_since=snap.known_since)
        if self._calls.writes.unavailable:
            # Reads answer but nothing can be recorded: the degraded mode, with
            # what the snapshot says about the address. A refused attempt writes
            # nothing, so a write is tried in the background to end the episode.
            self._probe_writes(now)
            return self._degraded_check(keys, account, now, snap)
        delay = penalty_delay(snap.penalty_failures, self._cfg.penalty_base, self._cfg.penalty_max)
        return GuardCheck(keys, account, known=known, delay=delay,
                          penalty_failures=snap.penalty_failures, known_since=snap.known_since)

    async def _restart_stepped(self, snap: Snapshot, now: float) -> Snapshot:
        """``snap`` with its blocks started again from ``now`` (``restart_stepped``);
        unchanged if they cannot be written (they keep refusing meanwhile)."""
        ahead = max(b.since for b in snap.blocks) - now
        try:
            await self._write(restart_stepped, self._store, snap.blocks, now)
        except StoreUnavailable:
            return snap
        log.warning("guard: a block of %s began %.0f s after now: the clock went back (or, "
                    "with the state in Redis, the node that started it has its clock that far "
                    "ahead of this one's: see its cluster heartbeat warning); its blocks start "
                    "again from now, each for its own length",
                    ", ".join(sorted({neutralize(b.key) for b in snap.blocks})), ahead)
        return replace(snap, blocks=tuple(
            replace(b, since=now, until=now + max(0.0, b.until - b.since)) for b in snap.blocks))

    async def failure(self, check: GuardCheck, *, counts_account: bool) -> list[Block]:
        """Record a failed attempt (not a refused one); return the blocks it started."""
        if check.allowlisted or check.refusal is not None:
            return []
        self.stats.failures += 1
        now = self._clock()
        f = RecordedFailure(now, check.keys.address, check.keys.subnet, check.account,
                            check.known, counts_account)
        try:
            started = await self._write(count_failure, self._store, f, self._thresholds)
        except StoreUnavailable:
            # Not written: counted here, for the episode's penalty and lockout.
            self.stats.faults += 1
            c = self._cfg
            self._memory.penalise(f.address, c.penalty_window)
            if counts_account:
                self._memory.failed(f.account, c.lockout_window)
            return []
        for b in started:
            self.stats.blocks_started += 1
            metrics.guard_block_started(b.kind)
            # The key of an account lockout is the name the client typed when it is
            # no account's: escaped as the auth log's text line escapes it.
            log.warning("guard: %s %s blocked until %s: %s", b.kind, neutralize(b.key),
                        _stamp(b.until), b.reason)
        await self._maybe_prune(now)
        return started

    async def success(self, check: GuardCheck, identity: str) -> None:
        """Remember the address as known to the account; forget the address's penalty."""
        # Refresh a known address at most daily, so known_address_days counts
        # from the last use without a write on every login.
        if not self.success_needs_write(check, identity):
            return  # nothing to write on the common path
        name = _known_key(check, identity)
        now = self._clock()
        self._memory.saw_known(name, check.keys.address, now)
        self._memory.succeeded(check.keys.address)
        try:
            await self._write(
                lambda: self._store.record_success(
                    check.keys.address, name, now, reset_penalty=check.penalty_failures > 0
                )
            )
        except StoreUnavailable:
            self.stats.faults += 1  # remembered in memory only, for this episode

    # --- the channel-binding fallback (docs/mechanisms.md) ---------------------------
    #
    # Not a protection: the guard's database is simply the state every worker
    # shares, and the fallback must be seen by whichever worker the client's retry
    # reaches. It applies whether or not ``enabled`` is set and ignores the
    # allowlist. Faults fail open: -PLUS is advertised, as without the fallback.

    async def plus_held_back(self, client_ip: str) -> float | None:
        """Until when -PLUS is held back from this client's address, or None."""
        address = self.keys(client_ip).address
        try:
            return await self._read(self._store.plus_fallback, address, self._clock())
        except StoreUnavailable:
            self.stats.faults += 1
            return None

    def plus_fallback_due(self, until: float | None) -> bool:
        """A held-back -PLUS (until ``until``) is worth renewing now."""
        return until is not None and until - self._clock() < PLUS_FALLBACK_RENEW

    async def hold_back_plus(self, client_ip: str) -> None:
        """The client could not bind: stop advertising -PLUS to its address."""
        await self._set_plus_fallback(client_ip, self._clock() + PLUS_FALLBACK_SECONDS)

    async def offer_plus_again(self, client_ip: str) -> None:
        """A client there can bind: advertise -PLUS to the address again."""
        await self._set_plus_fallback(client_ip, None)

    async def _set_plus_fallback(self, client_ip: str, until: float | None) -> None:
        address = self.keys(client_ip).address
        try:
            await self._write(self._store.set_plus_fallback, address, until)
        except StoreUnavailable:
            self.stats.faults += 1
            return
        if until is None:
            log.info("channel binding: -PLUS offered to %s again", address)
        else:
            log.info("channel binding: -PLUS held back from %s until %s", address, _stamp(until))

    async def tick(self) -> None:
        """Prune if due (``PRUNE_EVERY``), called every ``TICK_EVERY`` seconds by the
        serving process. The prune ran only after a recorded failure, so when a
        flood ended its rows (and the file's size) stayed until the next wrong
        password, which on a quiet server could be days."""
        if not self._closed:
            await self._maybe_prune(self._clock())

    async def _maybe_prune(self, now: float) -> None:
        if now - self._last_prune < PRUNE_EVERY:
            return
        self._last_prune = now
        await self._prune(now)

    def _probe_writes(self, now: float) -> None:
        """During a write episode, try one write (a prune: harmless, idempotent)
        unless one is already on the thread; its success ends the episode."""
        if not self._calls.writes.idle or self._closed:
            return
        task = asyncio.get_running_loop().create_task(self._prune(now))
        self._probes.add(task)
        task.add_done_callback(self._probes.discard)

    def _prune_ages(self) -> tuple[float, float]:
        """What a prune keeps: the longest window, and known addresses' age."""
        c = self._cfg
        keep = max(c.spray_window, c.lockout_window, c.penalty_window, c.block_duration,
                   c.lockout_duration, c.throttle_duration)
        return keep, c.known_address_days * 86400

    async def _prune(self, now: float) -> None:
        try:
            await self._write(self._store.prune, now, *self._prune_ages())
        except StoreUnavailable:
            self.stats.faults += 1

    async def warm_up(self) -> None:
        """Before a process serves: one prune on the write thread, so that its
        connection is open and the other processes' start-up writes are behind
        it. The first login's write paid for both and, with every process
        starting at once on a busy disk, went past the state timeout (a 454 from
        a healthy server); here it may take up to ``WARM_UP_WAIT``."""
        now = self._clock()
        if await self._calls.writes.warm(self._store.prune, now, *self._prune_ages(),
                                          wait=WARM_UP_WAIT):
            self._last_prune = now

    def _degraded_check(
        self, keys: ClientKeys, account: str, now: float, snap: Snapshot | None
    ) -> GuardCheck:
        """``check`` per ``[state] on_unavailable`` ("Faults" above): without the state
        (``snap`` None: known addresses from memory), or with a snapshot but no
        way to record (its blocks were already applied; its penalty adds up with
        the failures counted in memory)."""
        self.stats.faults += 1
        c, mem = self._cfg, self._memory
        since = mem.known_since(account, keys.address) if snap is None else snap.known_since
        known = since is not None and since > now - c.known_address_days * 86400
        recorded = 0 if snap is None else snap.penalty_failures
        why = ""
        if self._state.on_unavailable == "closed":
            why = "guard database unavailable: every login refused meanwhile"
        elif self._state.on_unavailable == "known" and not known:
            why = "guard database unavailable: only addresses known to the account log in meanwhile"
        elif mem.account_failures(account, c.lockout_window) >= c.known_lockout_threshold:
            why = "guard database unavailable: too many failed logins for the account meanwhile"
        if why:
            # A refusal costs a penalty that grows with each one, so that a client
            # retrying at once meets longer and longer waits.
            failures = recorded + mem.penalise(keys.address, c.penalty_window)
        else:
            failures = recorded + mem.penalty(keys.address, c.penalty_window)
        delay = penalty_delay(failures, c.penalty_base, c.penalty_max)
        return GuardCheck(keys, account, known=known, delay=delay, penalty_failures=failures,
                          known_since=since, unavailable=why)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for task in list(self._probes):
            task.cancel()
        await asyncio.get_running_loop().run_in_executor(None, self._calls.close)
        if self.shared_gate is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.shared_gate.close)
        self._store.close()
