"""NUL octets in submitted mail, end to end (docs/smtp.md "NUL octets"): the real
server, smtplib as the client, the Maildir as the next hop."""

from __future__ import annotations

import smtplib

import pytest

from smtpgate.smtp import replies as R

from .conftest import PASSWORD, USER, Server


def _client(server: Server) -> smtplib.SMTP:
    c = smtplib.SMTP("127.0.0.1", server.submission, timeout=20)
    c.starttls(context=server.client_context())
    c.login(USER, PASSWORD)
    return c


def test_nul_in_a_header_field_is_refused_and_the_session_goes_on(server: Server) -> None:
    """A NUL in Subject was queued and delivered as it came: refused now with
    554 5.6.0 after the final dot, nothing queued, the next message on the same
    session delivered."""
    with _client(server) as c:
        with pytest.raises(smtplib.SMTPDataError) as refused:
            c.sendmail(USER, ["bob@example.net"],
                       b"From: alice@example.org\r\nSubject: a\x00b\r\n\r\nbody\r\n")
        assert (refused.value.smtp_code, refused.value.smtp_error.decode()) == (
            R.NUL_IN_HEADER.code, f"{R.NUL_IN_HEADER.enhanced} {R.NUL_IN_HEADER.text}")
        c.sendmail(USER, ["bob@example.net"],
                   b"From: alice@example.org\r\nSubject: ok\r\n\r\nbody\r\n")
    [only] = server.wait_for_mail(1)
    assert b"Subject: ok" in only.read_bytes()
    assert "Traceback" not in server.log_text()


def test_nul_in_the_body_reaches_the_maildir_unchanged(server: Server) -> None:
    body = b"line one\r\nbin\x00ary \x00\x00 data\r\n"
    with _client(server) as c:
        c.sendmail(USER, ["bob@example.net"],
                   b"From: alice@example.org\r\nSubject: nul\r\n\r\n" + body)
    [mail] = server.wait_for_mail(1)
    assert mail.read_bytes().endswith(b"\r\n\r\n" + body)
    assert "Traceback" not in server.log_text()
