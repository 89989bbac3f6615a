"""Build the deliverer from the configuration."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from smtpgate.config import Config
from smtpgate.errors import StartupError
from smtpgate.queue.delivery import Deliverer
from smtpgate.queue.maildir import MaildirDeliverer
from smtpgate.queue.oauth_fetch import OAuthTokenSource
from smtpgate.queue.relay import RelayDeliverer, RelayTimeouts, TokenAuth, tls_context
from smtpgate.queue.routing import RoutingDeliverer
from smtpgate.sasl.base import ChannelBinding, ClientMechanism
from smtpgate.sasl.registry import create_client_mechanism


class DeliverySetupError(StartupError):
    """The delivery settings cannot be used (e.g. the relay password file is
    unreadable); ``key`` names the setting."""


def make_deliverer(cfg: Config) -> Deliverer:
    """The deliverer for ``delivery.mode`` (LMTP is the relay client speaking
    RFC 2033, with the relay timeouts). Reads the relay password file now, so a
    bad path fails at start-up rather than at the first message.

    Raises:
        DeliverySetupError: unreadable password or CA file.
    """
    d = cfg.delivery
    if d.mode == "maildir":
        return MaildirDeliverer(cfg.path(d.maildir))
    timeouts = RelayTimeouts(
        connect=d.relay_connect_timeout,
        greeting=d.relay_greeting_timeout,
        command=d.relay_command_timeout,
        data=d.relay_data_timeout,
    )
    if d.mode == "lmtp":
        endpoint = d.lmtp_endpoint
        if isinstance(endpoint, Path):
            return RelayDeliverer("localhost", 0, helo_name=cfg.hostname, tls_mode="none",
                                  timeouts=timeouts, lmtp=True, unix_path=str(endpoint))
        return RelayDeliverer(endpoint[0], endpoint[1], helo_name=cfg.hostname,
                              tls_mode="none", timeouts=timeouts, lmtp=True)
    token_auth = _relay_token_auth(cfg)
    auth = None if token_auth is not None else _relay_auth(cfg)
    ctx = None
    if d.relay_tls != "none":
        ca = str(cfg.path(d.relay_ca_file)) if d.relay_ca_file is not None else None
        try:
            ctx = tls_context(verify=d.relay_cert_verified, ca_file=ca)
        except OSError as e:
            raise DeliverySetupError(
                "delivery.relay_ca_file", f"cannot load {ca}: {e}",
                "point it at a PEM file of CA certificates",
            ) from e

    def relay(host: str, port: int) -> RelayDeliverer:
        return RelayDeliverer(host, port, helo_name=cfg.hostname, tls_mode=d.relay_tls,
                              tls_context=ctx, auth_for=auth, timeouts=timeouts,
                              pins=frozenset(d.relay_tls_pins), token_auth=token_auth)

    default = relay(d.relay_host, d.relay_port)
    if not d.routes:
        return default
    return RoutingDeliverer({r.domain: relay(*r.host_port) for r in d.routes}, default)


def _relay_token_auth(cfg: Config) -> TokenAuth | None:
    """XOAUTH2/OAUTHBEARER with tokens from ``relay_oauth_token_url`` (None: not
    configured). One token source for every next hop, so routes share its cache.
    The secret file is read now, so a bad path fails at start-up, and again for
    every token request (rotation)."""
    d = cfg.delivery
    if not (d.relay_user and d.relay_oauth_token_url):
        return None
    assert d.relay_oauth_client_secret_file is not None  # the config validator requires it
    secret_file = cfg.path(d.relay_oauth_client_secret_file)
    _read_secret(secret_file, "delivery.relay_oauth_client_secret_file", "the client secret")
    source = OAuthTokenSource(d.relay_oauth_token_url, d.relay_oauth_client_id, secret_file,
                              scope=d.relay_oauth_scope, audience=d.relay_oauth_audience,
                              timeout=d.relay_oauth_timeout)
    return TokenAuth(d.relay_auth_mechanism, d.relay_user, source)


def _relay_auth(cfg: Config) -> Callable[[ChannelBinding], ClientMechanism] | None:
    """The client mechanism factory for AUTH at the relay (None: no AUTH). A
    password is read now; a token at every connection (an external refresher
    rewrites the file), so a bad token path shows at start-up and at each use."""
    d = cfg.delivery
    if not d.relay_user:
        return None
    name, user = d.relay_auth_mechanism, d.relay_user
    if name in ("XOAUTH2", "OAUTHBEARER"):
        assert d.relay_token_file is not None  # the config validator requires it
        token_file = cfg.path(d.relay_token_file)
        _read_secret(token_file, "delivery.relay_token_file", "the access token")

        def with_token(binding: ChannelBinding) -> ClientMechanism:
            try:
                token = _read_secret(token_file, "delivery.relay_token_file",
                                     "the access token")
            except DeliverySetupError as e:
                raise OSError(str(e)) from None  # defers the message, says why
            return create_client_mechanism(name, username=user, token=token)

        return with_token
    if d.relay_password_file is None:
        raise DeliverySetupError(
            "delivery.relay_password_file", "required with relay_user",
            "name the file that holds the relay password",
        )
    password = _read_password(cfg.path(d.relay_password_file))

    def with_password(binding: ChannelBinding) -> ClientMechanism:
        # Binding data only for -PLUS: plain SCRAM with data would send the "y" flag
        # (RFC 5802 §6), which a relay offering -PLUS rightly takes for a downgrade.
        # ValueError (no binding data for -PLUS, SASLprep) defers the message.
        return create_client_mechanism(
            name, username=user, password=password,
            channel_binding=binding if name.endswith("-PLUS") else ChannelBinding())

    return with_password


def _read_password(path: Path) -> str:
    return _read_secret(path, "delivery.relay_password_file", "the relay password")


def _read_secret(path: Path, key: str, what: str) -> str:
    """The one non-empty line of ``path``.

    Raises:
        DeliverySetupError: unreadable, empty or several lines.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DeliverySetupError(
            key, f"cannot read {path}: {e}",
            f"put {what} on one line in that file, readable by the user smtpgate runs as",
        ) from e
    # One line; the trailing newline editors add is not part of the secret.
    secret = text.rstrip("\r\n")
    if not secret or "\n" in secret:
        raise DeliverySetupError(key, "must hold one non-empty line",
                                 f"put {what} alone on the first line")
    return secret
