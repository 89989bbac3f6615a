"""Issue 16: another process holds the guard database's locks.

The real ``smtpgate serve`` as installed (``smtpgate init``'s config: two workers
on this machine, ``state.timeout = 0.25``, ``state.on_unavailable =
"known"``), and a second process holding ``guard.sqlite``'s locks as an
``sqlite3`` shell in ``BEGIN EXCLUSIVE`` does. Before the fix each login waited
for SQLite's busy timeout on the worker's one guard thread (so concurrent logins
queued: 5, 10, 15 s) and MAIL waited on the rate counters; now every reply comes
at once, per the documented degraded mode, and service resumes by itself when
the lock goes.

``REPLY_BOUND`` is a correctness bound (an answer that does not wait for the
lock), not a benchmark: the degraded replies come within the store timeout plus a
penalty of at most a second here.
"""

from __future__ import annotations

import base64
import re
import smtplib
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from smtpgate.auth.sqlite_file import BUSY_TIMEOUT

from .conftest import PASSWORD, USER, Server, make_server

REPLY_BOUND = 5.0
HOME = "127.0.0.1"
#: Loopback addresses alice never logged in from, a fresh one each time.
_fresh = (f"127.0.{i // 250 + 1}.{i % 250 + 1}" for i in range(10_000))


def fresh() -> str:
    return next(_fresh)

MESSAGE = f"From: {USER}\r\nTo: bob@example.net\r\nSubject: stall\r\n\r\nhello\r\n"


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = make_server(tmp_path_factory.mktemp("stall") / "srv")
    server.add_user(USER, PASSWORD)
    server.start()
    yield server
    if server.proc is not None:
        server.stop()


class Locker:
    """Another process holding the file's locks until ``release``: a write
    transaction (``BEGIN EXCLUSIVE``) as an ``sqlite3`` shell or a backup tool
    takes. Readers of the WAL file go on; every writer waits. (A stall of the
    reads too, which a hung disk would cause, is in tests/unit/test_guard_unavailable.py:
    SQLite gives no other process a way to block the server's readers.)
    """

    def __init__(self, path: Path) -> None:
        script = (
            "import sqlite3, sys\n"
            "c = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=10)\n"
            "c.execute('BEGIN EXCLUSIVE')\n"
            "c.execute('SELECT count(*) FROM blocks').fetchall()\n"
            "print('locked', flush=True)\n"
            "sys.stdin.read()\n"
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-c", script, str(path)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "locked"

    def release(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()  # the holder exits, the locks go
            self.proc.wait(timeout=20)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


def plain(user: str, password: str) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


def connect(srv: Server, source: str) -> smtplib.SMTP:
    s = smtplib.SMTP("127.0.0.1", srv.submission, timeout=30, source_address=(source, 0))
    s.ehlo("client.test")
    s.starttls(context=srv.client_context())
    s.ehlo("client.test")
    return s


def login(srv: Server, source: str, password: str = PASSWORD) -> tuple[int, str, float]:
    """(code, text, seconds) of one AUTH PLAIN from ``source``, timed from AUTH."""
    with connect(srv, source) as s:
        start = time.monotonic()
        code, text = s.docmd("AUTH", "PLAIN " + plain(USER, password))
        took = time.monotonic() - start
        s.quit()
    return code, text.decode(), took


def logins_at_once(srv: Server, sources: list[str]) -> list[tuple[int, str, float]]:
    with ThreadPoolExecutor(len(sources)) as pool:
        return list(pool.map(lambda src: login(srv, src), sources))


def episodes(srv: Server, what: str) -> dict[str, int]:
    """Log lines per process starting (``not answering``) or ending an episode."""
    out: dict[str, int] = {}
    for m in re.finditer(rf"\[(\d+)\]: {what}", srv.log_text()):
        out[m.group(1)] = out.get(m.group(1), 0) + 1
    return out


def recovered(srv: Server) -> tuple[int, str, float]:
    """Log in from new addresses until one gets in (a worker still in its episode
    refuses until its probe write succeeds); the last reply."""
    deadline = time.monotonic() + 30
    while (result := login(srv, fresh()))[0] != 235 and time.monotonic() < deadline:
        time.sleep(0.2)
    return result


def test_a_write_lock_leaves_known_addresses_working_and_answers_the_rest_at_once(srv: Server) -> None:
    assert login(srv, HOME)[0] == 235  # alice's address becomes known
    session = connect(srv, HOME)
    assert session.docmd("AUTH", "PLAIN " + plain(USER, PASSWORD))[0] == 235
    lock = Locker(srv.root / "guard.sqlite")
    try:
        # Three logins from the known address and three from new ones, all at once:
        # none waits for the lock, nor for another. A new address's login decided
        # before its worker met the lock gets in (its write is dropped).
        results = logins_at_once(srv, [HOME, HOME, HOME, fresh(), fresh(), fresh()])
        for code, text, took in results:
            assert code in (235, 454), text
            assert took < REPLY_BOUND
        assert [r[0] for r in results[:3]] == [235, 235, 235]
        # Once a worker has met the lock, new addresses get 454 4.7.0 there (each
        # worker meets it at its first write: a few tries reach both).
        refused = None
        for _ in range(12):
            code, text, took = login(srv, fresh())
            assert code in (235, 454) and took < REPLY_BOUND, text
            if code == 454:
                refused = text
                break
        assert refused is not None and refused.startswith("4.7.0"), refused
        assert login(srv, HOME)[0] == 235
        code, text, took = login(srv, HOME, "wrong password")
        assert code == 535 and took < REPLY_BOUND  # a wrong secret is still a wrong secret
        # MAIL in a session opened before: the counters live in the same file.
        start = time.monotonic()
        assert session.mail(USER)[0] == 250
        assert session.rcpt("bob@example.net")[0] == 250
        assert session.data(MESSAGE)[0] == 250
        assert time.monotonic() - start < REPLY_BOUND
    finally:
        lock.release()
        session.close()
    # Recovery without a restart: new addresses log in again.
    result = recovered(srv)
    assert result[0] == 235, result
    started = episodes(srv, "guard database writes not answering")
    assert started and all(n == 1 for n in started.values()), started  # once per episode
    # The login above may have reached a worker already out of its episode; the
    # other ends its own at its next login (the probe write a login starts), so
    # log in until every worker has had one.
    deadline = time.monotonic() + 30
    while set(ended := episodes(srv, "guard database writes answering again")) != set(started):
        if time.monotonic() > deadline:
            break
        login(srv, fresh())
        time.sleep(0.1)
    assert set(ended) == set(started), (started, ended)


def test_a_lock_held_past_sqlite_s_busy_timeout_ends_by_itself(srv: Server) -> None:
    """The stuck writes give up (``database is locked``) while the lock is still
    held: the episode goes on, replies stay prompt, and once the lock goes a
    background probe write ends it (a refused login writes nothing itself)."""
    lock = Locker(srv.root / "guard.sqlite")
    try:
        first = logins_at_once(srv, [fresh() for _ in range(4)])
        assert all(code in (235, 454) and took < REPLY_BOUND for code, _, took in first), first
        time.sleep(BUSY_TIMEOUT + 1)  # the stuck writes have failed by now
        for code, text, took in logins_at_once(srv, [HOME, fresh(), fresh()]):
            assert code in (235, 454) and took < REPLY_BOUND, text
    finally:
        lock.release()
    result = recovered(srv)
    assert result[0] == 235, result
    assert "Traceback" not in srv.log_text()
