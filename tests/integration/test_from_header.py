"""The From/Sender check over the wire (issue 16, docs/policy.md): a real ``smtpgate
serve`` with the config ``smtpgate init`` writes (``policy.from_header = "enforce"``),
driven by smtplib and swaks.

The attacks: ``From : ceo@bank.example`` (RFC 5322 §4.5.1's obsolete white space
before the colon) and ``From<TAB>:`` were delivered with the forged From, and so was
a normal From placed after 256 KiB of other fields. Each is tried here and must be
refused with nothing delivered; what Thunderbird, Apple Mail and Outlook send must
still go through.
"""

from __future__ import annotations

import smtplib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from smtpgate.smtp import replies as R
from tests.header_samples import CLIENTS, FORGED, FORGERIES, OWNER, client_header

from .conftest import PASSWORD, USER, Server, make_server, require_tool

assert OWNER == USER


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = make_server(tmp_path_factory.mktemp("from-header") / "srv")
    srv.add_user(USER, PASSWORD)
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def session(server: Server) -> Iterator[smtplib.SMTP_SSL]:
    with smtplib.SMTP_SSL("127.0.0.1", server.submissions, timeout=30,
                          context=server.client_context()) as s:
        s.login(USER, PASSWORD)
        yield s


def submit(s: smtplib.SMTP_SSL, header: str, body: str = "Hello.\r\n") -> tuple[int, bytes]:
    """One transaction; the reply to the end of data."""
    code, text = s.mail(USER)
    assert code == 250, text
    code, text = s.rcpt("bob@example.net")
    assert code == 250, text
    return s.data(f"{header}\r\n{body}".encode())


def reply(code: int, text: bytes) -> str:
    return f"{code} {text.decode()}"


@pytest.mark.parametrize("name", sorted(FORGERIES))
def test_forged_authors_are_refused(session: smtplib.SMTP_SSL, name: str) -> None:
    expected = R.SENDER_HEADER_NOT_OWNED if name.startswith("sender") else R.FROM_NOT_OWNED
    if name.endswith("indented-first-line"):
        # Refused before the From check reads it: a message cannot begin with a
        # folded line (docs/smtp.md, audit h24).
        expected = R.FOLDED_FIRST_LINE
    assert reply(*submit(session, FORGERIES[name])) == str(expected)


@pytest.mark.parametrize("client", sorted(CLIENTS))
def test_real_clients_headers(server: Server, session: smtplib.SMTP_SSL, client: str) -> None:
    before = len(server.delivered())
    code, text = submit(session, client_header(client), body=f"from {client}\r\n")
    assert code == 250, text
    delivered = server.wait_for_mail(before + 1)
    assert f"from {client}".encode() in delivered[-1].read_bytes()
    assert reply(*submit(session, client_header(client, FORGED))) == str(R.FROM_NOT_OWNED)


def test_a_from_after_256_kib_of_other_fields_is_not_delivered(
    server: Server, session: smtplib.SMTP_SSL
) -> None:
    """The old check read the first 256 KiB and took "no From" as fine. Now either
    the whole header section is read, or the engine refuses one this long (552)."""
    filler = "".join(f"X-Filler-{i}: {'x' * 980}\r\n" for i in range(300))
    code, text = submit(session, f"Subject: late\r\n{filler}From: {FORGED}\r\n")
    assert reply(code, text) in (str(R.FROM_NOT_OWNED), str(R.HEADER_TOO_BIG))
    # Under any size limit, a late From is found all the same.
    filler = "".join(f"X-Filler-{i}: {'x' * 980}\r\n" for i in range(120))
    code, text = submit(session, f"Subject: late\r\n{filler}From: {FORGED}\r\n")
    assert reply(code, text) == str(R.FROM_NOT_OWNED)
    assert all(FORGED.encode() not in p.read_bytes() for p in server.delivered())


def test_a_resent_from_under_a_lone_resent_date_is_checked(session: smtplib.SMTP_SSL) -> None:
    """A top block of only a Resent-Date passed as the whole resent block, so the
    first Resent-From, the resender a reader shows, went unchecked (audit h19)."""
    date = "Resent-Date: Thu, 3 Dec 2026 09:00:00 +0000\r\n"
    header = f"{date}{date}Resent-From: {FORGED}\r\nFrom: {USER}\r\n"
    assert reply(*submit(session, header)) == str(R.RESENT_FROM_NOT_OWNED)
    # A real earlier block, under the account's own, stays the earlier resender's.
    header = f"Resent-From: {USER}\r\n{date}Resent-From: {FORGED}\r\n{date}From: {USER}\r\n"
    assert submit(session, header)[0] == 250


def test_a_message_without_from_is_refused(session: smtplib.SMTP_SSL) -> None:
    header = "To: bob@example.net\r\nSubject: no author\r\n"
    assert reply(*submit(session, header)) == str(R.FROM_MISSING)


def test_swaks_tab_before_colon(server: Server, tmp_path: Path) -> None:
    """A second, independent client: swaks sends the message file as it is."""
    swaks = require_tool("swaks")
    message = tmp_path / "forged.eml"
    message.write_bytes(
        f"Subject: swaks\r\nFrom\t: {FORGED}\r\nTo: bob@example.net\r\n\r\nhi\r\n".encode()
    )
    done = subprocess.run(
        [swaks, "-s", "127.0.0.1", "-p", str(server.submissions), "--tls-on-connect",
         "--tls-verify", "--tls-ca-path", str(server.ca), "--auth", "PLAIN",
         "--auth-user", USER, "--auth-password", PASSWORD, "--from", USER,
         "--to", "bob@example.net", "--data", f"@{message}"],
        check=False, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode != 0
    assert f"<~* {R.FROM_NOT_OWNED}" in done.stdout, done.stdout
