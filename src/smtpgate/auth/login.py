"""One login attempt, whichever front door it came through.

Theory of operation
-------------------
A front door (the SMTP session today; the Dovecot auth protocol and nginx's
auth_http next, docs/architecture.md) runs the SASL exchange with its client and
hands this module the two moments that need the account directory and the guard:

1. ``resolve(query)``, each time the mechanism needs a credential. On the first
   query of an attempt the name given is resolved to the account's one name
   (``login_identity``: AD's ``sAMAccountName`` and UPN are one account, one
   count), and the guard is asked before any Argon2id or PBKDF2 work: a
   refusal answers the mechanism with a *temporary* failure (it ends as the
   guard's 454, never a 535), and a penalty is an ``asyncio.sleep`` of this
   attempt only, inside its address's gate alone: the account's and the
   subnet's gates are taken after it and the guard asked again
   (``_enter_new_address_gates``). Then the auth service resolves the query.
   SCRAM's later queries are part of the same attempt. The attempt lets go of
   its gates when the salt goes out (a client that stalls before its proof
   holds up nobody); ``ProofArrived`` (the proof is here) takes them again and
   asks the guard again before the proof is judged (``_before_proof``: no
   proof is judged on a stale record), and ``ConfirmIdentity`` (the proof
   held) is not checked again. The guard's check also says where the attempt's password verification
   queues (``_source``): one from an address the account knows, with no recent
   failures, goes before every other; any other waits its turn, one at a time
   per address, on lower-priority threads (``verify_scheduler.py``, why there).
   A wrong password is still verified and answered 535 exactly as before; only
   the order and the CPU share change, so the owner's logins do not queue
   behind a guesser's Argon2id runs. No negative cache of wrong secrets: a
   guesser sends a new password each time, so it would not spare a single run
   (measured: bench/README.md, issue 13, workload E).
2. ``conclude(outcome)`` when the exchange has ended, answered or not. It writes
   the attempt's one auth-log record and says what is left before the reply: the
   guard's commit (a failure counted, a known address remembered) and, for a
   failure, the failure floor, a jittered minimum time so that an unknown
   account and a wrong password look alike. Both are committed *before* the
   reply, so the client's next attempt, on any connection and in any worker,
   sees them. ``finish(outcome)`` is ``conclude`` plus waiting for that.

An attempt the client hung up on (``answered=False``) is concluded the same way:
logged, and a failure the server had already announced (SCRAM ``e=``, the OAuth
error JSON) still counted, or a guesser could read the verdict, hang up before
the 535 and never be counted. It gets no floor: nobody is waiting for it.

What counts (docs/protection.md): only a wrong secret counts toward the
account's lockout; a refusal that did not depend on the secret (conditional
access, expiry, an administrative lock) counts toward the address only, and a
refusal by the guard itself is not counted again. An attempt that failed before
it named an account (a malformed exchange) counts against the address.

A SCRAM exchange hands the client the account's salt and iteration count before
any proof (the *disclosure*): a prober can read them and cancel, over and over.
So an attempt that got that far and then ended without a proof (a cancel, a
hang-up, a client-final the mechanism could not parse) counts as a failed attempt
against the address and toward spraying, like a guess, but not toward the
account's lockout: nothing was guessed, and a prober must not be able to lock
the owner out for free. An exchange cancelled after the server's own signature
(``v=``) had a good proof and is not counted.

This module knows nothing of SMTP: the result is a class of reply (success,
failure, temporary failure with the guard's refusal if there was one,
cancelled) that each front door words in its own protocol.
"""

from __future__ import annotations

import asyncio
import random
import time
import weakref
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, replace
from typing import Any, Protocol

from smtpgate import metrics
from smtpgate.auth.attempt_gate import AttemptGate, Hold
from smtpgate.auth.authlog import REFUSED
from smtpgate.auth.directory import AppPassword, StoreError
from smtpgate.auth.guard import Guard, GuardCheck, Refusal, mail_login_key
from smtpgate.auth.principal import AppPasswordUse, Principal
from smtpgate.auth.sender_profile import SenderProfile
from smtpgate.auth.service import REFUSED_UNKNOWN, AuthContext, AuthService
from smtpgate.auth.services import AuthServices
from smtpgate.auth.shared_gate import SharedGate
from smtpgate.auth.verify_scheduler import Lane
from smtpgate.sasl.base import (
    ConfirmIdentity,
    CredentialAnswer,
    CredentialQuery,
    Failure,
    LookupCramMd5,
    LookupScram,
    NotFound,
    ProofArrived,
    Verdict,
)
from smtpgate.sasl.exchange import AuthResult


class ExchangeOutcome(Protocol):
    """How a SASL exchange ended, as every front door's exchange reports it
    (the SMTP engine's ``AuthFinished``, the SASL exchange's ``Outcome``)."""

    @property
    def mechanism(self) -> str: ...
    @property
    def result(self) -> AuthResult: ...
    #: The name the client gave, for the log ("" if it gave none).
    @property
    def username(self) -> str: ...
    #: The proven account, on success.
    @property
    def identity(self) -> str: ...
    @property
    def reason(self) -> str: ...
    #: The client's last message could not be parsed (no secret was tried).
    @property
    def malformed(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class LoginResult:
    """The class of reply an attempt gets; each front door words it."""

    #: As the exchange ended (a guard refusal is TEMPFAIL).
    result: AuthResult
    #: Who logged in (success only).
    principal: Principal | None = None
    #: The guard refused the attempt before any credential was checked (result
    #: "tempfail"): its kind says which temporary reply fits (docs/protection.md).
    refusal: Refusal | None = None
    #: The account's sender profile if the login read it (success only; else the
    #: session reads it at its first MAIL).
    profile: SenderProfile | None = None


@dataclass(slots=True)
class Conclusion:
    """``conclude``'s answer: the result, and what must finish before the reply."""

    result: LoginResult
    #: The guard's commit and the failure floor; await it before answering. None:
    #: answer at once (the common success path writes nothing).
    pending: Coroutine[Any, Any, None] | None = None


class LoginAttempts:
    """The login path of one process: the auth service, the guard, the floor.

    Shared by every session and front door; use it from one event loop.
    """

    def __init__(
        self,
        auth: AuthService,
        guard: Guard | None,
        *,
        failure_floor: float = 0.25,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        #: The auth service now and the ones a reload replaced (auth/services.py).
        self.services = AuthServices(auth)
        self.guard = guard
        #: Seconds; a reload may change it (``[auth] failure_floor``).
        self.failure_floor = failure_floor
        #: How a penalty or the floor is waited (tests replace it).
        self.sleep = sleep
        #: One attempt at a time per address, check to committed failure
        #: (``attempt_gate.py``: concurrent guesses must not outrun the limits).
        self.gate = AttemptGate()

    @property
    def auth(self) -> AuthService:
        """The service new attempts use."""
        return self.services.current

    def begin(self, source: AuthContext, alive: Callable[[], bool] = lambda: True) -> LoginAttempt:
        """A new attempt from ``source``. ``alive`` says whether the client is still
        there: once it is gone, no penalty is waited and no credential is checked."""
        return LoginAttempt(self, source, alive)

    def refused(self, source: AuthContext, mechanism: str, username: str, reason: str) -> None:
        """An AUTH command the protocol refused before any exchange began (``AuthRefused``,
        smtp/events.py): its one auth-log record, result ``refused``, and its count
        (``refused_protocol``). No credential was looked at, so the guard counts
        nothing and no floor is waited: the reply has gone out already."""
        self.auth.record(source, mechanism, username, REFUSED, reason)
        metrics.auth_attempt(mechanism, source.front_door, "refused_protocol", None)

    async def floor(self) -> None:
        """Wait the failure floor, with up to 50% jitter (chasquid does this)."""
        floor = self.failure_floor
        if floor > 0:
            await self.sleep(floor * (1 + random.random() * 0.5))


class LoginAttempt:
    """One attempt, from its first credential query to its outcome."""

    def __init__(self, owner: LoginAttempts, source: AuthContext, alive: Callable[[], bool]) -> None:
        self._owner = owner
        self.source = source
        self._alive = alive
        #: The name the guard counts this attempt under (the account's canonical
        #: name, ``_account``), from the first credential query on; "" before.
        self.account = ""
        #: The guard's view, from the first query on.
        self._check: GuardCheck | None = None
        #: The refusal class the auth service noted (None: the secret decided).
        self._refusal: str | None = None
        self._app: AppPassword | None = None
        self._issuer: str | None = None
        #: The verified bearer token and its end (``Resolution``).
        self._token: tuple[str, float | None] | None = None
        #: The identity a good bearer token or a verified client certificate named,
        #: whatever became of the login (``Resolution.named_identity``): the log's
        #: user name if the client gave none.
        self._named = ""
        self._profile: SenderProfile | None = None
        #: The mechanism has shown the client something of the account before any
        #: proof (SCRAM's salt and count), and no proof has been accepted since.
        self._disclosed = False
        #: When the attempt's first credential query came (its login latency).
        self._started: float | None = None
        #: The service held from the first query to the conclusion: a reload
        #: in between does not change the directory under the exchange.
        self._auth: AuthService | None = None
        #: Release this attempt's holds on its address's and account's gates (each
        #: once; also when the attempt is garbage-collected without a conclusion).
        self._gates: dict[str, tuple[Hold, weakref.finalize[..., Any]]] = {}
        #: The failure counted when the exchange announced it (``failure_announced``).
        self._early: asyncio.Future[None] | None = None

    def _service(self) -> AuthService:
        if self._auth is None:
            self._auth = self._owner.services.hold()
        return self._auth

    async def resolve(self, query: CredentialQuery) -> CredentialAnswer | None:
        """The answer for the mechanism, or None if the client went away meanwhile."""
        owner = self._owner
        guard = owner.guard
        if self._started is None:
            self._started = time.monotonic()
        if isinstance(query, ProofArrived):
            return await self._before_proof(guard, query)
        if guard is not None and not isinstance(query, (ConfirmIdentity, ProofArrived)):
            # The first look-up of an attempt (SCRAM's ConfirmIdentity is its
            # second): the guard decides before any hashing happens.
            self._refusal, self._app, self._issuer, self._profile = None, None, None, None
            self._token, self._named = None, ""
            account, fault = await self._account(guard, getattr(query, "username", ""))
            self.account = account
            if not self._alive():
                return None
            await self._enter_gate(guard)
            if not self._alive():
                return None
            check = await guard.check(self.source.client_ip, account)
            if not self._alive():
                return None
            self._check = check
            if check.delay > 0:
                # The penalty: this attempt only, inside its address's gate alone
                # (the address's next attempts follow at the penalty's pace; no
                # other address waits for it).
                await owner.sleep(check.delay)
                if not self._alive():
                    return None
            if check.refusal is not None:
                return temporary_answer(query, check.refusal.reason)
            if check.unavailable:
                # The guard state is not answering and the guard's degraded mode
                # refuses this attempt: a backend fault (454), not a block.
                return temporary_answer(query, check.unavailable)
            if fault is not None:
                # The directory failed to say whose name this is: no credential
                # check (a bind could go uncounted), a temporary failure as for
                # any directory fault.
                return temporary_answer(query, fault)
            if not check.known and account:
                again = await self._enter_new_address_gates(guard, query, account,
                                                            stale=check.delay > 0)
                if again is not _GO_ON:
                    return again
        res = await self._service().resolve_detailed(query, self._source())
        # Decoys disclose as much as real keys do; a temporary answer shows nothing.
        self._disclosed = isinstance(query, LookupScram) and not (
            isinstance(res.answer, NotFound) and res.answer.temporary
        )
        if self._disclosed:
            # The salt goes out and the exchange waits on its client: nothing is
            # judged until the proof comes, which takes the gates again and is
            # checked again (``_before_proof``). Held meanwhile, they would let a
            # client that stalls here delay every other attempt on the account.
            self._pause_gates()
        if not self._alive():
            return None
        self._refusal = res.refusal or self._refusal
        self._app = res.app_password or self._app
        self._issuer = res.oauth_issuer or self._issuer
        if res.oauth_token is not None:
            self._token = (res.oauth_token, res.oauth_expires)
        self._named = res.named_identity or self._named
        self._profile = res.profile or self._profile
        return res.answer

    async def _enter_new_address_gates(
        self, guard: Guard, query: CredentialQuery, account: str, *, stale: bool,
    ) -> CredentialAnswer | None:
        """Take the account's and the subnet's gates for an attempt from an address
        the account does not know, after its penalty: ``_GO_ON``, or the answer
        ``_check_again`` gives.

        Taken after the penalty, so that they are held only for the check, the
        verification and the committed failure: a penalised guesser then holds up
        none of the account's other new-address logins (the owner on a new
        network) and none of its subnet's. The guard is asked again if another
        attempt held either gate (its failure may have locked the account or
        blocked the subnet) or if the check is ``stale`` (read before a penalty,
        during which others' failures were counted)."""
        waited = await self._enter_gate(guard, account=account)
        waited = await self._enter_gate(guard, subnet=True) or waited
        if not waited and not stale:
            return _GO_ON
        return await self._check_again(guard, query)

    async def _enter_gate(self, guard: Guard, *, account: str = "", subnet: bool = False) -> bool:
        """Wait until no other attempt from this address (with ``account``: no other
        attempt on that account from an address it does not know; with ``subnet``:
        no other attempt from the address's subnet from an address its account does
        not know) is between its check and its committed failure
        (``attempt_gate.py``); hold the gate until ours is. True if another attempt
        held it (the record has changed).

        Taken in that order (address, account, subnet), by every attempt, so no
        two attempts wait for each other. The subnet's gate keeps a spray from many
        addresses of one subnet at once within ``subnet_spray_accounts``: each such
        attempt reads a count that includes the failures of those before it."""
        ip = self.source.client_ip
        if not guard.watches(ip):
            return False
        keys = guard.keys(ip)
        if subnet:
            if keys.subnet == keys.address:
                return False  # the subnet is the address (a /32 or /64 subnet prefix)
            key = f"subnet {keys.subnet}"
        else:
            key = f"account {account}" if account else f"address {keys.address}"
        if key in self._gates:
            return False  # a second first query of this attempt: held already
        return await self._take(key)

    async def _take(self, key: str) -> bool:
        gate = self._owner.gate
        waited = gate.busy(key)
        hold = await gate.acquire(key)
        self._gates[key] = (hold, weakref.finalize(self, gate.release, key, hold))
        guard = self._owner.guard
        shared = guard.shared_gate if guard is not None else None
        if shared is not None:
            # Then the cluster's lease on the same key (``shared_gate.py``). One
            # release gives back both, the lease first, so a pause, a lapse and
            # the conclusion let go of the cluster's lease with the process's gate.
            token, waited_elsewhere = await shared.acquire(key)
            self._gates[key][1].detach()
            self._gates[key] = (hold, weakref.finalize(
                self, _release_both, gate, key, hold, shared, token))
            waited = waited or waited_elsewhere
        return waited

    def _leave_gate(self) -> None:
        held, self._gates = self._gates, {}
        for _, release in reversed(held.values()):
            release()

    def _leave_new_address_gates(self) -> None:
        """Release the account's and the subnet's holds (the subnet's first), keep
        the address's."""
        for key in reversed([k for k in self._gates if not k.startswith("address ")]):
            self._gates.pop(key)[1]()

    def _pause_gates(self) -> None:
        """Release this attempt's holds but remember their keys: ``_before_proof``
        takes them again, as it does a hold whose time ended."""
        for _, release in reversed(self._gates.values()):
            release()

    async def _before_proof(self, guard: Guard | None, query: ProofArrived) -> CredentialAnswer | None:
        """May the proof that just arrived be judged (``ProofArrived``)?

        The gates were let go when the salt went out (``_pause_gates``), and
        other attempts may have checked, failed and locked the account while
        the client worked out its proof, so the check this attempt made is
        stale: the gates are taken again and the guard asked again, and a
        refusal now ends the exchange as it would have at the start (the same
        temporary failure, after the same delay), before the proof is looked
        at, so the answer says nothing about the proof. Yes at once if the
        attempt holds its gates still (none paused: a front door that answers
        the look-up itself).
        """
        gate = self._owner.gate
        lapsed = [key for key, (hold, _) in self._gates.items() if not gate.holds(key, hold)]
        if guard is None or self._check is None or not lapsed:
            return _GO_ON
        for key in lapsed:
            self._gates.pop(key)[1]()  # the cluster's lease with it; the lapsed hold is gone already
        for key in lapsed:  # in the order first taken (address, account, subnet)
            await self._take(key)
        if not self._alive():
            return None
        return await self._check_again(guard, query)

    async def _check_again(self, guard: Guard, query: CredentialQuery) -> CredentialAnswer | None:
        """Ask the guard again, the gates waited for: ``_GO_ON``, the temporary
        answer of a refusal now (after the delay any refusal gets; the penalty
        was waited already), or None if the client went away."""
        check = await guard.check(self.source.client_ip, self.account)
        if not self._alive():
            return None
        self._check = check
        if check.refusal is not None:
            if check.delay > 0:
                # Refused: nothing is verified or counted, so the account's and
                # the subnet's gates go before the refusal's delay; the address's
                # is kept, as a refusal at the first check keeps it.
                self._leave_new_address_gates()
                await self._owner.sleep(check.delay)
            return None if not self._alive() else temporary_answer(query, check.refusal.reason)
        if check.unavailable:
            return temporary_answer(query, check.unavailable)
        return _GO_ON

    def failure_announced(self, failure: Failure) -> None:
        """The exchange told its client it failed, in a challenge (SCRAM ``e=``, the
        OAuth error JSON), and waits for the client's answer, which cannot change
        that. The failure is counted now and the gates let go once it is
        written; held until the client answered, they let a client that never
        answers hold up every other attempt on the address and the account.
        ``conclude`` waits for this write instead of making its own. A temporary
        failure (a refusal, a fault) counts nothing: the gates go at once."""
        guard = self._owner.guard
        if self._early is not None:
            return
        if failure.temporary or guard is None:
            self._pause_gates()
            return
        check = self._check if self._check is not None else guard.bare_check(self.source.client_ip)
        # As ``conclude`` counts it: a client-final without a proof is a probe.
        counts_account = self._refusal is None and not (self._disclosed and failure.malformed)
        self._early = asyncio.ensure_future(self._counted(guard, check, counts_account))

    async def _after_early(self, early: asyncio.Future[None], answered: bool) -> None:
        await early
        if answered:
            await self._owner.floor()

    def _source(self) -> AuthContext:
        """The source, with the lane its password verification queues in: the
        owner's from a known address first, every other one by its address, one
        at a time (``verify_scheduler.py``). Without the guard's check there is
        nothing to tell them apart: the front door's default (trusted)."""
        check = self._check
        if not isinstance(check, GuardCheck) or check.trusted:
            return self.source
        return replace(self.source, lane=Lane.untrusted(check.keys.address))

    async def _account(self, guard: Guard, username: str) -> tuple[str, str | None]:
        """The name the guard counts this attempt under, and the directory fault
        that kept it from being resolved (then: the name as given).

        The account the name logs in as, so that all names of one account (AD's
        UPN and ``sAMAccountName``) share one count and one lockout; a name of no
        account, normalised. Resolved for known and unknown names alike (the
        reply and its timing must not tell them apart); not for a client the
        guard does not watch (allowlisted), whose attempts it never counts. A
        name in the web admin's namespace: "" (``guard.mail_login_key``).
        """
        if not username or not guard.watches(self.source.client_ip):
            return username, None
        try:
            return mail_login_key(await self._service().login_identity(username)), None
        except StoreError as e:
            return mail_login_key(username), str(e)

    def conclude(self, outcome: ExchangeOutcome, *, answered: bool = True) -> Conclusion:
        """Write the attempt's one auth-log record and say what is left to do.

        ``answered`` is False when the client hung up before its reply: the
        pending work is then the guard's only (no floor), for the caller to run
        in the background. The attempt is over after this call.
        """
        owner = self._owner
        check, self._check = self._check, None
        refusal, self._refusal = self._refusal, None
        app, self._app = self._app, None
        issuer, self._issuer = self._issuer, None
        token, self._token = self._token, None
        named, self._named = self._named, ""
        profile, self._profile = self._profile, None
        disclosed, self._disclosed = self._disclosed, False
        auth, self._auth = self._auth, None
        early, self._early = self._early, None
        if auth is None:
            auth = owner.auth  # ended before any query (nothing held)
        else:
            owner.services.release(auth)  # record() below is synchronous
        guard, src = owner.guard, self.source
        result = AuthResult(outcome.result)
        self._count(outcome.mechanism, result, refusal,
                    guard_refused=check is not None and check.refusal is not None)
        if result is AuthResult.TEMPFAIL and check is not None and check.refusal is not None:
            # Refused by the guard: logged as such (fail2ban and the report count
            # it as blocked), not counted again, answered with the guard's reply.
            self._leave_gate()
            auth.record(src, outcome.mechanism, outcome.username, result,
                        f"blocked: {check.refusal.reason}")
            return Conclusion(LoginResult(result, refusal=check.refusal))
        reason = outcome.reason
        if result is AuthResult.SUCCESS and not reason and app is not None:
            reason = f"app password {app.name!r}"
        # Read the salt, then no proof: counted against the address (module docstring).
        probe = disclosed and (
            result is AuthResult.CANCELLED or (result is AuthResult.FAILURE and outcome.malformed)
        )
        if probe:
            reason = f"{reason} (after the salt, without a proof: counted)"
        # A bearer client need not name its account (OAUTHBEARER without a=), nor
        # an EXTERNAL one (``AUTH EXTERNAL =``): a good token or certificate
        # refused for its account (none such, locked) is logged under the name
        # the token gave or the certificate maps to, not "" (until 2026-12 the
        # record named nobody).
        auth.record(src, outcome.mechanism, outcome.username or named, result, reason)
        if result is AuthResult.SUCCESS:
            self._leave_gate()
            principal = Principal(
                account=outcome.identity,
                mechanism=outcome.mechanism,
                app_password=_app_use(app),
                oauth_issuer=issuer,
                oauth_token=token[0] if token else None,
                oauth_expires=token[1] if token else None,
            )
            pending = None
            if guard is not None and check is not None and guard.success_needs_write(
                check, outcome.identity
            ):
                pending = guard.success(check, outcome.identity)  # committed before the 235
            if profile is not None and profile.name != outcome.identity:
                profile = None  # not the account that logged in: MAIL reads its own
            return Conclusion(LoginResult(result, principal, profile=profile), pending)
        if result is not AuthResult.FAILURE and not probe:
            self._leave_gate()
            return Conclusion(LoginResult(result))
        if early is not None:  # counted when it was announced
            return Conclusion(LoginResult(result), self._after_early(early, answered))
        if guard is not None and check is None:
            check = guard.bare_check(src.client_ip)  # failed before naming an account
        # A refusal that did not depend on the secret never counts toward the
        # account's lockout (docs/protection.md, "What counts as a failure"); nor
        # does a SCRAM probe that read the salt and gave no proof (see above).
        counts_account = refusal is None and not probe
        if not answered:
            if guard is None or check is None:
                self._leave_gate()
                return Conclusion(LoginResult(result))
            return Conclusion(LoginResult(result), self._counted(guard, check, counts_account))
        return Conclusion(LoginResult(result), self._failed(check, counts_account))

    def _count(self, mechanism: str, result: AuthResult, refusal: str | None, *,
               guard_refused: bool) -> None:
        """The attempt in the metrics: its result class and its login latency."""
        started, self._started = self._started, None
        if result is AuthResult.TEMPFAIL:
            kind = "refused_guard" if guard_refused else "temporary"
        elif result is AuthResult.FAILURE and refusal not in (None, REFUSED_UNKNOWN):
            kind = "refused_policy"  # a lock, conditional access, expiry: not the secret
        else:
            kind = _METRIC_RESULTS[result]
        seconds = None if started is None else time.monotonic() - started
        metrics.auth_attempt(mechanism, self.source.front_door, kind, seconds)

    async def finish(self, outcome: ExchangeOutcome) -> LoginResult:
        """``conclude`` an answered attempt and wait for what it left pending."""
        done = self.conclude(outcome)
        if done.pending is not None:
            await done.pending
        return done.result

    async def _failed(self, check: GuardCheck | None, counts_account: bool) -> None:
        guard = self._owner.guard
        try:
            if guard is not None and check is not None:
                # Committed before the 535, so the next attempt anywhere sees it.
                await guard.failure(check, counts_account=counts_account)
        finally:
            self._leave_gate()  # the next attempt from this address reads it
        await self._owner.floor()

    async def _counted(self, guard: Guard, check: GuardCheck, counts_account: bool) -> None:
        """An unanswered attempt's failure, committed in the background."""
        try:
            await guard.failure(check, counts_account=counts_account)
        finally:
            self._leave_gate()


#: ``_check_again``'s "the guard lets it go on" (for ``ProofArrived``, the answer
#: itself).
_GO_ON = Verdict(ok=True)


_METRIC_RESULTS = {
    AuthResult.SUCCESS: "success",
    AuthResult.FAILURE: "failure",
    AuthResult.TEMPFAIL: "temporary",
    AuthResult.CANCELLED: "cancelled",
}


def _release_both(gate: AttemptGate, key: str, hold: Hold, shared: SharedGate,
                  token: str | None) -> None:
    """The cluster's lease on ``key``, then the process's gate (the reverse of
    the order ``LoginAttempt._take`` took them in)."""
    shared.release(key, token)
    gate.release(key, hold)


def temporary_answer(query: CredentialQuery, reason: str) -> CredentialAnswer:
    """A temporary failure in the form ``query`` expects: the mechanism ends the
    exchange with it, and the front door answers "try again later" (454)."""
    if isinstance(query, (LookupScram, LookupCramMd5)):
        return NotFound(reason=reason, temporary=True)
    return Verdict(ok=False, reason=reason, temporary=True)


def _app_use(app: AppPassword | None) -> AppPasswordUse | None:
    if app is None:
        return None
    return AppPasswordUse(
        id=app.id,
        name=app.name,
        max_messages_per_hour=app.max_messages_per_hour,
        max_recipients_per_hour=app.max_recipients_per_hour,
    )
