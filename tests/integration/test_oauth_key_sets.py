"""Key sets that hold more than the key a token was signed with.

An issuer's JWKS often carries keys the server cannot use for a given token: a
P-384 key next to the P-256 one (both ``kty`` EC, no ``alg`` member, which RFC
7517 §4.4 leaves optional), a retired 1024-bit RSA key, a key the server cannot
read. A token without a ``kid`` (or whose ``kid`` several keys share) is tried
against each key of the right type; one such key before the right one refused
the token (PyJWT's ``InvalidKeyError`` ended the search), so a user holding a
good token got ``535``. One ``smtpgate serve`` trusts three issuers, each with
such a key set served over HTTPS on loopback (``jwks_https.JwksHttps``: a
``jwks_file`` with an unreadable key is refused by the config check, a key set
fetched from a URL is not); the tokens are real ES256/RS256 JWTs.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from jwt.warnings import InsecureKeyLengthWarning

from smtpgate.sasl.oauth import encode_oauthbearer

from .conftest import Server, make_server
from .jwks_https import JwksHttps
from .oauth_issuer import SCOPE, LocalIssuer
from .test_oauth_idp_attacks import ALICE, Idp, login, oauth_on, refused, serving_idp

#: A P-256 public key whose point is not on the curve: a key nobody can read.
_UNREADABLE = {"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA", "kid": "broken"}


def _ec_jwk(key: ec.EllipticCurvePrivateKey, kid: str) -> dict[str, Any]:
    jwk: dict[str, Any] = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    jwk["kid"] = kid
    return jwk


def _rsa_jwk(key: rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
    jwk: dict[str, Any] = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwk["kid"] = kid
    return jwk


class KeySets:
    """The signing key of each issuer (the last one in its key set)."""

    def __init__(self) -> None:
        self.p384 = ec.generate_private_key(ec.SECP384R1())
        self.p256 = ec.generate_private_key(ec.SECP256R1())
        self.rsa1024 = rsa.generate_private_key(public_exponent=65537, key_size=1024)
        self.rsa2048 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.sets: dict[str, tuple[str, list[dict[str, Any]]]] = {
            "curves": ("ES256", [_ec_jwk(self.p384, "p384"), _ec_jwk(self.p256, "p256")]),
            "retired": ("RS256", [_rsa_jwk(self.rsa1024, "old"), _rsa_jwk(self.rsa2048, "new")]),
            "unreadable": ("ES256", [_UNREADABLE, _ec_jwk(self.p256, "p256")]),
        }

    def signing_key(self, name: str) -> Any:
        return self.rsa2048 if name == "retired" else self.p256


@dataclass
class SetIssuer(LocalIssuer):
    """An issuer whose key set endpoint serves ``keyset`` as it is."""

    keyset: list[dict[str, Any]] = field(default_factory=list)

    def jwks(self) -> dict[str, Any]:
        return {"keys": self.keyset}


def _table(issuer: LocalIssuer, url: str, alg: str) -> str:
    return (
        "\n[[auth.oauth_issuers]]\n"
        f'issuer = "{issuer.issuer}"\n'
        f'audience = ["{issuer.audience}"]\n'
        f'jwks_url = "{url}"\n'
        f'algorithms = ["{alg}"]\n'
        f'required_scopes = ["{SCOPE}"]\n'
        'identity_claim = "email"\n'
    )


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Idp, KeySets]]:
    root = tmp_path_factory.mktemp("oauth-key-sets")
    https = JwksHttps(root / "idp")
    keys = KeySets()
    tables = ""
    for name, (alg, jwks) in keys.sets.items():
        issuer = SetIssuer(issuer=f"https://{name}.idp.example.test/realms/mail", keyset=jwks)
        tables += _table(issuer, https.add(name, issuer), alg)
    srv: Server = make_server(root / "srv", tables + "\n[guard]\nenabled = false\n")
    oauth_on(srv)
    srv.env["SSL_CERT_FILE"] = str(https.ca.pem)
    srv.add_user(ALICE, secrets.token_urlsafe(24))
    for idp in serving_idp(srv, https):
        yield idp, keys


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _es256_by_hand(claims: dict[str, Any], headers: dict[str, Any],
                   key: ec.EllipticCurvePrivateKey) -> str:
    """An "ES256" JWS made with a key of any curve (PyJWT refuses to): SHA-256
    ECDSA, r and s each as long as the curve's order (RFC 7518 §3.4)."""
    header = {"alg": "ES256", **headers}
    signing = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
    r, s = decode_dss_signature(key.sign(signing.encode("ascii"), ec.ECDSA(hashes.SHA256())))
    size = (key.curve.key_size + 7) // 8
    return f"{signing}.{_b64url(r.to_bytes(size, 'big') + s.to_bytes(size, 'big'))}"


def _token(idp: Idp, keys: KeySets, name: str, *, key: Any = None, kid: str | None = None) -> str:
    alg = keys.sets[name][0]
    headers = {"typ": "at+jwt", **({"kid": kid} if kid else {})}
    claims = idp.issuers[name].claims(ALICE)
    if key is keys.p384:
        return _es256_by_hand(claims, headers, key)
    with warnings.catch_warnings():  # the retired key is short: that is the point
        warnings.simplefilter("ignore", InsecureKeyLengthWarning)
        return jwt.encode(claims, key or keys.signing_key(name), algorithm=alg, headers=headers)


@pytest.mark.parametrize("name", ["curves", "retired", "unreadable"])
def test_a_token_without_kid_finds_its_key_past_the_unusable_ones(
        served: tuple[Idp, KeySets], name: str) -> None:
    idp, keys = served
    replies = login(idp, "OAUTHBEARER", encode_oauthbearer(ALICE, _token(idp, keys, name)))
    assert replies[-1][0] == 235, replies


@pytest.mark.parametrize("name", ["curves", "retired", "unreadable"])
def test_a_token_with_its_kid_logs_in(served: tuple[Idp, KeySets], name: str) -> None:
    idp, keys = served
    kid = keys.sets[name][1][-1]["kid"]
    replies = login(idp, "OAUTHBEARER", encode_oauthbearer(ALICE, _token(idp, keys, name, kid=kid)))
    assert replies[-1][0] == 235, replies


def test_the_unusable_keys_verify_nothing(served: tuple[Idp, KeySets]) -> None:
    """Skipping an unusable key must not make it count: a token signed with the
    P-384 key under ES256, or with the 1024-bit key, is still refused."""
    idp, keys = served
    for token in (
        _token(idp, keys, "curves", key=keys.p384),
        _token(idp, keys, "curves", key=keys.p384, kid="p384"),
        _token(idp, keys, "retired", key=keys.rsa1024),
        _token(idp, keys, "retired", key=keys.rsa1024, kid="old"),
        _token(idp, keys, "unreadable", key=ec.generate_private_key(ec.SECP256R1())),
    ):
        refused(login(idp, "OAUTHBEARER", encode_oauthbearer(ALICE, token)))
    log = (idp.server.root / "auth.log").read_text()
    assert "unusable key" in log, log[-2000:]


class _FileIdp(Idp):
    """The server alone, for ``login``: its issuer's key set is a file."""

    def __init__(self, server: Server) -> None:
        self.server = server


def test_a_key_rotated_in_is_found_for_tokens_without_a_kid(tmp_path: Path) -> None:
    """Configuration management replaces the issuer's key in ``jwks_file``; tokens
    carry no ``kid``. The first token signed with the new key reads the file again
    (``jwks_min_refresh_seconds`` after the last read), as one with an unknown
    ``kid`` does: it was refused, and counted, until ``jwks_refresh_seconds`` (an
    hour) had passed. The withdrawn key's tokens are then refused."""
    issuer = LocalIssuer()
    jwks = issuer.write_jwks(tmp_path / "srv-keys" / "jwks.json")
    srv = make_server(tmp_path / "srv", issuer.config(str(jwks)) + "jwks_min_refresh_seconds = 1\n"
                      "\n[server]\nworkers = 1\n")  # one key-set cache
    oauth_on(srv)
    srv.add_user(ALICE, secrets.token_urlsafe(24))
    srv.start()
    try:
        idp = _FileIdp(srv)

        def kidless(key: ec.EllipticCurvePrivateKey) -> bytes:
            token = jwt.encode(issuer.claims(ALICE), key, algorithm="ES256",
                               headers={"typ": "at+jwt"})
            return encode_oauthbearer(ALICE, token)

        old = issuer.key
        assert login(idp, "OAUTHBEARER", kidless(old))[-1][0] == 235
        issuer.key, issuer.kid = ec.generate_private_key(ec.SECP256R1()), "k-rotated"
        issuer.write_jwks(jwks)
        time.sleep(1.5)  # past jwks_min_refresh_seconds since the file was read
        replies = login(idp, "OAUTHBEARER", kidless(issuer.key))
        assert replies[-1][0] == 235, replies
        refused(login(idp, "OAUTHBEARER", kidless(old)))
    finally:
        srv.stop()
    assert "Traceback" not in srv.log_text()
