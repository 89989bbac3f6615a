"""Build the deliverer from the configuration."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from smtpgate.config import Config
from smtpgate.errors import StartupError
from smtpgate.queue.delivery import Deliverer
from smtpgate.queue.maildir import MaildirDeliverer
from smtpgate.queue.relay import RelayDeliverer, RelayTimeouts, tls_context
from smtpgate.sasl.base import ClientMechanism
from smtpgate.sasl.plain import PlainClient


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
    auth: Callable[[], ClientMechanism] | None = None
    if d.relay_user:
        if d.relay_password_file is None:
            raise DeliverySetupError(
                "delivery.relay_password_file", "required with relay_user",
                "name the file that holds the relay password",
            )
        auth = _plain(d.relay_user, _read_password(cfg.path(d.relay_password_file)))

    ctx = None
    if d.relay_tls != "none":
        ca = str(cfg.path(d.relay_ca_file)) if d.relay_ca_file is not None else None
        try:
            ctx = tls_context(verify=d.relay_verify_cert, ca_file=ca)
        except OSError as e:
            raise DeliverySetupError(
                "delivery.relay_ca_file", f"cannot load {ca}: {e}",
                "point it at a PEM file of CA certificates",
            ) from e
    return RelayDeliverer(
        d.relay_host,
        d.relay_port,
        helo_name=cfg.hostname,
        tls_mode=d.relay_tls,
        tls_context=ctx,
        auth=auth,
        timeouts=timeouts,
    )


def _plain(user: str, password: str) -> Callable[[], ClientMechanism]:
    return lambda: PlainClient(user, password)


def _read_password(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DeliverySetupError(
            "delivery.relay_password_file", f"cannot read {path}: {e}",
            "put the relay password on one line in that file, readable by the user "
            "smtpgate runs as",
        ) from e
    # One line; the trailing newline editors add is not part of the password.
    password = text.rstrip("\r\n")
    if not password or "\n" in password:
        raise DeliverySetupError(
            "delivery.relay_password_file", "must hold one non-empty line",
            "put the relay password alone on the first line",
        )
    return password
