"""The explicit mechanism registry: each mechanism's facts joined to its code.

`MECHANISMS` holds one `Mechanism` per entry of `smtpgate.mechanism_facts.MECHANISMS`,
in the same order (strongest first): its facts, its server class and its client
factory. Configuration picks the enabled subset and the server advertises them
in that order. SASL mechanism names are matched case-insensitively (clients send
``auth plain`` too; Postfix and Dovecot accept it) and stored upper-case, as
RFC 4422 §3.1 spells them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from smtpgate import mechanism_facts as facts
from smtpgate.mechanism_facts import MechanismFacts
from smtpgate.sasl._common import NO_CHANNEL_BINDING, ServerContext, ServerMechanismBase
from smtpgate.sasl.base import ChannelBinding, ClientMechanism, ServerMechanism
from smtpgate.sasl.cram_md5 import CramMd5Client, CramMd5Server
from smtpgate.sasl.external import ExternalClient, ExternalServer
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


@dataclass(frozen=True, slots=True)
class ClientCredentials:
    """What a client mechanism may need; each takes the parts it uses."""

    username: str
    password: str = ""
    token: str = ""
    authzid: str = ""
    channel_binding: ChannelBinding = NO_CHANNEL_BINDING


ClientFactory = Callable[[MechanismFacts, ClientCredentials], ClientMechanism]


@dataclass(frozen=True, slots=True)
class Mechanism:
    """One mechanism: its facts, its server class, its client factory."""

    facts: MechanismFacts
    server: type[ServerMechanismBase]
    client: ClientFactory

    @property
    def name(self) -> str:
        return self.facts.name


def _scram(f: MechanismFacts, c: ClientCredentials) -> ClientMechanism:
    return ScramClient(
        f.hash, c.username, c.password, c.channel_binding, f.channel_binding, None,
        authzid=c.authzid,
    )


def _oauthbearer(f: MechanismFacts, c: ClientCredentials) -> ClientMechanism:
    return OAuthBearerClient(c.authzid or c.username, c.token)


def _xoauth2(f: MechanismFacts, c: ClientCredentials) -> ClientMechanism:
    return XOAuth2Client(c.username, c.token)


def _plain(f: MechanismFacts, c: ClientCredentials) -> ClientMechanism:
    return PlainClient(c.username, c.password, c.authzid)


def _login(f: MechanismFacts, c: ClientCredentials) -> ClientMechanism:
    return LoginClient(c.username, c.password)


def _cram_md5(f: MechanismFacts, c: ClientCredentials) -> ClientMechanism:
    return CramMd5Client(c.username, c.password)


def _external(f: MechanismFacts, c: ClientCredentials) -> ClientMechanism:
    return ExternalClient(c.authzid)


_IMPLEMENTED = (
    Mechanism(facts.EXTERNAL, ExternalServer, _external),
    Mechanism(facts.SCRAM_SHA_256_PLUS, ScramSha256PlusServer, _scram),
    Mechanism(facts.SCRAM_SHA_256, ScramSha256Server, _scram),
    Mechanism(facts.SCRAM_SHA_1_PLUS, ScramSha1PlusServer, _scram),
    Mechanism(facts.SCRAM_SHA_1, ScramSha1Server, _scram),
    Mechanism(facts.OAUTHBEARER, OAuthBearerServer, _oauthbearer),
    Mechanism(facts.XOAUTH2, XOAuth2Server, _xoauth2),
    Mechanism(facts.PLAIN, PlainServer, _plain),
    Mechanism(facts.LOGIN, LoginServer, _login),
    Mechanism(facts.CRAM_MD5, CramMd5Server, _cram_md5),
)
_BY_FACTS = {m.facts: m for m in _IMPLEMENTED}

#: Every mechanism by name, strongest first (the facts' order). A record without an
#: implementation is a KeyError here, at import.
MECHANISMS: dict[str, Mechanism] = {f.name: _BY_FACTS[f] for f in facts.MECHANISMS}


def server_mechanism_names() -> list[str]:
    """All implemented mechanism names, in preference order (strongest first); the
    client side implements the same ones."""
    return list(MECHANISMS)


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
    cls = MECHANISMS[name.upper()].server
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
    mech = MECHANISMS[name.upper()]
    return mech.client(
        mech.facts, ClientCredentials(username, password, token, authzid, channel_binding)
    )
