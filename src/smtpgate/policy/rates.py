"""Sending rates tied to identity: messages and recipients per hour.

Theory of operation
-------------------
Each account, and each app password, has a counter key (``acct:NAME``,
``app:ID``). Counters (``RateCounters``, ``rate_counters.py``; in the guard's
SQLite file for one node) are kept in one-minute buckets; the window is the
last 60 buckets, a sliding hour to the minute. At MAIL the
session reads what each of its keys used and keeps, for the transaction, the
smallest budget left; RCPT is checked against that budget without another
read, and an accepted message adds (1, recipients) to every key before its 250
goes out (where a limit applies, by the reservation below), so the next MAIL
(on any connection, in any worker) sees it. Other counts (``count``: the
policy door's settlements, a message whose reservation failed open) are
group-committed: those that arrive while a write is under way go out together
in the next one, and each waits for the write that holds it (one thread hop per
batch instead of one per message, bench/README.md, workload B). A message whose keys no limit applies to (an
account or app password set to unlimited) gates no MAIL: its count is gathered
for up to a second and written with the others, and its 250 does not wait for
it (``count_later``). A limit set on such a key afterwards (a reload, ``user
limits``) may therefore miss the last second's messages.

MAIL's and RCPT's checks only read: sessions of one account in parallel all
pass them. So where a limit applies, the SMTP session reserves (``reserve``)
the message and its recipients at the end of DATA, before its spool write: the
check and the count in one atomic step of the counters
(``RateCounters.add_within``), refused with the budget that stopped it, or
given back (``count`` with negative counts in the reservation's bucket) when
the spool write fails (``policy/submission.py``); sessions ending at the same
moment cannot together pass a limit. The Postfix policy door, whose requests
arrive from many Postfix processes at once, reserves the message at its first
RCPT and each recipient at its RCPT, and settles or gives the reservation back
when the message ends or never does (``server/policy_door.py``).

What is left of a budget is the pure ``budget_left``; the limiter only reads
and bumps counters, on its own thread.

Faults fail open. Each counter call is bounded (``[state] timeout``,
``auth.bounded_calls``): counters that fail or do not answer in time start an
episode, logged once at its start and once at its end, during which MAIL is
not limited and accepted messages are not counted, and no call waits behind a
stuck one. Why open: the counters are local state that an operator's tool (a
backup, an ``sqlite3`` shell) can lock, not something a client can break;
failing closed would turn that into an outage of all mail for every user,
while failing open costs at most an episode's worth of unlimited sending by
accounts that have already passed the login checks.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from smtpgate.auth.bounded_calls import StoreCalls, StoreUnavailable
from smtpgate.auth.loop_reads import loop_reads_for
from smtpgate.auth.principal import AppPasswordUse
from smtpgate.auth.sender_profile import SenderProfile
from smtpgate.config import LimitsConfig
from smtpgate.policy.rate_counters import BUCKET_SECONDS, RateCounters, RateCountersError

log = logging.getLogger("smtpgate.policy")

#: Buckets (of ``BUCKET_SECONDS``) per window: a sliding hour.
WINDOW_BUCKETS = 60

#: How long the counts of senders no limit applies to wait, to be written together
#: (``count_later``): one write a second for such a sender, not one per message.
LATER_SECONDS = 1.0


#: The counter key of an app password (``app:ID``); an account's is ``acct:NAME``.
APP_KEY_PREFIX = "app:"


@dataclass(frozen=True, slots=True)
class Budget:
    """What one transaction may still send; None means unlimited."""

    keys: tuple[str, ...]
    messages_left: int | None
    recipients_left: int | None
    #: For the log: (key, used, limit) of the tightest message limit.
    detail: str = ""
    #: The key of the tightest message limit and of the tightest recipient limit
    #: ("" if none applies): which one a refusal names, the account or the app
    #: password (``by_app_password``).
    message_key: str = ""
    recipient_key: str = ""

    def by_app_password(self, key: str) -> bool:
        """Whether ``key`` (``message_key``, ``recipient_key``) is an app password's
        own limit, not its account's."""
        return key.startswith(APP_KEY_PREFIX)


def _limit(override: int | None, default: int) -> int:
    """0 means unlimited; None means the default."""
    return default if override is None else override


def budget_left(
    limits: Mapping[str, tuple[int, int]], used: Mapping[str, tuple[int, int]]
) -> Budget:
    """What a transaction may still send, given (messages, recipients) limits per
    key (0: unlimited) and what each key used in the window: the smallest budget
    left over the keys. The pure part of ``RateLimiter.budget``."""
    messages_left: int | None = None
    recipients_left: int | None = None
    detail = message_key = recipient_key = ""
    for key, (max_m, max_r) in limits.items():
        m, r = used.get(key, (0, 0))
        if max_m:
            left = max_m - m
            if messages_left is None or left < messages_left:
                messages_left, message_key = left, key
                detail = f"{key} sent {m} of {max_m} messages in the last hour"
        if max_r:
            left = max_r - r
            if recipients_left is None or left < recipients_left:
                recipients_left, recipient_key = left, key
    return Budget(tuple(limits), messages_left, recipients_left, detail,
                  message_key, recipient_key)


@dataclass(frozen=True, slots=True)
class Held:
    """What ``RateLimiter.reserve`` added to ``keys`` in ``bucket``: to be settled
    when the message is accepted, or given back when it never is."""

    keys: tuple[str, ...]
    bucket: int
    messages: int
    recipients: int


class RateLimiter:
    """Reads and bumps ``RateCounters`` on a thread each for reads and writes
    (the write one keeps this process's counts in order), each call bounded by
    ``store_timeout`` seconds;
    ``close()`` closes the counters."""

    def __init__(
        self, counters: RateCounters, limits: LimitsConfig, *,
        clock: Callable[[], float] = time.time, store_timeout: float = 0.25,
        later_seconds: float = LATER_SECONDS, reads_on_loop: bool = True,
    ) -> None:
        self._counters = counters
        self._limits = limits
        self._clock = clock
        self._calls = StoreCalls(
            "rate counters", store_timeout, (RateCountersError,),
            degraded="sending limits not applied and messages not counted", log=log,
            loop_reads=loop_reads_for(counters, "rate counters") if reads_on_loop else None,
        )
        self._closed = False
        #: Counts waiting for the next write, by (keys, bucket), and the future
        #: that write resolves; the task that writes them (None: none under way).
        self._pending: dict[tuple[tuple[str, ...], int], list[int]] = {}
        self._pending_written: asyncio.Future[None] | None = None
        self._writer: asyncio.Task[None] | None = None
        #: Counts that gate nothing, gathered for ``later_seconds`` (``count_later``).
        self._later: dict[tuple[tuple[str, ...], int], list[int]] = {}
        self._later_seconds = later_seconds
        self._later_timer: asyncio.TimerHandle | None = None

    def reconfigure(self, limits: LimitsConfig, store_timeout: float | None = None) -> None:
        """New default limits (a reload), and the bound if given; the counters stay."""
        self._limits = limits
        if store_timeout is not None:
            self._calls.configure(store_timeout, self._calls.reads.degraded)

    @property
    def closed(self) -> bool:
        """``close()`` was called: nothing more is counted."""
        return self._closed

    @property
    def unavailable(self) -> bool:
        """The counters are not answering (an episode is under way)."""
        return self._calls.unavailable


    def _bucket(self) -> int:
        return int(self._clock() // BUCKET_SECONDS)

    def limits_for(
        self, profile: SenderProfile, app: AppPasswordUse | None
    ) -> dict[str, tuple[int, int]]:
        """(messages, recipients) limit per key; 0 is unlimited."""
        out = {
            f"acct:{profile.name}": (
                _limit(profile.max_messages_per_hour, self._limits.messages_per_hour),
                _limit(profile.max_recipients_per_hour, self._limits.recipients_per_hour),
            )
        }
        if app is not None:
            out[f"{APP_KEY_PREFIX}{app.id}"] = (app.max_messages_per_hour or 0, app.max_recipients_per_hour or 0)
        return out

    def unlimited_budget(self, profile: SenderProfile, app: AppPasswordUse | None
                         ) -> Budget | None:
        """The budget when no limit applies (nothing to read: counts only), else None."""
        limits = self.limits_for(profile, app)
        if all(m == 0 and r == 0 for m, r in limits.values()):
            return Budget(tuple(limits), None, None)
        return None

    async def budget(self, profile: SenderProfile, app: AppPasswordUse | None) -> Budget:
        unlimited = self.unlimited_budget(profile, app)
        if unlimited is not None:
            return unlimited
        limits = self.limits_for(profile, app)
        keys = tuple(limits)
        since = self._bucket() - WINDOW_BUCKETS + 1
        try:
            used = await self._calls.reads.call(self._counters.usage, keys, since)
        except StoreUnavailable:
            return Budget(keys, None, None)  # fails open (module docstring)
        return budget_left(limits, used)

    async def reserve(self, profile: SenderProfile, app: AppPasswordUse | None,
                      messages: int, recipients: int) -> Held | Budget:
        """Count (``messages``, ``recipients``) now, before the message is accepted,
        if that keeps every limit of the sender (``RateCounters.add_within``: the
        check and the count one atomic step, so senders in parallel cannot pass a
        limit together): what was held, or the budget that refused it (nothing
        held). No limit applies, or the counters fail (open): nothing is held,
        and the message is counted whole when it is accepted."""
        limits = self.limits_for(profile, app)
        keys = tuple(limits)
        bucket = self._bucket()
        if self.unlimited_budget(profile, app) is not None:
            return Held(keys, bucket, 0, 0)
        try:
            used = await self._calls.writes.call(
                self._counters.add_within, limits, bucket, bucket - WINDOW_BUCKETS + 1,
                messages, recipients)
        except StoreUnavailable:
            return Held(keys, bucket, 0, 0)
        if used is not None:
            return budget_left(limits, used)
        return Held(keys, bucket, messages, recipients)

    async def count(self, keys: tuple[str, ...], messages: int, recipients: int, *,
                    bucket: int | None = None) -> None:
        """Add an accepted message to ``keys`` (in ``bucket``: a reservation's,
        settled or given back with negative counts; default the current one);
        returns once that is written (or given up: counters that fail or stall
        fail open, module docstring)."""
        loop = asyncio.get_running_loop()
        at = self._bucket() if bucket is None else bucket
        entry = self._pending.setdefault((keys, at), [0, 0])
        entry[0] += messages
        entry[1] += recipients
        if self._pending_written is None:
            self._pending_written = loop.create_future()
        written = self._pending_written
        if self._writer is None:
            self._writer = loop.create_task(self._write_pending())
        # Shielded: a session that goes away must not cancel the others' write.
        await asyncio.shield(written)

    def count_later(self, keys: tuple[str, ...], messages: int, recipients: int) -> None:
        """Add an accepted message to ``keys`` that no limit applies to: no 250
        waits for it (no MAIL's budget depends on it); written within
        ``later_seconds``, together with whatever else is pending, for what the
        counts are still read for (the web admin's sent-this-hour)."""
        if self._closed:
            return
        entry = self._later.setdefault((keys, self._bucket()), [0, 0])
        entry[0] += messages
        entry[1] += recipients
        if self._later_timer is None:
            self._later_timer = asyncio.get_running_loop().call_later(
                self._later_seconds, self._write_later)

    def _write_later(self) -> None:
        """The gathered counts join the pending ones; the writer takes them."""
        if self._later_timer is not None:
            self._later_timer.cancel()
            self._later_timer = None
        later, self._later = self._later, {}
        for key, (messages, recipients) in later.items():
            entry = self._pending.setdefault(key, [0, 0])
            entry[0] += messages
            entry[1] += recipients
        if self._pending and self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._write_pending())

    async def _write_pending(self) -> None:
        try:
            while self._pending:
                batch, written = self._pending, self._pending_written
                self._pending, self._pending_written = {}, None
                try:
                    await self._calls.writes.call(self._add_all, batch)
                except StoreUnavailable:
                    pass  # counted nowhere: fails open (module docstring)
                except Exception:
                    # Its messages are on disk already: a 451 now would make the
                    # client send them twice. Logged; they are simply not counted.
                    log.exception("rate counters: cannot count %d accepted message(s)",
                                  sum(m for m, _ in batch.values()))
                finally:
                    if written is not None and not written.done():
                        written.set_result(None)
        finally:
            self._writer = None

    def _add_all(self, batch: Mapping[tuple[tuple[str, ...], int], list[int]]) -> None:
        """On the write thread: one batch of counts."""
        for (keys, bucket), (messages, recipients) in batch.items():
            self._counters.add_usage(keys, bucket, messages, recipients)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._write_later()
        if self._writer is not None:
            await asyncio.shield(self._writer)  # counts already promised
        await asyncio.get_running_loop().run_in_executor(None, self._calls.close)
        self._counters.close()
