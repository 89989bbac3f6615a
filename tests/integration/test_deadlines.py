"""Deadlines against slow clients (issue 16): trickling one byte a second resets
every idle timeout, so before the deadlines such a client held its connection for
as long as it liked. Each test trickles in one place and checks that the server
hangs up within the deadline plus some slack, long before the trickle would end."""

from __future__ import annotations

import json
import socket
import ssl
import time
from collections.abc import Iterator

import pytest

from smtpgate.smtp import replies as R

from .conftest import PASSWORD, USER, Server, make_server
from .test_attacks import Raw, plain, tls_session

# Idle timeouts of 3 s, which a byte a second never reaches; the deadlines are
# what must end each session.
DEADLINES = """
[limits]
command_timeout = 3.0
data_timeout = 3.0
command_deadline = 4.0
auth_deadline = 2.0
data_min_rate = 100
"""
HANDSHAKE = 2.0
#: Scheduling slack on a loaded 2-core machine, on top of a deadline: generous,
#: since without the deadlines the trickle is never cut at all (TRICKLE s).
SLACK = 8.0
#: The trickle goes on for this long if nobody stops it.
TRICKLE = 20


@pytest.fixture(scope="module")
def slow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = make_server(tmp_path_factory.mktemp("deadlines") / "srv")
    text = srv.config.read_text().replace('key = "tls/key.pem"\n',
                                          f'key = "tls/key.pem"\nhandshake_timeout = {HANDSHAKE}\n')
    srv.config.write_text(text + DEADLINES)
    srv.add_user(USER, PASSWORD)
    srv.start()
    yield srv
    if srv.proc is not None:
        srv.stop()


def trickle(sock: socket.socket, data: bytes) -> tuple[bytes, float]:
    """Send ``data`` a byte a second, reading meanwhile; what the server sent and
    after how many seconds it closed the connection (inf: it never did)."""
    assert len(data) >= TRICKLE
    sock.settimeout(1.0)
    got = b""
    t0 = time.monotonic()
    for byte in data[:TRICKLE]:
        try:
            sock.sendall(bytes([byte]))
            chunk = sock.recv(4096)
        except TimeoutError:
            continue
        except (ConnectionError, ssl.SSLError, BrokenPipeError):
            return got, time.monotonic() - t0
        if not chunk:
            return got, time.monotonic() - t0
        got += chunk
    return got, float("inf")


def test_trickled_command_line_gets_421_within_the_command_deadline(slow: Server) -> None:
    r = Raw(slow.submission)
    got, closed_after = trickle(r.sock, b"EHLO " + b"x" * 40 + b"\r\n")
    assert closed_after < 4.0 + SLACK
    assert got.decode().startswith(str(R.TOO_SLOW))
    r.close()


def test_an_endless_command_line_gets_421_within_the_command_deadline(slow: Server) -> None:
    """A line over the limit is dropped as it comes, so nothing of it stays
    buffered; it is still one line, and its deadline runs on. Before, the
    deadline restarted with every drop: 4 KiB every quarter second, never an
    LF, held the connection for ever."""
    r = Raw(slow.submission)
    r.sock.settimeout(0.25)
    got = b""
    t0 = time.monotonic()
    closed_after = float("inf")
    while time.monotonic() - t0 < TRICKLE:
        try:
            r.sock.sendall(b"x" * 4096)
            chunk = r.sock.recv(4096)
        except TimeoutError:
            continue
        except (ConnectionError, BrokenPipeError):
            closed_after = time.monotonic() - t0
            break
        if not chunk:
            closed_after = time.monotonic() - t0
            break
        got += chunk
    assert closed_after < 4.0 + SLACK
    assert got.decode().startswith(str(R.TOO_SLOW))
    r.close()


def test_trickled_tls_client_hello_is_dropped_within_the_handshake_deadline(slow: Server) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    hello = outgoing.read()
    sock = socket.create_connection(("127.0.0.1", slow.submissions), timeout=10)
    got, closed_after = trickle(sock, hello)
    assert closed_after < HANDSHAKE + SLACK
    assert got == b""  # nothing to say in clear on a TLS port: just closed
    sock.close()


def test_trickled_auth_response_gets_421_within_the_auth_deadline(slow: Server) -> None:
    r = tls_session(slow)
    assert r.cmd("AUTH PLAIN").startswith("334")
    got, closed_after = trickle(r.sock, plain(USER, "a wrong password").encode() + b"\r\n")
    assert closed_after < 2.0 + SLACK
    assert got.decode().startswith(str(R.TOO_SLOW))
    r.close()
    # The attempt is logged, as the server's hang-up, not the client's (found by the
    # h27authlog review: it said "connection closed during AUTH").
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        records = [json.loads(x) for x in (slow.root / "auth.log").read_text().splitlines()]
        if records:
            break
        time.sleep(0.1)
    assert records[-1]["reason"] == "timed out during AUTH (deadline passed)", records
    assert records[-1]["result"] == "cancelled" and len(records) == 1


def test_trickled_data_gets_421_below_the_minimum_rate(slow: Server) -> None:
    r = tls_session(slow)
    assert r.cmd(f"AUTH PLAIN {plain(USER, PASSWORD)}").startswith("235")
    assert r.cmd(f"MAIL FROM:<{USER}>").startswith("250")
    assert r.cmd("RCPT TO:<bob@example.net>").startswith("250")
    assert r.cmd("DATA").startswith("354")
    got, closed_after = trickle(r.sock, b"Subject: slow\r\n\r\n" + b"y" * 40)
    # data_timeout plus 1 s per 100 octets: about 3.2 s for a byte a second.
    assert closed_after < 3.0 + 0.3 + SLACK
    assert got.decode().startswith(str(R.TOO_SLOW))
    r.close()
    # What was written of the message went with it (queue/incoming.py).
    tmp = slow.root / "spool" / "tmp"
    deadline = time.monotonic() + 10
    while [p for p in tmp.iterdir() if ".pool." not in p.name] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [p.name for p in tmp.iterdir() if ".pool." not in p.name] == []


def test_trickled_bdat_chunk_gets_421_below_the_minimum_rate(slow: Server) -> None:
    """A BDAT chunk's octets are data (RFC 3030): the same minimum rate holds."""
    r = tls_session(slow)
    assert r.cmd(f"AUTH PLAIN {plain(USER, PASSWORD)}").startswith("235")
    assert r.cmd(f"MAIL FROM:<{USER}>").startswith("250")
    assert r.cmd("RCPT TO:<bob@example.net>").startswith("250")
    r.sock.sendall(b"BDAT 1000 LAST\r\n")
    got, closed_after = trickle(r.sock, b"Subject: slow\r\n\r\n" + b"y" * 40)
    assert closed_after < 3.0 + 0.3 + SLACK
    assert got.decode().startswith(str(R.TOO_SLOW))
    r.close()


def every_second(sock: socket.socket, piece: bytes) -> tuple[bytes, float]:
    """Send ``piece`` once a second, reading meanwhile: what the server sent and
    after how many seconds it closed the connection (inf: it never did)."""
    sock.settimeout(1.0)
    got = b""
    t0 = time.monotonic()
    for _ in range(TRICKLE):
        try:
            sock.sendall(piece)
            chunk = sock.recv(4096)
        except TimeoutError:
            continue
        except (ConnectionError, ssl.SSLError, BrokenPipeError):
            return got, time.monotonic() - t0
        if not chunk:
            return got, time.monotonic() - t0
        got += chunk
        time.sleep(1.0)
    return got, float("inf")


def test_a_bdat_message_in_small_chunks_far_apart_gets_421_below_the_minimum_rate(
        slow: Server) -> None:
    """The minimum rate bounds a BDAT message as it bounds DATA, from its first
    chunk to its LAST: each chunk came in time, so a one-octet chunk a second
    held the connection for ever (the deadline was each chunk's own)."""
    r = tls_session(slow)
    assert r.cmd(f"AUTH PLAIN {plain(USER, PASSWORD)}").startswith("235")
    assert r.cmd(f"MAIL FROM:<{USER}>").startswith("250")
    assert r.cmd("RCPT TO:<bob@example.net>").startswith("250")
    got, closed_after = every_second(r.sock, b"BDAT 1\r\nx")
    # data_timeout plus 1 s per 100 octets (9 a chunk), from the first chunk.
    assert closed_after < 3.0 + 2.0 + SLACK
    replies = got.decode().splitlines()
    assert replies[0] == str(R.CHUNK_RECEIVED) and replies[-1] == str(R.TOO_SLOW), replies
    r.close()


def test_a_bdat_chunk_refused_before_login_is_dropped_within_the_command_deadline(
        slow: Server) -> None:
    """Before a login there is no transaction: the octets of a refused BDAT are
    dropped within the command deadline, as an overlong command line's. At the
    data rate a client declaring a huge chunk and sending faster than
    data_min_rate held the connection as long as it liked."""
    r = tls_session(slow)
    assert r.cmd("BDAT 100000000").startswith("530 5.7.0")
    got, closed_after = every_second(r.sock, b"y" * 200)  # over data_min_rate
    assert closed_after < 4.0 + SLACK
    assert got.decode().startswith(str(R.TOO_SLOW))
    r.close()


def test_a_fast_client_is_not_hit_by_the_deadlines(slow: Server) -> None:
    """A whole session that takes longer than every deadline, each unit in time."""
    r = tls_session(slow)
    assert r.cmd(f"AUTH PLAIN {plain(USER, PASSWORD)}").startswith("235")
    for _ in range(3):
        time.sleep(1.5)  # idle between commands: only the idle timeout counts
        assert r.cmd("NOOP").startswith("250")
    assert r.cmd("QUIT").startswith("221")
    r.close()
