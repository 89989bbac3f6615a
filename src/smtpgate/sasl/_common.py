"""Shared machinery of the server mechanisms: call-order enforcement and verdict mapping.

Every concrete server mechanism subclasses ``ServerMechanismBase`` and implements
``_start``/``_step``/``_answer``. The base class records which call the returned
``Step`` makes legal next (``Challenge`` -> ``step``, ``NeedCredentials`` ->
``answer``, ``Success``/``Failure`` -> nothing), so no mechanism repeats the
bookkeeping and none can be driven out of order (scramp's discipline, with the
expected call named in the error).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from smtpgate.sasl.base import (
    Challenge,
    ChannelBinding,
    CredentialAnswer,
    Failure,
    MechanismUsageError,
    NeedCredentials,
    NotFound,
    ServerMechanism,
    Step,
    Success,
    Verdict,
)

_Call = Literal["start", "step", "answer", "done"]

NO_CHANNEL_BINDING = ChannelBinding()


@dataclass(frozen=True, slots=True)
class ServerContext:
    """What the connection tells a server mechanism when the registry builds it.

    ``nonce_factory`` returns a fresh random string; ``None`` lets each mechanism use
    its own ``secrets``-based default (tests inject RFC nonces here).
    ``plus_advertised``: a SCRAM ``-PLUS`` variant is supported on this connection
    (offered, or held back from EHLO by the channel-binding fallback), which makes
    a ``y`` gs2 flag a downgrade (RFC 5802 §6).
    ``decoy_secret``/``decoy_iterations``: SCRAM's unknown-user decoy (see scram.py).
    ``oauth_scope``/``openid_configuration``: fields of the OAUTHBEARER/XOAUTH2
    error JSON (RFC 7628 §3.2.2).
    """

    channel_binding: ChannelBinding = field(default_factory=ChannelBinding)
    hostname: str = "localhost"
    nonce_factory: Callable[[], str] | None = None
    plus_advertised: bool = False
    decoy_secret: bytes | None = None
    decoy_iterations: int = 4096
    oauth_scope: str = ""
    openid_configuration: str = ""


def default_nonce() -> str:
    """24 random bytes as URL-safe base64: printable ASCII without ``,`` (RFC 5802 §7)."""
    return secrets.token_urlsafe(24)


class ServerMechanismBase(ServerMechanism):
    """Enforces the call order of ``base.ServerMechanism`` for its subclasses."""

    def __init__(self) -> None:
        self._expect: _Call = "start"

    @classmethod
    def from_context(cls, ctx: ServerContext) -> ServerMechanismBase:
        """Build the mechanism from connection facts; mechanisms that need none ignore them."""
        return cls()

    # -- public three-call contract --------------------------------------------

    def start(self, initial: bytes | None) -> Step:
        self._enter("start")
        return self._track(self._start(initial))

    def step(self, response: bytes) -> Step:
        self._enter("step")
        return self._track(self._step(response))

    def answer(self, result: CredentialAnswer) -> Step:
        self._enter("answer")
        return self._track(self._answer(result))

    # -- subclass hooks -----------------------------------------------------------

    def _start(self, initial: bytes | None) -> Step:
        raise NotImplementedError

    def _step(self, response: bytes) -> Step:
        raise NotImplementedError

    def _answer(self, result: CredentialAnswer) -> Step:
        raise NotImplementedError

    # -- bookkeeping ----------------------------------------------------------------

    @property
    def finished(self) -> bool:
        """True once a ``Success`` or ``Failure`` has been returned."""
        return self._expect == "done"

    def _enter(self, call: _Call) -> None:
        if self._expect != call:
            if self._expect == "done":
                raise MechanismUsageError(f"{self.name}: {call}() called after the exchange ended")
            raise MechanismUsageError(f"{self.name}: {call}() called, expected {self._expect}()")
        # Until the hook returns, any further call is out of order.
        self._expect = "done"

    def _track(self, result: Step) -> Step:
        if isinstance(result, Challenge):
            self._expect = "step"
        elif isinstance(result, NeedCredentials):
            self._expect = "answer"
        else:
            self._expect = "done"
        return result


def unexpected_answer(mechanism: str, result: object, username: str = "") -> Failure:
    """The auth service answered with the wrong type: our bug, so a temporary (454) failure."""
    return Failure(
        reason=f"{mechanism}: auth service returned {type(result).__name__} to this query",
        temporary=True,
        username=username,
    )


def verdict_step(
    mechanism: str,
    result: CredentialAnswer,
    *,
    username: str,
    authzid: str = "",
    final_data: bytes | None = None,
    error_data: bytes | None = None,
) -> Success | Failure:
    """Map the auth service's answer to VerifyPassword/VerifyToken/ConfirmIdentity.

    ``Verdict.identity`` is the canonical account name; an ``ok`` verdict without one
    falls back to the claimed ``username`` rather than authenticating as "".
    """
    if isinstance(result, Verdict):
        if result.ok:
            return Success(
                identity=result.identity or username, authzid=authzid, final_data=final_data
            )
        return Failure(
            reason=result.reason or "credentials rejected",
            temporary=result.temporary,
            username=username,
            error_data=error_data,
        )
    if isinstance(result, NotFound):
        return Failure(
            reason=result.reason,
            temporary=result.temporary,
            username=username,
            error_data=error_data,
        )
    return unexpected_answer(mechanism, result, username)


def decode_utf8(data: bytes) -> str | None:
    """Strict UTF-8 decoding; ``None`` for invalid input (never the replacement char)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def is_safe_name(name: str) -> bool:
    """Reject empty names, control characters (C0, DEL, C1) and the line and
    paragraph separators (U+2028, U+2029).

    Usernames travel on to line-based backends (Dovecot auth protocol: TAB, LF, CR,
    NUL and 0x01 are separators, protocol digest §2.10) and into logs, so a control
    character in a name is never legitimate (NEL, U+0085, ends a line for some
    readers, and U+2028 and U+2029 for editors, browsers and JavaScript log
    viewers); no account name holds one (``auth/names.py``), and SASLprep
    prohibits them all (RFC 3454 C.2).
    """
    return bool(name) and not any(
        ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0 or ch in "\u2028\u2029" for ch in name)
