"""Relay AUTH with tokens from a token endpoint (RFC 6749 §4.4, client credentials):
the request, the answer, how long a token is reused (sans-IO), the one-request-at-a-
time token source, and the relay's second try after a refused token."""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
from pathlib import Path

import pytest
from aiohttp import web
from pydantic import ValidationError

from smtpgate.config import DeliveryConfig
from smtpgate.queue import oauth_grant
from smtpgate.queue.delivery import Delivered, TempFailure
from smtpgate.queue.factory import DeliverySetupError, make_deliverer
from smtpgate.queue.oauth_fetch import OAuthTokenSource, aiohttp_post
from smtpgate.queue.oauth_grant import (
    DEFAULT_LIFETIME,
    REFRESH_MARGIN,
    Grant,
    TokenCache,
    TokenRequest,
    TokenUnavailable,
    parse_token_response,
    token_request,
)
from smtpgate.queue.relay import RelayDeliverer, TokenAuth

from .test_queue_relay import _config, message

URL = "https://id.example.test/oauth2/token"
TOKEN = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJtZSJ9.c2ln"


def _ok(token: str = TOKEN, **extra: object) -> bytes:
    return json.dumps({"access_token": token, "token_type": "Bearer", **extra}).encode()


# --- the request (RFC 6749 §4.4.2, §2.3.1) -------------------------------------------


def test_rfc6749_s2_3_1_basic_auth_of_form_encoded_id_and_secret() -> None:
    req = token_request(URL, "mail relay:1", "s3cr:t+é", scope="smtp.send openid",
                        audience="https://smtp.example.test")
    scheme, _, blob = req.headers["Authorization"].partition(" ")
    assert scheme == "Basic"
    # "mail+relay%3A1:s3cr%3At%2B%C3%A9": each half form-encoded, then joined by ":".
    assert base64.b64decode(blob) == b"mail+relay%3A1:s3cr%3At%2B%C3%A9"
    assert req.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert req.body == (b"grant_type=client_credentials&scope=smtp.send+openid"
                        b"&audience=https%3A%2F%2Fsmtp.example.test")
    assert b"s3cr" not in req.body  # the secret is in the header only (§2.3.1)


def test_scope_and_audience_are_sent_only_when_set() -> None:
    assert token_request(URL, "id", "secret").body == b"grant_type=client_credentials"


def test_reprs_hold_neither_secret_nor_token() -> None:
    req = token_request(URL, "id", "the-client-secret")
    assert "the-client-secret" not in repr(req)
    assert base64.b64encode(b"id:the-client-secret").decode() not in repr(req)
    assert TOKEN not in repr(Grant(TOKEN, 60))


# --- the answer (§5.1, §5.2) ----------------------------------------------------------


@pytest.mark.parametrize(("expires_in", "lifetime"), [
    (3599, 3599.0), ("3599", 3599.0), (None, DEFAULT_LIFETIME), ("soon", DEFAULT_LIFETIME),
    (True, DEFAULT_LIFETIME), (-5, 0.0),
])
def test_rfc6749_s5_1_access_token_and_lifetime(expires_in: object, lifetime: float) -> None:
    grant = parse_token_response(200, _ok() if expires_in is None else _ok(expires_in=expires_in))
    assert grant.access_token == TOKEN and grant.lifetime == lifetime


def test_token_type_is_case_insensitive_and_may_be_missing() -> None:
    assert parse_token_response(200, _ok(token_type="bearer")).access_token == TOKEN
    body = json.dumps({"access_token": TOKEN}).encode()
    assert parse_token_response(200, body).access_token == TOKEN


#: Answers that leave us without a token, and what the log line must say.
FAILED_ANSWERS = [
    (401, b'{"error": "invalid_client", "error_description": "Bad\\nsecret"}',
     "refused the request: HTTP 401 invalid_client (Bad secret)"),
    (400, b'{"error": "invalid_scope"}', "HTTP 400 invalid_scope"),
    (400, b'{"error": "bad\\"code"}', "HTTP 400 (unreadable error code)"),
    (503, b"<html>down</html>", "answered HTTP 503 without an OAuth error"),
    (302, b"", "answered HTTP 302 without an OAuth error"),
    (200, b"<html>login</html>", "not with a JSON object"),
    (200, b'["access_token"]', "not with a JSON object"),
    (200, b'{"token_type": "Bearer"}', "without an access_token"),
    (200, b'{"access_token": ""}', "without an access_token"),
    (200, b'{"access_token": 42}', "without an access_token"),
    (200, b'{"access_token": "two words"}', "not a bearer token"),
    (200, _ok(token_type="mac"), "token_type 'mac' is not Bearer"),
    (200, b" " * (oauth_grant.MAX_RESPONSE + 1), "larger than 64 KiB"),
]


@pytest.mark.parametrize(("status", "body", "why"), FAILED_ANSWERS)
def test_rfc6749_s5_2_no_token_is_token_unavailable(status: int, body: bytes, why: str) -> None:
    with pytest.raises(TokenUnavailable) as info:
        parse_token_response(status, body)
    assert why in str(info.value)


def test_error_description_is_bounded() -> None:
    body = json.dumps({"error": "invalid_client", "error_description": "x" * 5000}).encode()
    with pytest.raises(TokenUnavailable) as info:
        parse_token_response(401, body)
    assert len(str(info.value)) < 300


# --- how long a token is reused -----------------------------------------------------------


def test_token_is_reused_until_the_margin_before_expiry() -> None:
    cache = TokenCache()
    assert cache.current(0.0) is None
    cache.store(Grant(TOKEN, 600), asked_at=100.0)
    assert cache.current(100.0) == TOKEN
    assert cache.current(100.0 + 600 - REFRESH_MARGIN - 0.001) == TOKEN
    assert cache.current(100.0 + 600 - REFRESH_MARGIN) is None  # refreshed before it lapses


def test_a_short_lived_token_is_reused_for_half_its_lifetime() -> None:
    cache = TokenCache()
    cache.store(Grant(TOKEN, 40), asked_at=0.0)
    assert cache.current(19.9) == TOKEN and cache.current(20.0) is None
    cache.store(Grant(TOKEN, 0), asked_at=0.0)  # already expired: used once, never cached
    assert cache.current(0.0) is None


def test_discard_forgets_only_the_refused_token() -> None:
    cache = TokenCache()
    cache.store(Grant("new", 600), asked_at=0.0)
    assert cache.discard("old") is False  # another delivery already replaced it
    assert cache.current(1.0) == "new"
    assert cache.discard("new") is True
    assert cache.current(1.0) is None


def test_the_grant_module_does_no_io() -> None:
    """A sans-IO core: no sockets, clocks or event loop (the token source has them)."""
    source = Path(oauth_grant.__file__).read_text()
    for module in ("asyncio", "socket", "ssl", "time", "aiohttp", "urllib.request"):
        assert f"import {module}\n" not in source and f"from {module} " not in source


# --- the token source ---------------------------------------------------------------------


class Endpoint:
    """A scripted token endpoint: answers in order (the last one repeats), records
    the requests; ``gate`` holds answers back until set."""

    def __init__(self, *answers: tuple[int, bytes] | BaseException) -> None:
        self.answers = list(answers)
        self.requests: list[TokenRequest] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def post(self, request: TokenRequest, timeout: float) -> tuple[int, bytes]:
        self.requests.append(request)
        await self.gate.wait()
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, BaseException):
            raise answer
        return answer


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _source(tmp_path: Path, endpoint: Endpoint, clock: Clock | None = None) -> OAuthTokenSource:
    secret = tmp_path / "client-secret"
    if not secret.exists():
        secret.write_text("first-secret\n")
    return OAuthTokenSource(URL, "relay-client", secret, scope="smtp.send", post=endpoint.post,
                            clock=clock or Clock())


async def test_token_is_fetched_once_and_refreshed_before_expiry(tmp_path: Path) -> None:
    endpoint = Endpoint((200, _ok("tok-1", expires_in=600)), (200, _ok("tok-2", expires_in=600)))
    clock = Clock()
    source = _source(tmp_path, endpoint, clock)
    assert await source.token() == "tok-1"
    clock.now += 600 - REFRESH_MARGIN - 1
    assert await source.token() == "tok-1"
    assert len(endpoint.requests) == 1
    clock.now += 1
    assert await source.token() == "tok-2"
    assert len(endpoint.requests) == 2


async def test_concurrent_deliveries_share_one_request(tmp_path: Path) -> None:
    endpoint = Endpoint((200, _ok("tok-1", expires_in=600)))
    endpoint.gate.clear()
    source = _source(tmp_path, endpoint)
    waiting = [asyncio.ensure_future(source.token()) for _ in range(5)]
    await asyncio.sleep(0)
    endpoint.gate.set()
    assert await asyncio.gather(*waiting) == ["tok-1"] * 5
    assert len(endpoint.requests) == 1


async def test_concurrent_deliveries_share_one_failure(tmp_path: Path) -> None:
    endpoint = Endpoint((401, b'{"error": "invalid_client"}'))
    endpoint.gate.clear()
    source = _source(tmp_path, endpoint)
    waiting = [asyncio.ensure_future(source.token()) for _ in range(3)]
    await asyncio.sleep(0)
    endpoint.gate.set()
    outcomes = await asyncio.gather(*waiting, return_exceptions=True)
    assert all(isinstance(o, TokenUnavailable) for o in outcomes)
    assert len(endpoint.requests) == 1
    # A failure is not cached: the next delivery asks again (a fixed secret works at once).
    endpoint.answers = [(200, _ok("tok-1"))]
    assert await source.token() == "tok-1"


async def test_a_cancelled_delivery_does_not_cancel_the_request(tmp_path: Path) -> None:
    endpoint = Endpoint((200, _ok("tok-1")))
    endpoint.gate.clear()
    source = _source(tmp_path, endpoint)
    first = asyncio.ensure_future(source.token())
    second = asyncio.ensure_future(source.token())
    await asyncio.sleep(0)
    first.cancel()
    endpoint.gate.set()
    assert await second == "tok-1"


async def test_refresh_after_a_refused_token(tmp_path: Path) -> None:
    endpoint = Endpoint((200, _ok("tok-1", expires_in=3600)), (200, _ok("tok-2")))
    source = _source(tmp_path, endpoint)
    assert await source.token() == "tok-1"
    assert await source.refresh("tok-1") == "tok-2"
    assert len(endpoint.requests) == 2
    # A delivery that was refused the old token after another one refreshed it
    # gets the new token, without a request.
    assert await source.refresh("tok-1") == "tok-2"
    assert len(endpoint.requests) == 2


async def test_secret_file_is_read_for_every_request(tmp_path: Path) -> None:
    endpoint = Endpoint((200, _ok("tok-1", expires_in=0)))
    source = _source(tmp_path, endpoint)
    await source.token()
    (tmp_path / "client-secret").write_text("rotated-secret\n")
    await source.token()  # expires_in 0: never reused
    secrets = [base64.b64decode(r.headers["Authorization"].split()[1]) for r in endpoint.requests]
    assert secrets == [b"relay-client:first-secret", b"relay-client:rotated-secret"]


@pytest.mark.parametrize(("answer", "why"), [
    (ConnectionRefusedError(111, "Connection refused"), "unreachable: "),
    (TimeoutError(), "no answer within 30 s (relay_oauth_timeout)"),
    ((401, b'{"error": "invalid_client"}'), "HTTP 401 invalid_client"),
    ((200, b"{}"), "without an access_token"),
])
async def test_failures_name_the_key_and_url_and_never_the_secret(
    tmp_path: Path, answer: tuple[int, bytes] | BaseException, why: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    source = _source(tmp_path, Endpoint(answer))
    with pytest.raises(TokenUnavailable) as info:
        await source.token()
    text = str(info.value)
    assert text.startswith(f"delivery.relay_oauth_token_url {URL}: ") and why in text
    assert "first-secret" not in text + caplog.text


async def test_unreadable_secret_file_is_token_unavailable(tmp_path: Path) -> None:
    source = _source(tmp_path, Endpoint((200, _ok())))
    (tmp_path / "client-secret").unlink()
    with pytest.raises(TokenUnavailable, match="relay_oauth_client_secret_file"):
        await source.token()


async def test_aiohttp_post_sends_the_form_and_does_not_follow_redirects() -> None:
    """The real HTTP client against a loopback endpoint: what arrives is the form
    and the Basic header; a redirect is an answer, not followed with the secret."""
    seen: list[tuple[str, str | None, bytes]] = []

    async def token(request: web.Request) -> web.Response:
        seen.append((request.path, request.headers.get("Authorization"), await request.read()))
        if request.path == "/moved":
            raise web.HTTPFound("/token")
        return web.json_response({"access_token": "tok-1", "token_type": "Bearer"})

    app = web.Application()
    app.router.add_post("/token", token)
    app.router.add_post("/moved", token)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        req = token_request(f"http://127.0.0.1:{port}/token", "id", "secret")
        status, body = await aiohttp_post(req, 10)
        assert status == 200 and parse_token_response(status, body).access_token == "tok-1"
        assert seen == [("/token", req.headers["Authorization"],
                         b"grant_type=client_credentials")]
        moved = token_request(f"http://127.0.0.1:{port}/moved", "id", "secret")
        status, _ = await aiohttp_post(moved, 10)
        assert status == 302 and len(seen) == 2
    finally:
        await runner.cleanup()


# --- the relay's second try -----------------------------------------------------------------

#: RFC 7628 §3.2.2: the error a server sends for a token it does not take.
_REFUSAL = base64.b64encode(b'{"status":"invalid_token","schemes":"bearer"}')


async def smarthost(good: set[str]) -> tuple[asyncio.Server, list[bytes]]:
    """A next hop offering OAUTHBEARER in clear (tls_mode "none"), taking only the
    tokens in ``good``: any other gets the error challenge, then 535."""
    got: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 hop.test\r\n")
        in_data = refusing = False
        while line := await reader.readline():
            got.append(line)
            verb = line.split(b" ", 1)[0].split(b":", 1)[0].strip().upper()
            if in_data:
                if line == b".\r\n":
                    in_data = False
                    writer.write(b"250 2.0.0 queued\r\n")
            elif refusing:  # the client's answer to the error challenge
                refusing = False
                writer.write(b"535 5.7.8 token refused\r\n")
            elif verb == b"EHLO":
                writer.write(b"250-hop.test\r\n250 AUTH OAUTHBEARER\r\n")
            elif verb == b"AUTH":
                sent = base64.b64decode(line.split()[2])
                if any(b"auth=Bearer " + t.encode() + b"\x01" in sent for t in good):
                    writer.write(b"235 2.7.0 ok\r\n")
                else:
                    refusing = True
                    writer.write(b"334 " + _REFUSAL + b"\r\n")
            elif verb == b"DATA":
                in_data = True
                writer.write(b"354 go\r\n")
            elif verb == b"QUIT":
                writer.write(b"221 bye\r\n")
                break
            else:
                writer.write(b"250 2.0.0 ok\r\n")
            await writer.drain()
        writer.close()

    return await asyncio.start_server(serve, "127.0.0.1", 0), got


async def _deliver(source: OAuthTokenSource, good: set[str]) -> tuple[object, list[bytes]]:
    server, got = await smarthost(good)
    try:
        relay = RelayDeliverer("127.0.0.1", server.sockets[0].getsockname()[1],
                               helo_name="smtpgate.test", tls_mode="none",
                               token_auth=TokenAuth("OAUTHBEARER", "me@example.org", source))
        results = await relay.deliver(message(), ("bob@example.net",))
    finally:
        server.close()
        await server.wait_closed()
    return results["bob@example.net"], got


async def test_a_refused_token_is_replaced_once_on_the_same_session(tmp_path: Path) -> None:
    """The cached token was revoked: the relay refuses it, a new one is fetched and
    the second AUTH delivers the message."""
    endpoint = Endpoint((200, _ok("revoked", expires_in=3600)), (200, _ok("fresh")))
    source = _source(tmp_path, endpoint)
    result, got = await _deliver(source, {"fresh"})
    assert isinstance(result, Delivered), result
    assert [line[:16] for line in got if line.startswith(b"AUTH")] == [b"AUTH OAUTHBEARER"] * 2
    assert len(endpoint.requests) == 2


async def test_a_second_refusal_defers_without_a_third_try(tmp_path: Path) -> None:
    endpoint = Endpoint((200, _ok("tok-1")), (200, _ok("tok-2")), (200, _ok("tok-3")))
    source = _source(tmp_path, endpoint)
    result, got = await _deliver(source, set())
    assert isinstance(result, TempFailure)  # not a bounce: the credentials are ours to fix
    assert "refused AUTH OAUTHBEARER: 535 5.7.8" in result.reply
    assert result.reply.startswith("relay 127.0.0.1:")  # the hop that refused
    assert sum(line.startswith(b"AUTH") for line in got) == 2
    assert len(endpoint.requests) == 2
    assert not any(line.startswith(b"MAIL") for line in got)


async def test_no_token_defers_and_sends_no_auth(tmp_path: Path) -> None:
    source = _source(tmp_path, Endpoint((401, b'{"error": "invalid_client"}')))
    result, got = await _deliver(source, {"anything"})
    assert isinstance(result, TempFailure)
    # The hop is named (with routes, which relay's token failed).
    assert result.reply.startswith("4.7.0 relay 127.0.0.1:")
    assert result.reply.endswith(f": AUTH not possible: delivery.relay_oauth_token_url "
                                 f"{URL}: refused the request: HTTP 401 invalid_client")
    assert not any(line.startswith((b"AUTH", b"MAIL")) for line in got)


async def test_no_token_is_fetched_for_a_relay_without_the_mechanism(tmp_path: Path) -> None:
    endpoint = Endpoint((200, _ok()))
    server, _ = await smarthost(set())
    try:
        relay = RelayDeliverer("127.0.0.1", server.sockets[0].getsockname()[1],
                               helo_name="smtpgate.test", tls_mode="none",
                               token_auth=TokenAuth("XOAUTH2", "me@example.org",
                                                    _source(tmp_path, endpoint)))
        result = (await relay.deliver(message(), ("bob@example.net",)))["bob@example.net"]
    finally:
        server.close()
        await server.wait_closed()
    assert isinstance(result, TempFailure) and "does not offer AUTH XOAUTH2" in result.reply
    assert endpoint.requests == []


async def test_no_token_is_fetched_for_a_session_without_tls(tmp_path: Path) -> None:
    """relay_tls "opportunistic" and a relay without STARTTLS: the token would go in
    clear, so it is neither sent nor even asked for."""
    endpoint = Endpoint((200, _ok()))
    server, got = await smarthost({TOKEN})
    try:
        relay = RelayDeliverer("127.0.0.1", server.sockets[0].getsockname()[1],
                               helo_name="smtpgate.test", tls_mode="opportunistic",
                               tls_context=ssl.create_default_context(),
                               token_auth=TokenAuth("OAUTHBEARER", "me@example.org",
                                                    _source(tmp_path, endpoint)))
        result = (await relay.deliver(message(), ("bob@example.net",)))["bob@example.net"]
    finally:
        server.close()
        await server.wait_closed()
    assert isinstance(result, TempFailure) and "without TLS" in result.reply
    assert endpoint.requests == [] and not any(line.startswith(b"AUTH") for line in got)


# --- configuration ----------------------------------------------------------------------------

_GRANT = {"mode": "relay", "relay_host": "h", "relay_user": "me@example.org",
          "relay_auth_mechanism": "XOAUTH2", "relay_oauth_token_url": URL,
          "relay_oauth_client_id": "relay-client",
          "relay_oauth_client_secret_file": Path("client-secret")}


@pytest.mark.parametrize(("change", "why"), [
    ({"relay_oauth_token_url": "http://id.example.test/token"}, "must be an https:// URL"),
    ({"relay_oauth_client_id": ""}, "needs relay_oauth_client_id"),
    ({"relay_oauth_client_secret_file": None}, "relay_oauth_client_secret_file"),
    ({"relay_auth_mechanism": "PLAIN"}, "XOAUTH2 or OAUTHBEARER"),
    ({"relay_token_file": Path("token")}, "exclude each other"),
])
def test_bad_client_credentials_settings_are_refused(change: dict[str, object],
                                                     why: str) -> None:
    with pytest.raises(ValidationError, match=why):
        DeliveryConfig.model_validate({**_GRANT, **change})


def test_loopback_http_token_url_is_allowed_for_a_test_rig() -> None:
    url = "http://127.0.0.1:8080/token"
    cfg = DeliveryConfig.model_validate({**_GRANT, "relay_oauth_token_url": url})
    assert cfg.relay_oauth_token_url.startswith("http://127.0.0.1")


def test_missing_client_secret_file_fails_at_start_up(tmp_path: Path) -> None:
    with pytest.raises(DeliverySetupError, match="relay_oauth_client_secret_file"):
        make_deliverer(_config(tmp_path, **_GRANT))
    (tmp_path / "client-secret").write_text("secret\n")
    assert isinstance(make_deliverer(_config(tmp_path, **_GRANT)), RelayDeliverer)
