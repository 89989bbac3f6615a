"""A file system that is really full (ENOSPC), not a mocked write: the spool during
the seal, and the Maildir during delivery (docs/operations.md, "Disk space";
docs/delivery.md, "Delivery").

The server runs in a private mount namespace of its own (``unshare -m``) with its
spool or its Maildir on a small tmpfs mounted there: nothing outside the test
changes, and the mount goes with the server. ``queue.min_free_space = 0``, so it
is the write itself that finds the disk full, not the check at MAIL.
"""

from __future__ import annotations

import os
import smtplib
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from smtpgate.queue.blanks import INODE_RESERVE, STOCK
from smtpgate.queue.space import MIN_FREE_INODES

from .conftest import IN_CI, PASSWORD, SMTPGATE, USER, Server, make_server, require_tool

MB = 1024 * 1024


def _on_tmpfs(srv: Server, directory: Path, size: str) -> None:
    """Start ``srv`` with ``directory`` a tmpfs of ``size`` in its own mount namespace."""
    require_tool("unshare")
    require_tool("nsenter")
    if os.geteuid() != 0:
        if IN_CI:
            pytest.fail("mounting a tmpfs in a private mount namespace needs root")
        pytest.skip("needs root to mount a tmpfs in a private mount namespace")
    directory.mkdir(exist_ok=True)
    srv.launcher = ["unshare", "-m", "--propagation", "private", "sh", "-c",
                    f'mount -t tmpfs -o size={size},mode=0700 smtpgate-test "$0" && exec "$@"',
                    str(directory)]
    srv.start()


def _inside(srv: Server, *command: str) -> str:
    """Run ``command`` in the server's mount namespace (where its tmpfs is)."""
    assert srv.proc is not None
    return subprocess.run(["nsenter", "-t", str(srv.proc.pid), "-m", *command],
                          capture_output=True, text=True, check=True, timeout=30).stdout


def server_cli(srv: Server, *args: str) -> list[str]:
    """An ``smtpgate`` command line for the server's config (run it with `_inside`)."""
    return [SMTPGATE, *args, "--config", str(srv.config)]


def _message(tag: str, size: int) -> bytes:
    line = b"z" * 70 + b"\r\n"
    return (f"From: {USER}\r\nTo: bob@example.net\r\nMessage-ID: <{tag}@example.org>\r\n"
            f"Subject: {tag}\r\n\r\n").encode() + line * (size // len(line))


def _send(srv: Server, tag: str, size: int, *, bdat: bool = False) -> tuple[int, bytes]:
    """The reply to the end of the message's data."""
    with smtplib.SMTP_SSL("127.0.0.1", srv.submissions, timeout=60,
                          context=srv.client_context()) as s:
        s.login(USER, PASSWORD)
        assert s.mail(USER)[0] == 250 and s.rcpt("bob@example.net")[0] == 250
        msg = _message(tag, size)
        if not bdat:
            return s.data(msg)
        s.send(b"BDAT %d LAST\r\n" % len(msg) + msg)
        return s.getreply()


def _seen_by_server(srv: Server, path: Path) -> Path:
    """``path`` as the server sees it, in its mount namespace (its tmpfs)."""
    assert srv.proc is not None
    return Path(f"/proc/{srv.proc.pid}/root") / path.relative_to("/")


def _delivered_tags(srv: Server) -> list[str]:
    """The tags of the messages in the Maildir (on a tmpfs of the server's, or not)."""
    tags = []
    maildir = _seen_by_server(srv, srv.maildir)
    for f in [*(maildir / "new").glob("*"), *(maildir / "cur").glob("*")]:
        with open(f, "rb") as fh:
            for line in fh:
                if line.lower().startswith(b"message-id:"):
                    tags.append(line.split(b"<")[1].split(b"@")[0].decode())
                    break
    return sorted(tags)


def _wait_for(what: str, check: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    srv = make_server(tmp_path / "srv", "\n[limits]\nmessages_per_hour = 0\n")
    text = srv.config.read_text()
    srv.config.write_text(text.replace(
        "[queue]\n", "[queue]\nmin_free_space = 0\nretry_initial = 1\nretry_max = 2\n", 1))
    srv.add_user(USER, PASSWORD)
    yield srv
    if srv.proc is not None:
        srv.stop()


@pytest.mark.parametrize("bdat", [False, True], ids=["data", "bdat"])
def test_a_full_spool_at_the_seal_is_452_4_3_1_and_keeps_nothing(
    server: Server, bdat: bool
) -> None:
    spool = server.root / "spool"
    _on_tmpfs(server, spool, "2m")
    # More than the file system holds: the writes run into ENOSPC before the seal.
    assert _send(server, "too-big", 3 * MB, bdat=bdat) == (
        452, b"4.3.1 Insufficient system storage")
    assert "No space left on device" in server.log_text()
    # Nothing of it is kept, not even a temp file, and the spool takes the next one.
    names = _inside(server, "find", str(spool), "-type", "f", "-size", "+0").split()
    assert names == []
    assert _send(server, "fits", 200_000, bdat=bdat)[0] == 250
    _wait_for("the delivery", lambda: _delivered_tags(server) == ["fits"])
    assert server.stop() == 0


def _send_in_step(srv: Server, tag: str, size: int, bdat: bool,
                  barrier: threading.Barrier) -> tuple[int, bytes]:
    """`_send`, but the end of the data waits at ``barrier``: every client's bulk is
    in the spool before any message is sealed (and delivered, which frees space)."""
    msg = _message(tag, size)
    bulk, tail = msg[:-1000], msg[-1000:]
    with smtplib.SMTP_SSL("127.0.0.1", srv.submissions, timeout=60,
                          context=srv.client_context()) as s:
        s.login(USER, PASSWORD)
        assert s.mail(USER)[0] == 250 and s.rcpt("bob@example.net")[0] == 250
        if bdat:
            s.send(b"BDAT %d\r\n" % len(bulk) + bulk)
            reply = s.getreply()
            barrier.wait(30)
            if reply[0] != 250:
                return reply
            s.send(b"BDAT %d LAST\r\n" % len(tail) + tail)
        else:
            s.putcmd("data")
            assert s.getreply()[0] == 354
            s.send(bulk)
            barrier.wait(30)
            s.send(tail + b"\r\n.\r\n")
        return s.getreply()


def test_messages_racing_for_the_last_space_each_get_250_or_452_and_no_250_is_lost(
    server: Server,
) -> None:
    _on_tmpfs(server, server.root / "spool", "3m")
    replies: dict[str, tuple[int, bytes]] = {}
    barrier = threading.Barrier(4)

    def client(i: int) -> None:
        replies[f"race-{i}"] = _send_in_step(server, f"race-{i}", MB + MB // 2, i % 2 == 1,
                                             barrier)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(replies) == 4
    for code, text in replies.values():
        assert (code, text) in {(452, b"4.3.1 Insufficient system storage")} or code == 250
    codes = {tag: code for tag, (code, _) in replies.items()}
    assert 452 in codes.values()  # often all four: each ran out part of the way
    accepted = sorted(tag for tag, code in codes.items() if code == 250)
    _wait_for("the deliveries", lambda: _delivered_tags(server) == accepted)
    # What the refused ones had written is gone (and the delivered ones left the
    # spool): nearly all of the space is free again.
    _wait_for("an empty queue", lambda: "the queue is empty" in _inside(
        server, *server_cli(server, "queue", "list")))
    assert _send(server, "after", 2 * MB + MB // 2)[0] == 250
    everything = sorted([*accepted, "after"])
    _wait_for("the last delivery", lambda: _delivered_tags(server) == everything)
    time.sleep(1)  # room for a (wrong) extra copy
    assert _delivered_tags(server) == everything
    assert server.stop() == 0


def test_a_full_maildir_defers_with_4_3_1_and_delivers_once_there_is_room(
    server: Server,
) -> None:
    maildir = server.maildir
    _on_tmpfs(server, maildir, "1m")
    assert _send(server, "big", 2 * MB)[0] == 250  # the spool has room
    _wait_for("the deferral", lambda: "4.3.1 maildir delivery failed: No space left on device"
              in server.log_text())
    log = server.log_text()
    assert "WARNING smtpgate.queue" in log and f"maildir {maildir}: cannot write into " \
        f"{maildir}/tmp: No space left on device" in log
    # A message that fits is delivered meanwhile; the big one stays queued.
    assert _send(server, "small", 1000)[0] == 250
    _wait_for("the small one", lambda: _delivered_tags(server) == ["small"])
    listed = server.cli("queue", "list").stdout
    assert "No space left on device" in listed and listed.count("<bob@example.net>") == 1
    # No torn copy in the Maildir: its tmp/ holds only empty files made ahead of use.
    assert _inside(server, "find", str(maildir / "tmp"), "-type", "f", "-size", "+0") == ""
    # Room again (the administrator grew the file system): delivered once, at a retry.
    _inside(server, "mount", "-o", "remount,size=8m", str(maildir))
    _wait_for("the big one", lambda: _delivered_tags(server) == ["big", "small"])
    time.sleep(1)
    assert _delivered_tags(server) == ["big", "small"]
    assert server.cli("queue", "list").stdout.startswith("the queue is empty")
    assert server.stop() == 0


def test_the_blank_stock_leaves_a_small_file_systems_inodes_to_other_files(
    server: Server,
) -> None:
    """The spool on a file system of 12,000 inodes: the delivery process's stock of
    blank files (queue/blanks.py) stops where 10,000 stay free, instead of taking
    every inode the Maildir, the databases and the logs need; when other files take
    the file system under that, blanks are given back; mail flows throughout, and
    the log says once, not every few seconds, why blanks are held back."""
    spool = server.root / "spool"
    _on_tmpfs(server, spool, "64m,nr_inodes=12000")
    blank_dir = _seen_by_server(server, spool) / "blank"
    _wait_for("the blank stock", lambda: blank_dir.is_dir() and len(os.listdir(blank_dir)) > 100)

    def settled() -> int:
        """The blank count once it stopped changing."""
        last = -1
        while (n := len(os.listdir(blank_dir))) != last:
            last = n
            time.sleep(0.5)
        return n

    made = settled()
    assert made < STOCK
    assert os.statvfs(blank_dir).f_favail >= INODE_RESERVE
    # Other files take the file system 300 inodes under the reserve.
    junk = _seen_by_server(server, spool) / "other-files"
    junk.mkdir()
    for i in range(os.statvfs(blank_dir).f_favail - INODE_RESERVE + 300):
        (junk / str(i)).touch()
    _wait_for("blanks given back", lambda: os.statvfs(blank_dir).f_favail >= INODE_RESERVE)
    assert settled() <= made - 300
    for i in range(20):
        assert _send(server, f"m{i}", 2000)[0] == 250
    server.wait_for_mail(20)
    assert _delivered_tags(server) == sorted(f"m{i}" for i in range(20))
    log = server.log_text()
    assert "gave back" in log
    assert log.count("no blank files made") == 1, log


def test_mail_is_452_4_3_1_while_the_spool_file_system_is_out_of_inodes(tmp_path: Path) -> None:
    """Bytes to spare but the inodes gone (the default reserve, spool on a real tmpfs
    of 1,500 inodes that other files fill): MAIL is answered 452 4.3.1 instead of
    every message failing at the end of its data, and mail flows again once files
    are removed."""
    srv = make_server(tmp_path / "srv", "\n[limits]\nmessages_per_hour = 0\n")
    srv.add_user(USER, PASSWORD)
    spool = srv.root / "spool"
    _on_tmpfs(srv, spool, "200m,nr_inodes=1500")
    try:
        def mail_reply() -> tuple[int, bytes]:
            with smtplib.SMTP_SSL("127.0.0.1", srv.submissions, timeout=30,
                                  context=srv.client_context()) as s:
                s.login(USER, PASSWORD)
                return s.mail(USER)

        assert mail_reply()[0] == 250
        junk = _seen_by_server(srv, spool) / "other-files"
        junk.mkdir()
        for i in range(os.statvfs(junk).f_favail - (MIN_FREE_INODES - 100)):
            (junk / str(i)).touch()
        replies: set[tuple[int, bytes]] = set()
        _wait_for("MAIL refused", lambda: replies.add(r := mail_reply()) or r[0] == 452)
        # A worker answers by its last measurement and starts the next at most once a
        # second (on a thread): MAILs bring both workers up to date, as soon as a
        # loaded machine lets them; then six in a row are refused, whichever worker
        # answers. (Fixed sleeps failed once in a clean-clone run.)
        refused = (452, b"4.3.1 Insufficient system storage")
        _wait_for("both workers refusing MAIL",
                  lambda: {mail_reply() for _ in range(6)} == {refused})
        assert replies <= {(250, b"2.1.0 Sender OK"), (452, b"4.3.1 Insufficient system storage")}
        assert "free inodes, under the 1000 kept free" in srv.log_text()
        checked = subprocess.run(["nsenter", "-t", str(srv.proc.pid), "-m",
                                  *server_cli(srv, "config", "check")],
                                 capture_output=True, text=True, timeout=60, check=False)
        assert "queue.spool" in checked.stdout + checked.stderr
        assert "free inodes, under the 1000 kept free" in checked.stdout + checked.stderr
        for f in junk.iterdir():
            f.unlink()
        _wait_for("both workers accepting MAIL again",
                  lambda: {mail_reply() for _ in range(6)} == {(250, b"2.1.0 Sender OK")})
        assert _send(srv, "after", 2000)[0] == 250
        srv.wait_for_mail(1)
    finally:
        srv.stop()
