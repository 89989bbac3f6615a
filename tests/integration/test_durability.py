"""Nothing acknowledged is lost: kill -9 after 250s, restart, each message delivered once."""

from __future__ import annotations

import email
import signal
import smtplib
import threading
from pathlib import Path

from .conftest import PASSWORD, USER, Server, make_server

COUNT = 40


def _send_many(server: Server, count: int, tag: str) -> list[str]:
    ids = []
    with smtplib.SMTP_SSL("127.0.0.1", server.submissions, timeout=20, context=server.client_context()) as s:
        s.login(USER, PASSWORD)
        for i in range(count):
            mid = f"<{tag}-{i}@example.org>"
            msg = f"From: {USER}\r\nTo: bob@example.net\r\nMessage-ID: {mid}\r\nSubject: {i}\r\n\r\nbody {i}\r\n"
            s.sendmail(USER, ["bob@example.net", "carol@example.net"], msg)
            ids.append(mid)
    return ids


def _message_ids(files: list[Path]) -> list[str]:
    return [str(email.message_from_bytes(f.read_bytes())["Message-ID"]) for f in files]


def test_kill_9_after_250_then_restart_delivers_each_message_exactly_once(tmp_path: Path) -> None:
    # The kill lands right after the last 250, while the delivery worker is
    # still busy: some messages are in the spool, some half-way into the Maildir.
    server = make_server(tmp_path / "srv")
    server.add_user(USER, PASSWORD)
    server.start()
    ids = _send_many(server, COUNT, "crash")  # every sendmail returned: 250 received
    assert server.proc is not None
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait(timeout=10)
    server.proc = None
    server.start()
    files = server.wait_for_mail(COUNT, timeout=60)
    got = _message_ids(files)
    assert sorted(got) == sorted(ids), "lost or duplicated messages"
    # Give the worker time to (wrongly) deliver anything twice, then recount.
    import time

    time.sleep(1.5)
    assert sorted(_message_ids(server.delivered())) == sorted(ids)
    assert not list((server.root / "spool").rglob("*.tmp"))
    server.stop()


def test_sigterm_stops_cleanly_and_hands_back_idle_sessions(tmp_path: Path) -> None:
    server = make_server(tmp_path / "srv")
    server.add_user(USER, PASSWORD)
    server.start()
    s = smtplib.SMTP("127.0.0.1", server.submission, timeout=10)
    s.ehlo("client.test")
    replies: list[tuple[int, bytes]] = []

    def wait_for_421() -> None:
        replies.append(s.getreply())

    t = threading.Thread(target=wait_for_421)
    t.start()
    assert server.stop(signal.SIGTERM) == 0
    t.join(10)
    s.close()
    assert replies and replies[0][0] == 421
    assert b"4.3.2" in replies[0][1]
    assert "stopped" in server.log_text()


def test_second_instance_on_the_same_addresses_is_refused(tmp_path: Path) -> None:
    """SO_REUSEPORT spreads connections over the workers; it must not let a second
    server bind the same addresses and silently take half of the traffic."""
    server = make_server(tmp_path / "srv")
    server.start()
    try:
        second = server.cli("serve", check=False)
        assert second.returncode != 0
        assert "cannot bind" in second.stderr and "Address already in use" in second.stderr
    finally:
        server.stop()
