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


#: A well-formed line of each verb (a refusal must not be for its syntax).
_LINES = {
    "AUTH": b"AUTH PLAIN", "MAIL": b"MAIL FROM:<alice@example.org>",
    "RCPT": b"RCPT TO:<bob@example.net>", "DATA": b"DATA", "BDAT": b"BDAT 0",
    "STARTTLS": b"STARTTLS", "XCLIENT": b"XCLIENT NAME=x", "FOO": b"FOO",
}
#: How to reach each state: the lines sent after the greeting, and whether to log in.
_STATES = {
    "connected": (b"", False),
    "greeted, not logged in": (b"EHLO client.test\r\n", False),
    "greeted": (b"", True),
    "mail": (b"MAIL FROM:<alice@example.org>\r\n", True),
    "rcpt": (b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.net>\r\n", True),
    "chunks": (b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.net>\r\nBDAT 3\r\nabc",
               True),
}


def test_what_state_machine_md_says_of_commands_out_of_their_state() -> None:
    """Found by smtp15: docs/state-machine.md said any command not in a state's
    table gets 503 5.5.1; MAIL, RCPT, DATA and BDAT before a login get 530 5.7.0
    (RFC 6409 §4.3, before any look at the order) and an unknown verb 500 5.5.2.
    Every refusal seen here must be one the page names."""
    from smtpgate.smtp.states import TRANSITIONS, State, render_markdown

    from .test_smtp_engine import authed, codes

    seen: set[str] = set()
    for name, (setup, login) in _STATES.items():
        state = State(name.split(",")[0])
        for verb, line in _LINES.items():
            if verb in TRANSITIONS[state]:
                continue
            d = authed() if login else Driver.new(tls=True)
            d.feed(setup)
            assert d.engine.state is state, name
            (reply,) = codes(d.feed(line + b"\r\n"))
            seen.add(reply[:9])
    assert seen == {"503 5.5.1", "530 5.7.0", "500 5.5.2"}
    page = render_markdown()
    assert all(code in page for code in seen), page
