"""An account sending as another account, over the wire: every spelling of the
other's address that an attacker holding one valid login might try in MAIL FROM
is refused, and the account's own in those spellings is accepted (docs/policy.md,
"Sender ownership"). Also the rates across RSET and new connections ("Rates tied
to identity"). Found correct by the h26policy review; kept so it stays so.
"""

from __future__ import annotations

import smtplib
from collections.abc import Iterator
from pathlib import Path

import pytest

from smtpgate.smtp import replies as R

from .conftest import Server, serving

ALICE, ALICE_PASSWORD = "alice@example.org", "Tr0ub4dor&3xyzq"
BOB, BOB_PASSWORD = "bob@example.org", "C0rrect-h0rse-9"

#: MAIL FROM arguments naming bob (or no one alice owns), each refused 553 5.7.1.
BOBS = [
    "<Bob@Example.org>",
    "<bob@EXAMPLE.ORG>",
    "<bob+x@example.org>",
    "<alice+x@example.org>",  # a subaddress is another address
    '<"bob"@example.org>',
    '<"bob@example.org"@evil.example>',
    '<"alice@example.org"@evil.example>',
    "<@evil.example:bob@example.org>",  # a source route is ignored, the mailbox is bob's
    "<alice@[127.0.0.1]>",
    "<alice%example.org@evil.example>",
    "<bob%evil.example@example.org>",
    "<b\u043eb@example.org> SMTPUTF8",  # Cyrillic o
    "<bob@ex\u0430mple.org> SMTPUTF8",  # Cyrillic a
    "<alice@xn--exmple-4nf.org>",  # the Punycode of a look-alike domain
    "<\uff41lice@example.org> SMTPUTF8",  # fullwidth a
    # Without angle brackets (a printer's MAIL FROM, taken as Postfix takes it):
    # the same address, the same policy.
    "bob@example.org",
    " bob@example.org SIZE=100",
    "Bob@Example.org",
    "bob+x@example.org",
    "@evil.example:bob@example.org",
]

#: alice's own address in other spellings, each accepted.
ALICES = [
    "<Alice@EXAMPLE.org>",
    '<"alice"@example.org>',
    '<"al\\ice"@example.org>',
    "<@relay.example:alice@example.org>",
    "<alice@example.org> AUTH=<bob@example.org>",  # RFC 4954 §5: not trusted, not used
    "<alice@example.org> SMTPUTF8",
    "alice@example.org",
    " alice@EXAMPLE.org SIZE=100 AUTH=<>",
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root: Path = tmp_path_factory.mktemp("disguises") / "srv"
    yield from serving(root, users=((ALICE, ALICE_PASSWORD), (BOB, BOB_PASSWORD)))


def session(server: Server, user: str, password: str) -> smtplib.SMTP_SSL:
    s = smtplib.SMTP_SSL("127.0.0.1", server.submissions, timeout=30,
                         context=server.client_context())
    s.login(user, password)
    s.command_encoding = "utf-8"  # the SMTPUTF8 look-alikes
    return s


def mail(s: smtplib.SMTP_SSL, arg: str) -> str:
    code, text = s.docmd("MAIL", f"FROM:{arg}")
    s.rset()
    return f"{code} {text.decode()}"


@pytest.mark.parametrize("arg", BOBS)
def test_another_accounts_address_in_any_spelling_is_refused(server: Server, arg: str) -> None:
    with session(server, ALICE, ALICE_PASSWORD) as s:
        assert mail(s, arg) == str(R.SENDER_NOT_OWNED)


@pytest.mark.parametrize("arg", ALICES)
def test_the_accounts_own_address_in_other_spellings_is_accepted(server: Server, arg: str) -> None:
    with session(server, ALICE, ALICE_PASSWORD) as s:
        assert mail(s, arg).startswith("250 2.1.0"), arg


def test_rset_gives_back_recipients_and_a_new_connection_does_not(server: Server) -> None:
    server.cli("user", "limits", BOB, "--messages-per-hour", "2", "--recipients-per-hour", "3")
    message = f"From: {BOB}\r\nTo: x@example.net\r\nSubject: t\r\n\r\nHello.\r\n".encode()
    with session(server, BOB, BOB_PASSWORD) as s:
        assert s.mail(BOB)[0] == 250
        assert [s.rcpt(f"r{i}@example.net")[0] for i in range(3)] == [250] * 3
        s.rset()  # nothing sent: nothing counted
        assert s.mail(BOB)[0] == 250
        assert [s.rcpt(f"r{i}@example.net")[0] for i in range(4)] == [250, 250, 250, 450]
        assert s.data(message)[0] == 250
    with session(server, BOB, BOB_PASSWORD) as s:
        assert s.mail(BOB)[0] == 250
        code, text = s.rcpt("x@example.net")
        assert f"{code} {text.decode()}" == str(R.RECIPIENT_RATE_EXCEEDED)
        s.rset()
        assert s.mail(BOB)[0] == 250  # one message of two used
