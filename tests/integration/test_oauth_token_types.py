"""Which JWTs an issuer's key set may log in with: access tokens, not the other
tokens the issuer signs with the same keys (RFC 9068 §4, the ``typ`` header).

One ``smtpgate serve`` trusts two issuers whose key sets come over real HTTPS
on loopback (``jwks_https.JwksHttps``): "strict" asks for RFC 9068 access tokens
(``token_types = ["at+jwt"]``), "usual" keeps the default (at+jwt, JWT or no
typ, as Azure AD and Keycloak mint them, but never a token that carries
an ID token's claims). Both list the mail client's id in ``audience``, which
is the ``aud`` of the ID tokens the issuer gives that client: the case where an
ID token would pass every other check.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest

from .conftest import make_server
from .jwks_https import JwksHttps
from .oauth_issuer import SCOPE, LocalIssuer
from .test_oauth_idp_attacks import ALICE, Idp, bearer, oauth_on, refused, serving_idp

#: The mail client's id at the issuer: the ``aud`` of the ID tokens it gets.
CLIENT_ID = "mail-client"


def _table(issuer: LocalIssuer, url: str, extra: str = "") -> str:
    return (
        "\n[[auth.oauth_issuers]]\n"
        f'issuer = "{issuer.issuer}"\n'
        f'audience = ["{issuer.audience}", "{CLIENT_ID}"]\n'
        f'jwks_url = "{url}"\n'
        'algorithms = ["ES256"]\n'
        f'required_scopes = ["{SCOPE}"]\n'
        f"{extra}"
    )


@pytest.fixture(scope="module")
def idp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Idp]:
    root = tmp_path_factory.mktemp("oauth-types")
    https = JwksHttps(root / "idp")
    tables = ""
    for name, extra in (("strict", 'token_types = ["at+jwt"]\n'), ("usual", "")):
        issuer = LocalIssuer(issuer=f"https://{name}.idp.example.test/realms/mail")
        tables += _table(issuer, https.add(name, issuer), extra)
    srv = make_server(root / "srv", tables + "\n[guard]\nenabled = false\n")
    oauth_on(srv)
    srv.env["SSL_CERT_FILE"] = str(https.ca.pem)
    srv.add_user(ALICE, secrets.token_urlsafe(24))
    yield from serving_idp(srv, https)


def _token(issuer: LocalIssuer, header_typ: str | None, **claims: Any) -> str:
    """A token signed with the issuer's key, its header's typ ``header_typ`` (None: none)."""
    headers: dict[str, Any] = {"kid": issuer.kid, "typ": header_typ}  # PyJWT drops a None typ
    token = jwt.encode(issuer.claims(ALICE, **claims), issuer.key, algorithm="ES256",
                       headers=headers)
    assert ("typ" in jwt.get_unverified_header(token)) == (header_typ is not None)
    return token


def _id_token(issuer: LocalIssuer) -> str:
    """What the issuer gives the mail client at login (OpenID Connect Core §2): typ
    JWT, aud its client id, a nonce and at_hash; here with the scope too."""
    now = int(time.time())
    return _token(issuer, "JWT", aud=CLIENT_ID, nonce=secrets.token_urlsafe(8),
                  at_hash=secrets.token_urlsafe(16), auth_time=now, azp=CLIENT_ID)


@pytest.mark.parametrize("typ", ["at+jwt", "application/at+jwt", "AT+JWT"])
def test_rfc9068_access_tokens_log_in_at_either_issuer(idp: Idp, typ: str) -> None:
    for name in ("strict", "usual"):
        assert bearer(idp, _token(idp.issuers[name], typ))[-1][0] == 235, name


def test_an_id_token_is_refused_by_the_issuer_that_asks_for_rfc9068_tokens(idp: Idp) -> None:
    refused(bearer(idp, _id_token(idp.issuers["strict"])))
    assert "token type 'JWT' not accepted" in idp.server.log_text() + (
        idp.server.root / "auth.log").read_text()


@pytest.mark.parametrize("typ", ["JWT", None])
def test_the_strict_issuer_refuses_access_tokens_not_typed_as_such(
        idp: Idp, typ: str | None) -> None:
    refused(bearer(idp, _token(idp.issuers["strict"], typ)))


@pytest.mark.parametrize("typ", ["JWT", None])
def test_by_default_access_tokens_typed_jwt_or_not_at_all_log_in(
        idp: Idp, typ: str | None) -> None:
    assert bearer(idp, _token(idp.issuers["usual"], typ))[-1][0] == 235


def test_by_default_an_id_token_is_refused_by_its_claims(idp: Idp) -> None:
    issuer = idp.issuers["usual"]
    refused(bearer(idp, _id_token(issuer)))
    refused(bearer(idp, _token(issuer, None, aud=CLIENT_ID, nonce="n-0S6_WzA2Mj")))
    refused(bearer(idp, _token(issuer, "JWT", typ="ID")))  # Keycloak's ID token
    assert "an ID token (nonce, at_hash), not an access token" in (
        idp.server.root / "auth.log").read_text()


@pytest.mark.parametrize("typ", ["logout+jwt", "secevent+jwt", "dpop+jwt"])
def test_by_default_other_token_types_are_refused(idp: Idp, typ: str) -> None:
    refused(bearer(idp, _token(idp.issuers["usual"], typ)))
