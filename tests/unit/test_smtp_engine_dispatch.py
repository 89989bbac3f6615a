"""The engine dispatches commands from a table and frames SASL challenges as replies."""

from __future__ import annotations

import base64

import pytest

from smtpgate.smtp import replies as R
from smtpgate.smtp.engine import _COMMANDS, ServerEngine
from smtpgate.smtp.states import KNOWN_VERBS

from .engine_driver import Driver


def test_every_verb_of_the_state_table_has_exactly_one_handler() -> None:
    assert set(_COMMANDS) == KNOWN_VERBS
    for verb, handler in _COMMANDS.items():
        assert getattr(ServerEngine, handler.__name__) is handler, verb


@pytest.mark.parametrize(
    ("command", "challenge"),
    [
        (b"AUTH PLAIN\r\n", b""),  # RFC 4954 §4: an empty challenge is "334 "
        (b"AUTH LOGIN\r\n", b"Username:"),
    ],
)
def test_rfc4954_s4_challenges_are_the_auth_challenge_reply(command: bytes, challenge: bytes) -> None:
    d = Driver.new(tls=True)
    d.feed(b"EHLO client.test\r\n")
    expected = R.AUTH_CHALLENGE.with_text(base64.b64encode(challenge).decode()).format()
    assert d.feed(command) == expected
    assert expected.startswith(b"334 ") and expected.endswith(b"\r\n")
