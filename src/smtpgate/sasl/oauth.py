"""OAUTHBEARER (RFC 7628) and XOAUTH2 (Google/Microsoft), server and client side.

Theory of operation
-------------------
Both carry a bearer token in one client message; the server extracts it and asks
the auth service with ``VerifyToken(username, token)``. ``username`` is what the
client claimed (OAUTHBEARER's gs2 authzid, XOAUTH2's ``user=``), "" if none; the
auth service checks that the token's identity matches it.

On a rejected token the failure is decided at once, but announced in two steps:
the mechanism returns ``Failure(error_data=<JSON error>)``, which the SMTP engine
sends as a 334 before the 535, after the client's dummy answer (0x01 for
OAUTHBEARER, RFC 7628 §3.2.3; an empty response for XOAUTH2, Google's documented
flow). Whatever the client answers, or if it hangs up, the attempt is that
failure. A backend fault (temporary) fails without the JSON, so SMTP can answer
454 without a round trip.

The JSON's status says why (RFC 7628 §3.2.2, with RFC 6750 §3.1's codes): a
message that does not parse is ``invalid_request``, a token that is good but
lacks a required scope ``insufficient_scope`` (the auth service's
``Verdict.token_error``), any other refusal ``invalid_token``. XOAUTH2 says the
same with the HTTP codes RFC 6750 §3.1 pairs with them: 400, 403, 401.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Literal

from smtpgate.sasl._common import (
    ServerContext,
    ServerMechanismBase,
    decode_utf8,
    is_safe_name,
    unexpected_answer,
)
from smtpgate.sasl.base import (
    Challenge,
    ClientAuthError,
    ClientMechanism,
    CredentialAnswer,
    Failure,
    NeedCredentials,
    NotFound,
    Step,
    Success,
    Verdict,
    VerifyToken,
)
from smtpgate.sasl.scram import escape_saslname, unescape_saslname

#: Protocol digest §2.7: cap the token before anyone parses it. Real access tokens
#: (JWTs with many claims) stay well under 8 KiB; 16 KiB leaves room.
MAX_MESSAGE_OCTETS = 16 * 1024

KVSEP = "\x01"

# RFC 7628 §3.1: key = 1*(ALPHA); value = *(VCHAR / SP / HTAB / CR / LF)
_KEY = re.compile(r"[A-Za-z]+")
_VALUE = re.compile(r"[\x21-\x7e \t\r\n]*")
# RFC 6750 §2.1: b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
# RFC 6750 §2.1: credentials = "Bearer" 1*SP b64token; the scheme name is
# case-insensitive (RFC 7235 §2.1, noted in RFC 7628 §4).
_BEARER = re.compile(r"(?i:bearer) +(\S+)")


class OAuthSyntaxError(ValueError):
    """An OAUTHBEARER or XOAUTH2 message does not match its grammar."""


@dataclass(frozen=True, slots=True)
class BearerRequest:
    """A parsed client message; ``token`` "" means a discovery request (``auth=``)."""

    username: str
    token: str
    fields: dict[str, str]


def _parse_kvpairs(pairs: list[str], *, names: frozenset[str] = frozenset()) -> dict[str, str]:
    """The pairs as a dict. Values follow RFC 7628 §3.1 (printable ASCII), except
    those of the keys in ``names``, which hold a user name: any character but a
    control one, so that an internationalised address (RFC 6531) fits."""
    fields: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        ok = (is_safe_name(value) or not value) if key in names else _VALUE.fullmatch(value)
        if not sep or not _KEY.fullmatch(key) or not ok:
            raise OAuthSyntaxError("bad key=value pair")
        # Protocol digest §2.7: reject a duplicate auth (and any duplicate key:
        # which one would count is exactly the ambiguity an attacker wants).
        if key in fields:
            raise OAuthSyntaxError(f"duplicate key {key!r}")
        fields[key] = value
    return fields


def _bearer_token(auth: str) -> str:
    """Token from an ``auth`` value; "" for the empty discovery value."""
    if auth == "":
        return ""
    m = _BEARER.fullmatch(auth)
    if m is None or not _B64TOKEN.fullmatch(m.group(1)):
        raise OAuthSyntaxError("auth is not 'Bearer <b64token>'")
    return m.group(1)


def _decode(data: bytes) -> str:
    text = decode_utf8(data) if len(data) <= MAX_MESSAGE_OCTETS else None
    if text is None:
        raise OAuthSyntaxError("message not UTF-8 or too long")
    return text


def parse_oauthbearer(data: bytes) -> BearerRequest:
    """Parse an OAUTHBEARER client response (RFC 7628 §3.1).

    Raises:
        OAuthSyntaxError: grammar violated, channel binding requested, no ``auth``.
    """
    text = _decode(data)
    # RFC 7628 §3.1: client-resp = (gs2-header kvsep *kvpair kvsep) / kvsep
    parts = text.split(",", 2)
    if len(parts) != 3:
        raise OAuthSyntaxError("no gs2 header")
    flag, authz_attr, rest = parts
    # RFC 7628 §3.1: OAUTHBEARER defines no channel binding, so "p=" cannot be
    # honoured; "n" and "y" are both acceptable.
    if flag not in ("n", "y"):
        raise OAuthSyntaxError(
            "channel binding not supported" if flag.startswith("p=") else "bad gs2 flag"
        )
    username = ""
    if authz_attr:
        decoded = unescape_saslname(authz_attr[2:]) if authz_attr.startswith("a=") else None
        if not decoded or not is_safe_name(decoded):
            raise OAuthSyntaxError("bad authzid")
        username = decoded
    pieces = rest.split(KVSEP)
    # rest = kvsep *(kvpair kvsep) kvsep -> ["", pair, ..., pair, "", ""]
    if len(pieces) < 3 or pieces[0] != "" or pieces[-1] != "" or pieces[-2] != "":
        raise OAuthSyntaxError("kvpairs not framed by 0x01")
    fields = _parse_kvpairs(pieces[1:-2])
    # RFC 7628 §3.1: "auth" is required; unknown keys MUST be ignored.
    if "auth" not in fields:
        raise OAuthSyntaxError("no auth key")
    return BearerRequest(username=username, token=_bearer_token(fields["auth"]), fields=fields)


def parse_xoauth2(data: bytes) -> BearerRequest:
    """Parse an XOAUTH2 message: ``user=U ^A auth=Bearer T ^A ^A``.

    Raises:
        OAuthSyntaxError: framing wrong, ``user`` or ``auth`` missing, bad token.
    """
    text = _decode(data)
    pieces = text.split(KVSEP)
    if len(pieces) < 3 or pieces[-1] != "" or pieces[-2] != "":
        raise OAuthSyntaxError("fields not terminated by 0x01 0x01")
    # XOAUTH2's user= is an address, which may be internationalised; OAUTHBEARER
    # carries it in the gs2 header (UTF-8 there already).
    fields = _parse_kvpairs(pieces[:-2], names=frozenset({"user"}))
    if "user" not in fields or "auth" not in fields:
        raise OAuthSyntaxError("user and auth are required")
    if not is_safe_name(fields["user"]):
        raise OAuthSyntaxError("bad user")
    token = _bearer_token(fields["auth"])
    if not token:
        raise OAuthSyntaxError("empty token")
    return BearerRequest(username=fields["user"], token=token, fields=fields)


def _json(obj: dict[str, str]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode("ascii")


_State = Literal["request", "verify"]

#: RFC 6750 §3.1 error codes, as RFC 7628 §3.2.2 uses them in the status field.
INVALID_REQUEST = "invalid_request"
INVALID_TOKEN = "invalid_token"
INSUFFICIENT_SCOPE = "insufficient_scope"
_STATUSES = (INVALID_REQUEST, INVALID_TOKEN, INSUFFICIENT_SCOPE)


class _BearerServer(ServerMechanismBase):
    """Shared flow: request -> VerifyToken -> Success, or Failure with the error JSON."""

    def __init__(self, *, scope: str = "", openid_configuration: str = "") -> None:
        super().__init__()
        self._scope = scope
        self._openid_configuration = openid_configuration
        self._state: _State = "request"
        self._request: BearerRequest | None = None

    @classmethod
    def from_context(cls, ctx: ServerContext) -> _BearerServer:
        return cls(scope=ctx.oauth_scope, openid_configuration=ctx.openid_configuration)

    def _parse(self, data: bytes) -> BearerRequest:
        raise NotImplementedError

    def _error_json(self, status: str) -> bytes:
        """The error JSON for ``status``, one of ``_STATUSES``."""
        raise NotImplementedError

    def _start(self, initial: bytes | None) -> Step:
        if initial is None:
            return Challenge(b"")  # RFC 4422 §5: client-first, no initial response
        return self._step(initial)

    def _step(self, response: bytes) -> Step:
        try:
            request = self._parse(response)
        except OAuthSyntaxError as exc:
            # RFC 7628 §3.2.2: a failure is announced by the error JSON, the
            # request's own fault as invalid_request.
            return Failure(reason=f"{self.name}: {exc}", malformed=True,
                           error_data=self._error_json(INVALID_REQUEST))
        self._request = request
        if not request.token:
            # Protocol digest §2.7: an empty auth= asks for the error JSON (discovery).
            return self._error("discovery request", request.username, INVALID_TOKEN)
        self._state = "verify"
        return NeedCredentials(VerifyToken(request.username, request.token, mechanism=self.name))

    def _answer(self, result: CredentialAnswer) -> Step:
        request = self._request
        assert request is not None
        if isinstance(result, Verdict) and result.ok:
            return Success(identity=result.identity or request.username)
        if isinstance(result, (Verdict, NotFound)):
            if result.temporary:
                return Failure(reason=result.reason, temporary=True, username=request.username)
            token_error = result.token_error if isinstance(result, Verdict) else ""
            status = token_error if token_error in _STATUSES else INVALID_TOKEN
            return self._error(result.reason or "token rejected", request.username, status)
        return unexpected_answer(self.name, result, request.username)

    def _error(self, reason: str, username: str, status: str) -> Failure:
        """RFC 7628 §3.2.2: the failure, announced by the error JSON in a 334."""
        return Failure(reason=reason, username=username, error_data=self._error_json(status))


class OAuthBearerServer(_BearerServer):
    """Server side of OAUTHBEARER (RFC 7628).

    Args:
        scope: the ``scope`` value of the error JSON (space-separated), "" to omit.
        openid_configuration: discovery URL for the error JSON, "" to omit.
    """

    name = "OAUTHBEARER"

    def _parse(self, data: bytes) -> BearerRequest:
        return parse_oauthbearer(data)

    def _error_json(self, status: str) -> bytes:
        # RFC 7628 §3.2.2: status is required; scope and openid-configuration optional.
        body = {"status": status, "schemes": "bearer"}
        if self._scope:
            body["scope"] = self._scope
        if self._openid_configuration:
            body["openid-configuration"] = self._openid_configuration
        return _json(body)


_XOAUTH2_STATUS = {INVALID_REQUEST: "400", INVALID_TOKEN: "401", INSUFFICIENT_SCOPE: "403"}


class XOAuth2Server(_BearerServer):
    """Server side of XOAUTH2 (Google's and Microsoft's pre-standard mechanism)."""

    name = "XOAUTH2"

    def _parse(self, data: bytes) -> BearerRequest:
        return parse_xoauth2(data)

    def _error_json(self, status: str) -> bytes:
        # Google's XOAUTH2 page: HTTP-like status string, schemes, scope; the code
        # is the one RFC 6750 §3.1 gives each error.
        body = {"status": _XOAUTH2_STATUS[status], "schemes": "bearer"}
        if self._scope:
            body["scope"] = self._scope
        return _json(body)


# --- clients ----------------------------------------------------------------------------


def encode_oauthbearer(username: str, token: str, *, host: str = "", port: int = 0) -> bytes:
    """Build an OAUTHBEARER initial response (RFC 7628 §3.1).

    Raises:
        OAuthSyntaxError: token is not a b64token, or a field holds 0x01.
    """
    if not _B64TOKEN.fullmatch(token):
        raise OAuthSyntaxError("token is not a b64token (RFC 6750 §2.1)")
    if KVSEP in username or KVSEP in host:
        raise OAuthSyntaxError("fields must not contain 0x01")
    authz = f"a={escape_saslname(username)}" if username else ""
    pairs = ""
    if host:
        pairs += f"host={host}{KVSEP}"
    if port:
        pairs += f"port={port}{KVSEP}"
    pairs += f"auth=Bearer {token}{KVSEP}"
    return f"n,{authz},{KVSEP}{pairs}{KVSEP}".encode()


def encode_xoauth2(username: str, token: str) -> bytes:
    """Build an XOAUTH2 initial response.

    Raises:
        OAuthSyntaxError: token is not a b64token, or the user name holds 0x01.
    """
    if not _B64TOKEN.fullmatch(token):
        raise OAuthSyntaxError("token is not a b64token (RFC 6750 §2.1)")
    if KVSEP in username:
        raise OAuthSyntaxError("user must not contain 0x01")
    return f"user={username}{KVSEP}auth=Bearer {token}{KVSEP}{KVSEP}".encode()


class _BearerClient(ClientMechanism):
    _dummy_response: bytes

    def __init__(self, message: bytes) -> None:
        self._message = message
        self._sent = False
        self._finished = False
        #: The server's error JSON, once received (for the caller's log).
        self.error: dict[str, Any] | None = None

    def start(self) -> bytes | None:
        self._sent = True
        return self._message

    def step(self, challenge: bytes) -> bytes:
        if not self._sent and challenge == b"":
            self._sent = True  # the transport held back the initial response
            return self._message
        if self._finished or not self._sent:
            raise ClientAuthError(f"{self.name}: unexpected challenge")
        try:
            parsed = json.loads(challenge.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise ClientAuthError(f"{self.name}: challenge is not a JSON error") from None
        if not isinstance(parsed, dict):
            raise ClientAuthError(f"{self.name}: challenge is not a JSON object")
        self.error = parsed
        self._finished = True
        return self._dummy_response

    @property
    def done(self) -> bool:
        return self._sent


class OAuthBearerClient(_BearerClient):
    """Client side of OAUTHBEARER; answers an error challenge with 0x01 (RFC 7628 §3.2.3)."""

    name = "OAUTHBEARER"
    _dummy_response = KVSEP.encode("ascii")

    def __init__(self, username: str, token: str, *, host: str = "", port: int = 0) -> None:
        super().__init__(encode_oauthbearer(username, token, host=host, port=port))


class XOAuth2Client(_BearerClient):
    """Client side of XOAUTH2; answers an error challenge with an empty response."""

    name = "XOAUTH2"
    _dummy_response = b""

    def __init__(self, username: str, token: str) -> None:
        super().__init__(encode_xoauth2(username, token))
