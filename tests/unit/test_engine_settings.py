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
