"""A small local OAuth 2.0 issuer for the tests: a key pair, a JWKS file, and tokens.

The key pair is made fresh in each test session (EC P-256, ES256), the public half
is written as a JSON Web Key Set into the server directory (``jwks_file``), and
tokens are minted with PyJWT. Helpers make the bad tokens the negative tests need:
expired, not yet valid, wrong audience, wrong issuer, signed by another key under
the same ``kid``, and ``alg=none``.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec

ISSUER = "https://id.example.test/realms/mail"
AUDIENCE = "smtp.example.test"
SCOPE = "smtp.send"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@dataclass
class LocalIssuer:
    issuer: str = ISSUER
    audience: str = AUDIENCE
    kid: str = field(default_factory=lambda: "k-" + secrets.token_hex(4))
    key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )

    def jwks(self) -> dict[str, Any]:
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.key.public_key()))
        jwk.update({"kid": self.kid, "use": "sig", "alg": "ES256"})
        return {"keys": [jwk]}

    def write_jwks(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.jwks(), indent=2))
        return path

    def config(self, jwks_file: str) -> str:
        """The ``[[auth.oauth_issuers]]`` table for smtpgate.toml."""
        return (
            "\n[[auth.oauth_issuers]]\n"
            f'issuer = "{self.issuer}"\n'
            f'audience = ["{self.audience}"]\n'
            f'jwks_file = "{jwks_file}"\n'
            'algorithms = ["ES256"]\n'
            f'required_scopes = ["{SCOPE}"]\n'
            'identity_claim = "email"\n'
            "leeway_seconds = 30\n"
        )

    def claims(self, email: str, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": "user-" + secrets.token_hex(4),
            "email": email,
            "email_verified": True,
            "scope": f"openid {SCOPE}",
            "iat": now,
            "nbf": now,
            "exp": now + 600,
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def token(
        self,
        email: str,
        *,
        key: ec.EllipticCurvePrivateKey | None = None,
        **overrides: Any,
    ) -> str:
        """A signed ES256 access token; ``overrides`` replace claims (None drops one)."""
        return jwt.encode(
            self.claims(email, **overrides),
            key or self.key,
            algorithm="ES256",
            headers={"kid": self.kid, "typ": "at+jwt"},
        )

    def unsigned_token(self, email: str) -> str:
        """``alg=none``: header and claims, empty signature (RFC 7519 §6.1)."""
        header = _b64url(json.dumps({"alg": "none", "typ": "JWT", "kid": self.kid}).encode())
        body = _b64url(json.dumps(self.claims(email)).encode())
        return f"{header}.{body}."

    def bad_tokens(self, email: str) -> dict[str, str]:
        """Every kind of token the server must refuse, for an existing account."""
        now = int(time.time())
        other_key = ec.generate_private_key(ec.SECP256R1())
        return {
            "expired": self.token(email, iat=now - 7200, nbf=now - 7200, exp=now - 3600),
            "not-yet-valid": self.token(email, iat=now, nbf=now + 3600, exp=now + 7200),
            "wrong-audience": self.token(email, aud="other-service.example.test"),
            "wrong-issuer": self.token(email, iss="https://evil.example.test/"),
            "bad-signature": self.token(email, key=other_key),
            "alg-none": self.unsigned_token(email),
            "missing-scope": self.token(email, scope="openid"),
        }
