"""What a stranger's HTTP requests can make the process that serves the web admin
and /metrics hold, against the real ``smtpgate serve`` (the config `smtpgate init`
writes; with ``workers = 0`` on this machine's cores the delivery process serves
both): the size of a request head, requests sent ahead of an answer, the answer
to a body over the forms' size, how long a stop waits for logins being answered,
and how many Argon2id runs strangers' logins get at once (the last two with the
default costs, not the cheap ones of the other tests).
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyotp
import pytest

from tests.integration.conftest import Server, free_port, make_http_server, make_server, wait_http

ADMIN_PASSWORD = "admin passphrase 4 tests"

#: A header line as long as aiohttp lets one be (its max_field_size is 8190).
BIG_HEADER = b"X-Pad-%03d: " + b"a" * 8000 + b"\r\n"


@dataclass
class Endpoints:
    srv: Server
    admin: int
    metrics: int
    #: The serving process's RSS (MiB) before any test held heads.
    baseline: float = 0.0

    def serving_pid(self) -> int:
        """The process that serves the web admin (it says so in the log)."""
        m = re.search(r"smtpgate\.web\[(\d+)\]: web admin on", self.srv.log_text())
        assert m, self.srv.log_text()
        return int(m.group(1))


@pytest.fixture(scope="module")
def endpoints(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Endpoints]:
    srv, admin, metrics = make_http_server(tmp_path_factory.mktemp("limits") / "srv")
    srv.start()
    wait_http(srv, admin)
    yield Endpoints(srv, admin, metrics)
    if srv.proc is not None:
        srv.stop()


def _answers(port: int, path: str) -> bool:
    try:
        return _status(port, f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                             "Connection: close\r\n\r\n".encode()) == 200
    except OSError:
        return False


def _status(port: int, request: bytes, source: str = "127.0.0.1") -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=20,
                                  source_address=(source, 0)) as s:
        try:
            s.sendall(request)
        except OSError:
            pass  # refused before the whole head was sent: the answer is still there
        line = s.makefile("rb").readline()
    m = re.match(rb"HTTP/1\.[01] (\d{3}) ", line)
    assert m, line
    return int(m.group(1))


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        kib = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return kib / 1024


def _head(path: str, headers: int, *, end: bool) -> bytes:
    return (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode()
            + b"".join(BIG_HEADER % i for i in range(headers)) + (b"\r\n" if end else b""))


def _grown_by_held_heads(endpoints: Endpoints, headers: int) -> float:
    """MiB the serving process grows by while 32 connections from two addresses
    (the per-address cap is 16) each send a head of ``headers`` long lines and
    never end it; from the size before the first such test (an allocator keeps
    what it got)."""
    pid = endpoints.serving_pid()
    _answers(endpoints.admin, "/login")
    before = endpoints.baseline = endpoints.baseline or _rss_mib(pid)
    held: list[socket.socket] = []
    try:
        for i in range(32):
            s = socket.create_connection(("127.0.0.1", endpoints.admin), timeout=20,
                                         source_address=(f"127.0.23.{1 + i % 2}", 0))
            held.append(s)
            try:
                s.sendall(_head("/login", headers, end=False))
            except OSError:
                pass  # refused before the whole head was sent
        time.sleep(1.0)
        return _rss_mib(pid) - before
    finally:
        for s in held:
            s.close()


def test_heads_held_open_by_strangers_cost_the_serving_process_little(
        endpoints: Endpoints) -> None:
    """Before: aiohttp's defaults let a request head carry 127 header lines of 8 KiB
    (1 MiB), which the parser keeps twice (bytes and text) until the head ends or
    its 15 s are up: 32 connections from two addresses, no login, made the
    delivery process grow by about 60 MiB (128 connections from eight: 250 MiB,
    kept by the allocator afterwards). Now a head over 32 lines is refused as it
    comes, and 32 held heads of the most that is accepted cost a quarter of that."""
    for headers in (120, 31):  # refused at the 33rd line; accepted whole, held
        grown = _grown_by_held_heads(endpoints, headers)
        assert grown < 30, f"{headers} lines: the serving process grew by {grown:.0f} MiB"


def _login_form(s: socket.socket) -> tuple[bytes, bytes]:
    """The login page read on ``s``: its form's login token and the login cookie."""
    s.sendall(b"GET /login HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    page = b""
    while b"</html>" not in page:
        page += s.recv(65536)
    token = re.search(rb'name="login_token" value="([^"]+)"', page)
    cookie = re.search(rb"Set-Cookie: (smtpgate_login=[^;]+)", page)
    assert token and cookie, page[:300]
    return token.group(1), cookie.group(1)


def _login_post(cookie: bytes, body: bytes) -> bytes:
    """A login form's POST with ``cookie`` (from `_login_form`) and ``body``."""
    return (b"POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: %s\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (cookie, len(body), body))


def _queue_wrong_logins(port: int, count: int, source: str, behind: bytes = b"",
                        name: str = "root") -> list[socket.socket]:
    """``count`` connections from ``source``, each a wrong admin login sent whole
    and its answer left unread: the guard's penalty makes each wait longer than
    the one before (they are answered one at a time per address, and per name).
    ``behind``: sent right after the login (pipelined), as much of it as the
    kernel takes."""
    held = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port), timeout=20,
                                     source_address=(source, 0))
        held.append(s)
        token, cookie = _login_form(s)
        body = b"login_token=%s&name=%s&password=guess&code=000000" % (token, name.encode())
        s.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            s.send(_login_post(cookie, body) + behind)
    return held


def test_requests_sent_behind_a_slow_login_wait_unread(endpoints: Endpoints) -> None:
    """Before: aiohttp parses the requests a client sends ahead (pipelined) while
    a handler runs, up to 32 queued, and a login from an address with failures
    sleeps the guard's penalty (here up to 4 s) and waits for that address's
    logins before it: 16 connections from one address (the per-address cap), each
    a wrong login and then 31 heads of 30 long lines, made the serving process
    grow by about 140 MiB (eight addresses: a gigabyte). Now what comes while a
    handler runs is held unparsed, 64 KiB at most (more closes the connection),
    and the rest waits in the kernel."""
    pid = endpoints.serving_pid()
    _answers(endpoints.admin, "/login")
    before = endpoints.baseline = endpoints.baseline or _rss_mib(pid)
    held: list[socket.socket] = []
    try:
        held = _queue_wrong_logins(endpoints.admin, 16, "127.0.23.9",
                                   behind=_head("/login", 30, end=True) * 31)
        time.sleep(4.0)
        grown = _rss_mib(pid) - before
    finally:
        for s in held:
            s.close()
    # What aiohttp had read before the handler began (a read is up to 256 KiB)
    # and what is held: under 1 MiB a connection, 25-35 MiB with the allocator's.
    assert grown < 60, f"the serving process grew by {grown:.0f} MiB"


@pytest.mark.parametrize("which", ["admin", "metrics"])
def test_a_head_with_more_header_lines_than_a_browser_sends_is_a_400(
        endpoints: Endpoints, which: str) -> None:
    port = endpoints.admin if which == "admin" else endpoints.metrics
    path = "/login" if which == "admin" else "/metrics"
    assert _status(port, _head(path, 30, end=True)) == 200
    assert _status(port, _head(path, 40, end=True)) == 400
    assert _answers(port, path)  # and the endpoint serves on


def _answer_while_sending(s: socket.socket, body: bytes) -> tuple[bytes, list[str]]:
    """Send ``body`` from a thread (the server may stop reading it) and read the
    answer meanwhile: its status line and its header lines, lower-cased."""

    def send() -> None:
        try:
            s.sendall(body)
        except OSError:
            pass

    threading.Thread(target=send, daemon=True).start()
    reply = s.makefile("rb")
    status = reply.readline()
    headers = []
    while (line := reply.readline()) not in (b"\r\n", b""):
        headers.append(line.decode().lower())
    return status, headers


def test_a_form_body_over_the_limit_is_a_413_at_once_not_a_408_later(
        endpoints: Endpoints) -> None:
    """Before: a POST whose Content-Length said more than the forms' 64 KiB, sent at
    once, waited for a body aiohttp had stopped reading (its buffer full), and got
    "408: the request body did not arrive in time" 15 s later."""
    body = b"name=" + b"x" * (2 * 1024 * 1024)
    with socket.create_connection(("127.0.0.1", endpoints.admin), timeout=30) as s:
        s.sendall(b"POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                  b"Content-Type: application/x-www-form-urlencoded\r\n"
                  b"Content-Length: %d\r\n\r\n" % len(body))
        status, headers = _answer_while_sending(s, body)
    # The fix is the status: until 2026-12 the same request got a 408, 15 s later.
    assert status.startswith(b"HTTP/1.1 413 "), status
    assert any(h.startswith("content-security-policy:") for h in headers), headers
    assert _answers(endpoints.admin, "/login")


def test_a_chunked_form_body_over_the_limit_is_a_413_at_once_too(endpoints: Endpoints) -> None:
    """Before: a chunked body has no Content-Length to judge, and one of 2 MiB sent
    whole got the same 408 after 15 s."""
    body = b"name=" + b"x" * (2 * 1024 * 1024)
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 16384]), body[i:i + 16384])
                       for i in range(0, len(body), 16384)) + b"0\r\n\r\n"
    with socket.create_connection(("127.0.0.1", endpoints.admin), timeout=30) as s:
        s.sendall(b"POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                  b"Content-Type: application/x-www-form-urlencoded\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n")
        status, _ = _answer_while_sending(s, chunked)
    assert status.startswith(b"HTTP/1.1 413 "), status
    assert _answers(endpoints.admin, "/login")


def test_a_stop_does_not_wait_for_strangers_logins_to_be_answered(tmp_path: Path) -> None:
    """Before: a stop waited for every request in flight, up to aiohttp's 60 s, and
    a stranger's logins queued behind the guard's penalties (0.5, 1, 2, 4, 4 ...
    s, one at a time per address) kept the delivery process, and with it the
    server, from stopping: 12 of them held a SIGTERM for about 35 s, 16 of them for
    the whole minute. Requests still unanswered get a few seconds, then are ended."""
    port = free_port()
    srv = make_server(tmp_path / "srv", f'\n[admin]\nlisten = "127.0.0.1:{port}"\n')
    srv.start()
    held: list[socket.socket] = []
    try:
        wait_http(srv, port)
        held = _queue_wrong_logins(port, 12, "127.0.24.1")
        time.sleep(1.0)  # the first few answered, the rest waiting their turn
        assert srv.stop(timeout=90) == 0
        # Each connection holds what it was answered (after the login page's
        # answer, already read): a login's answer, or nothing at all. Until 2026-12
        # the stop waited for every login to be answered (about 35 s for these 12).
        answered = 0
        for s in held:
            s.setblocking(True)
            s.settimeout(5)
            data = b""
            with contextlib.suppress(OSError):
                while chunk := s.recv(65536):
                    data += chunk
            answered += data.startswith(b"HTTP/1.1 ")
    finally:
        for s in held:
            s.close()
        if srv.proc is not None:
            srv.stop()
    assert answered < len(held), "every queued login was answered before the stop"


def _full_cost_server(root: Path, port: int) -> Server:
    """A server with the web admin on ``port`` and the default Argon2id costs (64
    MiB, t = 3), not the cheap ones of the other tests."""
    srv = make_server(root, f'\n[admin]\nlisten = "127.0.0.1:{port}"\n')
    text = srv.config.read_text()
    cheap = "argon2_memory_kib = 8192\nargon2_time_cost = 1\n"
    assert cheap in text
    srv.config.write_text(text.replace(cheap, ""))
    return srv


def test_strangers_logins_hash_one_at_a_time_at_full_argon2_cost(tmp_path: Path) -> None:
    """Before: each admin login's Argon2id ran on the event loop's default thread
    pool, as many at once as it has threads (6 on two cores, 20 on sixteen), at
    the full cost of 64 MiB each, outside the hash scheduler that bounds SMTP
    AUTH's; twelve strangers' logins at once, from twelve addresses (each name
    unknown: the decoy hash costs the same), took the process that delivers mail
    from 65 to 450 MiB. Now one runs at a time; each is still counted."""
    port = free_port()
    srv = _full_cost_server(tmp_path / "srv", port)
    srv.start()
    held: list[socket.socket] = []
    try:
        wait_http(srv, port)
        pid = Endpoints(srv, port, 0).serving_pid()
        before = _rss_mib(pid)
        for i in range(12):  # one each: no penalty, no waiting for a turn
            held += _queue_wrong_logins(port, 1, f"127.0.25.{i + 1}", name=f"nobody{i}")
        peak, answered = 0.0, 0
        deadline = time.monotonic() + 60
        while answered < len(held) and time.monotonic() < deadline:
            peak = max(peak, _rss_mib(pid))
            answered = srv.log_text().count("web admin: failed login as 'nobody")
            time.sleep(0.01)
        assert answered == len(held)
    finally:
        for s in held:
            s.close()
        if srv.proc is not None:
            srv.stop()
    assert peak - before < 160, f"from {before:.0f} to {peak:.0f} MiB"


def _admin_login(port: int, name: str, password: str, code: str) -> int:
    """The status of one whole admin login from 127.0.0.1 (form, then POST)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        token, cookie = _login_form(s)
        body = urllib.parse.urlencode({"login_token": token.decode(), "name": name,
                                       "password": password, "code": code}).encode()
        s.sendall(_login_post(cookie, body))
        status = s.makefile("rb").readline()
    m = re.match(rb"HTTP/1\.1 (\d{3}) ", status)
    assert m, status
    return int(m.group(1))


def test_an_admin_from_a_known_address_does_not_wait_for_strangers_hashes(
        tmp_path: Path) -> None:
    """With the password checks one at a time, an admin logging in while strangers
    guess would wait for each of their Argon2id runs before its own; as for SMTP
    AUTH (auth/verify_scheduler.py), an attempt the guard trusts (an address the
    admin has logged in from, no recent failures) has a slot of its own."""
    port = free_port()
    srv = _full_cost_server(tmp_path / "srv", port)
    out = srv.cli("admin", "add", "root", "--password-stdin", stdin=ADMIN_PASSWORD + "\n").stdout
    uri = next(line for line in out.splitlines() if line.startswith("otpauth://"))
    totp = pyotp.TOTP(urllib.parse.parse_qs(urllib.parse.urlparse(uri).query)["secret"][0])
    srv.start()
    held: list[socket.socket] = []
    try:
        wait_http(srv, port)
        step = int(time.time() // 30)
        assert _admin_login(port, "root", ADMIN_PASSWORD, totp.at(step * 30)) == 303
        for i in range(12):
            held += _queue_wrong_logins(port, 1, f"127.0.26.{i + 1}", name=f"nobody{i}")
        start = time.monotonic()
        # A code is good once: the next step's, which the server takes as a
        # neighbour of its own (site.py's _totp_step), rather than waiting for it.
        assert _admin_login(port, "root", ADMIN_PASSWORD, totp.at((step + 1) * 30)) == 303
        took = time.monotonic() - start
        answered = srv.log_text().count("web admin: failed login as 'nobody")
    finally:
        for s in held:
            s.close()
        if srv.proc is not None:
            srv.stop()
    # Not a timing (a shared CI machine's Argon2id runs vary): how many of the
    # strangers' twelve checks were answered before the admin's own.
    assert answered < 10, f"{answered} strangers answered first (the admin's took {took:.1f} s)"
