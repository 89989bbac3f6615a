"""LMTP delivery (RFC 2033) to a real Dovecot LMTP server, and the RFC 3464 bounce
for the recipient it refuses, as a default install runs them (``smtpgate serve``
with uvloop, ``workers = 0``, the config ``init`` writes plus ``[delivery] mode =
"lmtp"``).

Dovecot answers each recipient after DATA on its own (RFC 2033 §4.2) and refuses
an unknown one at RCPT with 550 5.1.1: the known ones get the message, the sender
gets one bounce (through the same LMTP path, from the null sender) naming the
refused recipient, Dovecot's reply and its status code.
"""

from __future__ import annotations

import email
import email.message
import os
import smtplib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.peers.dovecot_lmtp import DovecotLmtp, running

from .conftest import IN_CI, PASSWORD, USER, Server, make_server, require_tool
from .test_relay_delivery import _in_table, spooled

LMTP_BINARY = Path("/usr/lib/dovecot/lmtp")
BOB, CAROL, NOBODY = "bob@example.net", "carol@example.net", "nobody@example.net"


@pytest.fixture(scope="module")
def dovecot() -> Iterator[DovecotLmtp]:
    require_tool("dovecot")
    if not LMTP_BINARY.exists() or os.geteuid() != 0:
        why = "dovecot-lmtpd is not installed" if os.geteuid() == 0 else "Dovecot needs root"
        if IN_CI:
            pytest.fail(why)
        pytest.skip(why)
    with running([USER, BOB, CAROL]) as server:
        yield server


@pytest.fixture(scope="module")
def lmtp_server(tmp_path_factory: pytest.TempPathFactory,
                dovecot: DovecotLmtp) -> Iterator[Server]:
    srv = make_server(tmp_path_factory.mktemp("lmtp") / "srv")
    text = srv.config.read_text().replace('mode = "maildir"\n', "")
    text = _in_table(text, "delivery", f'mode = "lmtp"\nlmtp_address = "unix:{dovecot.socket}"')
    srv.config.write_text(text)
    srv.add_user(USER, PASSWORD)
    srv.start()
    yield srv
    if srv.proc is not None:
        srv.stop()


def wait_for(dovecot: DovecotLmtp, user: str, count: int, timeout: float = 30) -> list[bytes]:
    deadline = time.monotonic() + timeout
    while len(dovecot.messages(user)) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"{user} has {len(dovecot.messages(user))} messages, "
                                 f"want {count}\n{dovecot.log()}")
        time.sleep(0.05)
    return dovecot.messages(user)


def test_lmtp_delivers_per_recipient_and_bounces_the_refused_one(
    lmtp_server: Server, dovecot: DovecotLmtp
) -> None:
    srv = lmtp_server
    before = len(dovecot.messages(USER))
    msg = (f"From: {USER}\r\nTo: {BOB}, {CAROL}, {NOBODY}\r\n"
           "Message-ID: <lmtp-1@example.org>\r\nSubject: lmtp\r\n\r\nthree recipients\r\n")
    with smtplib.SMTP_SSL("127.0.0.1", srv.submissions, timeout=20,
                          context=srv.client_context()) as s:
        s.login(USER, PASSWORD)
        s.sendmail(USER, [BOB, CAROL, NOBODY], msg)
    for user in (BOB, CAROL):
        (got,) = wait_for(dovecot, user, 1)
        assert b"Subject: lmtp" in got and b"three recipients" in got
    bounces = wait_for(dovecot, USER, before + 1)[before:]
    deadline = time.monotonic() + 30
    while spooled(srv) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not spooled(srv), srv.log_text()
    assert len(dovecot.messages(USER)) == before + 1  # one bounce, for the one refused
    report = email.message_from_bytes(bounces[0])
    assert report["Return-Path"] == "<>"  # RFC 3461 §6.2: from the null sender
    assert report.get_content_type() == "multipart/report"
    parts = report.get_payload()
    assert isinstance(parts, list)
    (status,) = [p for p in parts if isinstance(p, email.message.Message)
                 and p.get_content_type() == "message/delivery-status"]
    blocks = status.get_payload()
    assert isinstance(blocks, list)
    (rcpt,) = blocks[1:]
    assert isinstance(rcpt, email.message.Message)
    assert rcpt["Final-Recipient"] == f"rfc822; {NOBODY}"
    assert rcpt["Action"] == "failed"
    assert rcpt["Status"] == "5.1.1"
    assert rcpt["Diagnostic-Code"].startswith(f"smtp; 550 5.1.1 <{NOBODY}>")
    assert b"Subject: lmtp" in bounces[0]  # the original comes back
    assert f"delivered to=<{BOB}> lmtp unix:" in srv.log_text()


def submit(srv: Server, tag: str, rcpts: list[str], mail_options: list[str],
           rcpt_options: list[str]) -> None:
    msg = (f"From: {USER}\r\nTo: {', '.join(rcpts)}\r\nSubject: {tag}\r\n\r\n"
           f"body of {tag}\r\n")
    with smtplib.SMTP("127.0.0.1", srv.submission, timeout=20) as s:
        s.starttls(context=srv.client_context())
        s.login(USER, PASSWORD)
        assert s.has_extn("dsn")  # RFC 3461 advertised
        s.sendmail(USER, rcpts, msg, mail_options=mail_options, rcpt_options=rcpt_options)


def test_rfc3461_parameters_reach_the_bounce(lmtp_server: Server, dovecot: DovecotLmtp) -> None:
    """NOTIFY=NEVER: no bounce. RET=HDRS and ENVID: the bounce carries only the
    header of the original and names the envelope id."""
    srv = lmtp_server
    # Earlier tests' bounces share this mailbox and may still be arriving: the
    # bounces are told apart by the subject of the message they return.
    submit(srv, "never", [NOBODY], [], ["NOTIFY=NEVER"])
    submit(srv, "hdrs", [NOBODY], ["RET=HDRS", "ENVID=batch+2B42"], ["NOTIFY=FAILURE,DELAY"])
    deadline = time.monotonic() + 30
    while not [m for m in dovecot.messages(USER) if b"Subject: hdrs" in m] or spooled(srv):
        assert time.monotonic() < deadline, srv.log_text() + dovecot.log()
        time.sleep(0.05)
    (bounce,) = [m for m in dovecot.messages(USER) if b"Subject: hdrs" in m]
    assert not [m for m in dovecot.messages(USER) if b"Subject: never" in m]  # NOTIFY=NEVER
    report = email.message_from_bytes(bounce)
    parts = report.get_payload()
    assert isinstance(parts, list)
    types = [p.get_content_type() for p in parts if isinstance(p, email.message.Message)]
    assert types == ["text/plain", "message/delivery-status", "text/rfc822-headers"]
    assert b"Original-Envelope-Id: batch+42" in bounce
    assert b"Subject: hdrs" in bounce and b"body of hdrs" not in bounce
    assert "no failed report for 1 recipient (" in srv.log_text()
