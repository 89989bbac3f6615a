"""A quoted local part that needs no quoting is the same mailbox as the dot-atom
(RFC 5321 §4.1.2, RFC 5322 §3.2.4 and §3.4.1): ``"mallory"@localhost`` is
mallory@localhost, in MAIL FROM as in From, Sender and Resent-*. One that needs
its quotes (an "@", a space, a leading dot) is another mailbox, which no account
owns, so quoting smuggles nobody's address in."""

from __future__ import annotations

import pytest

from smtpgate.auth.sender_profile import SenderProfile
from smtpgate.config import PolicyConfig
from smtpgate.policy.sender import envelope_sender_refusal, from_header_refusal
from smtpgate.smtp import replies as R
from smtpgate.smtp.address import parse_path

MALLORY = SenderProfile("mallory@localhost", aliases=frozenset({"m.x@example.org"}),
                        domains=frozenset({"example.net"}))
ENFORCE = PolicyConfig()

OWNED = [
    '"mallory"@localhost',
    '"Mallory"@LOCALHOST',  # letter case, as unquoted (auth/names.py)
    '"mal\\lory"@localhost',  # a quoted pair stands for its character
    '"m.x"@example.org',
    '"anyone"@example.net',
]
NOT_OWNED = [
    '"victim"@localhost',
    '"mallory@localhost"@evil.example',  # one local part, holding an "@"
    '"mallory@localhost"@localhost',
    '"mallory "@localhost',
    '" mallory"@localhost',
    '".mallory"@localhost',
    '"mal..lory"@localhost',
    '"mallory."@localhost',
    '""@localhost',
    '"mal\\"lory"@localhost',
    '"mallory\\\\"@localhost',
    '"m.x"@example.org.evil',
]


@pytest.mark.parametrize("address", OWNED)
def test_mail_from_with_a_needless_quoted_local_part_is_owned(address: str) -> None:
    sender = parse_path(f"<{address}>", allow_null=True, utf8=False)
    assert envelope_sender_refusal(MALLORY, sender, ENFORCE, where="s1") is None


@pytest.mark.parametrize("address", NOT_OWNED)
def test_quoting_smuggles_no_mailbox_into_mail_from(address: str) -> None:
    sender = parse_path(f"<{address}>", allow_null=True, utf8=False)
    assert envelope_sender_refusal(MALLORY, sender, ENFORCE, where="s1") == R.SENDER_NOT_OWNED


@pytest.mark.parametrize("field", ["From", "Sender", "Resent-From", "Resent-Sender"])
@pytest.mark.parametrize("address", OWNED)
def test_header_fields_with_a_needless_quoted_local_part_are_owned(
        field: str, address: str) -> None:
    header = f"{field}: {address}\r\n"
    if field != "From":
        header += "From: mallory@localhost\r\n"
    assert from_header_refusal(MALLORY, header.encode(), ENFORCE, where="s1") is None


@pytest.mark.parametrize("field", ["From", "Sender", "Resent-From", "Resent-Sender"])
@pytest.mark.parametrize("address", NOT_OWNED)
def test_quoting_smuggles_no_mailbox_into_header_fields(field: str, address: str) -> None:
    header = f"{field}: {address}\r\n"
    if field != "From":
        header += "From: mallory@localhost\r\n"
    assert from_header_refusal(MALLORY, header.encode(), ENFORCE, where="s1") is not None


def test_a_quoted_utf8_local_part_is_the_unquoted_one() -> None:
    """RFC 6531 §3.3: with SMTPUTF8 a quoted string may hold UTF-8 too."""
    jorg = SenderProfile("j\u00f6rg@example.org")
    sender = parse_path('<"j\u00f6rg"@example.org>', allow_null=True, utf8=True)
    assert envelope_sender_refusal(jorg, sender, ENFORCE, where="s1") is None
    assert jorg.owns('"J\u00d6RG"@example.org')
    assert not jorg.owns('"j\u00f6rg x"@example.org')
