"""The server log's sender-ownership lines escape what the client wrote.

The envelope sender and the From header's addresses come from the SMTP client,
through smtpgate's own sessions or Postfix's policy requests (which carry an
SMTPUTF8 sender as sent, and a quoted-pair's control character raw): a U+202E
reversed the rest of the line in the log, a C1 CSI (0x9b) or ESC drove the
terminal of whoever reads it, as they did before the auth log escaped names.
"""

from __future__ import annotations

import logging

import pytest

from smtpgate.auth.sender_profile import SenderProfile
from smtpgate.config import PolicyConfig
from smtpgate.policy.sender import envelope_sender_refusal, from_header_refusal

P = SenderProfile("alice@example.org")
HOSTILE = ["ma\u202elory@evil.test", "a\u009b31mb@evil.test", '"a\x01b\x1b[2J"@evil.test',
           "x\u2028y@evil.test"]


@pytest.mark.parametrize("sender", HOSTILE)
def test_envelope_sender_line_is_escaped(sender: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="smtpgate.policy"):
        assert envelope_sender_refusal(P, sender, PolicyConfig(), where="s1 192.0.2.1") is not None
    line = caplog.records[-1].getMessage()
    assert line.isprintable(), line
    assert "MAIL FROM:<" in line and "@evil.test> not owned" in line


@pytest.mark.parametrize("sender", HOSTILE[:2])
def test_from_header_line_is_escaped(sender: str, caplog: pytest.LogCaptureFixture) -> None:
    header = f"From: {sender}\r\nSubject: x\r\n\r\n".encode()
    with caplog.at_level(logging.WARNING, logger="smtpgate.policy"):
        from_header_refusal(P, header, PolicyConfig(), where="s1 192.0.2.1")
    line = caplog.records[-1].getMessage()
    assert line.isprintable(), line
    assert "@evil.test not owned" in line


def test_the_account_name_is_escaped_too(caplog: pytest.LogCaptureFixture) -> None:
    """Postfix's ``sasl_username`` is its SASL backend's, which need not be smtpgate's."""
    odd = SenderProfile("bo\u202eb@example.org")
    with caplog.at_level(logging.WARNING, logger="smtpgate.policy"):
        envelope_sender_refusal(odd, "x@evil.test", PolicyConfig(), where="s1 192.0.2.1")
    assert caplog.records[-1].getMessage().isprintable()
