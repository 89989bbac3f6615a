"""The From/Sender check (policy/sender.py) on the forms issue 16 found or feared,
and on what real clients send: each forgery refused, each honest header accepted."""

from __future__ import annotations

import logging

import pytest

from smtpgate.auth.sender_profile import SenderProfile
from smtpgate.config import PolicyConfig
from smtpgate.policy.sender import from_header_refusal, header_fields, header_section
from smtpgate.smtp import replies as R
from tests.header_samples import (
    ACCEPTED,
    CLIENTS,
    FORGED,
    FORGERIES,
    OWNER,
    client_header,
)

ALICE = SenderProfile(OWNER)
ENFORCE = PolicyConfig()


def refusal(header: str | bytes, policy: PolicyConfig = ENFORCE) -> R.Reply | None:
    data = header.encode() if isinstance(header, str) else header
    return from_header_refusal(ALICE, data, policy, where="s1 192.0.2.7")


@pytest.mark.parametrize("name", sorted(FORGERIES))
def test_forgery_is_refused(name: str) -> None:
    header = FORGERIES[name]
    expected = R.SENDER_HEADER_NOT_OWNED if name.startswith("sender") else R.FROM_NOT_OWNED
    assert refusal(header) == expected
    # The same, handed over as a whole message (what the check received before
    # DATA was streamed): only the header section counts.
    assert refusal(header + "\r\nbody\r\n") == expected


@pytest.mark.parametrize("name", sorted(ACCEPTED))
def test_own_addresses_are_accepted(name: str) -> None:
    assert refusal(ACCEPTED[name]) is None


@pytest.mark.parametrize("client", sorted(CLIENTS))
def test_real_clients(client: str) -> None:
    assert refusal(client_header(client)) is None
    assert refusal(client_header(client, FORGED)) == R.FROM_NOT_OWNED


def test_a_from_after_a_megabyte_of_other_fields_is_read() -> None:
    """The old check read 256 KiB and took "no From found" as fine."""
    filler = "".join(f"X-Filler-{i}: {'x' * 990}\r\n" for i in range(1100))
    assert refusal(f"Subject: hi\r\n{filler}From: {FORGED}\r\n") == R.FROM_NOT_OWNED
    assert refusal(f"From: {OWNER}\r\n{filler}") is None


def test_a_from_in_the_body_is_not_a_header() -> None:
    assert refusal(f"From: {OWNER}\r\n\r\nFrom: {FORGED}\r\n") is None
    assert header_section(b"\r\nFrom: x@y.example\r\n") == b""


def test_no_from_is_refused_unless_allowed(caplog: pytest.LogCaptureFixture) -> None:
    assert refusal("Subject: no author\r\nTo: bob@example.net\r\n") == R.FROM_MISSING
    assert refusal(b"") == R.FROM_MISSING
    allowed = PolicyConfig(allow_missing_from_header=True)
    assert refusal("Subject: no author\r\n", allowed) is None
    # ... but a Sender is still checked.
    assert refusal(f"Sender: {FORGED}\r\n", allowed) == R.SENDER_HEADER_NOT_OWNED
    with caplog.at_level(logging.WARNING, "smtpgate.policy"):
        assert refusal("Subject: x\r\n", PolicyConfig(from_header="log")) is None
    assert "has no From header (logged only)" in caplog.text
    assert refusal("Subject: x\r\n", PolicyConfig(from_header="off")) is None


def test_log_mode_logs_the_forgery_and_lets_it_through(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "smtpgate.policy"):
        assert refusal(FORGERIES["space-before-colon"], PolicyConfig(from_header="log")) is None
    assert f"From: {FORGED} not owned by the account (logged only)" in caplog.text


def test_unreadable_values_own_nothing() -> None:
    for value in (b"<<<", b"\xff\xfe@example.org", b"<>", b"undisclosed-recipients:;"):
        assert refusal(b"From: " + value + b"\r\n") == R.FROM_NOT_OWNED, value


def test_fields_are_unfolded_and_found_in_any_case() -> None:
    raw = b"sender :\r\n a@x.example\r\nX: 1\r\nFROM\t:b@x.example\r\n"
    assert header_fields(raw, "Sender") == [" a@x.example"]
    assert header_fields(raw, "From") == ["b@x.example"]


def test_rfc6532_utf8_local_part_of_the_account_is_its_own() -> None:
    """An account with a UTF-8 local part owns its address in From (RFC 6532 §3.2):
    the stdlib parser reports a UTF-8 local part as a defect, which was taken as
    "unreadable" and refused 550 5.7.1 (found with AUTH PLAIN as jörg@localhost,
    MAIL FROM:<jörg@localhost> SMTPUTF8 and From: Jörg <jörg@localhost>)."""
    jorg = SenderProfile("j\u00f6rg@example.org")
    for value in ("j\u00f6rg@example.org", "J\u00f6rg <j\u00f6rg@example.org>"):
        header = f"From: {value}\r\nSubject: hi\r\n".encode()
        assert from_header_refusal(jorg, header, ENFORCE, where="s1 192.0.2.7") is None
    # Still only its own: another UTF-8 address, or a look-alike, is refused.
    for value in ("j\u00fcrg@example.org", "J\u00f6rg <jo\u0308rg@example.org>"):
        header = f"From: {value}\r\n".encode()
        assert from_header_refusal(jorg, header, ENFORCE, where="s1 192.0.2.7") == R.FROM_NOT_OWNED


BOUNCED = "From: Carol <carol@elsewhere.example>\r\nTo: alice@example.org\r\nSubject: hi\r\n"


@pytest.mark.parametrize(("block", "expected"), [
    # RFC 5322 §3.6.6: the resender's addresses, checked as From and Sender are.
    ("Resent-From: alice@example.org\r\n", None),
    ("Resent-From: Alice <alice@example.org>\r\nResent-Date: Mon, 1 Dec 2026 10:00:00 +0000\r\n",
     None),
    ("Resent-From: ceo@bank.example\r\n", R.RESENT_FROM_NOT_OWNED),
    ("resent-from : ceo@bank.example\r\n", R.RESENT_FROM_NOT_OWNED),  # §4.5.1, any case
    ('Resent-From: "ceo@bank.example" <alice@example.org>\r\n', R.RESENT_FROM_NOT_OWNED),
    ("Resent-From: <<<\r\n", R.RESENT_FROM_NOT_OWNED),  # unreadable owns nothing
    ("Resent-Sender: ceo@bank.example\r\nResent-From: alice@example.org\r\n",
     R.RESENT_SENDER_NOT_OWNED),
    ("Resent-Sender: alice@example.org\r\nResent-From: alice@example.org\r\n", None),
    # Under the topmost block: an earlier resending, not the account's to own.
    (("Resent-From: alice@example.org\r\nResent-Date: Mon, 1 Dec 2026 10:00:00 +0000\r\n"
     "Resent-From: carol@elsewhere.example\r\nResent-Sender: bob@example.net\r\n"
     "Resent-Date: Sun, 30 Nov 2026 10:00:00 +0000\r\n"), None),
    (("Resent-Date: Mon, 1 Dec 2026 10:00:00 +0000\r\nResent-From: alice@example.org\r\n"
     "Resent-Date: Sun, 30 Nov 2026 10:00:00 +0000\r\nResent-From: bob@example.net\r\n"), None),
    # Audit h19: a top "block" of only a Resent-Date (no Resent-From, which §3.6.6
    # requires) is not a block of its own: the first Resent-From and any
    # Resent-Sender before it, which a reader shows as the resender, are checked.
    (("Resent-Date: Mon, 1 Dec 2026 10:00:00 +0000\r\n"
      "Resent-Date: Mon, 1 Dec 2026 10:00:00 +0000\r\nResent-From: ceo@bank.example\r\n"),
     R.RESENT_FROM_NOT_OWNED),
    (("Resent-Date: Mon, 1 Dec 2026 10:00:00 +0000\r\n"
      "Resent-Date: Mon, 1 Dec 2026 10:00:00 +0000\r\nResent-Sender: ceo@bank.example\r\n"
      "Resent-From: alice@example.org\r\n"), R.RESENT_SENDER_NOT_OWNED),
    (("Resent-Date: Mon, 1 Dec 2026 10:00:00 +0000\r\n"
      "Resent-Date: Mon, 1 Dec 2026 10:00:00 +0000\r\nResent-From: alice@example.org\r\n"
      "Resent-Date: Sun, 30 Nov 2026 10:00:00 +0000\r\nResent-From: bob@example.net\r\n"), None),
])
def test_resent_from_and_resent_sender_are_checked_in_the_topmost_block(
    block: str, expected: R.Reply | None
) -> None:
    """Resent-From and Resent-Sender were not read at all: a client could put any
    address there. The bounced message keeps its author's From, so the From check
    is off here to show the resent fields' own verdict."""
    policy = PolicyConfig(from_header="enforce")
    alice_or_carol = SenderProfile(OWNER, aliases=frozenset({"carol@elsewhere.example"}))
    assert from_header_refusal(alice_or_carol, (block + BOUNCED).encode(), policy,
                               where="s1") == expected


def test_resent_from_in_log_mode_is_logged_not_refused(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert refusal(f"Resent-From: {FORGED}\r\nFrom: {OWNER}\r\n",
                       PolicyConfig(from_header="log")) is None
    assert f"Resent-From: {FORGED} not owned by the account (logged only)" in caplog.text


def test_an_encoded_display_name_beside_a_utf8_address_is_read() -> None:
    """RFC 2047 encoded words and RFC 6532 UTF-8 in one From: the stdlib's
    ``make_header`` read the text between encoded words as ASCII and raised, so
    ``=?utf-8?q?J=C3=B6rg?= <jörg@münchen.example>`` from jörg@münchen.example was
    unreadable and refused 550 5.7.1 (found by the h29i18n review with a real
    server and smtplib)."""
    jorg = SenderProfile("j\u00f6rg@m\u00fcnchen.example")

    def refused(value: str) -> R.Reply | None:
        header = f"From: {value}\r\nSubject: hi\r\n".encode()
        return from_header_refusal(jorg, header, ENFORCE, where="s1 192.0.2.7")

    assert refused("=?utf-8?q?J=C3=B6rg?= <j\u00f6rg@m\u00fcnchen.example>") is None
    assert refused("=?utf-8?b?SsO2cmc=?= <j\u00f6rg@xn--mnchen-3ya.example>") is None
    # An address in an encoded word is still found, with UTF-8 text around it.
    assert refused("=?utf-8?q?ceo=40bank.example?= <j\u00f6rg@m\u00fcnchen.example>") \
        == R.FROM_NOT_OWNED
    assert refused("J\u00f6rg (=?utf-8?q?ceo=40bank.example?=) <j\u00f6rg@m\u00fcnchen.example>") \
        == R.FROM_NOT_OWNED
    # A charset no one knows is unreadable, as before.
    assert refused("=?x-nonesuch?q?J=F6rg?= <j\u00f6rg@m\u00fcnchen.example>") == R.FROM_NOT_OWNED
