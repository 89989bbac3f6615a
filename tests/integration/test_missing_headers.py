"""``smtp.add_missing_headers`` over the wire: a message a script writes without
``Date`` and ``Message-ID`` reaches the Maildir with both (RFC 6409 §8.2, §8.3;
Gmail refuses mail without a Message-ID), right after smtpgate's Received header;
a message with its own keeps them, unchanged. Python's smtplib over STARTTLS
against ``smtpgate serve``."""

from __future__ import annotations

import email.utils
import smtplib
import tomllib

from .conftest import PASSWORD, USER, Server

BODY = b"Subject: %s\r\nFrom: alice@example.org\r\nTo: bob@example.net\r\n\r\nscan attached\r\n"
OWN = (b"Date: Mon, 01 Jan 2024 10:00:00 +0100\r\nmessage-id: <own.1@example.org>\r\n"
       + BODY % b"own")


def send(s: smtplib.SMTP, message: bytes) -> str:
    """One message; the queue id the 250 names."""
    s.mail(USER)
    s.rcpt("bob@example.net")
    code, text = s.data(message)
    assert code == 250, text
    return text.decode().rsplit(" ", 1)[1]


def test_a_message_without_date_and_message_id_is_delivered_with_both(server: Server) -> None:
    hostname = tomllib.loads(server.config.read_text())["hostname"]
    with smtplib.SMTP("127.0.0.1", server.submission, timeout=20) as s:
        s.starttls(context=server.client_context())
        s.login(USER, PASSWORD)
        qid = send(s, BODY % b"bare")
        send(s, OWN)
    files = server.wait_for_mail(2)
    stored = {b"bare" if b"Subject: bare" in f.read_bytes() else b"own": f.read_bytes()
              for f in files}
    # Return-Path (Maildir delivery), Received (smtpgate), then the added fields.
    bare = stored[b"bare"]
    head, client = bare.split(b"Message-ID: <%s@%s>\r\n" % (qid.encode(), hostname.encode()))
    assert client == BODY % b"bare"
    received, date = head.split(b"\r\nDate: ")
    assert b"Received: from " in received and date.endswith(b"\r\n")
    assert email.utils.parsedate_to_datetime(date.decode().strip()).utcoffset() is not None
    # A message that has both (any letter case) is delivered as the client wrote it.
    own = stored[b"own"]
    assert own.endswith(OWN)
    before = own[: -len(OWN)]
    assert b"Received: from " in before and b"\nDATE:" not in before.upper()
    assert b"MESSAGE-ID" not in before.upper()
