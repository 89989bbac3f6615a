"""A domain grant does not cover another account's address, over the wire: an
account granted example.org sends as any address there that is nobody's, but not
as another account's name or alias in any spelling, in MAIL FROM or in From, as
an address's own entry wins over a domain's in Postfix's smtpd_sender_login_maps
(docs/policy.md, "Sender ownership")."""

from __future__ import annotations

import smtplib
from collections.abc import Iterator
from pathlib import Path

import pytest

from smtpgate.smtp import replies as R

from .conftest import Server, serving

APP, APP_PASSWORD = "app@service.example", "Tr0ub4dor&3xyzq"
BOB, BOB_PASSWORD = "bob@example.org", "C0rrect-h0rse-9"
CAROL, CAROL_PASSWORD = "carol@other.example", "B4ttery-Staple-77"
DAVE, DAVE_PASSWORD = "dave@b\u00fccher.example", "Wr0ng-H0rse-Ok-5"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root: Path = tmp_path_factory.mktemp("grants") / "srv"
    users = ((APP, APP_PASSWORD), (BOB, BOB_PASSWORD), (CAROL, CAROL_PASSWORD),
             (DAVE, DAVE_PASSWORD))
    for srv in serving(root, users=users):
        srv.cli("user", "domain", "grant", APP, "example.org")
        srv.cli("user", "domain", "grant", APP, "b\u00fccher.example")
        srv.cli("user", "alias", "add", CAROL, "sales@example.org")
        yield srv


def session(server: Server) -> smtplib.SMTP_SSL:
    s = smtplib.SMTP_SSL("127.0.0.1", server.submissions, timeout=30,
                         context=server.client_context())
    s.login(APP, APP_PASSWORD)
    return s


def mail(s: smtplib.SMTP_SSL, arg: str) -> str:
    code, text = s.docmd("MAIL", f"FROM:{arg}")
    s.rset()
    return f"{code} {text.decode()}"


@pytest.mark.parametrize("arg", [
    "<bob@example.org>",
    "<Bob@EXAMPLE.org>",
    '<"bob"@example.org>',
    "<sales@example.org>",  # carol's alias
    "<SALES@example.org>",
    "<dave@xn--bcher-kva.example>",  # dave's, in the A-label form
    "<bob+x@example.org>",  # a subaddress of bob's: a reader sees bob
    "<Bob+News@EXAMPLE.org>",
    "<sales+x@example.org>",  # of carol's alias
    "<dave+x@xn--bcher-kva.example>",
])
def test_a_domain_grant_does_not_cover_another_accounts_address(server: Server, arg: str) -> None:
    with session(server) as s:
        assert mail(s, arg) == str(R.SENDER_NOT_OWNED)
        # Twice in one session: the look-up's answer is kept, not forgotten.
        assert mail(s, arg) == str(R.SENDER_NOT_OWNED)


@pytest.mark.parametrize("arg", [
    "<noreply@example.org>", "<Support@example.org>", "<noreply+x@example.org>",
    "<info@xn--bcher-kva.example>", "<app@service.example>",
])
def test_a_domain_grant_covers_the_addresses_that_are_nobodys(server: Server, arg: str) -> None:
    with session(server) as s:
        assert mail(s, arg).startswith("250 2.1.0"), arg
        assert mail(s, arg).startswith("250 2.1.0"), arg


@pytest.mark.parametrize("author", [BOB, "Sales <sales@example.org>", "dave@b\u00fccher.example",
                                    "Bob <bob+news@example.org>"])
def test_a_from_header_naming_another_account_in_the_granted_domain_is_refused(
        server: Server, author: str) -> None:
    message = f"From: {author}\r\nTo: x@example.net\r\nSubject: t\r\n\r\nHello.\r\n"
    with session(server) as s:
        assert s.mail("noreply@example.org")[0] == 250
        assert s.rcpt("x@example.net")[0] == 250
        code, text = s.data(message.encode())  # smtplib returns the reply to the dot
        assert f"{code} {text.decode()}" == str(R.FROM_NOT_OWNED)
        ok = "From: News <noreply@example.org>\r\nTo: x@example.net\r\nSubject: t\r\n\r\nHi.\r\n"
        assert s.mail("noreply@example.org")[0] == 250
        assert s.rcpt("x@example.net")[0] == 250
        assert s.data(ok.encode())[0] == 250


def test_an_account_made_after_the_grant_is_covered_no_more(server: Server) -> None:
    with session(server) as s:
        assert mail(s, "<erin@example.org>").startswith("250 2.1.0")
    server.cli("user", "add", "erin@example.org", "--password-stdin", stdin="An0ther-L0ng-Pass\n")
    with session(server) as s:  # a new login reads it
        assert mail(s, "<erin@example.org>") == str(R.SENDER_NOT_OWNED)
    server.cli("user", "alias", "add", CAROL, "billing@example.org")
    with session(server) as s:
        assert mail(s, "<billing@example.org>") == str(R.SENDER_NOT_OWNED)


def test_the_owner_still_sends_as_its_own_address(server: Server) -> None:
    with smtplib.SMTP_SSL("127.0.0.1", server.submissions, timeout=30,
                          context=server.client_context()) as s:
        s.login(CAROL, CAROL_PASSWORD)
        assert mail(s, "<sales@example.org>").startswith("250 2.1.0")
