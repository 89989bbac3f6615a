"""The sending policy of one logged-in session: who may send as whom, and how much.

A session makes one `Sending` when its login succeeds, from the `Principal`, and
asks it at each step of a transaction (docs/policy.md). A MAIL that comes
``[auth] session_recheck`` seconds after the account was last read reads it again
first (``recheck_due``; the session layer ends a session whose login would now be
refused, and hands the fresh profile to ``rechecked``):

- MAIL: the account's sender profile is read once per login (aliases, granted
  domains, its rates: with the login's account row when the password was a
  credential-cache hit, else at the first MAIL), the envelope sender's ownership
  is checked
  (`policy/sender.py`), and the rate counters give the transaction its budget
  (`policy/rates.py`); an exhausted message budget refuses the MAIL.
- RCPT: counted against that budget, without another read.
- End of DATA: the From and Sender headers' ownership, and that there is a From
  (`policy/sender.py` says how the header section is read); then, where a limit
  applies, the message and its recipients are reserved in the rate counters in
  one atomic step (`reserve`) before the spool write, so that parallel sessions
  cannot together pass a limit; where none does, the count is gathered and
  written within a second.

Every decision returns a reply or None (accept). A fault of the account
directory refuses the MAIL with a temporary ``451 4.4.3 Account database
unavailable`` (not the ``4.3.0`` of a software fault) and is logged; a fault of the
rate counters fails open (``RateLimiter`` logs it).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Coroutine, Iterable
from datetime import UTC, datetime
from typing import Any, Protocol

from smtpgate import metrics
from smtpgate.auth.directory import StoreError
from smtpgate.auth.principal import Principal
from smtpgate.auth.sender_profile import SenderProfile
from smtpgate.config import PolicyConfig
from smtpgate.policy.rates import Budget, Held, RateLimiter
from smtpgate.policy.sender import (
    envelope_sender_refusal,
    from_header_refusal,
    header_sender_addresses,
)
from smtpgate.smtp import replies as R

log = logging.getLogger("smtpgate.policy")
session_log = logging.getLogger("smtpgate.session")


class ProfileSource(Protocol):
    """Where sender profiles come from (the auth service, over the directory)."""

    async def sender_profile(self, identity: str) -> SenderProfile:
        """Raises ``StoreError`` on a directory fault."""
        ...

    async def others_addresses(self, identity: str, addresses: list[str]) -> list[str]:
        """Of ``addresses``, those another account has (``StoreError`` on a fault)."""
        ...


def needs_lookup(policy: PolicyConfig, rates: RateLimiter | None) -> bool:
    """Whether MAIL has anything to check (else it is accepted at once)."""
    return policy.sender_ownership != "off" or policy.from_header != "off" or rates is not None


class Sending:
    """One session's sending state, from its login to its end.

    The log lines start with the session id and the client's address.
    """

    def __init__(
        self, principal: Principal, profiles: ProfileSource, *, session_id: str, client_ip: str,
        profile: SenderProfile | None = None,
    ) -> None:
        self.principal = principal
        self._profiles = profiles
        self._session_id = session_id
        self._where = f"{session_id} {client_ip}"
        #: Read by the login (``LoginResult.profile``) or at the first MAIL.
        self._profile = profile
        #: When the login succeeded (a password changed after it ends the session).
        self.logged_in = datetime.now(UTC)
        #: When the account was last read for this session (monotonic).
        self._checked = time.monotonic()
        #: The current transaction's budget (None: unlimited or not looked up).
        self.budget: Budget | None = None
        self._recipients = 0
        #: Addresses only a domain grant covers, looked up for another account's
        #: in this session (the profile's ``others`` holds those that were).
        self._looked_up: set[str] = set()

    def recheck_due(self, every: float) -> bool:
        """Whether MAIL must read the account again first (``[auth] session_recheck``),
        or end the session at once: its bearer token has expired."""
        return time.monotonic() - self._checked >= every or self.token_expired()

    def token_expired(self) -> bool:
        """The session logged in with a bearer token whose exp (plus the issuer's
        leeway) has passed: it ends at this MAIL, whatever session_recheck says."""
        ends = self.principal.oauth_expires
        return ends is not None and time.time() >= ends

    def rechecked(self, profile: SenderProfile | None) -> None:
        """The account was read again: ``profile`` is its current sender profile
        (None: keep the one held, as after a directory fault)."""
        self._checked = time.monotonic()
        if profile is not None:
            self._profile = profile
            self._looked_up.clear()  # the new profile knows no other's address yet

    async def mail(
        self, sender: str, policy: PolicyConfig, rates: RateLimiter | None
    ) -> R.Reply | None:
        """MAIL FROM:<sender>; starts a transaction."""
        self.budget, self._recipients = None, 0
        who = self.principal
        if self._profile is None:
            try:
                self._profile = await self._profiles.sender_profile(who.account)
            except StoreError as e:
                session_log.error("%s sending policy unavailable: %s", self._session_id, e)
                return R.ACCOUNTS_UNAVAILABLE
        if sender and (fault := await self._look_up_others([sender])) is not None:
            session_log.error("%s sending policy unavailable: %s", self._session_id, fault)
            return R.ACCOUNTS_UNAVAILABLE
        profile = self._profile
        refused = envelope_sender_refusal(profile, sender, policy, where=self._where)
        if refused is not None:
            return refused
        if rates is None:
            return None
        return self._take(await rates.budget(profile, who.app_password))

    async def _look_up_others(self, addresses: Iterable[str]) -> StoreError | None:
        """Look up which of ``addresses`` that only a domain grant covers are another
        account's (the grant does not cover those: docs/policy.md) and put them in
        the profile; each address once a session. The directory's fault, or None.
        An account without grants needs nothing."""
        profile = self._profile
        if profile is None or not profile.domains:
            return None
        todo = [a for a in profile.by_grant_only(addresses) if a not in self._looked_up]
        if not todo:
            return None
        try:
            taken = await self._profiles.others_addresses(self.principal.account, todo)
        except StoreError as e:
            return e
        self._looked_up.update(todo)
        if taken:
            self._profile = profile.taken(taken)
        return None

    async def look_up_header(self, header: bytes) -> R.Reply | None:
        """End of DATA, before `message`: the From, Sender and Resent-* addresses
        only a domain grant covers looked up (`_look_up_others`); a directory
        fault refuses the message for now."""
        profile = self._profile
        if profile is None or not profile.domains:
            return None
        fault = await self._look_up_others(header_sender_addresses(header))
        if fault is None:
            return None
        session_log.error("%s sending policy unavailable: %s", self._session_id, fault)
        return R.ACCOUNTS_UNAVAILABLE

    def answers_now(self, rates: RateLimiter | None, sender: str = "") -> bool:
        """Whether `mail` needs no I/O: the profile is read, no limit applies and
        ``sender`` needs no look-up, so the session can answer MAIL without a task
        (``mail_now``)."""
        profile = self._profile
        if profile is None:
            return False
        if sender and profile.domains and any(
                a not in self._looked_up for a in profile.by_grant_only([sender])):
            return False
        return rates is None or rates.unlimited_budget(
            profile, self.principal.app_password) is not None

    def mail_now(
        self, sender: str, policy: PolicyConfig, rates: RateLimiter | None
    ) -> R.Reply | None:
        """`mail`, when ``answers_now`` says it needs no I/O."""
        self.budget, self._recipients = None, 0
        profile = self._profile
        assert profile is not None  # answers_now
        refused = envelope_sender_refusal(profile, sender, policy, where=self._where)
        if refused is not None or rates is None:
            return refused
        budget = rates.unlimited_budget(profile, self.principal.app_password)
        assert budget is not None  # answers_now
        return self._take(budget)

    def _take(self, budget: Budget) -> R.Reply | None:
        """The transaction's budget; a spent message budget refuses the MAIL."""
        if budget.messages_left is not None and budget.messages_left <= 0:
            log.warning("%s: user=%s message rate limit: %s", self._where,
                        self.principal.account, self._detail(budget))
            metrics.rate_limited("messages")
            return self._message_refusal(budget)
        self.budget = budget
        return None

    def _limited(self, budget: Budget, key: str) -> str:
        """Whose limit ``key`` is, for the log: the app password (by its name) or
        the account."""
        app = self.principal.app_password
        if budget.by_app_password(key) and app is not None:
            return f"app password {app.name!r}"
        return "account"

    def _detail(self, budget: Budget) -> str:
        """The budget's detail with the app password named (``app:7`` is its row id,
        which no command shows)."""
        if budget.by_app_password(budget.message_key):
            return budget.detail.replace(budget.message_key,
                                         self._limited(budget, budget.message_key), 1)
        return budget.detail

    @staticmethod
    def _message_refusal(budget: Budget) -> R.Reply:
        """450 naming whose message limit it is: until 2026-12 an app password's own
        limit was "reached for this account", and its user went looking for a limit
        on the account, which could still send with another password."""
        if budget.by_app_password(budget.message_key):
            return R.APP_MESSAGE_RATE_EXCEEDED
        return R.MESSAGE_RATE_EXCEEDED

    @staticmethod
    def _recipient_refusal(budget: Budget) -> R.Reply:
        """450 naming whose recipient limit it is (``_message_refusal``)."""
        if budget.by_app_password(budget.recipient_key):
            return R.APP_RECIPIENT_RATE_EXCEEDED
        return R.RECIPIENT_RATE_EXCEEDED

    def rcpt(self) -> R.Reply | None:
        """RCPT TO: within the transaction's recipient budget?"""
        budget = self.budget
        left = None if budget is None else budget.recipients_left
        if left is not None and self._recipients >= left:
            assert budget is not None
            log.warning("%s: user=%s recipient rate limit of the %s reached (%d left this hour)",
                        self._where, self.principal.account,
                        self._limited(budget, budget.recipient_key), max(left, 0))
            metrics.rate_limited("recipients")
            return self._recipient_refusal(budget)
        self._recipients += 1
        return None

    def message(self, header: bytes, policy: PolicyConfig) -> R.Reply | None:
        """End of DATA: the From and Sender headers' ownership, and a From at all
        (checked once MAIL read the profile). ``header`` is the message's header
        section; the whole message does as well (`policy.sender.header_section`)."""
        if self._profile is None:
            return None
        return from_header_refusal(self._profile, header, policy, where=self._where)

    async def reserve(self, rates: RateLimiter | None, recipients: int) -> R.Reply | Held | None:
        """End of DATA, before the spool write: the message and its ``recipients``
        taken from the limits in one atomic step of the counters, so that sessions
        of one account ending their messages at the same moment cannot together
        pass a limit (MAIL's and RCPT's checks read the budget only: eight
        sessions each allowed one message by them were all accepted against a
        limit of 3). A reply refusing the message (nothing counted), what was held
        (to give back if the message is not stored after all), or None: no limit
        applies, or the counters failed open at MAIL; `count` counts it then."""
        budget = self.budget
        if rates is None or budget is None or self._profile is None or (
                budget.messages_left is None and budget.recipients_left is None):
            return None
        got = await rates.reserve(self._profile, self.principal.app_password, 1, recipients)
        if isinstance(got, Held):
            return got
        if got.messages_left is not None and got.messages_left <= 0:
            log.warning("%s: user=%s message rate limit at the end of DATA: %s", self._where,
                        self.principal.account, self._detail(got))
            metrics.rate_limited("messages")
            return self._message_refusal(got)
        log.warning("%s: user=%s recipient rate limit of the %s at the end of DATA (%d left "
                    "this hour, the message has %d)", self._where, self.principal.account,
                    self._limited(got, got.recipient_key),
                    max(got.recipients_left or 0, 0), recipients)
        metrics.rate_limited("recipients")
        return self._recipient_refusal(got)

    def count(
        self, rates: RateLimiter | None, recipients: int, held: Held | None = None
    ) -> Coroutine[Any, Any, None] | None:
        """The accepted message's count, to run alongside its spool write; None if
        nothing waits for it (``held`` by `reserve` already; no budget, or one no
        limit applies to: gathered and written within a second,
        ``RateLimiter.count_later``)."""
        budget = self.budget
        if rates is None or budget is None:
            return None
        if held is not None and (held.messages or held.recipients):
            return None  # counted by the reservation
        if budget.messages_left is None and budget.recipients_left is None:
            rates.count_later(budget.keys, 1, recipients)  # gates nothing: no wait
            return None
        return rates.count(budget.keys, 1, recipients)

    @staticmethod
    async def give_back(rates: RateLimiter | None, held: Held) -> None:
        """A reservation whose message was not stored after all (a spool fault)."""
        if rates is not None and (held.messages or held.recipients):
            await rates.count(held.keys, -held.messages, -held.recipients, bucket=held.bucket)
