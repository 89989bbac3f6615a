"""Nothing acknowledged is lost: kill -9 after 250s, restart, each message delivered once."""

from __future__ import annotations

import email
import hashlib
import os
import random
import re
import signal
import smtplib
import sys
import threading
import time
from pathlib import Path
from typing import Self

import pytest

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


# --- kill -9 of single processes under load -------------------------------------------

#: Server runs; in each, CHILD_KILLS kills of a worker or the delivery process (one
#: fewer than the supervisor's 5 failures a minute that stop the server), then a
#: kill -9 of the parent and a restart at once: 20 kills in all.
RUNS = 4
CHILD_KILLS = 4
#: Every BIG_EVERY-th message of a client is a few MB (many writes before its seal).
BIG_EVERY = 12


def _load_message(tag: str, n: int) -> bytes:
    body = (b"x" * 76 + b"\r\n") * 40_000 if n % BIG_EVERY == BIG_EVERY - 1 else b"body %d\r\n" % n
    return (f"From: {USER}\r\nTo: bob@example.net\r\nMessage-ID: <{tag}@example.org>\r\n"
            f"X-Body-Sha256: {hashlib.sha256(body).hexdigest()}\r\nSubject: {tag}\r\n\r\n"
            ).encode() + body


class _Load:
    """Clients sending without pause, half the messages with DATA, half with two BDAT
    chunks; each message's fate as the client saw it: "accepted" (its 250),
    "refused" (another reply to its data) or "unknown" (no reply: the connection
    broke first, so the server may or may not have kept it)."""

    def __init__(self, server: Server, clients: int = 3) -> None:
        self.server = server
        self.fate: dict[str, str] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(i,)) for i in range(clients)]

    def __enter__(self) -> Self:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(60)

    def _client(self, cid: int) -> None:
        n = 0
        while not self._stop.is_set():
            try:
                with smtplib.SMTP_SSL("127.0.0.1", self.server.submissions, timeout=30,
                                      context=self.server.client_context()) as s:
                    s.login(USER, PASSWORD)
                    while not self._stop.is_set():
                        n += 1
                        self._send(s, f"k{cid}-{n}", n)
            except (OSError, smtplib.SMTPException):
                time.sleep(0.05)  # killed mid-session, or the server is restarting

    def _send(self, s: smtplib.SMTP, tag: str, n: int) -> None:
        msg = _load_message(tag, n)
        if s.mail(USER)[0] != 250 or s.rcpt("bob@example.net")[0] != 250:
            return  # nothing sent: not counted
        with self._lock:
            self.fate[tag] = "unknown"
        if n % 2:
            code = s.data(msg)[0]
        else:
            half = len(msg) // 2
            s.send(b"BDAT %d\r\n" % half + msg[:half])
            code = s.getreply()[0]
            if code == 250:
                s.send(b"BDAT %d LAST\r\n" % (len(msg) - half) + msg[half:])
                code = s.getreply()[0]
        with self._lock:
            self.fate[tag] = "accepted" if code == 250 else "refused"

    def tags(self, fate: str) -> set[str]:
        with self._lock:
            return {t for t, f in self.fate.items() if f == fate}


def _roles(server: Server, parent: int) -> dict[str, int]:
    """Child name ("worker 1", "delivery") -> pid, from the parent's own log lines."""
    log = server.log_text()
    started = re.search(rf"smtpgate\[{parent}\]: started \d+ worker processes: ([\d, ]+); "
                        r"delivery process: (\d+)", log)
    assert started is not None
    roles = {f"worker {i}": int(p) for i, p in enumerate(started.group(1).split(", "), 1)}
    roles["delivery"] = int(started.group(2))
    for name, pid in re.findall(rf"smtpgate\[{parent}\]: (worker \d+|delivery) restarted "
                                r"\(pid (\d+)\)", log):
        roles[name] = int(pid)
    return roles


def _wait_for(server: Server, pattern: str) -> None:
    deadline = time.monotonic() + 30
    while not re.search(pattern, server.log_text()):
        assert time.monotonic() < deadline, f"no {pattern!r} in the log"
        time.sleep(0.02)


def _delivered_tags(server: Server) -> dict[str, list[bytes]]:
    """Message tag -> the delivered copies' bodies."""
    out: dict[str, list[bytes]] = {}
    for f in server.delivered():
        raw = f.read_bytes()
        head, _, body = raw.partition(b"\r\n\r\n") if b"\r\n\r\n" in raw else raw.partition(b"\n\n")
        msg = email.message_from_bytes(head + b"\n\n")
        tag = str(msg["Message-ID"]).strip("<>").partition("@")[0]
        assert hashlib.sha256(body).hexdigest() == msg["X-Body-Sha256"], f"torn copy of {tag}"
        out.setdefault(tag, []).append(body)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("aio", ["aio", "threads"])
def test_kill_9_of_workers_and_the_delivery_process_under_load_loses_nothing(
    tmp_path: Path, aio: str
) -> None:
    """As the default install runs (two workers and the delivery process), with the
    seal's sync through Linux AIO and, with io_setup refused by a seccomp filter,
    on threads: 20 kill -9s during a load of small and multi-MB messages over DATA
    and BDAT. Every message that got its 250 is delivered exactly once and whole;
    none refused is delivered; none left in doubt (the connection broke before the
    reply) twice; and a final restart leaves no slot or temp file behind."""
    server = make_server(tmp_path / "srv", "\n[limits]\nmessages_per_hour = 0\n"
                         "recipients_per_hour = 0\n")
    server.add_user(USER, PASSWORD)
    if aio == "threads":
        server.launcher = [sys.executable, "-m", "tests.integration.no_aio"]
    server.start()
    victims: list[str] = []
    with _Load(server) as load:
        for _ in range(RUNS):
            assert server.proc is not None
            parent = server.proc.pid
            _wait_for(server, rf"smtpgate\[{parent}\]: started ")
            for k in range(CHILD_KILLS):
                time.sleep(random.uniform(0.1, 0.5))
                name = "delivery" if k % 2 else f"worker {random.randint(1, 2)}"
                before = _roles(server, parent)[name]
                os.kill(before, signal.SIGKILL)
                victims.append(name)
                _wait_for(server, rf"smtpgate\[{parent}\]: {name} restarted \(pid (?!{before}\))")
            time.sleep(random.uniform(0.1, 0.5))
            server.proc.send_signal(signal.SIGKILL)  # its children die with it
            server.proc.wait(timeout=10)
            server.proc = None
            server.start()
    accepted, refused, unknown = load.tags("accepted"), load.tags("refused"), load.tags("unknown")
    assert len(accepted) > 20 and "delivery" in victims and "worker 1" in victims
    spool = server.root / "spool"
    deadline = time.monotonic() + 60
    while list((spool / "queue").glob("*.msg")) or not accepted <= set(_delivered_tags(server)):
        assert time.monotonic() < deadline, "the queue did not drain"
        time.sleep(0.1)
    time.sleep(1.5)  # room for a (wrong) second delivery
    copies = _delivered_tags(server)
    assert [t for t in accepted if len(copies.get(t, [])) != 1] == [], "lost or duplicated"
    assert refused & set(copies) == set()
    assert [t for t in unknown if len(copies.get(t, [])) > 1] == []
    assert set(copies) <= accepted | unknown
    assert list((spool / "corrupt").iterdir()) == []
    assert server.stop() == 0
    # The final start-up took every dead writer's files; its own stop left none.
    assert sorted(p.name for p in (spool / "queue").iterdir()) == []
    assert sorted(p.name for p in (spool / "tmp").iterdir()) == []
    assert sorted(p.name for p in (server.maildir / "tmp").iterdir()) == []
    if aio == "threads":
        assert "spool syncs run on threads: io_setup refused (Operation not permitted)" in \
            server.log_text()
    else:
        assert "spool syncs run on threads" not in server.log_text()
