"""One server-side SASL exchange, as a sans-IO object with typed outcomes.

Theory of operation
-------------------
A front door (the SMTP engine today, a Dovecot-auth protocol engine next) owns
the framing: it decodes what the client sent (base64, SMTP's ``*`` cancel, the
Dovecot ``CONT`` line) and frames what comes back (``334``, ``CONT``/``OK``/
``FAIL``). The exchange deals in decoded bytes and typed steps only:

- ``start(initial)`` once, then ``respond(data)`` after each ``Challenge``,
  ``answer(result)`` after each ``NeedCredentials``, until an ``Outcome``;
- ``cancel()`` when the client gives up, ``malformed(reason)`` when the framing
  could not decode its response, ``abandon(reason)`` when the client is gone.

Every exchange ends in exactly one ``Outcome``: after it, ``abandon()`` returns
None and any other call raises ``MechanismUsageError`` naming the expected call.

Some mechanisms give their verdict inside a challenge (SCRAM ``v=`` or ``e=``,
the OAUTHBEARER/XOAUTH2 error JSON). From then on ``verdict_announced`` is set
and the outcome is decided: after an announced failure, whatever the client
answers (the dummy response, a cancel, garbage) or if it hangs up, the exchange
ends as that failure; after an announced success only an empty response
succeeds, and a cancel means the client did not accept the server's signature.
A front door whose client takes final data with the outcome (Dovecot's
``final-resp-ok``) answers such a challenge itself with ``respond(b"")``.

A mechanism that raises ends in a temporary failure (a backend fault to the
client), never in a traceback on the wire.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import Literal

from smtpgate.sasl.base import (
    Challenge,
    CredentialAnswer,
    Failure,
    MechanismUsageError,
    NeedCredentials,
    ServerMechanism,
    Step,
    Success,
)

__all__ = [
    "AuthResult",
    "BindingEvidence",
    "Challenge",
    "ExchangeStep",
    "NeedCredentials",
    "Outcome",
    "ServerExchange",
]

#: What an exchange showed about the client's channel binding (docs/mechanisms.md,
#: "-PLUS and GNU SASL clients"): 'cannot-bind' when a -PLUS exchange ended before
#: the client's first message, 'can-bind' when the client bound or said it could,
#: '' when it showed nothing.
BindingEvidence = Literal["", "cannot-bind", "can-bind"]


class AuthResult(StrEnum):
    """How an exchange ended. The values are what the auth log records."""

    SUCCESS = "success"
    #: Bad credentials or a policy refusal: counts as a failed attempt.
    FAILURE = "failure"
    #: A backend fault: never counts as a failed attempt (RFC 4954 §6, 454).
    TEMPFAIL = "tempfail"
    #: The client gave up (or left) before any verdict.
    CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True)
class Outcome:
    """The one end of an exchange.

    ``username`` is the identity the client gave, or on SUCCESS the proven one
    (for the log: one account under one name), ``identity`` the proven one ("" unless
    SUCCESS), ``authzid`` the authorization identity asked
    for ("" if none). ``reason`` goes to the log only, never to the client.
    """

    mechanism: str
    result: AuthResult
    username: str
    identity: str
    reason: str
    authzid: str = ""
    binding: BindingEvidence = ""
    #: The client's last message was not one the mechanism could parse (bad
    #: base64, a SCRAM client-final without a proof): no secret was tried, so the
    #: login path counts it against the address, not the account.
    malformed: bool = False


ExchangeStep = Challenge | NeedCredentials | Outcome


class _Phase(Enum):
    NEW = "start()"
    CHALLENGED = "respond(), cancel(), malformed() or abandon()"
    QUERYING = "answer() or abandon()"
    DONE = "nothing (the exchange is over)"


#: What a response after an announced success other than the empty one means.
_NOT_EMPTY_AFTER_SUCCESS = "non-empty response after success data"


class ServerExchange:
    """One SASL exchange with one mechanism instance (see the module docstring)."""

    def __init__(
        self, mechanism: str, implementation: ServerMechanism, *, plus_withheld: bool = False
    ) -> None:
        self.mechanism = mechanism
        self._mech = implementation
        #: The front door held -PLUS back from this client (the channel-binding
        #: fallback): a plain SCRAM given up early then says "can bind".
        self._plus_withheld = plus_withheld
        self._phase = _Phase.NEW
        self._username = ""
        #: The outcome a challenge announced (SCRAM v= or e=, the OAuth error JSON).
        self._announced: Success | Failure | None = None
        #: The client has sent SASL data (an initial response, or any response
        #: other than a cancel).
        self._spoke = False

    # ------------------------------------------------------------------ facts

    @property
    def finished(self) -> bool:
        return self._phase is _Phase.DONE

    @property
    def server_first(self) -> bool:
        """The mechanism speaks first (CRAM-MD5), so it takes no initial response."""
        return self._mech.server_first

    @property
    def verdict_announced(self) -> bool:
        """The last challenge carried the outcome; the client's answer cannot change
        a failure (see the module docstring)."""
        return self._announced is not None

    @property
    def announced_failure(self) -> Failure | None:
        """The failure the last challenge announced (SCRAM ``e=``, the OAuth error
        JSON), which the client's answer cannot change: a front door may have it
        counted at once instead of after that answer."""
        announced = self._announced
        return announced if isinstance(announced, Failure) else None

    # ------------------------------------------------------------------ calls

    def start(self, initial: bytes | None) -> ExchangeStep:
        """Begin; ``initial`` is the decoded initial response (None if the client sent
        none, ``b""`` for an empty one)."""
        self._expect(_Phase.NEW, "start")
        self._spoke = initial is not None
        mech = self._mech
        return self._step(self._safe(lambda: mech.start(initial)))

    def respond(self, data: bytes) -> ExchangeStep:
        """The client's decoded answer to the last challenge."""
        self._expect(_Phase.CHALLENGED, "respond")
        announced = self._announced
        if announced is not None:
            if isinstance(announced, Success) and data == b"":
                return self._end(AuthResult.SUCCESS, announced.identity, "", announced)
            return self._end_announced(announced, _NOT_EMPTY_AFTER_SUCCESS)
        self._spoke = True
        mech = self._mech
        return self._step(self._safe(lambda: mech.step(data)))

    def answer(self, result: CredentialAnswer) -> ExchangeStep:
        """What the auth service found for the last ``NeedCredentials``."""
        self._expect(_Phase.QUERYING, "answer")
        mech = self._mech
        return self._step(self._safe(lambda: mech.answer(result)))

    def cancel(self) -> Outcome:
        """The client cancelled (RFC 4954 §4 ``*``). A cancel cannot undo an announced
        failure; after an announced success it means the client refused our proof."""
        self._expect(_Phase.CHALLENGED, "cancel")
        announced = self._announced
        if isinstance(announced, Success):
            reason = "client cancelled after the server signature"
            return self._end(AuthResult.CANCELLED, "", reason, announced)
        if isinstance(announced, Failure):
            return self._end_announced(announced, "")
        return self._end(AuthResult.CANCELLED, "", "client cancelled", None)

    def malformed(self, reason: str) -> Outcome:
        """The framing could not decode the client's response (bad base64, an
        over-long line): a failure, or the failure already announced."""
        self._expect(_Phase.CHALLENGED, "malformed")
        announced = self._announced
        if announced is not None:
            return self._end_announced(announced, _NOT_EMPTY_AFTER_SUCCESS)
        self._spoke = True
        return self._end(AuthResult.FAILURE, "", reason, None, malformed=True)

    def malformed_initial(self, reason: str) -> Outcome:
        """The framing could not decode the initial response on the AUTH line (bad
        base64, a line over the limit): the exchange fails before it starts, as the
        same response sent after a 334 fails (``malformed``)."""
        self._expect(_Phase.NEW, "malformed_initial")
        self._spoke = True
        return self._end(AuthResult.FAILURE, "", reason, None, malformed=True)

    def abandon(self, reason: str) -> Outcome | None:
        """The client is gone (hung up, timed out, server shutting down): the outcome
        to record, or None if the exchange had already ended. A client that read an
        announced failure and left has failed, not cancelled."""
        if self._phase is _Phase.DONE:
            return None
        announced = self._announced
        if isinstance(announced, Failure):
            result = AuthResult.TEMPFAIL if announced.temporary else AuthResult.FAILURE
            return self._end(result, "", f"{announced.reason} ({reason})", announced)
        return self._end(AuthResult.CANCELLED, "", reason, announced)

    # ------------------------------------------------------------- internals

    def _expect(self, phase: _Phase, call: str) -> None:
        if self._phase is not phase:
            raise MechanismUsageError(
                f"{call}() called on a {self.mechanism} exchange that expects {self._phase.value}"
            )

    @staticmethod
    def _safe(call: Callable[[], Step]) -> Step:
        """A mechanism bug must end in a defined failure, not a traceback to the client."""
        try:
            return call()
        except Exception as exc:  # noqa: BLE001 - mapped at the boundary
            return Failure(f"internal mechanism error: {type(exc).__name__}", temporary=True)

    def _step(self, step: Step) -> ExchangeStep:
        if isinstance(step, Challenge):
            self._phase = _Phase.CHALLENGED
            return step
        if isinstance(step, NeedCredentials):
            self._username = getattr(step.query, "username", "") or self._username
            self._phase = _Phase.QUERYING
            return step
        if isinstance(step, Success):
            if step.final_data is not None:
                # RFC 4422 §3.6 additional data with success: it goes out as a
                # challenge, and the client's empty response confirms it.
                self._announced = Success(step.identity, step.authzid)
                self._phase = _Phase.CHALLENGED
                return Challenge(step.final_data)
            return self._end(AuthResult.SUCCESS, step.identity, "", step)
        if step.username:
            self._username = step.username
        if step.error_data is not None:
            # The verdict goes out now, in a challenge; the exchange ends as this
            # failure after the client's answer, whatever that answer is.
            self._announced = step
            self._phase = _Phase.CHALLENGED
            return Challenge(step.error_data)
        result = AuthResult.TEMPFAIL if step.temporary else AuthResult.FAILURE
        return self._end(result, "", step.reason, step)

    def _end_announced(self, announced: Success | Failure, after_success: str) -> Outcome:
        """The client's answer to a challenge that announced the outcome was not the
        empty response an announced success needs."""
        if isinstance(announced, Success):
            return self._end(AuthResult.FAILURE, "", after_success, None)
        result = AuthResult.TEMPFAIL if announced.temporary else AuthResult.FAILURE
        return self._end(result, "", announced.reason, announced)

    def _end(
        self,
        result: AuthResult,
        identity: str,
        reason: str,
        decided: Success | Failure | None,
        *,
        malformed: bool = False,
    ) -> Outcome:
        binding = self._binding_evidence(result, decided)
        malformed = malformed or (isinstance(decided, Failure) and decided.malformed)
        self._phase = _Phase.DONE
        self._announced = None
        authzid = decided.authzid if isinstance(decided, Success) and identity else ""
        return Outcome(
            self.mechanism, result, identity or self._username, identity, reason, authzid, binding,
            malformed,
        )

    def _binding_evidence(
        self, result: AuthResult, decided: Success | Failure | None
    ) -> BindingEvidence:
        """What this exchange showed about the client's channel binding.

        GNU SASL picks -PLUS whenever it is offered, and clients that do not hand it
        the binding data (mutt, neomutt) then give up before their first message;
        clients that do (gsasl) give up the same way on plain SCRAM when -PLUS is
        held back. Either is visible here and nowhere else."""
        name = self.mechanism
        if isinstance(decided, Success) and name.endswith("-PLUS"):
            return "can-bind"  # the proof covered this connection's binding data
        if isinstance(decided, Failure) and decided.client_could_bind:
            return "can-bind"
        if result is AuthResult.CANCELLED and not self._spoke:
            if name.endswith("-PLUS"):
                return "cannot-bind"
            if name.startswith("SCRAM-") and self._plus_withheld:
                return "can-bind"
        return ""
