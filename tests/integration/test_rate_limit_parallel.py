"""Sessions of one account that end their messages at the same moment cannot
together pass its hourly message limit (docs/policy.md, "Rate limits").

Before, MAIL and RCPT read the budget and the count came with the 250: eight
sessions of a stolen login, each past its MAIL while the others were too, all
had their messages accepted against a limit of 3. The message is now reserved in
the counters in one atomic step at the end of DATA, before it is stored."""

from __future__ import annotations

import smtplib
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import PASSWORD, USER, Server, serving_alice

SESSIONS = 8
LIMIT = 3


@pytest.fixture
def limited(tmp_path: Path) -> Iterator[Server]:
    yield from serving_alice(tmp_path / "srv",
                             f"\n[limits]\nmessages_per_hour = {LIMIT}\n"
                             "recipients_per_hour = 100\n")


def _send_at_once(srv: Server, barrier: threading.Barrier, replies: list[str]) -> None:
    """One session: login, MAIL, RCPT, DATA and the body; then the final dot at the
    moment every other session sends its own."""
    with smtplib.SMTP("127.0.0.1", srv.submission, timeout=60) as s:
        s.starttls(context=srv.client_context())
        s.login(USER, PASSWORD)
        assert s.mail(USER)[0] == 250
        assert s.rcpt(USER)[0] == 250
        code, _ = s.docmd("DATA")
        assert code == 354
        s.send(f"From: {USER}\r\nSubject: at once\r\n\r\nHello.\r\n".encode())
        barrier.wait(timeout=60)
        s.send(b".\r\n")
        code, text = s.getreply()
        replies.append(f"{code} {text.decode()}")


def test_parallel_sessions_cannot_together_pass_the_message_limit(limited: Server) -> None:
    barrier = threading.Barrier(SESSIONS)
    replies: list[str] = []
    threads = [threading.Thread(target=_send_at_once, args=(limited, barrier, replies))
               for _ in range(SESSIONS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(replies) == SESSIONS, limited.log_text()
    accepted = [r for r in replies if r.startswith("250 ")]
    refused = [r for r in replies if r.startswith("450 4.7.1 Message rate limit")]
    assert len(accepted) == LIMIT, replies
    assert len(refused) == SESSIONS - LIMIT, replies
    # What was refused was not stored: exactly the accepted messages are delivered.
    assert len(limited.wait_for_mail(LIMIT)) == LIMIT
    # The next message, in a session of its own, is refused at MAIL already.
    with smtplib.SMTP("127.0.0.1", limited.submission, timeout=60) as s:
        s.starttls(context=limited.client_context())
        s.login(USER, PASSWORD)
        code, text = s.mail(USER)
        assert (code, text.decode()[:5]) == (450, "4.7.1")
    assert "message rate limit at the end of DATA" in limited.log_text()
    queued = limited.log_text().count(" queued ")
    assert queued == LIMIT
