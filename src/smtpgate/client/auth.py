"""The client side of SMTP AUTH (RFC 4954 §4) as a sans-IO loop: the one SASL driver.

Theory of operation
-------------------
`ClientAuthExchange` runs one client mechanism of ``smtpgate.sasl`` over a
`ClientEngine`. `start` returns the first `AuthSend`; the I/O layer writes its
``data``, reads one reply and passes it to `receive`, which returns the next
`AuthSend` or, once the exchange is over, the `ClientAuthResult`. The relay delivery
and the tools (tester, auditor) both run their AUTH through this class, by way of
the one asyncio shell (``smtpgate.queue.smtp_io``), so what a reply means is
decided here once:

* 235 is success, except after SCRAM without a verified server signature: RFC 5802
  §5 has the client authenticate the server by ``v=``, and a server that says 235
  without proving it knows the keys (a 235 straight after client-final, or after a
  wrong ``v=``) may be anyone. That is a refusal (``client_ended``), never success;
* a mechanism that finds the server misbehaving (bad syntax, wrong signature)
  cancels with "*", and the exchange is refused;
* a server's own error message (SCRAM ``e=``) is its verdict: answered with the
  empty response, as RFC 4954 §4 expects, to read the final reply (535 or 454);
* 4xx is a temporary failure, anything else a refusal;
* more than `MAX_AUTH_ROUNDS` challenges is a server leading us on: cancelled.

Each `AuthSend` carries what a transcript needs (the decoded challenge it answers,
the SASL payload, its index for masking, a note on why we answered so) without
this module knowing anything about transcripts or masking.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from smtpgate.client.engine import ClientEngine
from smtpgate.client.errors import RemoteProtocolError
from smtpgate.client.replies import ServerReply
from smtpgate.sasl.base import ClientAuthError, ClientMechanism, ServerErrorMessage
from smtpgate.sasl.scram import ScramClient

#: A SASL exchange longer than this is a server leading us on (SCRAM needs 3).
MAX_AUTH_ROUNDS = 10

Outcome = Literal["success", "refused", "tempfail"]

#: Why a 235 after SCRAM is not a success (RFC 5802 §5).
UNVERIFIED_SERVER = "235 without a SCRAM server signature: the server is not authenticated"


@dataclass(frozen=True, slots=True)
class AuthSend:
    """Write ``data``, read one reply, pass it to `ClientAuthExchange.receive`."""

    #: The bytes for the wire (the AUTH command, a base64 response, or "*").
    data: bytes
    #: The SASL payload inside ``data``; None for "*" and for AUTH without an
    #: initial response.
    payload: bytes | None = None
    #: Index of ``payload`` among the client's payloads, from 0 (for masking).
    index: int = 0
    #: ``data`` is the AUTH command itself.
    command: bool = False
    #: The decoded 334 challenge this answers (None for the AUTH command, and when
    #: the challenge was not read).
    challenge: bytes | None = None
    #: Why we answer this way ("" for an ordinary step): the mechanism's complaint
    #: before a cancel, or the server's error message before the empty response.
    note: str = ""


@dataclass(frozen=True, slots=True)
class ClientAuthResult:
    """How one AUTH exchange ended."""

    mechanism: str
    outcome: Outcome
    reply: ServerReply | None
    detail: str = ""
    #: SCRAM only: the server proved it knows the keys (RFC 5802 §5 "v=").
    server_verified: bool | None = None
    #: We ended it because the server misbehaved (a bad challenge or signature, a
    #: 235 without a SCRAM signature, too many rounds), whatever the server replied.
    client_ended: bool = False
    #: How many 334 challenges the server sent.
    challenges: int = 0

    @property
    def ok(self) -> bool:
        return self.outcome == "success"

    def to_json(self) -> dict[str, object]:
        return {
            "mechanism": self.mechanism,
            "result": self.outcome,
            "reply": str(self.reply) if self.reply is not None else None,
            "detail": self.detail,
            "server_verified": self.server_verified,
        }


class ClientAuthExchange:
    """One AUTH exchange; see the module docstring.

    ``initial_response`` False sends ``AUTH mech`` alone and the client-first data
    (if the mechanism has any) on the server's empty challenge, for servers and
    tests that need the long form.
    """

    def __init__(
        self,
        engine: ClientEngine,
        mech: ClientMechanism,
        *,
        initial_response: bool = True,
        max_rounds: int = MAX_AUTH_ROUNDS,
    ) -> None:
        self._engine = engine
        self._mech = mech
        self._initial_response = initial_response
        self._max_rounds = max_rounds
        self._pending: bytes | None = None  # client-first data held for the first 334
        self._index = 0
        self._rounds = 0
        self._cancelled = False
        #: Why the last challenge was taken as it came, not base64-decoded.
        self._odd_prompt = ""
        # Once the outcome is decided: (detail, client_ended, server_verified).
        self._ending: tuple[str, bool, bool | None] | None = None

    @property
    def mechanism(self) -> str:
        return self._mech.name

    def start(self) -> AuthSend:
        """The AUTH command (RFC 4954 §4), with the initial response if any."""
        initial = self._mech.start()
        if initial is not None and self._initial_response:
            return self._payload(self._engine.auth(self.mechanism, initial), initial, command=True)
        self._pending = initial
        return AuthSend(self._engine.auth(self.mechanism, None), command=True)

    def receive(self, reply: ServerReply) -> AuthSend | ClientAuthResult:
        """The next thing to send, or the result.

        Raises:
            RemoteProtocolError: a 334 whose challenge is not base64 (taken as it
                comes for a mechanism that ignores challenges: LOGIN).
        """
        if self._ending is not None:
            return self._ended(reply, *self._ending)
        if reply.code != 334:
            return self._final(reply)
        self._rounds += 1
        try:
            challenge = self._engine.challenge(reply)
        except RemoteProtocolError:
            if not self._mech.ignores_challenges:
                raise
            # "334 Username:" in clear, as some old servers prompt: LOGIN ignores
            # the prompt's text anyway (as swaks does, which logs in there).
            text = reply.lines[0].strip() if reply.lines else ""
            challenge = text.encode("utf-8")
            self._odd_prompt = (f"warning: the server's prompt {text!r} is not base64 "
                                f"(RFC 4954 §4); {self.mechanism} does not read it, so "
                                "answered anyway")
        if self._rounds > self._max_rounds:
            self._ending = ("too many challenges; cancelled", True, None)
            return self._cancel(challenge)
        note, self._odd_prompt = self._odd_prompt, ""
        if self._pending is not None:
            response, self._pending = self._pending, None
            return self._response(response, challenge, note=note)
        try:
            response = self._mech.step(challenge)
        except ServerErrorMessage as e:
            # The server's verdict is in: the empty response reads its final reply
            # (RFC 4954 §4) instead of hiding it behind a cancel.
            self._ending = (str(e), False, self._verified(default=False))
            return self._response(b"", challenge, note=str(e))
        except ClientAuthError as e:
            self._ending = (str(e), True, self._verified(default=False))
            return self._cancel(challenge, note=str(e))
        return self._response(response, challenge, note=note)

    # --- helpers ----------------------------------------------------------------

    def _response(self, data: bytes, challenge: bytes, note: str = "") -> AuthSend:
        return self._payload(self._engine.auth_response(data), data, challenge=challenge,
                             note=note)

    def _payload(
        self,
        wire: bytes,
        payload: bytes,
        *,
        command: bool = False,
        challenge: bytes | None = None,
        note: str = "",
    ) -> AuthSend:
        send = AuthSend(wire, payload, self._index, command, challenge, note)
        self._index += 1
        return send

    def _cancel(self, challenge: bytes | None = None, note: str = "") -> AuthSend:
        """RFC 4954 §4: "*" ends the exchange; the server answers 501."""
        self._cancelled = True
        return AuthSend(self._engine.auth_cancel(), challenge=challenge, note=note)

    def _verified(self, default: bool | None = None) -> bool | None:
        """SCRAM: whether the server signature checked out; ``default`` otherwise."""
        if isinstance(self._mech, ScramClient):
            return self._mech.done
        return default

    def _final(self, reply: ServerReply) -> ClientAuthResult:
        verified = self._verified()
        if reply.code == 235:
            if verified is False:
                return self._result("refused", reply, UNVERIFIED_SERVER, False,
                                    client_ended=True)
            return self._result("success", reply, "", verified)
        return self._result(_failure(reply), reply, str(reply), verified)

    def _ended(
        self, reply: ServerReply, detail: str, client_ended: bool, verified: bool | None
    ) -> AuthSend | ClientAuthResult:
        """After a cancel or the empty answer to an error: the final reply, or one
        cancel for a server that goes on challenging."""
        if reply.code == 334 and not self._cancelled:
            return self._cancel()
        if client_ended:
            return self._result("refused", reply, detail, verified, client_ended=True)
        return self._result(_failure(reply), reply, f"{detail}; then {reply}", verified)

    def _result(
        self,
        outcome: Outcome,
        reply: ServerReply,
        detail: str,
        verified: bool | None,
        *,
        client_ended: bool = False,
    ) -> ClientAuthResult:
        return ClientAuthResult(self.mechanism, outcome, reply, detail, verified, client_ended,
                          self._rounds)


def _failure(reply: ServerReply) -> Outcome:
    """RFC 4954 §6: 4xx is temporary (454 4.7.0); everything else refuses."""
    return "tempfail" if reply.is_temporary else "refused"


__all__ = [
    "MAX_AUTH_ROUNDS",
    "UNVERIFIED_SERVER",
    "AuthSend",
    "ClientAuthExchange",
    "ClientAuthResult",
    "Outcome",
]
