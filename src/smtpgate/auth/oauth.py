"""Verify OAuth 2.0 bearer tokens for OAUTHBEARER/XOAUTH2: JWTs against a JWKS, or RFC 7662.

Theory of operation
-------------------
``TokenVerifier.verify(token)`` is synchronous and may block on the network (key
set or introspection fetch), so the auth service runs it in a worker thread. It
returns a ``TokenResult``: ``ok`` with the ``identity`` taken from a configured
claim, or not ``ok`` with a ``reason`` for the log. A failure that is not the
token's fault (key set or introspection endpoint unreachable, no cached keys)
raises ``TokenVerifierUnavailable``, which the auth service turns into a
temporary (454) failure.

For a JWT: the unverified ``iss`` selects the ``IssuerConfig`` (exact match); the
header's ``alg`` must be in the issuer's allowed list (never ``none``) and must
fit the key type, so an RSA public key can never be used as an HMAC secret (the
classic key-confusion attack); the signature, ``iss`` and ``aud`` are checked by
PyJWT; ``exp`` (required), ``nbf`` and ``iat`` are checked here against the
injected clock with the issuer's leeway; then the required scopes and the
identity claim. The header's ``typ`` must be in the issuer's ``token_types``
(RFC 9068 §4); one that is not ``at+jwt`` must not carry an ID token's claims.
The header's ``kid`` is only ever a dictionary key into the
fetched key set, never part of a path or URL (Dovecot CVE-2021-29157).

A token that is not a JWT (opaque; also three dot-separated parts that do not
decode as one) goes to RFC 7662 introspection at the one issuer configured
without a key set, and so does a JWT whose ``iss`` names that issuer. An issuer
with both a key set and an introspection endpoint introspects valid JWTs as
well, to catch revocation.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

import jwt

from smtpgate.auth import oauth_http
from smtpgate.auth.names import lookup_key
from smtpgate.auth.outage_log import OutageLog
from smtpgate.config import JWT_ALGORITHMS, AuthConfig, IssuerConfig

#: Protocol digest §2.7: cap the token before parsing it.
MAX_TOKEN_OCTETS = 16 * 1024
#: A key set or introspection answer larger than this is not one.
MAX_RESPONSE_OCTETS = 1024 * 1024
#: Seconds a key set or introspection exchange may take in all (not per read).
HTTP_TIMEOUT = 10.0
#: Longest wait before a key set whose fetch failed is fetched again (shorter if
#: the issuer's ``jwks_min_refresh_seconds`` is).
RETRY_FAILED_FETCH = 10.0

log = logging.getLogger("smtpgate.auth.oauth")

@dataclass(frozen=True, slots=True)
class TokenResult:
    """Outcome of ``TokenVerifier.verify``; ``reason`` is for the log only."""

    ok: bool
    identity: str = ""
    reason: str = ""
    issuer: str = ""
    #: RFC 6750 §3.1 error code of a refusal: "insufficient_scope" when the token
    #: is good but lacks a required scope; "" for any other refusal (invalid_token).
    error: str = ""
    #: When the token stops being accepted: its exp plus the issuer's leeway
    #: (seconds since the epoch); None if it has no exp (an opaque token whose
    #: introspection answer gives none).
    expires: float | None = None


#: RFC 6750 §3.1: the token is valid but does not grant a scope the server needs.
INSUFFICIENT_SCOPE = "insufficient_scope"


class TokenVerifierUnavailable(Exception):
    """The verifier could not reach what it needs (key set, introspection): not the
    token's fault, so a temporary failure."""


Fetch = Callable[[str], bytes]
Post = Callable[[str, bytes, Mapping[str, str]], bytes]
ReadFile = Callable[[Path], bytes]


def urllib_fetch(url: str, *, ca_file: Path | None = None) -> bytes:
    """GET ``url`` (the default key-set fetcher): within ``HTTP_TIMEOUT`` in all,
    redirects to https only (``oauth_http``); the server's certificate checked
    against ``ca_file`` alone if given, else the system's CAs."""
    return oauth_http.request(url, timeout=HTTP_TIMEOUT, limit=MAX_RESPONSE_OCTETS,
                              headers={"Accept": "application/json"}, ca_file=ca_file)


def urllib_post(url: str, body: bytes, headers: Mapping[str, str], *,
                ca_file: Path | None = None) -> bytes:
    """POST ``body`` to ``url`` (the default introspection client): within
    ``HTTP_TIMEOUT`` in all, no redirect (it would carry the client secret);
    ``ca_file`` as for ``urllib_fetch``."""
    return oauth_http.request(url, timeout=HTTP_TIMEOUT, limit=MAX_RESPONSE_OCTETS,
                              data=body, headers=headers, follow_redirects=False,
                              ca_file=ca_file)


@dataclass
class _KeySet:
    keys: list[dict[str, Any]]
    fetched_at: float


@dataclass(frozen=True)
class _FailedFetch:
    at: float
    why: str


class _Reject(Exception):
    """Internal: the token is refused for ``reason`` (``error``: see TokenResult)."""

    def __init__(self, reason: str, *, error: str = "") -> None:
        super().__init__(reason)
        self.error = error


class _NotAJwt(_Reject):
    """Internal: three dot-separated parts that are no JWT's (an opaque token may
    look so: the introspection-only issuer, if any, is asked)."""


class TokenVerifier:
    """Verify bearer tokens against the configured issuers.

    Args:
        issuers: trusted issuers; each ``issuer`` at most once, and at most one
            without a key set (the one opaque tokens are introspected at).
        fetch: GET a URL and return the body (key sets); default urllib, with
            the issuer's ``ca_file`` (which an injected one does not get).
        post: POST form data (introspection); default urllib, as ``fetch``.
        read_file: read a local file (key-set files, client secrets).
        clock: seconds since the epoch; tests inject a fixed time.

    Raises:
        ValueError: duplicate issuers or more than one opaque-token issuer.
    """

    def __init__(
        self,
        issuers: list[IssuerConfig],
        *,
        fetch: Fetch | None = None,
        post: Post | None = None,
        read_file: ReadFile = Path.read_bytes,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._issuers = {cfg.issuer: cfg for cfg in issuers}
        if len(self._issuers) != len(issuers):
            raise ValueError("an issuer is configured twice")
        opaque = [cfg for cfg in issuers if not cfg.has_key_set]
        if len(opaque) > 1:
            # An opaque token does not say who issued it; sending it to several
            # endpoints would leak it to all of them.
            raise ValueError("at most one issuer may be configured without a key set")
        self._opaque_issuer = opaque[0] if opaque else None
        #: Each issuer's ``domains`` as account names spell them; empty: any.
        self._domains = {cfg.issuer: frozenset(_account_domain(f"x@{d}") for d in cfg.domains)
                         for cfg in issuers}
        self._fetch = fetch
        self._post = post
        self._read_file = read_file
        self._clock = clock
        #: Guards the three dicts below; never held while a key set is fetched.
        self._lock = threading.Condition()
        self._key_sets: dict[str, _KeySet] = {}
        #: The last failed fetch per issuer, until one succeeds.
        self._failed: dict[str, _FailedFetch] = {}
        #: Issuers whose key set one thread is fetching now.
        self._fetching: set[str] = set()
        #: When each issuer's introspection endpoint last let ``HTTP_TIMEOUT`` pass
        #: without an answer (``_introspect``), until it answers again.
        self._introspection_silent: dict[str, float] = {}
        #: Each issuer's failed fetches in the log: the first at once, then a summary a
        #: minute, then one line when a fetch succeeds (``outage_log``).
        self._outages = {issuer: OutageLog(f"key set of {issuer}", log)
                         for issuer, cfg in self._issuers.items() if cfg.has_key_set}

    # -- public ---------------------------------------------------------------------

    def verify(self, token: str) -> TokenResult:
        """Verify ``token``; see the module docstring for the checks.

        Raises:
            TokenVerifierUnavailable: key set or introspection endpoint unusable.
        """
        issuer = ""
        try:
            if len(token.encode("utf-8", "surrogatepass")) > MAX_TOKEN_OCTETS:
                raise _Reject("token too large")
            if token.count(".") != 2:
                if self._opaque_issuer is None:
                    raise _Reject("not a JWT and no introspection-only issuer configured")
                cfg = self._opaque_issuer
                issuer = cfg.issuer
                claims = self._introspect(cfg, token)
            else:
                try:
                    cfg, claims = self._verify_jwt(token)
                except _NotAJwt:
                    # An opaque token with two dots (some providers' formats):
                    # until 2026-12 refused as a broken JWT, never introspected.
                    if self._opaque_issuer is None:
                        raise
                    cfg = self._opaque_issuer
                    issuer = cfg.issuer
                    claims = self._introspect(cfg, token)
                else:
                    issuer = cfg.issuer
                    if cfg.introspection_url and cfg.has_key_set:
                        self._introspect(cfg, token)  # revoked? (introspected already if not)
            identity = self._identity(cfg, claims)
            self._check_domain(cfg, identity)
            exp = claims.get("exp")
            expires = float(exp) + cfg.leeway_seconds if _is_number(exp) else None
            return TokenResult(ok=True, identity=identity, issuer=issuer, expires=expires)
        except _Reject as exc:
            return TokenResult(ok=False, reason=str(exc), issuer=issuer, error=exc.error)

    # -- JWT ----------------------------------------------------------------------------

    def _verify_jwt(self, token: str) -> tuple[IssuerConfig, dict[str, Any]]:
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise _NotAJwt(f"malformed JWT: {exc}") from None
        iss = unverified.get("iss")
        cfg = self._issuers.get(iss) if isinstance(iss, str) else None
        if cfg is None:
            raise _Reject(f"unknown issuer {iss!r}")
        if not cfg.has_key_set:
            return cfg, self._introspect_jwt(cfg, token, header)
        alg = header.get("alg")
        # RFC 8725 §3.1: the algorithm comes from our allow-list, not from the token.
        if not isinstance(alg, str) or alg not in cfg.algorithms:
            raise _Reject(f"algorithm {alg!r} not allowed")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise _Reject("kid is not a string")
        keys = self._candidate_keys(cfg, alg, kid)
        if not keys:
            raise _Reject(f"no {JWT_ALGORITHMS[alg]} key with kid {kid!r} for {alg}")
        claims, error, unverified_signature = _decode(token, cfg, alg, keys)
        if claims is None and unverified_signature:
            # A key the issuer rotated in is looked for by an unknown kid, but a
            # token without a kid names none, and one whose kid the new key took
            # over (a fixed kid, "1") names the old key: no key of the cached set
            # verifying its signature asks for the same one refresh, rate-limited
            # alike. Until 2026-12 such tokens were refused until the set's next
            # jwks_refresh_seconds (an hour), counted as failures all that time,
            # and each worker process accepted them or not by its own cache.
            fresh = self._candidate_keys(cfg, alg, kid, force=True)
            if fresh != keys:
                claims, error, _ = _decode(token, cfg, alg, fresh)
        if claims is None:
            raise _Reject(error)
        _check_type(cfg, header.get("typ"), claims)
        self._check_times(cfg, claims)
        self._check_scopes(cfg, claims)
        return cfg, claims

    def _introspect_jwt(self, cfg: IssuerConfig, token: str,
                        header: Mapping[str, Any]) -> dict[str, Any]:
        """A JWT whose ``iss`` names the issuer checked by introspection alone:
        introspected as its opaque tokens are (RFC 7662 takes any token), its
        answer checked as theirs. Keycloak, Okta and Entra issue JWT access
        tokens, which an issuer configured with ``introspection_url`` only
        refused until 2026-12 ("issuer accepts only opaque tokens"), where the
        docs promised any token. The endpoint vouches for the whole token, its
        header too, so ``typ`` is checked as for a signed one (an ID token the
        endpoint calls active is still no access token)."""
        claims = self._introspect(cfg, token)
        _check_type(cfg, header.get("typ"), claims)
        return claims

    def _candidate_keys(self, cfg: IssuerConfig, alg: str, kid: str | None, *,
                        force: bool = False) -> list[dict[str, Any]]:
        """Keys that may have signed a token with this ``alg``/``kid``; none in the
        cached set (an unknown ``kid``, or a token without one whose algorithm no
        cached key fits) triggers one rate-limited refresh (the issuer may have
        rotated keys), and so does ``force``. Until 2026-12 a token without a
        ``kid`` was refused without one: an issuer that added its first EC key to
        an RSA set had its ES256 tokens refused until ``jwks_refresh_seconds``."""
        kty = JWT_ALGORITHMS[alg]

        def matching(keys: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return [
                k
                for k in keys
                # The key type must fit the algorithm: no RSA key as an HMAC secret.
                if k.get("kty") == kty
                and (kid is None or k.get("kid") == kid)
                # RFC 7517 §4.2/§4.4: a key for encryption, or pinned to another
                # algorithm, does not verify this signature.
                and k.get("use", "sig") == "sig"
                and k.get("alg", alg) == alg
            ]

        found = matching(self._keys(cfg, force=force))
        if not found and not force:
            found = matching(self._keys(cfg, force=True))
        return found

    def _keys(self, cfg: IssuerConfig, *, force: bool) -> list[dict[str, Any]]:
        """The issuer's key set: the cached one while it is fresh, else fetched.

        One thread fetches at a time, without the lock: the others use the cached
        set meanwhile, or (none yet) wait for that fetch. A failed fetch is not
        tried again for ``RETRY_FAILED_FETCH`` seconds (or the issuer's
        ``jwks_min_refresh_seconds`` if shorter): the last good set is used, or
        with none every login is unavailable at once, so an issuer that is down
        or hangs costs one login in that interval a wait, not every login one
        ``HTTP_TIMEOUT`` after the other behind the lock. The last good set stands
        in for ``jwks_stale_seconds`` past its refresh at most.
        """
        issuer = cfg.issuer
        with self._lock:
            while True:
                now = self._clock()
                cached = self._key_sets.get(issuer)
                if cached is not None:
                    # A set fetched "in the future" was fetched before the clock went
                    # back: stale, or it would be kept for as long as the step.
                    age = now - cached.fetched_at
                    if 0 <= age and ((age < cfg.jwks_refresh_seconds and not force) or (
                            force and age < cfg.jwks_min_refresh_seconds)):
                        return cached.keys
                    # Past its refresh by more than jwks_stale_seconds, the last good
                    # set is no fallback: the issuer may have withdrawn a key in it.
                    if not 0 <= age < cfg.jwks_refresh_seconds + cfg.jwks_stale_seconds:
                        cached = None
                failed = self._failed.get(issuer)
                retry = min(cfg.jwks_min_refresh_seconds, RETRY_FAILED_FETCH)
                if failed is not None and 0 <= now - failed.at < retry:
                    if cached is not None:
                        return cached.keys  # keep serving the last good set
                    raise TokenVerifierUnavailable(
                        f"{failed.why} (tried again {retry:g} s after it failed)")
                if issuer not in self._fetching:
                    self._fetching.add(issuer)
                    break
                if cached is not None:
                    return cached.keys  # another thread is fetching the new set
                if not self._lock.wait(HTTP_TIMEOUT + 1):
                    raise TokenVerifierUnavailable(f"key set of {issuer}: fetch under way")
        keys: list[dict[str, Any]] | None = None
        error: TokenVerifierUnavailable | None = None
        try:
            keys = self._load_key_set(cfg)
        except TokenVerifierUnavailable as exc:
            error = exc
        finally:
            with self._lock:  # the outcome is recorded before the waiters look
                outage = self._outages.get(issuer)
                if keys is not None:
                    self._key_sets[issuer] = _KeySet(keys=keys, fetched_at=now)
                    self._failed.pop(issuer, None)
                    if outage is not None:
                        outage.answered()
                else:
                    why = str(error) if error is not None else f"key set of {issuer}: fetch failed"
                    self._failed[issuer] = _FailedFetch(self._clock(), why)
                    if outage is not None:
                        outage.failed(why.removeprefix(f"key set of {issuer}: ")
                                      + ("; the last good key set is used meanwhile"
                                         if cached is not None else ""))
                self._fetching.discard(issuer)
                self._lock.notify_all()
        if keys is not None:
            return keys
        if cached is not None:
            return cached.keys  # keep serving the last good set
        assert error is not None
        raise error

    def _load_key_set(self, cfg: IssuerConfig) -> list[dict[str, Any]]:
        try:
            if cfg.jwks_file is not None:
                raw = self._read_file(cfg.jwks_file)
            else:
                assert cfg.jwks_url is not None
                raw = (urllib_fetch(cfg.jwks_url, ca_file=cfg.ca_file) if self._fetch is None
                       else self._fetch(cfg.jwks_url))
        except TokenVerifierUnavailable:
            raise
        except Exception as exc:
            raise TokenVerifierUnavailable(f"key set of {cfg.issuer}: {exc}") from exc
        try:
            doc = json.loads(raw)
        except ValueError as exc:
            raise TokenVerifierUnavailable(f"key set of {cfg.issuer} is not JSON") from exc
        keys = doc.get("keys") if isinstance(doc, dict) else None
        if not isinstance(keys, list):
            raise TokenVerifierUnavailable(f"key set of {cfg.issuer} has no 'keys' list")
        return [k for k in keys if isinstance(k, dict)]

    def _check_times(self, cfg: IssuerConfig, claims: Mapping[str, Any],
                     *, offline: bool = True) -> None:
        """``offline``: a JWT checked with the key set alone, whose exp is all that
        ends it and is required; an introspected token's issuer is asked at every
        login, and its answer may leave exp out (RFC 7662 §2.2), but an nbf or iat
        it gives is checked all the same (until 2026-12 only with an exp)."""
        now, leeway = self._clock(), cfg.leeway_seconds
        exp, nbf, iat = claims.get("exp"), claims.get("nbf"), claims.get("iat")
        # RFC 7519 §4.1.4: reject at or after exp (we add the leeway for skew).
        if (offline or "exp" in claims) and not _is_number(exp):
            raise _Reject("exp missing or not a finite number")
        if _is_number(exp) and now >= exp + leeway:
            raise _Reject("token expired")
        # No access token lives for years: an exp in milliseconds (1.7e12) is a
        # faulty issuer's, and accepted it would never expire.
        if offline and _is_number(exp) and exp > now + cfg.max_token_lifetime_seconds + leeway:
            raise _Reject("exp too far ahead (more than max_token_lifetime_seconds;"
                          " written in milliseconds?)")
        # RFC 7519 §4.1.5: reject before nbf.
        if nbf is not None and (not _is_number(nbf) or now + leeway < nbf):
            raise _Reject("token not yet valid (nbf)")
        if iat is not None and (not _is_number(iat) or now + leeway < iat):
            raise _Reject("token issued in the future (iat)")

    @staticmethod
    def _check_scopes(cfg: IssuerConfig, claims: Mapping[str, Any]) -> None:
        if not cfg.required_scopes:
            return
        granted: set[str] = set()
        # RFC 8693 §4.2 / RFC 7662 §2.2 / RFC 9068 §2.2.3: "scope", space-separated.
        # Each claim is also taken as a list of strings: Okta's "scp" is one, and so
        # is Spring Authorization Server's "scope" (JwtGenerator), whose tokens got
        # insufficient_scope until 2026-12 though they carried the scope asked for.
        for value in (claims.get("scope"), claims.get("scp")):
            if isinstance(value, str):
                granted.update(value.split())
            elif isinstance(value, list):
                granted.update(s for s in value if isinstance(s, str))
        missing = [s for s in cfg.required_scopes if s not in granted]
        if missing:
            raise _Reject(f"missing scope {' '.join(missing)}", error=INSUFFICIENT_SCOPE)

    @staticmethod
    def _identity(cfg: IssuerConfig, claims: Mapping[str, Any]) -> str:
        value = claims.get(cfg.identity_claim)
        if value is None and cfg.identity_claim == "preferred_username":
            value = claims.get("username")  # RFC 7662 §2.2 spells it "username"
        if not isinstance(value, str) or not value:
            raise _Reject(f"no {cfg.identity_claim} claim")
        # Some issuers (AWS Cognito) send the flag as a string: "false" is no proof.
        verified = claims.get("email_verified", True)
        if cfg.identity_claim == "email" and verified is not True and verified != "true":
            raise _Reject("email not verified")
        return value

    def _check_domain(self, cfg: IssuerConfig, identity: str) -> None:
        """An issuer with ``domains`` names accounts there only: with several issuers,
        each would otherwise speak for every account, the partner's or a test
        issuer's token logging in as anyone it liked to put in the claim."""
        allowed = self._domains.get(cfg.issuer)
        if allowed and _account_domain(identity) not in allowed:
            raise _Reject(f"{cfg.identity_claim} {identity!r} is outside the issuer's domains")

    # -- introspection --------------------------------------------------------------------

    def _unless_silent(self, cfg: IssuerConfig) -> None:
        """Fail at once while the endpoint is known not to answer: it let
        ``HTTP_TIMEOUT`` pass less than ``RETRY_FAILED_FETCH`` seconds ago, as a
        failed key set fetch is not tried again sooner. Every login asked it anew
        and waited its own timeout, those beyond the token threads in turn behind
        them: during an outage each OAuth login took 10 s, 20 s, 30 s before its
        454 (and anyone can make such logins: an opaque token is introspected
        whatever it holds). An endpoint that answers, even with an error, is
        asked at every login.

        Raises:
            TokenVerifierUnavailable: the endpoint was silent a moment ago.
        """
        with self._lock:
            silent = self._introspection_silent.get(cfg.issuer)
        if silent is not None and 0 <= self._clock() - silent < RETRY_FAILED_FETCH:
            raise TokenVerifierUnavailable(
                f"introspection at {cfg.issuer}: no answer within {HTTP_TIMEOUT:g} s, "
                f"asked again {RETRY_FAILED_FETCH:g} s after that")

    def _introspect(self, cfg: IssuerConfig, token: str) -> dict[str, Any]:
        """RFC 7662 §2.1: POST the token with client authentication; §2.2: the
        answer must say ``"active": true``."""
        assert cfg.introspection_url is not None and cfg.introspection_client_secret_file
        try:
            secret = self._read_file(cfg.introspection_client_secret_file).decode().strip()
        except Exception as exc:
            raise TokenVerifierUnavailable(f"introspection secret of {cfg.issuer}: {exc}") from exc
        # RFC 6749 §2.3.1: id and secret are form-urlencoded before Basic encoding.
        basic = base64.b64encode(
            f"{urllib.parse.quote_plus(cfg.introspection_client_id)}:"
            f"{urllib.parse.quote_plus(secret)}".encode()
        ).decode("ascii")
        body = urllib.parse.urlencode({"token": token, "token_type_hint": "access_token"})
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "Accept": "application/json",
            "Authorization": f"Basic {basic}",
        }
        self._unless_silent(cfg)
        try:
            raw = (urllib_post(cfg.introspection_url, body.encode("ascii"), headers,
                               ca_file=cfg.ca_file) if self._post is None
                   else self._post(cfg.introspection_url, body.encode("ascii"), headers))
        except TokenVerifierUnavailable:
            raise
        except Exception as exc:
            if isinstance(exc, oauth_http.NoAnswerInTime | TimeoutError):
                with self._lock:
                    self._introspection_silent[cfg.issuer] = self._clock()
            raise TokenVerifierUnavailable(f"introspection at {cfg.issuer}: {exc}") from exc
        with self._lock:
            self._introspection_silent.pop(cfg.issuer, None)
        try:
            answer = json.loads(raw)
        except ValueError as exc:
            raise TokenVerifierUnavailable("introspection answer is not JSON") from exc
        if not isinstance(answer, dict):
            raise TokenVerifierUnavailable("introspection answer is not an object")
        if answer.get("active") is not True:
            raise _Reject("token inactive (introspection)")
        _check_not_refresh(answer)
        if cfg.has_key_set:
            return answer  # the JWT's own claims were checked already
        # Opaque token: the introspection answer is all we know; check what it says.
        if "iss" in answer and answer["iss"] != cfg.issuer:
            raise _Reject("introspection names another issuer")
        aud = answer.get("aud")
        if aud is not None:
            # Strings only: a list of lists (which only the issuer can send) raised
            # TypeError, a 454 as if the issuer were down, where it is a refusal.
            auds = ({aud} if isinstance(aud, str) else
                    {a for a in aud if isinstance(a, str)} if isinstance(aud, list) else set())
            if not auds & set(cfg.audience):
                raise _Reject("wrong audience (introspection)")
        self._check_times(cfg, answer, offline=False)
        self._check_scopes(cfg, answer)
        return answer


def _decode(token: str, cfg: IssuerConfig, alg: str,
            keys: list[dict[str, Any]]) -> tuple[dict[str, Any] | None, str, bool]:
    """The token's claims verified with the first of ``keys`` that verifies its
    signature (None if none does), the reason it was refused, and whether that
    reason is the signature: no key verified it, where a refresh may help."""
    last_error = ""
    for jwk_dict in keys:
        try:
            key = jwt.PyJWK(jwk_dict, algorithm=alg)
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=[alg],
                audience=cfg.audience,
                issuer=cfg.issuer,
                options={
                    "require": ["exp", "iss", "aud"],
                    # Times are checked by the caller against the injected clock.
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "enforce_minimum_key_length": True,
                },
            )
            return claims, "", False
        except jwt.InvalidSignatureError:
            last_error = "bad signature"  # what a usable key said outranks the rest
            continue
        except (jwt.PyJWKError, jwt.InvalidKeyError) as exc:
            # A key this token cannot have been signed with (another curve of
            # the same kty, a retired short RSA key, one that does not parse):
            # PyJWT says InvalidKeyError, at PyJWK() or at decode(). The next
            # key may be the one; ending here refused a good token whose set
            # lists such a key first.
            last_error = last_error or f"unusable key: {exc}"
            continue
        except jwt.PyJWTError as exc:
            return None, f"{type(exc).__name__}: {exc}", False
    return None, last_error or "bad signature", True


#: Claims only an OpenID Connect ID token carries (OpenID Connect Core §2, §3.1.3.6,
#: §3.3.2.11); Keycloak also types its ID tokens in a ``typ`` claim of "ID".
_ID_TOKEN_CLAIMS = ("nonce", "at_hash", "c_hash")
#: Keycloak's ``typ`` claim of its refresh and offline tokens. They are signed with
#: the realm's HMAC key, which no key set holds, but its introspection endpoint
#: calls them active, and an issuer checked by introspection alone takes JWTs.
_REFRESH_TOKEN_TYPES = ("Refresh", "Offline")
#: How an introspection answer names a refresh token: Ory Hydra's ``token_use``,
#: ``token_type`` as many authorization servers fill it, and RFC 8693 §3's URI.
_REFRESH_TOKEN_NAMES = frozenset({"refresh_token",
                                  "urn:ietf:params:oauth:token-type:refresh_token"})
#: RFC 9068 §2.1: the ``typ`` of a JWT access token.
_ACCESS_TOKEN_TYPE = "at+jwt"


def _media_type(typ: str) -> str:
    """RFC 7515 §4.1.9: ``typ`` is a media type, whose "application/" may be left
    out; media types compare without letter case (RFC 2045 §5.1)."""
    return typ.strip().lower().removeprefix("application/")


def _check_type(cfg: IssuerConfig, typ: object, claims: Mapping[str, Any]) -> None:
    """The token is an access token, not another JWT the issuer signs with the same
    keys: RFC 9068 §4 has the resource server check ``typ``. An OpenID Connect ID
    token is the one that matters: its ``aud`` is the mail client's id, which an
    administrator may well list in ``audience``, and a client (or anyone it showed
    the ID token to) could log in with it. Issuers that type their access tokens
    ``JWT``, or not at all, are common, so those types are accepted by default
    unless the claims say ID token; ``token_types = ["at+jwt"]`` is the strict rule."""
    if typ is not None and not isinstance(typ, str):
        raise _Reject("typ header is not a string")
    got = "none" if typ is None else _media_type(typ)
    if got not in {_media_type(t) for t in cfg.token_types}:
        raise _Reject(f"token type {typ!r} not accepted (token_types)")
    if got == _ACCESS_TOKEN_TYPE:
        return
    marks = [c for c in _ID_TOKEN_CLAIMS if c in claims]
    if claims.get("typ") == "ID":
        marks.append("typ ID")
    if marks:
        raise _Reject(f"an ID token ({', '.join(marks)}), not an access token")
    if claims.get("typ") in _REFRESH_TOKEN_TYPES:
        raise _Reject(f"a refresh token (typ {claims['typ']}), not an access token")


def _check_not_refresh(answer: Mapping[str, Any]) -> None:
    """An introspection answer about a refresh token is no access token's. RFC
    7662 §2.1 lets the endpoint look the token up as any type whatever our
    ``token_type_hint`` says, and Ory Hydra and many in-house servers call a
    refresh token active, saying so in ``token_use`` or ``token_type``: a mail
    client's refresh token, meant for the token endpoint alone and living weeks,
    logged in (and its session lasted as long) until 2026-12."""
    for field in ("token_use", "token_type"):
        value = answer.get(field)
        if isinstance(value, str) and value.strip().lower() in _REFRESH_TOKEN_NAMES:
            raise _Reject(f"a refresh token ({field} {value}), not an access token")


def _account_domain(name: str) -> str:
    """The domain of ``name`` as account names spell it ("" if it has none)."""
    local, at, domain = lookup_key(name).rpartition("@")
    return domain if at and local else ""


def _is_number(value: object) -> TypeGuard[float]:
    """A time claim's number (RFC 7519 §2 NumericDate). Python's JSON reads NaN,
    Infinity and 1e400 (inf) too; compared with the clock, an exp of NaN or inf is
    never reached and the token never expires, so they are no number here. Nor is
    1e400 spelled out as an integer, which JSON reads as an int no float holds:
    ``float(exp)`` raised OverflowError, a 454 as if the issuer were down."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def error_reply_fields(auth: AuthConfig) -> tuple[str, str]:
    """``scope`` and ``openid-configuration`` of the OAUTHBEARER error JSON (RFC
    7628 §3.2.2), "" for a field to leave out.

    Both tell a client how to get a token that will do, so both come from the
    issuers when the administrator named none: the scope a token must carry is
    the issuers' ``required_scopes``, if every issuer asks the same (with several
    issuers that differ, one answer would be wrong for the others); the
    discovery document is the one issuer's, at the place OpenID Connect
    Discovery §4 puts it (an issuer that is no OpenID provider: set ``off``)."""
    scope = auth.oauth_scope
    wanted = {tuple(sorted(set(i.required_scopes))) for i in auth.oauth_issuers}
    if not scope and len(wanted) == 1:
        scope = " ".join(wanted.pop())
    openid = auth.oauth_openid_configuration
    if openid == "off":
        openid = ""
    elif openid == "auto":
        issuers = auth.oauth_issuers
        issuer = issuers[0].issuer if len(issuers) == 1 else ""
        openid = (f"{issuer.rstrip('/')}/.well-known/openid-configuration"
                  if urllib.parse.urlsplit(issuer).scheme == "https" else "")
    return scope, openid
