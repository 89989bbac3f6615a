"""The OAuth login path attacked by a client holding tokens from a real-looking issuer.

One ``smtpgate serve`` trusts several issuers whose key sets come over HTTPS on
loopback (``jwks_https.JwksHttps``, a throw-away CA given to the server with
``SSL_CERT_FILE``): ``good`` and ``partner`` answer normally, the others are down,
drip-feed, are too large, are not JSON or redirect to plain http. The client speaks
SMTP over STARTTLS with smtplib and writes the SASL messages itself, so malformed
ones reach the server as sent. A fault on the issuer's side must answer ``454
4.7.0`` at once; a refused token ``535 5.7.8`` after the error JSON (RFC 7628
§3.2.2); a malformed message ``501`` (base64) or the error JSON with
``invalid_request``; never a traceback in the log. A session logged in with a
token ends (421 4.7.0) at its first MAIL after the token expires, or after the
issuer's introspection calls it revoked (``session_recheck = 0``: every MAIL).
"""

from __future__ import annotations

import base64
import json
import secrets
import smtplib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from smtpgate.sasl.oauth import encode_oauthbearer, encode_xoauth2

from .conftest import Server, make_server
from .jwks_https import JwksHttps
from .oauth_issuer import SCOPE, LocalIssuer

ALICE = "alice@example.org"
BOB = "bob@example.org"
CAROL = "carol@partner.example"  # the partner issuer's user
#: The issuers whose key set endpoints misbehave, each for a login that has no key set yet.
INTROSPECTION_SECRET = "introspection secret: only for the issuer"
BROKEN = ("down", "drip", "huge", "not-json", "redirect-http")


class Idp:
    """The server, its key-set endpoint and the issuers behind it."""

    def __init__(self, server: Server, https: JwksHttps) -> None:
        self.server = server
        self.https = https
        self.issuers = https.issuers


def oauth_on(srv: Server, extra: str = "") -> None:
    """The OAuth mechanisms offered by ``srv`` (PLAIN too), with the key sets from the
    issuers' ``jwks_url`` (OpenID discovery off); ``extra``: more of ``[auth]``."""
    srv.config.write_text(srv.config.read_text().replace(
        "\n[auth]\n", '\n[auth]\nmechanisms = ["OAUTHBEARER", "XOAUTH2", "PLAIN"]\n'
        'oauth_openid_configuration = "off"\n' + extra, 1))


def serving_idp(srv: Server, https: JwksHttps, *more: JwksHttps) -> Iterator[Idp]:
    """``srv`` started with the key-set server ``https``; stopped afterwards, the
    key-set servers closed, and no traceback in its log: the body of a fixture
    (``yield from``)."""
    srv.start()
    yield Idp(srv, https)
    if srv.proc is not None:
        srv.stop()
    for server in (https, *more):
        server.close()
    assert "Traceback" not in srv.log_text()


def _issuer_table(issuer: LocalIssuer, url: str, *, algorithms: str = '["ES256"]',
                  introspection: str = "", domains: str = "") -> str:
    return (
        "\n[[auth.oauth_issuers]]\n"
        f'issuer = "{issuer.issuer}"\n'
        f'audience = ["{issuer.audience}"]\n'
        f'jwks_url = "{url}"\n'
        f"algorithms = {algorithms}\n"
        f'required_scopes = ["{SCOPE}"]\n'
        'identity_claim = "email"\n'
        "leeway_seconds = 30\n"
        + (f"domains = {domains}\n" if domains else "")
        + (f'introspection_url = "{introspection}"\nintrospection_client_id = "smtpgate"\n'
           'introspection_client_secret_file = "introspection.secret"\n' if introspection else "")
    )


@pytest.fixture(scope="module")
def idp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Idp]:
    root = tmp_path_factory.mktemp("oauth-idp")
    https = JwksHttps(root / "idp")
    tables = ""
    for name in ("good", "partner", *BROKEN):
        issuer = LocalIssuer(issuer=f"https://{name}.idp.example.test/realms/mail")
        url = https.add(name, issuer, "ok" if name in ("good", "partner") else name)
        tables += _issuer_table(issuer, url,
                                domains='["partner.example"]' if name == "partner" else "")
    # JWTs checked offline and introspected (revocation); "leaky"'s endpoint redirects.
    for name, mode in (("revoking", "ok"), ("leaky", "redirect-http")):
        issuer = LocalIssuer(issuer=f"https://{name}.idp.example.test/realms/mail")
        url = https.add(name, issuer)
        https.modes[f"{name}-introspect"] = mode
        tables += _issuer_table(issuer, url, introspection=url + "-introspect")
    srv = make_server(root / "srv", tables)
    (srv.root / "introspection.secret").write_text(INTROSPECTION_SECRET + "\n")
    oauth_on(srv, "session_recheck = 0\n")
    text = srv.config.read_text()
    # Hundreds of refusals from 127.0.0.1 on purpose: the guard would rightly stop them.
    srv.config.write_text(text + "\n[guard]\nenabled = false\n"
                          if "\n[guard]" not in text else text)
    srv.env["SSL_CERT_FILE"] = str(https.ca.pem)
    for user in (ALICE, BOB, CAROL):
        srv.add_user(user, secrets.token_urlsafe(24))  # never used: tokens only
    yield from serving_idp(srv, https)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def login(idp: Idp, mech: str, message: bytes | str, *, dummy: str = "AQ==",
          timeout: float = 60) -> list[tuple[int, str]]:
    """AUTH ``mech`` with ``message`` (bytes: base64-encoded here; str: sent as is)
    as the initial response; each reply, the dummy answer sent after a 334."""
    replies: list[tuple[int, str]] = []
    with smtplib.SMTP("127.0.0.1", idp.server.submission, timeout=timeout) as smtp:
        smtp.ehlo("attacker.example.test")
        smtp.starttls(context=idp.server.client_context())
        smtp.ehlo("attacker.example.test")
        wire = _b64(message) if isinstance(message, bytes) else message
        code, text = smtp.docmd("AUTH", f"{mech} {wire}")
        replies.append((code, text.decode()))
        if code == 334:
            code, text = smtp.docmd(dummy)
            replies.append((code, text.decode()))
    return replies


def bearer(idp: Idp, token: str, *, user: str = ALICE, mech: str = "OAUTHBEARER",
           **kw: Any) -> list[tuple[int, str]]:
    message = encode_oauthbearer(user, token) if mech == "OAUTHBEARER" else encode_xoauth2(user, token)
    return login(idp, mech, message, **kw)


def error_json(reply: tuple[int, str]) -> dict[str, Any]:
    code, text = reply
    assert code == 334, reply
    parsed: dict[str, Any] = json.loads(base64.b64decode(text))
    return parsed


def refused(replies: list[tuple[int, str]], status: str = "invalid_token") -> None:
    assert len(replies) == 2, replies
    assert error_json(replies[0])["status"] == status
    assert replies[1][0] == 535 and replies[1][1].startswith("5.7.8"), replies


def unavailable(replies: list[tuple[int, str]]) -> None:
    assert len(replies) == 1 and replies[0][0] == 454, replies
    assert replies[0][1].startswith("4.7.0"), replies


def test_a_good_token_logs_in_with_either_mechanism(idp: Idp) -> None:
    good = idp.issuers["good"]
    assert bearer(idp, good.token(ALICE))[-1][0] == 235
    assert bearer(idp, good.token(ALICE), mech="XOAUTH2")[-1][0] == 235


# -- the token's signature and algorithm ----------------------------------------------


def test_alg_none_is_refused(idp: Idp) -> None:
    refused(bearer(idp, idp.issuers["good"].unsigned_token(ALICE)))


@pytest.mark.parametrize("secret_form", ["pem", "jwk"])
def test_hs256_signed_with_the_issuers_public_key_is_refused(idp: Idp, secret_form: str) -> None:
    good = idp.issuers["good"]
    public = good.key.public_key()
    secret = (public.public_bytes(serialization.Encoding.PEM,
                                  serialization.PublicFormat.SubjectPublicKeyInfo)
              if secret_form == "pem" else json.dumps(good.jwks()["keys"][0]).encode())
    # PyJWT refuses to HMAC with something that looks like a key: sign by hand.
    import hashlib
    import hmac
    header = base64.urlsafe_b64encode(json.dumps(
        {"alg": "HS256", "kid": good.kid, "typ": "JWT"}).encode()).rstrip(b"=")
    body = base64.urlsafe_b64encode(json.dumps(good.claims(ALICE)).encode()).rstrip(b"=")
    signing = header + b"." + body
    sig = base64.urlsafe_b64encode(hmac.new(secret, signing, hashlib.sha256).digest()).rstrip(b"=")
    refused(bearer(idp, (signing + b"." + sig).decode()))


def test_an_hmac_key_published_at_a_key_set_url_is_refused_by_the_config_check(
        idp: Idp, tmp_path: Path) -> None:
    """An issuer that publishes a symmetric (oct) key in its key set hands the
    secret to everyone: with HS256 allowed, anyone could sign tokens for anyone."""
    published = LocalIssuer(issuer="https://hmac.idp.example.test/realms/mail")
    url = idp.https.add("hmac", published)
    srv = make_server(tmp_path / "srv", _issuer_table(published, url, algorithms='["HS256"]'))
    check = srv.cli("config", "check", check=False)
    assert check.returncode != 0, check
    assert "HS256" in check.stderr and "jwks_file" in check.stderr, check.stderr


def test_a_token_signed_by_another_issuer_under_this_issuers_name_is_refused(idp: Idp) -> None:
    good, partner = idp.issuers["good"], idp.issuers["partner"]
    forged = jwt.encode(good.claims(ALICE), partner.key, algorithm="ES256",
                        headers={"kid": partner.kid})
    refused(bearer(idp, forged))
    forged = jwt.encode(good.claims(ALICE), partner.key, algorithm="ES256",
                        headers={"kid": good.kid})
    refused(bearer(idp, forged))


def test_made_up_kids_do_not_make_a_fetch_each(idp: Idp) -> None:
    good = idp.issuers["good"]
    assert bearer(idp, good.token(ALICE))[-1][0] == 235  # the set is cached
    before = idp.https.gets["good"]
    for _ in range(100):
        token = jwt.encode(good.claims(ALICE), good.key, algorithm="ES256",
                           headers={"kid": "k-" + secrets.token_hex(8)})
        refused(bearer(idp, token))
    # One refresh for the first unknown kid at most, then jwks_min_refresh_seconds
    # (60), in each of the two serving processes.
    assert idp.https.gets["good"] - before <= 2


def test_forged_signatures_do_not_make_a_fetch_each(idp: Idp) -> None:
    """A signature no cached key verifies asks for a refresh (the issuer may have
    put a new key under the token's kid, or the token has none), rate-limited as
    an unknown kid is."""
    good = idp.issuers["good"]
    assert bearer(idp, good.token(ALICE))[-1][0] == 235  # the set is cached
    before = idp.https.gets["good"]
    for forged in range(40):
        key = ec.generate_private_key(ec.SECP256R1())
        headers = {"kid": good.kid} if forged % 2 else {}
        token = jwt.encode(good.claims(ALICE), key, algorithm="ES256", headers=headers)
        refused(bearer(idp, token))
    assert idp.https.gets["good"] - before <= 2


# -- a key set endpoint on a bad day -----------------------------------------------------


@pytest.mark.parametrize("name", BROKEN)
def test_a_broken_key_set_endpoint_is_a_temporary_failure_at_once(idp: Idp, name: str) -> None:
    start = time.monotonic()
    unavailable(bearer(idp, idp.issuers[name].token(ALICE)))
    # The fetch timeout is 10 s: no login waits much longer for an issuer.
    assert time.monotonic() - start < 20
    assert idp.https.gets[name] >= 1


# -- claims --------------------------------------------------------------------------------


def test_an_issuer_limited_to_its_domains_cannot_speak_for_other_accounts(idp: Idp) -> None:
    """``partner`` has ``domains = ["partner.example"]``: its validly signed token
    naming alice@example.org is refused, its own user logs in."""
    partner = idp.issuers["partner"]
    refused(bearer(idp, partner.token(ALICE)))
    refused(bearer(idp, partner.token(ALICE), user=""))
    assert bearer(idp, partner.token(CAROL), user=CAROL)[-1][0] == 235


@pytest.mark.parametrize("offset", [-40, 20])
def test_exp_and_nbf_with_the_leeway(idp: Idp, offset: int) -> None:
    """Leeway 30 s: exp 20 s ago and nbf 20 s ahead still pass, 40 s do not."""
    good, now = idp.issuers["good"], int(time.time())
    expired = good.token(ALICE, iat=now - 600, nbf=now - 600, exp=now + offset)
    early = good.token(ALICE, iat=now, nbf=now - offset, exp=now + 600)
    for token in (expired, early):
        replies = bearer(idp, token)
        if offset > 0:
            assert replies[-1][0] == 235, replies
        else:
            refused(replies)


@pytest.mark.parametrize("claims", [
    {"aud": "other-service.example.test"},
    {"aud": ["other-service.example.test"]},
    {"iss": "https://unknown.idp.example.test/realms/mail"},
    {"iss": "https://partner.idp.example.test/realms/mail"},  # good's key, partner's name
    {"email_verified": False},
    {"email_verified": "false"},
    {"email": None},
    {"exp": None},
    # Integers past a float's range: 1e400 spelled out. Such an exp made the
    # verifier raise OverflowError, a 454 as if the issuer were down.
    {"exp": 10**400},
    {"nbf": -(10**400)},
    # A lone surrogate (JSON's "\ud800", which a UTF-16 issuer may let a user
    # put in a name) in the identity: a traceback in the log and a 454.
    {"email": "\ud800lice@example.org"},
    {"email": "alice@\udc80xample.org"},
])
def test_refused_claims(idp: Idp, claims: dict[str, Any]) -> None:
    claims = {"email": ALICE, **claims}
    refused(bearer(idp, idp.issuers["good"].token(**claims)))


def test_missing_scope_says_insufficient_scope(idp: Idp) -> None:
    refused(bearer(idp, idp.issuers["good"].token(ALICE, scope="openid")), "insufficient_scope")


def test_a_scope_claim_written_as_a_list_is_read(idp: Idp) -> None:
    """Spring Authorization Server's access tokens carry "scope" as a JSON array."""
    good = idp.issuers["good"]
    assert bearer(idp, good.token(ALICE, scope=["openid", SCOPE]))[-1][0] == 235
    refused(bearer(idp, good.token(ALICE, scope=["openid"])), "insufficient_scope")


@pytest.mark.parametrize("mech", ["OAUTHBEARER", "XOAUTH2"])
def test_a_token_for_another_user_than_the_one_named_is_refused(idp: Idp, mech: str) -> None:
    replies = bearer(idp, idp.issuers["good"].token(BOB), user=ALICE, mech=mech)
    assert replies[-1][0] == 535, replies


def test_the_identity_is_the_email_claim_not_sub(idp: Idp) -> None:
    good = idp.issuers["good"]
    refused(bearer(idp, good.token("mallory@example.org", sub=ALICE), user=""))
    assert bearer(idp, good.token(ALICE, sub=BOB), user="")[-1][0] == 235


def _auth_records(idp: Idp, username: str) -> list[dict[str, Any]]:
    lines = (idp.server.root / "auth.log").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["username"] == username]


@pytest.mark.parametrize("mech", ["OAUTHBEARER", "XOAUTH2"])
def test_a_good_token_refused_for_its_account_is_logged_under_the_name_it_gave(
        idp: Idp, mech: str) -> None:
    """A client that names no account (OAUTHBEARER without a=) with a good token
    for an account that does not exist, or is locked: the auth log's username is
    the token's identity (until 2026-12 it was "", the record naming nobody)."""
    good = idp.issuers["good"]
    ghost = f"Ghost-{secrets.token_hex(4)}@example.org"
    locked = f"locked-{secrets.token_hex(4)}@example.org"
    idp.server.add_user(locked, secrets.token_urlsafe(24))
    idp.server.cli("user", "lock", locked)
    user = "" if mech == "OAUTHBEARER" else "{}"  # XOAUTH2 must name one: as the token does
    for name, reason in ((ghost, "unknown user"), (locked, "account locked")):
        refused(bearer(idp, good.token(name), user=user.format(name), mech=mech),
                "invalid_token" if mech == "OAUTHBEARER" else "401")
        [record] = _auth_records(idp, name)
        assert (record["mechanism"], record["result"]) == (mech, "failure"), record
        assert record["reason"].startswith(reason), record
    # The token itself is never in the log.
    assert "eyJ" not in (idp.server.root / "auth.log").read_text() + idp.server.log_text()


# -- the SASL message itself --------------------------------------------------------------


def test_malformed_base64_is_501(idp: Idp) -> None:
    [(code, text)] = login(idp, "OAUTHBEARER", "bixhPWFsaWNl!!!")
    assert code == 501 and text.startswith("5.5.2"), (code, text)


@pytest.mark.parametrize("message", [
    b"n,,\x01auth=Bearer \x01\x01x",
    b"n,a=alice@example.org\x01auth=Bearer abc\x01\x01",
    b"\xff\xfe",
    b"n,,\x01auth=Bearer abc\x01auth=Bearer def\x01\x01",
])
def test_malformed_messages_get_invalid_request(idp: Idp, message: bytes) -> None:
    refused(login(idp, "OAUTHBEARER", message), "invalid_request")


def test_a_token_that_is_not_json_is_refused(idp: Idp) -> None:
    for token in ("eyJhbGciOiJFUzI1NiJ9.bm90IGpzb24.c2ln", "a.b.c", "W1tbW1tbW1tb" * 100 + ".e30.x"):
        refused(bearer(idp, token))


@pytest.mark.parametrize("octets", [9000, 9300, 16 * 1024 - 200, 16 * 1024 + 1, 64 * 1024])
def test_very_long_tokens_get_a_precise_reply(idp: Idp, octets: int) -> None:
    """An AUTH line holds 12288 octets of base64 (RFC 4954 §4), a message of 9216:
    a token of 9000 reaches the verifier (refused: it is no JWT), a longer one is
    500 5.5.6 and the session goes on (docs/oauth.md, "What is checked")."""
    token = "A" * octets
    with smtplib.SMTP("127.0.0.1", idp.server.submission, timeout=60) as smtp:
        smtp.ehlo("attacker.example.test")
        smtp.starttls(context=idp.server.client_context())
        smtp.ehlo("attacker.example.test")
        code, text = smtp.docmd("AUTH", "OAUTHBEARER " + _b64(encode_oauthbearer(ALICE, token)))
        if octets <= 9000:
            assert code == 334, (code, text)
            assert smtp.docmd("AQ==")[0] == 535
        else:
            assert (code, text[:5]) == (500, b"5.5.6"), (code, text)
        assert smtp.docmd("NOOP")[0] == 250


@pytest.mark.parametrize("dummy", ["AQ==", "", "*", "eyJ4Ijp0cnVlfQ=="])
def test_any_answer_to_the_error_json_ends_the_attempt(idp: Idp, dummy: str) -> None:
    replies = bearer(idp, idp.issuers["good"].token(ALICE, aud="x"), dummy=dummy)
    assert error_json(replies[0])["status"] == "invalid_token"
    assert replies[1][0] in (535, 501), replies


# -- introspection ------------------------------------------------------------------------


def test_a_revoked_token_replayed_is_refused(idp: Idp) -> None:
    token = idp.issuers["revoking"].token(ALICE)
    assert bearer(idp, token)[-1][0] == 235
    idp.https.revoked.add(token)
    refused(bearer(idp, token))


def test_an_introspection_redirect_is_not_followed_with_the_client_secret(idp: Idp) -> None:
    unavailable(bearer(idp, idp.issuers["leaky"].token(ALICE)))
    # RFC 6749 §2.3.1: id and secret form-urlencoded, then Basic.
    basic = base64.b64encode(f"smtpgate:{quote_plus(INTROSPECTION_SECRET)}".encode()).decode()
    assert ("https", "/leaky-introspect", f"Basic {basic}") in idp.https.seen
    assert not [s for s in idp.https.seen if s[0] == "http"], idp.https.seen


REVOKED = "Authentication no longer valid, closing connection"


def _bearer_session(idp: Idp, token: str) -> smtplib.SMTP:
    """A session logged in with ``token`` over OAUTHBEARER."""
    smtp = smtplib.SMTP("127.0.0.1", idp.server.submission, timeout=30)
    smtp.ehlo("client.example.test")
    smtp.starttls(context=idp.server.client_context())
    smtp.ehlo("client.example.test")
    code, text = smtp.docmd("AUTH", f"OAUTHBEARER {_b64(encode_oauthbearer(ALICE, token))}")
    assert code == 235, text
    return smtp


def _ended(smtp: smtplib.SMTP) -> None:
    code, text = smtp.docmd("MAIL", f"FROM:<{ALICE}>")
    assert (code, text.decode()) == (421, f"4.7.0 {REVOKED}"), (code, text)
    with pytest.raises(smtplib.SMTPServerDisconnected):
        smtp.noop()


def test_a_session_ends_at_its_first_mail_after_its_token_expired(idp: Idp) -> None:
    """A token's exp bounds what it may do: the session it opened went on sending
    for as long as the client kept the connection. The token here expires
    (exp plus the issuer's 30 s leeway) a few seconds after the login."""
    token = idp.issuers["good"].token(ALICE, exp=int(time.time()) - 26)
    smtp = _bearer_session(idp, token)
    try:
        assert smtp.docmd("MAIL", f"FROM:<{ALICE}>")[0] == 250
        assert smtp.docmd("RSET")[0] == 250
        time.sleep(5)
        _ended(smtp)
    finally:
        smtp.close()
    assert f"user={ALICE} session ended: token expired" in idp.server.log_text()


def test_a_session_ends_when_the_issuer_revokes_its_token(idp: Idp) -> None:
    """With introspection, the issuer says whether a token is still active; the
    session rechecked its account but not its token, so a revoked token's
    session (a stolen token, a user signed out everywhere) went on sending."""
    token = idp.issuers["revoking"].token(ALICE)
    smtp = _bearer_session(idp, token)
    try:
        assert smtp.docmd("MAIL", f"FROM:<{ALICE}>")[0] == 250
        assert smtp.docmd("RSET")[0] == 250
        idp.https.revoked.add(token)
        _ended(smtp)
    finally:
        smtp.close()
    assert (f"user={ALICE} session ended: token no longer valid: token inactive "
            "(introspection)") in idp.server.log_text()
