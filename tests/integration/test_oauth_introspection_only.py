"""An issuer checked by RFC 7662 introspection alone, as an administrator wires
Keycloak when the server should not hold its keys (or should learn of revocation
at once): ``introspection_url`` and no key set. Its access tokens are JWTs; the
endpoint (``jwks_https.JwksHttps`` mode ``claims``, over real HTTPS on loopback)
answers with their claims, as Keycloak's does. They log in with OAUTHBEARER and
XOAUTH2; a revoked or expired one, or one the endpoint does not know, gets the
error JSON and 535 (until 2026-12 every JWT of such an issuer was refused, 'issuer
accepts only opaque tokens', where docs/oauth.md promised any token).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from .conftest import make_server
from .jwks_https import JwksHttps
from .oauth_issuer import SCOPE, LocalIssuer
from .test_oauth_idp_attacks import (
    ALICE,
    INTROSPECTION_SECRET,
    Idp,
    bearer,
    oauth_on,
    refused,
    serving_idp,
)


@pytest.fixture(scope="module")
def idp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Idp]:
    root = tmp_path_factory.mktemp("oauth-introspection-only")
    https = JwksHttps(root / "idp")
    keycloak = LocalIssuer(issuer="https://keycloak.idp.example.test/realms/mail")
    url = https.add("keycloak", keycloak) + "-introspect"
    https.modes["keycloak-introspect"] = "claims"
    srv = make_server(root / "srv", (
        "\n[[auth.oauth_issuers]]\n"
        f'issuer = "{keycloak.issuer}"\n'
        f'audience = ["{keycloak.audience}"]\n'
        f'required_scopes = ["{SCOPE}"]\n'
        f'introspection_url = "{url}"\n'
        'introspection_client_id = "smtpgate"\n'
        'introspection_client_secret_file = "introspection.secret"\n'))
    (srv.root / "introspection.secret").write_text(INTROSPECTION_SECRET + "\n")
    oauth_on(srv)
    text = srv.config.read_text()
    srv.config.write_text(text + "\n[guard]\nenabled = false\n"
                          if "\n[guard]" not in text else text)
    srv.env["SSL_CERT_FILE"] = str(https.ca.pem)
    srv.add_user(ALICE, secrets.token_urlsafe(24))
    yield from serving_idp(srv, https)


@pytest.mark.parametrize("mech", ["OAUTHBEARER", "XOAUTH2"])
def test_the_issuers_jwt_access_tokens_log_in(idp: Idp, mech: str) -> None:
    token = idp.issuers["keycloak"].token(ALICE)
    assert bearer(idp, token, mech=mech)[-1][0] == 235
    if mech == "OAUTHBEARER":
        assert bearer(idp, token, user="")[-1][0] == 235  # no a=: the token names her
    # Asked at the endpoint, with the client's credentials; no key set is fetched.
    assert any(path == "/keycloak-introspect" and auth.startswith("Basic ")
               for _, path, auth in idp.https.seen)
    assert idp.https.gets["keycloak"] == 0


def test_what_the_endpoint_does_not_call_active_is_refused(idp: Idp) -> None:
    keycloak = idp.issuers["keycloak"]
    now = int(time.time())
    revoked = keycloak.token(ALICE)
    idp.https.revoked.add(revoked)
    for token in (revoked,
                  keycloak.token(ALICE, iat=now - 7200, nbf=now - 7200, exp=now - 3600),
                  keycloak.token(ALICE, key=ec.generate_private_key(ec.SECP256R1()))):
        refused(bearer(idp, token))
    assert "token inactive (introspection)" in (idp.server.root / "auth.log").read_text()


def test_the_answer_is_checked_as_an_opaque_tokens_is(idp: Idp) -> None:
    keycloak = idp.issuers["keycloak"]
    refused(bearer(idp, keycloak.token(ALICE, scope="openid")), "insufficient_scope")
    refused(bearer(idp, keycloak.token(ALICE, aud="other-service.example.test")))
    refused(bearer(idp, keycloak.token("mallory@example.org"), user=""))
    log = (idp.server.root / "auth.log").read_text()
    assert "wrong audience (introspection)" in log and "missing scope smtp.send" in log


@pytest.mark.parametrize(("typ", "why"), [("Refresh", "a refresh token (typ Refresh)"),
                                          ("Offline", "a refresh token (typ Offline)"),
                                          ("ID", "an ID token (typ ID)")])
def test_the_endpoint_calling_another_kind_of_token_active_is_no_login(
        idp: Idp, typ: str, why: str) -> None:
    """Keycloak's endpoint calls its refresh, offline and ID tokens active too; they
    are typed JWT in the header and by a typ claim (the access token's is Bearer)."""
    keycloak = idp.issuers["keycloak"]
    token = jwt.encode(keycloak.claims(ALICE, typ=typ), keycloak.key, algorithm="ES256",
                       headers={"kid": keycloak.kid, "typ": "JWT"})
    refused(bearer(idp, token))
    assert f"{why}, not an access token" in (idp.server.root / "auth.log").read_text()
    bearer_typed = jwt.encode(keycloak.claims(ALICE, typ="Bearer"), keycloak.key,
                              algorithm="ES256", headers={"kid": keycloak.kid, "typ": "JWT"})
    assert bearer(idp, bearer_typed)[-1][0] == 235
