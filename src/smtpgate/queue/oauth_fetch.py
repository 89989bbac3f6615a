"""Access tokens for relay AUTH from an OAuth 2.0 token endpoint (client credentials).

The HTTP side of ``oauth_grant``: one POST per token over aiohttp, the secret file
read for every request (a rotated secret needs no restart), and one request at a
time per process: deliveries that need a token while one is being fetched wait
for it and share its outcome, success or failure, so a queue flush makes one
request, not one per message. Neither the token nor the secret is ever logged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from smtpgate.queue.oauth_grant import (
    MAX_RESPONSE,
    Grant,
    TokenCache,
    TokenRequest,
    TokenUnavailable,
    parse_token_response,
    token_request,
)

log = logging.getLogger("smtpgate.queue.oauth")

#: POSTs a request within a timeout; returns the status and the body.
Post = Callable[[TokenRequest, float], Awaitable[tuple[int, bytes]]]

URL_KEY = "delivery.relay_oauth_token_url"
SECRET_KEY = "delivery.relay_oauth_client_secret_file"


def _client_error() -> type[Exception]:
    import aiohttp

    return aiohttp.ClientError


async def aiohttp_post(request: TokenRequest, timeout: float) -> tuple[int, bytes]:
    """POST ``request`` without following redirects (a redirect would carry the
    credentials elsewhere); the body is read up to `MAX_RESPONSE` plus one chunk.

    Raises:
        aiohttp.ClientError, OSError, TimeoutError: no answer.
    """
    import aiohttp  # here: only a relay with relay_oauth_token_url needs it (workload D)

    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session,
        session.post(request.url, data=request.body, headers=request.headers,
                     allow_redirects=False) as response,
    ):
        body = bytearray()
        async for chunk in response.content.iter_chunked(16 * 1024):
            body += chunk
            if len(body) > MAX_RESPONSE:
                break
        return response.status, bytes(body)


class OAuthTokenSource:
    """Tokens for ``relay_auth_mechanism`` XOAUTH2/OAUTHBEARER, cached until shortly
    before they expire (`oauth_grant.TokenCache`). Both methods raise
    `TokenUnavailable`, whose text names the key and the URL."""

    def __init__(
        self,
        url: str,
        client_id: str,
        secret_file: Path,
        *,
        scope: str = "",
        audience: str = "",
        timeout: float = 30.0,
        post: Post = aiohttp_post,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self._client_id = client_id
        self._secret_file = secret_file
        self._scope = scope
        self._audience = audience
        self._timeout = timeout
        self._post = post
        self._clock = clock
        self._cache = TokenCache()
        self._inflight: asyncio.Future[str] | None = None

    async def token(self) -> str:
        """The cached token, or a new one from the endpoint."""
        cached = self._cache.current(self._clock())
        if cached is not None:
            return cached
        if self._inflight is None:
            self._inflight = asyncio.ensure_future(self._fetch())
            self._inflight.add_done_callback(self._fetched)
        # Shielded: one delivery being cancelled must not cancel the others' request.
        return await asyncio.shield(self._inflight)

    async def refresh(self, refused: str) -> str:
        """A token other than ``refused`` (the relay did not take it), unless the
        endpoint hands out the same one again."""
        if self._cache.discard(refused):
            log.info("relay token: the relay refused the access token; asking %s for a new "
                     "one", self.url)
        return await self.token()

    def _fetched(self, done: asyncio.Future[str]) -> None:
        self._inflight = None
        if not done.cancelled():
            done.exception()  # retrieved here when every waiter was cancelled

    async def _fetch(self) -> str:
        secret = self._read_secret()
        request = token_request(self.url, self._client_id, secret, scope=self._scope,
                                audience=self._audience)
        asked_at = self._clock()
        try:
            status, body = await self._post(request, self._timeout)
        except TimeoutError:
            raise self._error(f"no answer within {self._timeout:g} s "
                              "(relay_oauth_timeout)") from None
        except (_client_error(), OSError) as e:
            raise self._error(f"unreachable: {str(e) or type(e).__name__}") from None
        try:
            grant = parse_token_response(status, body)
        except TokenUnavailable as e:
            raise self._error(str(e)) from None
        self._cache.store(grant, asked_at)
        log.info("relay token: new access token from %s (client %s), valid %s", self.url,
                 self._client_id, _valid_for(grant))
        return grant.access_token

    def _read_secret(self) -> str:
        try:
            text = self._secret_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise TokenUnavailable(f"{SECRET_KEY} {self._secret_file}: cannot read: "
                                   f"{getattr(e, 'strerror', None) or e}") from None
        secret = text.rstrip("\r\n")
        if not secret or "\n" in secret:
            raise TokenUnavailable(f"{SECRET_KEY} {self._secret_file}: must hold one "
                                   "non-empty line")
        return secret

    def _error(self, why: str) -> TokenUnavailable:
        return TokenUnavailable(f"{URL_KEY} {self.url}: {why}")


def _valid_for(grant: Grant) -> str:
    return f"{grant.lifetime:g} s"
