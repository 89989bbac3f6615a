"""Postfix 3.7 with ``check_policy_service`` pointing at smtpgate's policy listener
(docs/integration.md, "Postfix policy service"): smtpgate's sender ownership and
per-identity rate limits applied to mail Postfix accepts, with the counters
smtpgate's own listeners use.

Postfix authenticates its clients through its private Dovecot (tests/peers/); the
policy service sees the ``sasl_username`` Postfix passes. One smtpgate and one
Postfix for the module.
"""

from __future__ import annotations

import shutil
import smtplib
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.peers.postfix_dovecot import GOOD, SCRAM_PASSWORD, SCRAM_USER, PostfixDovecot, running

from .conftest import Server, free_port, make_server, require_mta, require_tool, send_and_read_all

MESSAGES_PER_HOUR = 2


@dataclass
class Stack:
    smtpgate: Server
    postfix: PostfixDovecot
    policy_port: int

    @property
    def port(self) -> int:
        return self.postfix.ports["policy"]


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    require_mta()
    require_tool("swaks")
    root = Path(tempfile.mkdtemp(prefix="sgpol-"))
    policy = free_port()
    srv = make_server(root / "srv", (
        f'\n[[auth_listeners]]\nprotocol = "postfix_policy"\naddress = "127.0.0.1:{policy}"\n'
        f"\n[limits]\nmessages_per_hour = {MESSAGES_PER_HOUR}\n"
    ))
    check = f"check_policy_service,inet:127.0.0.1:{policy}"
    services = {"policy": {
        **GOOD,
        "smtpd_recipient_restrictions": f"{check},permit_sasl_authenticated,reject",
        "smtpd_end_of_data_restrictions": check,
    }}
    try:
        srv.add_user(SCRAM_USER, SCRAM_PASSWORD)  # the same account on both sides
        srv.start()
        with running(services) as pd:
            yield Stack(srv, pd, policy)
    finally:
        if srv.proc is not None:
            srv.stop()
        shutil.rmtree(root, ignore_errors=True)


def swaks(stack: Stack, sender: str, subject: str) -> str:
    proc = subprocess.run(
        [require_tool("swaks"), "-s", "127.0.0.1", "-p", str(stack.port), "-tls",
         "--tls-verify", "--tls-ca-path", str(stack.postfix.ca), "-a", "PLAIN",
         "-au", SCRAM_USER, "-ap", SCRAM_PASSWORD, "--helo", "client.test",
         "-f", sender, "-t", "bob@example.net", "--header", f"Subject: {subject}"],
        capture_output=True, text=True, timeout=60, check=False, stdin=subprocess.DEVNULL)
    return proc.stdout + proc.stderr


def test_foreign_sender_is_rejected_by_ownership(stack: Stack) -> None:
    out = swaks(stack, "mallory@elsewhere.test", "foreign")
    assert "5.7.1" in out and "Sender address not owned" in out, out + stack.postfix.log()


def test_rate_limit_defers_the_n_plus_first_message_and_is_shared(stack: Stack) -> None:
    for i in range(MESSAGES_PER_HOUR):
        out = swaks(stack, SCRAM_USER, f"allowed {i}")
        assert "250 2.0.0 Ok: queued" in out, out + stack.postfix.log()
    out = swaks(stack, SCRAM_USER, "one too many")
    assert "450 4.7.1" in out and "Message rate limit reached" in out, out
    # The same counters limit smtpgate's own submission listener.
    ctx = stack.smtpgate.client_context()
    with smtplib.SMTP("127.0.0.1", stack.smtpgate.submission, timeout=10) as s:
        s.starttls(context=ctx)
        s.login(SCRAM_USER, SCRAM_PASSWORD)
        code, text = s.docmd(f"MAIL FROM:<{SCRAM_USER}>")
        assert (code, text[:5]) == (450, b"4.7.1"), text


def test_a_locked_account_may_not_send_through_postfix(stack: Stack) -> None:
    """Postfix's Dovecot still accepts the password; smtpgate's lock still applies."""
    stack.smtpgate.cli("user", "lock", SCRAM_USER)
    try:
        out = swaks(stack, SCRAM_USER, "while locked")
    finally:
        stack.smtpgate.cli("user", "unlock", SCRAM_USER)
    assert "5.7.1" in out and "Sending not allowed for this account" in out, out
    assert f"user={SCRAM_USER} refused: account locked" in stack.smtpgate.log_text()


def test_an_account_whose_password_expired_may_not_send_through_postfix(stack: Stack) -> None:
    """Postfix's own SASL backend still accepts the password; smtpgate's password
    age ([passwords].max_age_days, `user max-age`) applied to its own AUTH only, so
    an account whose password had expired went on sending through Postfix. It is
    refused now, as a lock is."""
    stack.smtpgate.cli("user", "max-age", SCRAM_USER, "1s")  # set when the module began
    time.sleep(1.1)
    try:
        out = swaks(stack, SCRAM_USER, "after expiry")
    finally:
        stack.smtpgate.cli("user", "max-age", SCRAM_USER, "default")
    assert "5.7.1" in out and "Sending not allowed for this account" in out, out
    assert f"user={SCRAM_USER} refused: password expired at " in stack.smtpgate.log_text()
    out = swaks(stack, SCRAM_USER, "renewed")  # and the default age lets it send again
    assert "Sending not allowed" not in out, out


REQUEST = (b"request=smtpd_access_policy\nprotocol_state=RCPT\nsasl_username=" + SCRAM_USER.encode()
           + b"\nsender=" + SCRAM_USER.encode() + b"\nrecipient=x@example.net\n"
           b"client_address=127.0.0.9\ninstance=t1\n\n")


def test_requests_without_login_are_dunno_and_several_share_a_connection(stack: Stack) -> None:
    anonymous = b"request=smtpd_access_policy\nprotocol_state=RCPT\nsender=a@b.test\n\n"
    assert send_and_read_all(stack.policy_port, anonymous * 3) == b"action=DUNNO\n\n" * 3


@pytest.mark.parametrize("garbage", [
    b"this is not the policy protocol\n\n",
    b"request=smtpd_access_policy\nsender=" + b"a" * 5000 + b"\n\n",
    b"request=other_policy\n\n",
    b"request=smtpd_access_policy\n" + b"".join(b"x%d=y\n" % i for i in range(200)) + b"\n",
])
def test_malformed_or_oversize_requests_close_the_connection(stack: Stack, garbage: bytes) -> None:
    # A good request first is answered; the garbage after it gets nothing but the close.
    anonymous = b"request=smtpd_access_policy\nprotocol_state=RCPT\nsender=a@b.test\n\n"
    assert send_and_read_all(stack.policy_port, anonymous + garbage) == b"action=DUNNO\n\n"


def test_a_control_character_in_the_sender_is_refused_as_not_owned(stack: Stack) -> None:
    """Postfix accepts ``MAIL FROM:<"a\\<0x01>b"@...>`` (a quoted-pair) and passes the
    control character raw in ``sender`` (unquoted: ``a<0x01>b@...``). smtpgate took that for a broken policy
    protocol and closed, so the client got ``451 4.3.5 Server configuration
    problem`` and Postfix logged a fault of the policy server: it is a sender the
    account does not own, refused as any other, and escaped in smtpgate's log."""
    ctx = ssl.create_default_context(cafile=str(stack.postfix.ca))
    with smtplib.SMTP("127.0.0.1", stack.port, timeout=20) as s:
        s.starttls(context=ctx)
        s.login(SCRAM_USER, SCRAM_PASSWORD)
        s.putcmd('MAIL FROM:<"a\\\x01b"@test.local>')
        assert s.getreply()[0] == 250
        s.putcmd("RCPT TO:<bob@example.net>")
        code, text = s.getreply()
    assert (code, text[:5]) == (554, b"5.7.1"), (text, stack.postfix.log())
    assert b"Sender address not owned" in text
    log = stack.smtpgate.log_text()
    # Postfix drops the quotes: sender=a<0x01>b@test.local.
    assert "MAIL FROM:<a\\x01b@test.local> not owned by the account" in log, log
