"""Bad bearer tokens against the guard, as wrong passwords are (docs/protection.md).

A token cannot be guessed, but a flood of bad ones is a flood of failed logins: the
guard counts each failure announced by the error JSON (RFC 7628 §3.2.2), against the
address always and against the account the client named. One ``smtpgate serve`` with
small thresholds, a local issuer (``jwks_file``), clients on loopback addresses of
their own: tokens naming no account block the address at ``address_failure_limit``;
tokens naming bob lock bob for new addresses at ``lockout_threshold``, after which
even a good token naming him gets the guard's 454, as his password would.
"""

from __future__ import annotations

import base64
import secrets
import smtplib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from smtpgate.sasl.oauth import encode_oauthbearer, encode_xoauth2

from .conftest import Server, make_server
from .oauth_issuer import LocalIssuer
from .test_oauth_idp_attacks import ALICE, BOB, oauth_on

GUARD = """
[guard]
penalty_base = 0.1
penalty_max = 0.2
lockout_threshold = 3
address_failure_limit = 5
"""


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, LocalIssuer]]:
    root: Path = tmp_path_factory.mktemp("oauth-guard")
    issuer = LocalIssuer()
    jwks = issuer.write_jwks(root / "srv-keys" / "jwks.json")
    srv = make_server(root / "srv", issuer.config(str(jwks)) + GUARD)
    oauth_on(srv)
    for user in (ALICE, BOB):
        srv.add_user(user, secrets.token_urlsafe(24))
    srv.start()
    yield srv, issuer
    srv.stop()
    assert "Traceback" not in srv.log_text()


def attempt(srv: Server, source: str, mech: str, message: bytes) -> int:
    """One AUTH from ``source`` with ``message``; the final reply's code."""
    with smtplib.SMTP("127.0.0.1", srv.submission, timeout=60,
                      source_address=(source, 0)) as smtp:
        smtp.ehlo("client.example.test")
        smtp.starttls(context=srv.client_context())
        smtp.ehlo("client.example.test")
        code, _ = smtp.docmd("AUTH", f"{mech} {base64.b64encode(message).decode()}")
        if code == 334:  # the error JSON: the client's dummy answer
            code, _ = smtp.docmd("AQ==" if mech == "OAUTHBEARER" else "")
        return code


def expired(issuer: LocalIssuer, email: str) -> str:
    now = int(time.time())
    return issuer.token(email, iat=now - 7200, nbf=now - 7200, exp=now - 3600)


def test_bad_tokens_naming_no_account_block_the_address(
        guarded: tuple[Server, LocalIssuer]) -> None:
    srv, issuer = guarded
    source = "127.0.0.2"
    codes = [attempt(srv, source, "OAUTHBEARER", encode_oauthbearer("", expired(issuer, ALICE)))
             for _ in range(5)]
    assert codes == [535] * 5, codes
    # address_failure_limit reached: the address is blocked, good token or not.
    good = encode_oauthbearer("", issuer.token(ALICE))
    assert attempt(srv, source, "OAUTHBEARER", good) == 454
    assert attempt(srv, "127.0.0.4", "OAUTHBEARER", good) == 235  # another address


def test_bad_tokens_naming_an_account_lock_it_for_new_addresses(
        guarded: tuple[Server, LocalIssuer]) -> None:
    srv, issuer = guarded
    source = "127.0.0.3"
    codes = [attempt(srv, source, "XOAUTH2", encode_xoauth2(BOB, expired(issuer, BOB)))
             for _ in range(3)]
    assert codes == [535] * 3, codes
    # Locked for new addresses, as three wrong passwords would lock him.
    assert attempt(srv, source, "XOAUTH2", encode_xoauth2(BOB, issuer.token(BOB))) == 454
    assert attempt(srv, "127.0.0.5", "OAUTHBEARER",
                   encode_oauthbearer(BOB, issuer.token(BOB))) == 454
    listed = srv.cli("guard", "list").stdout
    assert BOB in listed, listed
