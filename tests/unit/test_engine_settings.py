"""What each listener's engine is told by the config (server/app.py, engine_settings)."""

from __future__ import annotations

from pathlib import Path

import pytest

from smtpgate.auth.decoy import SECRET_BYTES
from smtpgate.config import parse_config
from smtpgate.server.app import engine_settings
from smtpgate.tls.certs import write_self_signed


@pytest.mark.parametrize(("delivery", "offered"), [
    ("", True),
    ('[delivery]\nmode = "relay"\nrelay_host = "127.0.0.1"\n', False),
    ('[delivery]\nmode = "lmtp"\nlmtp_address = "127.0.0.1:24"\n', False),
])
def test_binarymime_is_offered_only_when_delivery_keeps_the_message_as_it_came(
        tmp_path: Path, delivery: str, offered: bool) -> None:
    # RFC 3030 §3: binary content only to a hop that offers BINARYMIME; the relay
    # and LMTP clients send DATA, so with them it is not offered at all.
    write_self_signed(tmp_path / "cert.pem", tmp_path / "key.pem", "mx.test")
    cfg = parse_config(
        '[[listeners]]\nname = "s"\naddress = "127.0.0.1:0"\ntls = "implicit"\n'
        '[tls]\ncert = "cert.pem"\nkey = "key.pem"\n' + delivery, tmp_path)
    assert engine_settings(cfg, cfg.listeners[0], b"k" * SECRET_BYTES).binarymime is offered


ISSUER = """
[[auth.oauth_issuers]]
issuer = "{iss}"
audience = ["smtp.example.org"]
jwks_url = "https://id.example.org/certs"
required_scopes = [{scopes}]
"""


def _error_json(tmp_path: Path, auth: str, issuers: list[tuple[str, str]]) -> dict[str, str]:
    """The JSON OAUTHBEARER answers a discovery request (auth= empty) with, from
    a listener's engine as ``serve`` builds it from the config."""
    import json

    from smtpgate.sasl.base import ChannelBinding, Failure

    write_self_signed(tmp_path / "cert.pem", tmp_path / "key.pem", "mx.test")
    text = ('[[listeners]]\nname = "s"\naddress = "127.0.0.1:0"\ntls = "implicit"\n'
            '[tls]\ncert = "cert.pem"\nkey = "key.pem"\n'
            '[auth]\nmechanisms = ["OAUTHBEARER", "PLAIN"]\n' + auth
            + "".join(ISSUER.format(iss=i, scopes=s) for i, s in issuers))
    cfg = parse_config(text, tmp_path)
    settings = engine_settings(cfg, cfg.listeners[0], b"k" * SECRET_BYTES)
    mech = settings.mechanism_factory("OAUTHBEARER", ChannelBinding(), False)
    step = mech.start(b"n,a=alice@example.org,\x01auth=\x01\x01")  # RFC 7628 §3.1
    assert isinstance(step, Failure) and step.error_data is not None
    body = dict(json.loads(step.error_data))
    assert body.pop("schemes") == "bearer"
    return body


def test_oauthbearer_error_names_the_issuers_scope_and_discovery_document(
        tmp_path: Path) -> None:
    """RFC 7628 §3.2.2: the error JSON tells the client which scope a token needs
    and where the provider's discovery document is. With auth.oauth_scope empty it
    named no scope though the issuer requires one, and never sent
    openid-configuration."""
    one = [("https://id.example.org/realms/mail", '"smtp.send"')]
    assert _error_json(tmp_path, "", one) == {
        "status": "invalid_token", "scope": "smtp.send",
        "openid-configuration":
            "https://id.example.org/realms/mail/.well-known/openid-configuration"}
    # What the administrator sets wins; off leaves the document out.
    got = _error_json(tmp_path, 'oauth_scope = "mail"\noauth_openid_configuration = "off"\n', one)
    assert got == {"status": "invalid_token", "scope": "mail"}
    got = _error_json(tmp_path, 'oauth_openid_configuration = "https://sso.example.org/d"\n', one)
    assert got["openid-configuration"] == "https://sso.example.org/d"
    # Two issuers that ask for different scopes: no one answer is right for both,
    # and which issuer's document a client wants is not known.
    two = [*one, ("https://login.example.net/", '"smtp.other"')]
    assert _error_json(tmp_path, "", two) == {"status": "invalid_token"}
    same = [*one, ("https://login.example.net/", '"smtp.send"')]
    assert _error_json(tmp_path, "", same) == {"status": "invalid_token", "scope": "smtp.send"}


def test_oauth_openid_configuration_is_auto_off_or_an_https_url(tmp_path: Path) -> None:
    import pydantic

    from smtpgate.config import AuthConfig

    with pytest.raises(pydantic.ValidationError, match="'auto', 'off' or an https:// URL"):
        AuthConfig(oauth_openid_configuration="http://sso.example.org/d")
