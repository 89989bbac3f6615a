"""The explicit mechanism registry: names to classes, no reflection.

``SERVER_MECHANISMS`` lists every server mechanism smtpgate implements, strongest
first; configuration picks the enabled subset and the server advertises them in
that order. SASL mechanism names are matched case-insensitively (clients send
``auth plain`` too; Postfix and Dovecot accept it) and stored upper-case, as
RFC 4422 §3.1 spells them.
"""

from __future__ import annotations

from collections.abc import Callable

from smtpgate.sasl._common import NO_CHANNEL_BINDING, ServerContext, ServerMechanismBase
from smtpgate.sasl.base import ChannelBinding, ClientMechanism, ServerMechanism
from smtpgate.sasl.cram_md5 import CramMd5Client, CramMd5Server
from smtpgate.sasl.login import LoginClient, LoginServer
from smtpgate.sasl.oauth import (
    OAuthBearerClient,
    OAuthBearerServer,
    XOAuth2Client,
    XOAuth2Server,
)
from smtpgate.sasl.plain import PlainClient, PlainServer
from smtpgate.sasl.scram import (
    ScramClient,
    ScramSha1PlusServer,
    ScramSha1Server,
    ScramSha256PlusServer,
    ScramSha256Server,
)

SERVER_MECHANISMS: dict[str, type[ServerMechanismBase]] = {
    cls.name: cls
    for cls in (
        ScramSha256PlusServer,
        ScramSha256Server,
        ScramSha1PlusServer,
        ScramSha1Server,
        OAuthBearerServer,
        XOAuth2Server,
        PlainServer,
        LoginServer,
        CramMd5Server,
    )
}


def server_mechanism_names() -> list[str]:
    """All implemented server mechanism names, in preference order (strongest first)."""
    return list(SERVER_MECHANISMS)


def create_server_mechanism(
    name: str,
    *,
    channel_binding: ChannelBinding,
    hostname: str = "localhost",
    nonce_factory: Callable[[], str] | None = None,
    plus_advertised: bool = False,
    decoy_secret: bytes | None = None,
    decoy_iterations: int = 4096,
    oauth_scope: str = "",
    openid_configuration: str = "",
) -> ServerMechanism:
    """Build a fresh server mechanism for one AUTH exchange.

    Args:
        name: mechanism name from the AUTH command (case-insensitive).
        channel_binding: what the TLS layer can bind to on this connection.
        hostname: our name, for challenges that carry it (CRAM-MD5).
        nonce_factory: returns a fresh random string; tests inject fixed nonces.
        plus_advertised: a SCRAM ``-PLUS`` mechanism is supported on this
            connection (binding available and the PLUS variant enabled, whether
            advertised or held back from EHLO by the channel-binding fallback), so
            a SCRAM client sending the ``y`` flag is a downgrade (RFC 5802 §6).
        decoy_secret: keys SCRAM's fake salt for unknown users; default a
            per-process random secret (pass a persistent one so the fake salt of a
            probed name does not change across restarts).
        decoy_iterations: iteration count SCRAM announces for unknown users; set it
            to what the account store uses, or unknown names stand out.
        oauth_scope: ``scope`` in the OAUTHBEARER/XOAUTH2 error JSON ("" omits it).
        openid_configuration: discovery URL in the OAUTHBEARER error JSON.

    Raises:
        KeyError: no mechanism of that name.
    """
    cls = SERVER_MECHANISMS[name.upper()]
    return cls.from_context(
        ServerContext(
            channel_binding=channel_binding,
            hostname=hostname,
            nonce_factory=nonce_factory,
            plus_advertised=plus_advertised,
            decoy_secret=decoy_secret,
            decoy_iterations=decoy_iterations,
            oauth_scope=oauth_scope,
            openid_configuration=openid_configuration,
        )
    )


def _plain(
    username: str, password: str, token: str, authzid: str, cb: ChannelBinding
) -> ClientMechanism:
    return PlainClient(username, password, authzid)


def _login(
    username: str, password: str, token: str, authzid: str, cb: ChannelBinding
) -> ClientMechanism:
    return LoginClient(username, password)


def _scram(hash_name: str, plus: bool) -> _ClientFactory:
    def make(
        username: str, password: str, token: str, authzid: str, cb: ChannelBinding
    ) -> ClientMechanism:
        return ScramClient(hash_name, username, password, cb, plus, None, authzid=authzid)

    return make


def _oauthbearer(
    username: str, password: str, token: str, authzid: str, cb: ChannelBinding
) -> ClientMechanism:
    return OAuthBearerClient(authzid or username, token)


def _xoauth2(
    username: str, password: str, token: str, authzid: str, cb: ChannelBinding
) -> ClientMechanism:
    return XOAuth2Client(username, token)


def _cram_md5(
    username: str, password: str, token: str, authzid: str, cb: ChannelBinding
) -> ClientMechanism:
    return CramMd5Client(username, password)


_ClientFactory = Callable[[str, str, str, str, ChannelBinding], ClientMechanism]

CLIENT_MECHANISMS: dict[str, _ClientFactory] = {
    "SCRAM-SHA-256-PLUS": _scram("sha256", True),
    "SCRAM-SHA-256": _scram("sha256", False),
    "SCRAM-SHA-1-PLUS": _scram("sha1", True),
    "SCRAM-SHA-1": _scram("sha1", False),
    "OAUTHBEARER": _oauthbearer,
    "XOAUTH2": _xoauth2,
    "PLAIN": _plain,
    "LOGIN": _login,
    "CRAM-MD5": _cram_md5,
}


def client_mechanism_names() -> list[str]:
    """All implemented client mechanism names, in preference order."""
    return list(CLIENT_MECHANISMS)


def create_client_mechanism(
    name: str,
    *,
    username: str,
    password: str = "",
    token: str = "",
    authzid: str = "",
    channel_binding: ChannelBinding = NO_CHANNEL_BINDING,
) -> ClientMechanism:
    """Build a client mechanism for one AUTH exchange.

    Password mechanisms use ``password``; OAUTHBEARER/XOAUTH2 use ``token``.

    Raises:
        KeyError: no mechanism of that name.
        ValueError: the credentials cannot be expressed in this mechanism (for
            example a NUL in a PLAIN field).
    """
    factory = CLIENT_MECHANISMS[name.upper()]
    return factory(username, password, token, authzid, channel_binding)
