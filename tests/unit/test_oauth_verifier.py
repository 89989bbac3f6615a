"""TokenVerifier: JWTs minted with local keys, injected clock/fetch/post, no network."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jwt
import pydantic
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from smtpgate.auth.oauth import (
    RETRY_FAILED_FETCH,
    IssuerConfig,
    TokenResult,
    TokenVerifier,
    TokenVerifierUnavailable,
)

NOW = 1_700_000_000.0
ISSUER = "https://id.example.org/realms/mail"
JWKS_URL = "https://id.example.org/realms/mail/certs"
AUDIENCE = "smtpgate"

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())


def _jwk(public: Any, kid: str, **extra: str) -> dict[str, Any]:
    algo = RSAAlgorithm if isinstance(public, rsa.RSAPublicKey) else ECAlgorithm
    jwk = algo.to_jwk(public, as_dict=True)
    return {**jwk, "kid": kid, **extra}


def jwks(*keys: dict[str, Any]) -> bytes:
    return json.dumps({"keys": list(keys)}).encode()


DEFAULT_JWKS = jwks(_jwk(RSA_KEY.public_key(), "rsa1"), _jwk(EC_KEY.public_key(), "ec1"))


class FakeFetch:
    """Counts fetches; serves ``body`` or raises ``error``."""

    def __init__(self, body: bytes = DEFAULT_JWKS) -> None:
        self.body = body
        self.error: Exception | None = None
        self.calls: list[str] = []

    def __call__(self, url: str) -> bytes:
        self.calls.append(url)
        if self.error is not None:
            raise self.error
        return self.body


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def claims(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "f81d4fae",
        "email": "alice@example.org",
        "email_verified": True,
        "preferred_username": "alice",
        "scope": "openid email mail.send",
        "iat": int(NOW) - 10,
        "nbf": int(NOW) - 10,
        "exp": int(NOW) + 300,
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def mint(
    payload: dict[str, Any] | None = None,
    *,
    key: Any = RSA_KEY,
    alg: str = "RS256",
    kid: str | None = "rsa1",
) -> str:
    headers = {"kid": kid} if kid is not None else {}
    return jwt.encode(
        payload if payload is not None else claims(), key, algorithm=alg, headers=headers
    )


def issuer(**overrides: Any) -> IssuerConfig:
    fields: dict[str, Any] = {
        "issuer": ISSUER,
        "audience": [AUDIENCE],
        "jwks_url": JWKS_URL,
        "required_scopes": ["mail.send"],
    }
    fields.update(overrides)
    return IssuerConfig(**fields)


def verifier(
    *cfgs: IssuerConfig, fetch: FakeFetch | None = None, clock: Clock | None = None, **kw: Any
) -> TokenVerifier:
    return TokenVerifier(
        list(cfgs) or [issuer()], fetch=fetch or FakeFetch(), clock=clock or Clock(), **kw
    )


# --- accepted tokens ------------------------------------------------------------------


def test_valid_rs256_token_yields_email_identity() -> None:
    """``expires`` (exp plus the leeway) is when the session it opens ends."""
    leeway = issuer().leeway_seconds
    assert verifier().verify(mint()) == TokenResult(
        ok=True, identity="alice@example.org", issuer=ISSUER, expires=NOW + 300 + leeway
    )


def test_valid_es256_token() -> None:
    result = verifier().verify(mint(key=EC_KEY, alg="ES256", kid="ec1"))
    assert result.ok, result.reason


@pytest.mark.parametrize(
    ("claim", "expected"),
    [("email", "alice@example.org"), ("preferred_username", "alice"), ("sub", "f81d4fae"),
     ("upn", "alice@corp.example")],
)
def test_identity_claim_is_configurable(claim: str, expected: str) -> None:
    # Microsoft Entra ID's v1 access tokens name the user in upn (no email claim).
    token = mint(claims(upn="alice@corp.example", unique_name="alice@corp.example"))
    result = verifier(issuer(identity_claim=claim)).verify(token)
    assert result.identity == expected


@pytest.mark.parametrize("lifetime", [86400, 3600])
def test_an_exp_further_ahead_than_the_longest_lifetime_is_refused(lifetime: int) -> None:
    """An exp in milliseconds (a faulty issuer: about 1.7e12) never expired and the
    session it opened never ended; one within the bound (plus the leeway) passes."""
    v = verifier(issuer(max_token_lifetime_seconds=lifetime))
    refused = v.verify(mint(claims(exp=int(NOW) * 1000)))
    assert not refused.ok and "too far ahead" in refused.reason
    assert not v.verify(mint(claims(exp=int(NOW) + lifetime + 61))).ok
    assert v.verify(mint(claims(exp=int(NOW) + lifetime + 59))).ok


def test_an_introspected_tokens_far_exp_is_the_issuers_word(tmp_path: Path) -> None:
    """Introspection asks the issuer at every login: a long-lived opaque token
    (a personal access token) it calls active is not held to the JWT bound."""
    post = FakePost({"active": True, "username": "bob", "aud": AUDIENCE,
                     "exp": int(NOW) + 90 * 86400})
    v = verifier(issuer(), _introspection_issuer(tmp_path), post=post)
    assert v.verify("opaque-token").ok


def test_scp_list_claim_satisfies_scope() -> None:
    token = mint(claims(scope=None, scp=["mail.send", "openid"]))
    assert verifier().verify(token).ok


def test_a_scope_claim_that_is_a_list_satisfies_scope() -> None:
    """Spring Authorization Server's JwtGenerator writes "scope" as a JSON array."""
    assert verifier().verify(mint(claims(scope=["openid", "mail.send"]))).ok
    for short in (["openid", "mail.send.all"], ["openid mail.send"], [["mail.send"]]):
        refused = verifier().verify(mint(claims(scope=short)))
        assert (refused.ok, refused.error) == (False, "insufficient_scope"), short


def test_audience_list_with_ours_is_accepted() -> None:
    assert verifier().verify(mint(claims(aud=["other", AUDIENCE]))).ok


def test_expiry_within_leeway_is_accepted() -> None:
    token = mint(claims(exp=int(NOW) - 30))
    assert verifier().verify(token).ok
    assert not verifier(issuer(leeway_seconds=0)).verify(token).ok


def test_token_without_kid_tries_keys_of_the_right_type() -> None:
    assert verifier().verify(mint(kid=None)).ok


def test_hs256_with_symmetric_key_when_allowed() -> None:
    secret = b"s" * 32
    key = {"kty": "oct", "k": base64.urlsafe_b64encode(secret).rstrip(b"=").decode(), "kid": "h"}
    cfg = issuer(algorithms=["HS256"], jwks_url=None, jwks_file=Path("hs.jwks"))
    v = verifier(cfg, read_file=lambda path: jwks(key))
    assert v.verify(mint(key=secret, alg="HS256", kid="h")).ok


@pytest.mark.parametrize("alg", ["HS256", "HS512"])
def test_hs_algorithms_need_a_key_set_file_not_a_url(alg: str) -> None:
    with pytest.raises(pydantic.ValidationError, match="needs jwks_file"):
        issuer(algorithms=["ES256", alg])


# --- refused tokens ---------------------------------------------------------------------

REFUSED = [
    # (description, token factory, fragment of the logged reason)
    ("expired", lambda: mint(claims(exp=int(NOW) - 61)), "expired"),
    ("not yet valid", lambda: mint(claims(nbf=int(NOW) + 120)), "nbf"),
    ("issued in the future", lambda: mint(claims(iat=int(NOW) + 120)), "iat"),
    ("wrong audience", lambda: mint(claims(aud="another-service")), "Audience"),
    ("no audience", lambda: mint(claims(aud=None)), "aud"),
    ("wrong issuer", lambda: mint(claims(iss="https://evil.example")), "unknown issuer"),
    ("no exp", lambda: mint(claims(exp=None)), "exp"),
    ("missing scope", lambda: mint(claims(scope="openid email")), "missing scope mail.send"),
    ("no identity claim", lambda: mint(claims(email=None)), "no email claim"),
    ("email not verified", lambda: mint(claims(email_verified=False)), "not verified"),
    ("email not verified, as a string", lambda: mint(claims(email_verified="false")),
     "not verified"),
    ("email_verified not a flag", lambda: mint(claims(email_verified=0)), "not verified"),
    ("bad signature", lambda: mint(key=OTHER_RSA_KEY), "bad signature"),
    (
        "bad EC signature",
        lambda: mint(key=ec.generate_private_key(ec.SECP256R1()), alg="ES256", kid="ec1"),
        "bad signature",
    ),
    ("unknown kid", lambda: mint(kid="nope"), "kid 'nope'"),
    ("algorithm not allowed", lambda: mint(alg="RS512"), "not allowed"),
    ("garbage", lambda: "a.b.c", "malformed"),
    ("opaque without introspection", lambda: "opaque-token", "not a JWT"),
    ("too large", lambda: "a" * 20000, "too large"),
]


@pytest.mark.parametrize(("why", "make", "fragment"), REFUSED, ids=[r[0] for r in REFUSED])
def test_refused_tokens(why: str, make: Any, fragment: str) -> None:
    result = verifier().verify(make())
    assert not result.ok and not result.identity, why
    assert fragment in result.reason, (why, result.reason)
    # RFC 6750 §3.1: only a good token short of a scope is insufficient_scope.
    assert result.error == ("insufficient_scope" if why == "missing scope" else ""), why


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _hand_made(payload: dict[str, Any], alg: str, sign: Any = None) -> str:
    """A JWT built by hand, as an attacker would (PyJWT refuses to make these)."""
    header = {"alg": alg, "typ": "JWT", "kid": "rsa1"}
    signing_input = (
        f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(payload).encode())}"
    )
    signature = sign(signing_input.encode()) if sign else b""
    return f"{signing_input}.{_b64url(signature)}"


def test_rfc8725_alg_none_is_refused() -> None:
    result = verifier().verify(_hand_made(claims(), "none"))
    assert not result.ok and "'none' not allowed" in result.reason


def test_rfc8725_alg_none_is_refused_even_if_configured() -> None:
    with pytest.raises(pydantic.ValidationError):
        issuer(algorithms=["none"])


def test_rfc8725_hs256_signed_with_rsa_public_key_is_refused() -> None:
    # Key confusion: HMAC keyed with our RSA public key, which attackers know.
    pem = RSA_KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    forged = _hand_made(
        claims(), "HS256", lambda data: hmac.new(pem, data, hashlib.sha256).digest()
    )
    cfg = issuer(algorithms=["RS256", "HS256"], jwks_url=None, jwks_file=Path("k.jwks"))
    result = verifier(cfg, read_file=lambda path: DEFAULT_JWKS).verify(forged)
    assert not result.ok and "no oct key" in result.reason


def test_key_pinned_to_other_alg_or_use_is_ignored() -> None:
    fetch = FakeFetch(jwks(_jwk(RSA_KEY.public_key(), "rsa1", use="enc")))
    assert not verifier(fetch=fetch).verify(mint()).ok
    fetch = FakeFetch(jwks(_jwk(RSA_KEY.public_key(), "rsa1", alg="PS256")))
    assert not verifier(fetch=fetch).verify(mint()).ok


# --- key-set caching ------------------------------------------------------------------------


def test_jwks_is_cached_until_refresh_interval() -> None:
    fetch, clock = FakeFetch(), Clock()
    v = verifier(issuer(jwks_refresh_seconds=100), fetch=fetch, clock=clock)
    for _ in range(3):
        assert v.verify(mint()).ok
    assert fetch.calls == [JWKS_URL]
    clock.now += 101
    assert v.verify(mint(claims(exp=int(clock.now) + 300))).ok
    assert len(fetch.calls) == 2


def test_unknown_kid_refreshes_once_then_rate_limited() -> None:
    fetch, clock = FakeFetch(), Clock()
    v = verifier(issuer(jwks_min_refresh_seconds=60), fetch=fetch, clock=clock)
    assert v.verify(mint()).ok
    clock.now += 61
    assert not v.verify(mint(kid="rotated")).ok
    assert not v.verify(mint(kid="rotated-again")).ok
    assert len(fetch.calls) == 2  # one refresh for the first unknown kid only


def test_key_rotation_is_picked_up_on_unknown_kid() -> None:
    fetch, clock = FakeFetch(), Clock()
    v = verifier(fetch=fetch, clock=clock)
    assert v.verify(mint()).ok
    new_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    fetch.body = jwks(_jwk(new_key.public_key(), "rsa2"))
    clock.now += 61
    assert v.verify(mint(claims(exp=int(clock.now) + 300), key=new_key, kid="rsa2")).ok


def test_key_rotation_is_picked_up_for_tokens_without_a_kid() -> None:
    """A token without a kid names no key to look for: a signature none of the
    cached keys verifies asks for the one rate-limited refresh an unknown kid does
    (it was refused until the set's next refresh, an hour later)."""
    fetch, clock = FakeFetch(jwks(_jwk(RSA_KEY.public_key(), "rsa1"))), Clock()
    v = verifier(issuer(jwks_min_refresh_seconds=60), fetch=fetch, clock=clock)
    assert v.verify(mint(kid=None)).ok
    fetch.body = jwks(_jwk(OTHER_RSA_KEY.public_key(), "rsa2"))  # the old key withdrawn

    def rotated(key: Any = OTHER_RSA_KEY, **overrides: Any) -> str:
        return mint(claims(exp=int(clock.now) + 300, **overrides), key=key, kid=None)

    clock.now += 30  # within jwks_min_refresh_seconds of the last fetch: not yet
    assert v.verify(rotated()).reason == "bad signature" and len(fetch.calls) == 1
    clock.now += 31
    assert v.verify(rotated()).ok and len(fetch.calls) == 2
    # Made-up signatures cost one fetch a minute at most, as made-up kids do.
    forged = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    for _ in range(7):  # 70 s: one refresh, at 60 s
        clock.now += 10
        assert v.verify(rotated(forged)).reason == "bad signature"
    assert len(fetch.calls) == 3
    # A token the current key verifies but refuses otherwise asks for nothing.
    clock.now += 61
    assert not v.verify(rotated(aud="other")).ok and len(fetch.calls) == 3
    # The withdrawn key's tokens are refused after the refresh.
    assert v.verify(rotated(RSA_KEY)).reason == "bad signature"


def test_a_first_key_of_a_new_type_is_found_for_tokens_without_a_kid() -> None:
    """An issuer moving from RS256 to ES256 adds an EC key to its set: a token
    without a kid for which the cached set holds no key of the type asks for the
    one rate-limited refresh an unknown kid does (it was refused until the set's
    next refresh, an hour later: no key of the type, so no signature to fail)."""
    fetch, clock = FakeFetch(jwks(_jwk(RSA_KEY.public_key(), "rsa1"))), Clock()
    v = verifier(issuer(jwks_min_refresh_seconds=60), fetch=fetch, clock=clock)
    assert v.verify(mint(kid=None)).ok
    fetch.body = jwks(_jwk(RSA_KEY.public_key(), "rsa1"), _jwk(EC_KEY.public_key(), "ec1"))

    def es256() -> str:
        return mint(claims(exp=int(clock.now) + 300), key=EC_KEY, alg="ES256", kid=None)

    clock.now += 30  # within jwks_min_refresh_seconds of the last fetch: not yet
    assert not v.verify(es256()).ok and len(fetch.calls) == 1
    clock.now += 31
    assert v.verify(es256()).ok and len(fetch.calls) == 2
    # Such tokens cost one fetch a minute at most, as made-up kids do.
    fetch.body = jwks(_jwk(RSA_KEY.public_key(), "rsa1"))
    clock.now += 3600
    for _ in range(7):  # 70 s: the refresh due, then one more at 60 s
        clock.now += 10
        assert not v.verify(es256()).ok
    assert len(fetch.calls) == 4


def test_a_new_key_under_the_old_kid_is_found() -> None:
    """An issuer that keeps one kid ("1") for each key it rotates in: the token names
    the cached old key, whose signature check fails; the same one refresh."""
    fetch, clock = FakeFetch(jwks(_jwk(RSA_KEY.public_key(), "1"))), Clock()
    v = verifier(issuer(jwks_min_refresh_seconds=60), fetch=fetch, clock=clock)
    assert v.verify(mint(kid="1")).ok
    fetch.body = jwks(_jwk(OTHER_RSA_KEY.public_key(), "1"))
    clock.now += 61
    token = mint(claims(exp=int(clock.now) + 300), key=OTHER_RSA_KEY, kid="1")
    assert v.verify(token).ok and len(fetch.calls) == 2


def test_fetch_failure_without_cache_is_unavailable() -> None:
    fetch = FakeFetch()
    fetch.error = OSError("connection refused")
    with pytest.raises(TokenVerifierUnavailable):
        verifier(fetch=fetch).verify(mint())


def test_fetch_failure_with_cache_keeps_last_good_keys() -> None:
    fetch, clock = FakeFetch(), Clock()
    v = verifier(issuer(jwks_refresh_seconds=10), fetch=fetch, clock=clock)
    assert v.verify(mint()).ok
    fetch.error = OSError("down")
    clock.now += 20
    assert v.verify(mint(claims(exp=int(clock.now) + 300))).ok


def test_a_failed_refresh_is_not_tried_again_by_every_login() -> None:
    """The issuer down after its set went stale: logins keep the last good set, and
    neither they nor made-up key ids fetch again (each a wait of up to
    HTTP_TIMEOUT) until the retry interval has passed."""
    fetch, clock = FakeFetch(), Clock()
    v = verifier(issuer(jwks_refresh_seconds=100), fetch=fetch, clock=clock)
    assert v.verify(mint()).ok
    fetch.error = OSError("connection refused")
    clock.now += 101
    for n in range(5):
        assert v.verify(mint(claims(exp=int(clock.now) + 300))).ok
        assert not v.verify(mint(kid=f"made-up-{n}")).ok
    assert len(fetch.calls) == 2  # the first fetch and one failed refresh
    clock.now += RETRY_FAILED_FETCH
    fetch.error = None
    assert v.verify(mint(claims(exp=int(clock.now) + 300))).ok
    assert len(fetch.calls) == 3


def test_without_a_key_set_a_failed_fetch_is_454_at_once_until_the_retry() -> None:
    fetch, clock = FakeFetch(), Clock()
    fetch.error = OSError("connection refused")
    v = verifier(fetch=fetch, clock=clock)
    for _ in range(3):
        with pytest.raises(TokenVerifierUnavailable, match="connection refused"):
            v.verify(mint())
    assert len(fetch.calls) == 1
    fetch.error = None
    clock.now += RETRY_FAILED_FETCH
    assert v.verify(mint()).ok
    assert len(fetch.calls) == 2


def test_a_hanging_key_set_fetch_holds_up_no_login_that_has_keys() -> None:
    """One login waits on the issuer's refresh (up to HTTP_TIMEOUT); the others
    verify with the cached set meanwhile instead of queueing behind it."""
    fetch, clock = FakeFetch(), Clock()
    v = verifier(issuer(jwks_refresh_seconds=100), fetch=fetch, clock=clock)
    assert v.verify(mint()).ok
    release, entered = threading.Event(), threading.Event()

    def hanging(url: str) -> bytes:
        entered.set()
        assert release.wait(10)
        return DEFAULT_JWKS

    v._fetch = hanging
    clock.now += 101
    token = mint(claims(exp=int(clock.now) + 300))
    waiting = threading.Thread(target=v.verify, args=(token,))
    waiting.start()
    try:
        assert entered.wait(10)
        started = time.monotonic()
        assert v.verify(token).ok
        assert time.monotonic() - started < 2
    finally:
        release.set()
        waiting.join(10)


@pytest.mark.parametrize("body", [b"not json", b"[]", b'{"keys": 3}'])
def test_bad_key_set_is_unavailable(body: bytes) -> None:
    with pytest.raises(TokenVerifierUnavailable):
        verifier(fetch=FakeFetch(body)).verify(mint())


def test_jwks_from_file(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    path.write_bytes(DEFAULT_JWKS)
    cfg = issuer(jwks_url=None, jwks_file=path)
    fetch = FakeFetch()
    assert verifier(cfg, fetch=fetch).verify(mint()).ok
    assert fetch.calls == []


# --- introspection (RFC 7662) --------------------------------------------------------------


class FakePost:
    def __init__(self, answer: dict[str, Any]) -> None:
        self.answer = answer
        self.calls: list[tuple[str, bytes, dict[str, str]]] = []

    def __call__(self, url: str, body: bytes, headers: Mapping[str, str]) -> bytes:
        self.calls.append((url, body, dict(headers)))
        return json.dumps(self.answer).encode()


def _introspection_issuer(tmp_path: Path, **overrides: Any) -> IssuerConfig:
    secret = tmp_path / "client-secret"
    secret.write_text("s3cr:et\n")
    fields: dict[str, Any] = {
        "issuer": "https://opaque.example",
        "audience": [AUDIENCE],
        "introspection_url": "https://opaque.example/introspect",
        "introspection_client_id": "smtp gate",
        "introspection_client_secret_file": secret,
        "identity_claim": "preferred_username",
    }
    fields.update(overrides)
    return IssuerConfig(**fields)


def test_rfc7662_opaque_token_active(tmp_path: Path) -> None:
    post = FakePost({"active": True, "username": "bob", "aud": AUDIENCE, "exp": int(NOW) + 60})
    v = verifier(issuer(), _introspection_issuer(tmp_path), post=post)
    result = v.verify("opaque-token")
    leeway = _introspection_issuer(tmp_path).leeway_seconds
    assert result == TokenResult(ok=True, identity="bob", issuer="https://opaque.example",
                                 expires=NOW + 60 + leeway)
    url, body, headers = post.calls[0]
    assert url == "https://opaque.example/introspect"
    assert urllib.parse.parse_qs(body.decode()) == {
        "token": ["opaque-token"],
        "token_type_hint": ["access_token"],
    }
    # RFC 6749 §2.3.1: form-urlencode id and secret, then Basic.
    assert headers["Authorization"] == "Basic " + base64.b64encode(b"smtp+gate:s3cr%3Aet").decode()
    assert headers["Content-Type"] == "application/x-www-form-urlencoded"


@pytest.mark.parametrize(
    "answer",
    [
        {"active": False},
        {"active": "true", "username": "bob"},
        {"active": True, "username": "bob", "exp": int(NOW) - 3600},
        {"active": True, "username": "bob", "aud": "other"},
        {"active": True, "username": "bob", "aud": [["x"], {"y": 1}]},
        {"active": True, "username": "bob", "aud": {"x": 1}},
        {"active": True, "username": "bob", "exp": "tomorrow"},
        {"active": True, "username": "bob", "exp": None},
        {"active": True, "username": "bob", "iss": "https://evil.example"},
        {"active": True},
    ],
)
def test_rfc7662_opaque_token_refused(tmp_path: Path, answer: dict[str, Any]) -> None:
    v = verifier(_introspection_issuer(tmp_path), post=FakePost(answer))
    assert not v.verify("opaque-token").ok


@pytest.mark.parametrize("claim,offset,why", [
    ("nbf", 3600, "token not yet valid"),
    ("iat", 7200, "token issued in the future"),
    ("nbf", "soon", "token not yet valid"),
])
def test_rfc7662_an_answer_without_exp_still_has_its_nbf_and_iat_checked(
        tmp_path: Path, claim: str, offset: Any, why: str) -> None:
    """RFC 7662 §2.2 makes exp optional; an answer that leaves it out but says the
    token is not valid before an hour from now was accepted (the times were only
    checked with an exp), where docs/oauth.md promises exp/nbf are checked."""
    value = int(NOW) + offset if isinstance(offset, int) else offset
    answer = {"active": True, "username": "bob", "aud": AUDIENCE, claim: value}
    refused = verifier(_introspection_issuer(tmp_path), post=FakePost(answer)).verify("opaque")
    assert not refused.ok and refused.reason.startswith(why), refused
    answer[claim] = int(NOW) - 60
    assert verifier(_introspection_issuer(tmp_path), post=FakePost(answer)).verify("opaque").ok


@pytest.mark.parametrize("token", ["opaque.token.v1", "a.b.c"])
def test_rfc7662_opaque_token_with_two_dots_is_introspected(tmp_path: Path, token: str) -> None:
    """An opaque token may hold two dots without being a JWT: with an
    introspection-only issuer it is introspected, as one without dots is (it was
    refused as a malformed JWT). Without such an issuer it stays refused."""
    post = FakePost({"active": True, "username": "bob", "aud": AUDIENCE})
    v = verifier(issuer(), _introspection_issuer(tmp_path), post=post)
    result = v.verify(token)
    assert result.ok and result.identity == "bob" and result.issuer == "https://opaque.example"
    assert urllib.parse.parse_qs(post.calls[0][1].decode())["token"] == [token]
    refused = verifier(issuer(), post=post).verify(token)
    assert not refused.ok and "malformed JWT" in refused.reason
    # A real JWT of the key-set issuer is never sent to the opaque issuer's endpoint.
    calls = len(post.calls)
    assert v.verify(mint()).ok and len(post.calls) == calls


def test_rfc7662_a_jwt_of_the_introspection_only_issuer_is_introspected(tmp_path: Path) -> None:
    """An issuer configured with introspection_url alone takes any token (RFC 7662):
    its JWT access tokens too (Keycloak's, Okta's), which were refused as 'issuer
    accepts only opaque tokens'. The answer is checked as an opaque token's, and
    an ID token is still no access token."""
    cfg = _introspection_issuer(tmp_path, issuer=ISSUER, identity_claim="email")
    active = {"active": True, "iss": ISSUER, "aud": AUDIENCE, "email": "alice@example.org",
              "exp": int(NOW) + 300, "typ": "Bearer"}
    post = FakePost(active)
    v = verifier(cfg, post=post)
    token = mint()  # signed with a key the server does not have: the endpoint decides
    result = v.verify(token)
    assert result == TokenResult(ok=True, identity="alice@example.org", issuer=ISSUER,
                                 expires=NOW + 300 + cfg.leeway_seconds)
    assert urllib.parse.parse_qs(post.calls[0][1].decode())["token"] == [token]
    assert len(post.calls) == 1  # asked once, not again for revocation
    for answer, why in (({"active": False}, "token inactive"),
                        ({**active, "typ": "ID"}, "an ID token"),
                        ({**active, "typ": "Refresh"}, "a refresh token"),  # Keycloak's
                        ({**active, "typ": "Offline"}, "a refresh token"),
                        ({**active, "aud": "other"}, "wrong audience"),
                        ({**active, "exp": int(NOW) - 3600}, "token expired")):
        post.answer = answer
        refused = v.verify(token)
        assert not refused.ok and refused.reason.startswith(why), (answer, refused)
    post.answer = active
    typed = mint(kid=None).split(".")  # a header typ the issuer does not accept
    header = base64.urlsafe_b64encode(json.dumps({"alg": "RS256", "typ": "logout+jwt"})
                                      .encode()).rstrip(b"=").decode()
    assert "not accepted" in v.verify(".".join([header, *typed[1:]])).reason


@pytest.mark.parametrize("field,value", [
    ("token_use", "refresh_token"),  # Ory Hydra
    ("token_type", "refresh_token"),
    ("token_type", "Refresh_Token"),
    ("token_type", "urn:ietf:params:oauth:token-type:refresh_token"),  # RFC 8693 §3
])
def test_rfc7662_a_refresh_token_the_endpoint_calls_active_is_refused(
        tmp_path: Path, field: str, value: str) -> None:
    """RFC 7662 §2.1 lets the endpoint find the token as any type, whatever the
    hint: Ory Hydra calls a refresh token active and says so in token_use, other
    servers in token_type. A refresh token is for the token endpoint, not a login
    (it logged in, for its weeks of life). An access token's answer still passes."""
    answer = {"active": True, "username": "bob", "aud": AUDIENCE, "exp": int(NOW) + 60}
    refused = verifier(_introspection_issuer(tmp_path),
                       post=FakePost({**answer, field: value})).verify("opaque-token")
    assert not refused.ok and refused.reason.startswith("a refresh token"), refused
    for ok in ({"token_use": "access_token"}, {"token_type": "Bearer"}):
        assert verifier(_introspection_issuer(tmp_path),
                        post=FakePost({**answer, **ok})).verify("opaque-token").ok
    # A JWT of a key-set issuer that is also introspected: the same answer refuses it.
    cfg = _introspection_issuer(tmp_path, issuer=ISSUER, jwks_url=JWKS_URL,
                                identity_claim="email")
    both = verifier(cfg, post=FakePost({"active": True, field: value})).verify(mint())
    assert not both.ok and both.reason.startswith("a refresh token"), both


def test_rfc7662_jwt_issuer_with_introspection_checks_revocation(tmp_path: Path) -> None:
    cfg = _introspection_issuer(tmp_path, issuer=ISSUER, jwks_url=JWKS_URL, identity_claim="email")
    post = FakePost({"active": False})
    v = verifier(cfg, post=post)
    assert not v.verify(mint()).ok
    post.answer = {"active": True}
    assert v.verify(mint()).ok


def test_rfc7662_endpoint_failure_is_unavailable(tmp_path: Path) -> None:
    def failing_post(url: str, body: bytes, headers: Mapping[str, str]) -> bytes:
        raise OSError("timeout")

    v = verifier(_introspection_issuer(tmp_path), post=failing_post)
    with pytest.raises(TokenVerifierUnavailable):
        v.verify("opaque-token")


# --- configuration -------------------------------------------------------------------------


def test_issuer_config_forbids_extra_fields_and_is_frozen() -> None:
    with pytest.raises(pydantic.ValidationError):
        IssuerConfig(issuer=ISSUER, audience=[AUDIENCE], jwks_url=JWKS_URL, typo=1)  # type: ignore[call-arg]
    cfg = issuer()
    with pytest.raises(pydantic.ValidationError):
        cfg.issuer = "x"


def test_issuer_config_every_field_is_described() -> None:
    for name, field in IssuerConfig.model_fields.items():
        assert field.description, name


@pytest.mark.parametrize(
    "fields",
    [
        {"audience": []},
        {"jwks_url": None},
        {"jwks_file": "/x.json"},
        {"jwks_url": "http://id.example/certs"},
        {"algorithms": ["XX256"]},
        {"introspection_url": "https://x/introspect"},
        {"leeway_seconds": -1},
    ],
)
def test_issuer_config_rejects(fields: dict[str, Any]) -> None:
    with pytest.raises(pydantic.ValidationError):
        issuer(**fields)


def test_http_allowed_for_loopback_only() -> None:
    assert issuer(jwks_url="http://localhost:8080/certs").jwks_url


def test_verifier_refuses_duplicate_and_ambiguous_issuers(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        TokenVerifier([issuer(), issuer()])
    with pytest.raises(ValueError):
        TokenVerifier(
            [
                _introspection_issuer(tmp_path),
                _introspection_issuer(tmp_path, issuer="https://second.example"),
            ]
        )


def test_email_verified_as_the_string_true_or_absent_is_accepted() -> None:
    """Issuers that send the flag as a string ("true") or not at all still log in."""
    assert verifier().verify(mint(claims(email_verified="true"))).ok
    assert verifier().verify(mint(claims(email_verified=None))).ok


@pytest.mark.parametrize(("claim", "value"), [
    ("exp", float("nan")), ("exp", float("inf")), ("exp", 1e400),
    ("nbf", float("nan")), ("nbf", float("-inf")), ("iat", float("nan")),
])
def test_a_time_claim_that_is_no_finite_number_is_refused(claim: str, value: float) -> None:
    """Python's JSON reads NaN, Infinity and 1e400 (inf): an exp of one of them
    compared as never reached, so the token never expired."""
    result = verifier().verify(mint(claims(**{claim: value})))
    assert not result.ok and claim in result.reason, result


@pytest.mark.parametrize(("email", "ok"), [
    ("alice@example.org", True),
    ("Alice@EXAMPLE.org", True),
    ("anna@xn--bcher-kva.example", True),  # BÜCHER.example's A-label
    ("alice@example.org.evil.example", False),
    ("alice@evil.example", False),
    ("alice", False),
])
def test_an_issuer_with_domains_names_accounts_there_only(email: str, ok: bool) -> None:
    v = verifier(issuer(domains=["example.org", "BÜCHER.example"]))
    result = v.verify(mint(claims(email=email)))
    assert result.ok is ok, result
    if not ok:
        assert "outside the issuer's domains" in result.reason


def test_the_last_good_key_set_stands_in_for_jwks_stale_seconds_at_most() -> None:
    """Cut off from its issuer (down, or blocked by whoever holds a withdrawn key),
    the server keeps the last good set for a while, then fails closed (454)."""
    fetch, clock = FakeFetch(), Clock()
    v = verifier(issuer(jwks_refresh_seconds=3600, jwks_stale_seconds=7200),
                 fetch=fetch, clock=clock)
    assert v.verify(mint()).ok
    fetch.error = OSError("down")
    clock.now += 3600 + 7200 - 30
    assert v.verify(mint(claims(exp=int(clock.now) + 300))).ok
    clock.now += 60
    with pytest.raises(TokenVerifierUnavailable):
        v.verify(mint(claims(exp=int(clock.now) + 300)))
    fetch.error = None
    clock.now += 20  # past the retry interval of the failed fetch
    assert v.verify(mint(claims(exp=int(clock.now) + 300))).ok
