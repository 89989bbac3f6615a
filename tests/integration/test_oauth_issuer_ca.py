"""Each OAuth issuer's key set fetched over HTTPS with that issuer's own CA
(``ca_file``): private identity providers, each with a CA of its own, in one
config, and no CA added to the system's store (no ``SSL_CERT_FILE``).

Two key-set servers on loopback (``jwks_https.JwksHttps``), each with a
certificate from its own throw-away CA: "alpha" trusts alpha's CA (an absolute
path), "beta" beta's (relative to the config); "crossed" is served by alpha's
server but names beta's CA, so its key set must not be fetched: a CA is trusted
for its issuer alone.
"""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Iterator

import pytest

from .conftest import Server, make_server
from .jwks_https import JwksHttps
from .oauth_issuer import SCOPE, LocalIssuer
from .test_oauth_idp_attacks import ALICE, Idp, bearer, oauth_on, serving_idp, unavailable


def _table(issuer: LocalIssuer, url: str, ca_file: str) -> str:
    return (
        "\n[[auth.oauth_issuers]]\n"
        f'issuer = "{issuer.issuer}"\n'
        f'audience = ["{issuer.audience}"]\n'
        f'jwks_url = "{url}"\n'
        'algorithms = ["ES256"]\n'
        f'required_scopes = ["{SCOPE}"]\n'
        f'ca_file = "{ca_file}"\n'
    )


@pytest.fixture(scope="module")
def idp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Idp]:
    root = tmp_path_factory.mktemp("oauth-ca")
    alpha, beta = JwksHttps(root / "alpha"), JwksHttps(root / "beta")
    issuers = {name: LocalIssuer(issuer=f"https://{name}.idp.example.test/realms/mail")
               for name in ("alpha", "beta", "crossed")}
    tables = (_table(issuers["alpha"], alpha.add("alpha", issuers["alpha"]), str(alpha.ca.pem))
              + _table(issuers["beta"], beta.add("beta", issuers["beta"]), "beta-ca.pem")
              + _table(issuers["crossed"], alpha.add("crossed", issuers["crossed"]),
                       "beta-ca.pem"))
    srv: Server = make_server(root / "srv", tables + "\n[guard]\nenabled = false\n")
    shutil.copy(beta.ca.pem, srv.root / "beta-ca.pem")
    oauth_on(srv)
    srv.env.pop("SSL_CERT_FILE", None)
    srv.add_user(ALICE, secrets.token_urlsafe(24))
    alpha.issuers.update(beta.issuers)  # Idp.issuers: all three, by name
    yield from serving_idp(srv, alpha, beta)


def test_each_issuer_fetches_its_key_set_with_its_own_ca(idp: Idp) -> None:
    for name in ("alpha", "beta"):
        assert bearer(idp, idp.issuers[name].token(ALICE))[-1][0] == 235, name


def test_another_issuers_ca_is_not_trusted_for_this_one(idp: Idp) -> None:
    unavailable(bearer(idp, idp.issuers["crossed"].token(ALICE)))
    log = idp.server.log_text()
    assert "key set of https://crossed.idp.example.test/realms/mail unavailable" in log, log
    assert "CERTIFICATE_VERIFY_FAILED" in log or "certificate verify failed" in log, log


def test_config_check_refuses_a_ca_file_that_holds_no_certificate(idp: Idp) -> None:
    text = idp.server.config.read_text()
    (idp.server.root / "not-a-ca.pem").write_text("not a certificate\n")
    try:
        idp.server.config.write_text(text.replace('"beta-ca.pem"', '"not-a-ca.pem"', 1))
        out = idp.server.cli("config", "check", check=False)
        assert out.returncode != 0 and "auth.oauth_issuers.1.ca_file" in out.stdout + out.stderr
    finally:
        idp.server.config.write_text(text)
