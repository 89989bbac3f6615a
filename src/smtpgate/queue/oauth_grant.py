"""The OAuth 2.0 client credentials grant (RFC 6749 §4.4) for relay AUTH, without I/O.

Theory of operation
-------------------
With ``relay_oauth_token_url`` the relay client gets its own access tokens for
XOAUTH2/OAUTHBEARER: it POSTs ``grant_type=client_credentials`` to the token
endpoint, authenticating with HTTP Basic (RFC 6749 §2.3.1), and sends the
``access_token`` of the answer (§5.1) to the smarthost. This module builds the
request (`token_request`), reads the answer (`parse_token_response`) and decides
how long a token is reused (`TokenCache`); ``oauth_fetch`` does the HTTP and
holds the clock.

A token is reused until `REFRESH_MARGIN` before its ``expires_in`` ends, so a
session never starts with a token about to lapse mid-exchange; a token the relay
refused is discarded (`TokenCache.discard`) so the next use fetches a new one.

Anything that leaves us without a token raises `TokenUnavailable`, whose text
says what went wrong but never holds the token or the client secret: the relay
client turns it into a temporary failure (the message is kept and retried; the
endpoint and the client registration are the operator's to fix, not the
sender's).
"""

from __future__ import annotations

import base64
import json
import re
import urllib.parse
from dataclasses import dataclass, field

#: Seconds before ``expires_in`` ends at which a token is no longer handed out.
#: A relay session takes a few seconds from AUTH to the end of the exchange, and
#: the endpoint's clock and ours may differ a little: a minute covers both. Short
#: lifetimes get half their lifetime instead (see `refresh_margin`).
REFRESH_MARGIN = 60.0
#: Lifetime assumed when the answer has no ``expires_in`` (RFC 6749 §5.1 only
#: RECOMMENDS it). Short on purpose: the token is opaque to us, so we cannot read
#: its expiry; a refusal by the relay fetches a new one anyway.
DEFAULT_LIFETIME = 300.0
#: A token endpoint's answer larger than this is not one (tokens are a few KiB).
MAX_RESPONSE = 64 * 1024
#: Longest ``error_description`` quoted in a log line or a queue entry.
_MAX_DESCRIPTION = 200

# RFC 6750 §2.1: b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
# (the only tokens XOAUTH2 and OAUTHBEARER can carry).
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
# RFC 6749 §5.2: error = 1*( %x20-21 / %x23-5B / %x5D-7E )
_ERROR_CODE = re.compile(r"[\x20\x21\x23-\x5b\x5d-\x7e]+")


class TokenUnavailable(Exception):
    """No access token to send (endpoint unreachable, refused the client, a bad
    answer). Temporary for the message; the text is safe to log."""


@dataclass(frozen=True, slots=True)
class TokenRequest:
    """One POST to the token endpoint (form-encoded body, RFC 6749 §4.4.2)."""

    url: str
    #: Holds the client secret (Basic): kept out of repr.
    headers: dict[str, str] = field(repr=False)
    body: bytes


@dataclass(frozen=True, slots=True)
class Grant:
    """An access token and the seconds it is valid for, from the time it was asked."""

    access_token: str = field(repr=False)
    lifetime: float


def token_request(
    url: str, client_id: str, client_secret: str, *, scope: str = "", audience: str = ""
) -> TokenRequest:
    """The client credentials request (RFC 6749 §4.4.2).

    The client authenticates with HTTP Basic, which an authorization server MUST
    support (§2.3.1), rather than with the secret in the body (NOT RECOMMENDED,
    ibid.). Id and secret are form-encoded (Appendix B) before they are joined
    with ":", so a ":" or a non-ASCII character in either survives.
    """
    pair = f"{_form(client_id)}:{_form(client_secret)}"
    fields = [("grant_type", "client_credentials")]
    if scope:
        fields.append(("scope", scope))
    if audience:
        # Not in RFC 6749: the parameter Auth0 and Okta use to pick the API a
        # token is for. Sent only when configured.
        fields.append(("audience", audience))
    headers = {
        "Authorization": "Basic " + base64.b64encode(pair.encode("utf-8")).decode("ascii"),
        "Content-Type": "application/x-www-form-urlencoded",
        "Accept": "application/json",
    }
    return TokenRequest(url, headers, urllib.parse.urlencode(fields).encode("ascii"))


def _form(value: str) -> str:
    """application/x-www-form-urlencoded encoding of one value (RFC 6749 Appendix B)."""
    return urllib.parse.quote_plus(value, safe="")


def parse_token_response(status: int, body: bytes) -> Grant:
    """The access token in a token endpoint's answer (RFC 6749 §5.1, §5.2).

    Raises:
        TokenUnavailable: an error answer, another status, a body that is not a
            JSON object, no usable ``access_token``, or a token type other than
            Bearer (§7.1: a client must not use a token type it does not know).
    """
    if len(body) > MAX_RESPONSE:
        raise TokenUnavailable(f"answer larger than {MAX_RESPONSE // 1024} KiB")
    parsed = _json_object(body)
    if status != 200:
        # RFC 6749 §5.2: 400 (or 401 for a failed client authentication) with
        # "error" and an optional "error_description".
        error = parsed.get("error") if parsed is not None else None
        if parsed is not None and isinstance(error, str):
            code = error if _ERROR_CODE.fullmatch(error) else "(unreadable error code)"
            text = f"refused the request: HTTP {status} {code}"
            description = parsed.get("error_description")
            if isinstance(description, str) and description:
                text += f" ({_printable(description)})"
            raise TokenUnavailable(text)
        raise TokenUnavailable(f"answered HTTP {status} without an OAuth error")
    if parsed is None:
        raise TokenUnavailable("answered HTTP 200 but not with a JSON object")
    token = parsed.get("access_token")
    if not isinstance(token, str) or not token:
        raise TokenUnavailable("answered without an access_token")
    if not _B64TOKEN.fullmatch(token):
        raise TokenUnavailable("access_token is not a bearer token (RFC 6750 §2.1)")
    token_type = parsed.get("token_type")
    # token_type is REQUIRED (§5.1) and case-insensitive (§7.1); an answer without
    # it is taken as Bearer, the only type the client credentials grant issues in
    # practice.
    if token_type is not None and (not isinstance(token_type, str)
                                   or token_type.lower() != "bearer"):
        raise TokenUnavailable(f"token_type {_printable(str(token_type))!r} is not Bearer")
    return Grant(token, _lifetime(parsed.get("expires_in")))


def _json_object(body: bytes) -> dict[str, object] | None:
    try:
        parsed = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    return parsed if isinstance(parsed, dict) else None


def _lifetime(expires_in: object) -> float:
    """``expires_in`` in seconds (a number; some endpoints send it as a string of
    digits); `DEFAULT_LIFETIME` when absent or unreadable; never negative."""
    if isinstance(expires_in, str) and expires_in.strip().isdigit():
        expires_in = int(expires_in)
    if isinstance(expires_in, bool) or not isinstance(expires_in, int | float):
        return DEFAULT_LIFETIME
    return max(0.0, float(expires_in))


def _printable(text: str) -> str:
    """A server's free text for one log line: no control characters, bounded."""
    clean = "".join(c if c.isprintable() else " " for c in text)
    return clean[:_MAX_DESCRIPTION] + ("…" if len(clean) > _MAX_DESCRIPTION else "")


def refresh_margin(lifetime: float) -> float:
    """`REFRESH_MARGIN`, or half the lifetime for tokens shorter than two margins
    (a 60 s token is reused for 30 s rather than never)."""
    return min(REFRESH_MARGIN, lifetime / 2)


class TokenCache:
    """The current access token and when to stop handing it out. Times are seconds
    on one monotonic clock, passed in by the caller."""

    def __init__(self) -> None:
        self._token: str | None = None
        self._until = 0.0

    def current(self, now: float) -> str | None:
        """The token to use now, or None: fetch one."""
        if self._token is not None and now < self._until:
            return self._token
        return None

    def store(self, grant: Grant, asked_at: float) -> None:
        """Keep ``grant``; its lifetime counts from ``asked_at`` (when the request
        went out), so the time the endpoint took is not counted in its favour."""
        self._token = grant.access_token
        self._until = asked_at + grant.lifetime - refresh_margin(grant.lifetime)

    def discard(self, token: str) -> bool:
        """Forget ``token`` (the relay refused it). A newer token, stored meanwhile
        by another delivery, is kept. Returns whether ``token`` was the current one."""
        if token != self._token:
            return False
        self._token = None
        return True
