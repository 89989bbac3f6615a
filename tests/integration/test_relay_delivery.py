"""Relay delivery as a default install runs it: the real ``smtpgate serve`` (uvloop,
``workers = 0``, the config ``smtpgate init`` writes) with ``[delivery] mode =
"relay"`` pointed at a real next hop on loopback.

The next hop is aiosmtpd in its own process (tests/peers/next_hop.py), or a
"stuck" hop in this process that accepts TCP and then stalls: it never greets,
or greets and then neither reads nor answers. The stuck hop and the working one
take turns on the same port, as a relay host does when it recovers.
"""

from __future__ import annotations

import importlib.util
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import PASSWORD, USER, Server, free_port, make_server

HOP_SCRIPT = Path(__file__).resolve().parents[1] / "peers" / "next_hop.py"
#: Exit must come within shutdown_grace plus this: start-up of the shutdown, the
#: cancelled delivery unwinding, the process exiting. Before the fix it took 30 s+.
EXIT_MARGIN = 8.0
GRACE = 2.0


# --- next hops -----------------------------------------------------------------------------


class NextHop:
    """aiosmtpd on ``port``, storing what it accepts under ``out/new``."""

    def __init__(self, port: int, out: Path) -> None:
        self.port = port
        self.out = out
        self.log = out.parent / f"next-hop-{port}.log"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(HOP_SCRIPT), "--port", str(port), "--out", str(out)],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + 20
        while not self._greets():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("next hop did not start:\n" + self.log.read_text())
            time.sleep(0.05)

    def _greets(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
                ok = s.recv(100).startswith(b"220 ")
                s.sendall(b"QUIT\r\n")
                return ok
        except OSError:
            return False

    def messages(self) -> list[bytes]:
        new = self.out / "new"
        return [p.read_bytes() for p in sorted(new.glob("*"))] if new.exists() else []

    def wait_for(self, count: int, timeout: float = 30) -> list[bytes]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.messages()
            if len(got) >= count:
                return got
            time.sleep(0.05)
        raise AssertionError(f"the next hop has {len(self.messages())} messages, want {count}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


class StuckHop:
    """Accepts TCP on ``port`` and stalls: with ``greet`` it sends a 220 first."""

    def __init__(self, port: int, *, greet: bool) -> None:
        self.greet = greet
        self.connected = threading.Event()
        self._conns: list[socket.socket] = []
        self._stopping = False
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", port))
        self._sock.listen(16)
        self._sock.settimeout(0.05)
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stopping:
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self.greet:
                conn.sendall(b"220 stuck.test ESMTP\r\n")
            self._conns.append(conn)  # and never read from again
            self.connected.set()

    def close(self) -> None:
        self._stopping = True
        self._thread.join(5)
        for conn in self._conns:
            conn.close()
        self._sock.close()


@pytest.fixture
def cleanup() -> Iterator[list[NextHop | StuckHop | Server]]:
    things: list[NextHop | StuckHop | Server] = []
    yield things
    for thing in reversed(things):
        if isinstance(thing, Server):
            if thing.proc is not None:
                thing.proc.kill()
                thing.proc.wait(10)
                thing.proc = None
        elif isinstance(thing, NextHop):
            thing.stop()
        else:
            thing.close()


# --- the server ----------------------------------------------------------------------------


def _in_table(text: str, table: str, lines: str) -> str:
    """Add ``lines`` to ``[table]`` of the config ``init`` wrote (creating it if absent)."""
    header = f"[{table}]\n"
    if header in text:
        return text.replace(header, header + lines + "\n", 1)
    return text + f"\n{header}{lines}\n"


def relay_server(root: Path, hop_port: int, *, workers: int | None = None,
                 timeout: float | None = None) -> Server:
    """``init``'s config with ``[delivery] mode = "relay"`` to 127.0.0.1:``hop_port``;
    ``timeout`` sets the greeting and command timeouts, retries come after 1-2 s."""
    srv = make_server(root)
    text = srv.config.read_text()
    text = text.replace('mode = "maildir"\n', "")
    text = _in_table(text, "delivery",
                     f'mode = "relay"\nrelay_host = "127.0.0.1"\nrelay_port = {hop_port}')
    if timeout is not None:
        text = _in_table(text, "delivery", f"relay_greeting_timeout = {timeout}\n"
                                           f"relay_command_timeout = {timeout}")
    text = _in_table(text, "queue", "retry_initial = 1\nretry_max = 2")
    server_keys = f"shutdown_grace = {GRACE}"
    if workers is not None:
        server_keys += f"\nworkers = {workers}"
    text = _in_table(text, "server", server_keys)
    srv.config.write_text(text)
    srv.add_user(USER, PASSWORD)
    return srv


def send(srv: Server, tag: str) -> None:
    msg = (f"From: {USER}\r\nTo: bob@example.net\r\nMessage-ID: <{tag}@example.org>\r\n"
           f"Subject: {tag}\r\n\r\nrelayed {tag}\r\n")
    try:
        with smtplib.SMTP_SSL("127.0.0.1", srv.submissions, timeout=20,
                              context=srv.client_context()) as s:
            s.login(USER, PASSWORD)
            s.sendmail(USER, ["bob@example.net"], msg)
    except (OSError, smtplib.SMTPException) as e:
        raise AssertionError(f"submission failed: {e!r}\n{srv.log_text()}") from e


def spooled(srv: Server) -> list[Path]:
    return sorted((srv.root / "spool" / "queue").glob("*.msg"))


def wait_for_log(srv: Server, *needles: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = srv.log_text()
        if all(n in text for n in needles):
            return text
        time.sleep(0.05)
    raise AssertionError(f"log lacks {needles}:\n{srv.log_text()}")


def wait_until_empty(srv: Server, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while spooled(srv):
        if time.monotonic() > deadline:
            raise AssertionError(f"still spooled: {spooled(srv)}\n{srv.log_text()}")
        time.sleep(0.05)


# --- tests ---------------------------------------------------------------------------------


def test_relay_delivers_under_uvloop_with_default_workers(
    tmp_path: Path, cleanup: list[NextHop | StuckHop | Server]
) -> None:
    assert importlib.util.find_spec("uvloop") is not None  # so serve runs on uvloop
    port = free_port()
    hop = NextHop(port, tmp_path / "hop")
    cleanup.append(hop)
    srv = relay_server(tmp_path / "srv", port)  # no [server] workers: the default, 0
    cleanup.append(srv)
    srv.start()
    send(srv, "uvloop")
    (got,) = hop.wait_for(1)
    assert b"X-Hop-To: bob@example.net\r\n" in got
    assert b"Subject: uvloop\r\n" in got and b"relayed uvloop\r\n" in got
    wait_until_empty(srv)
    assert "delivered to=<bob@example.net> relay 127.0.0.1" in srv.log_text()
    assert srv.stop() == 0


def test_a_relay_server_offers_no_binarymime_and_refuses_it(
    tmp_path: Path, cleanup: list[NextHop | StuckHop | Server]
) -> None:
    # RFC 3030 §3: the relay sends DATA, so binary content could not be passed on.
    port = free_port()
    hop = NextHop(port, tmp_path / "hop")
    cleanup.append(hop)
    srv = relay_server(tmp_path / "srv", port)
    cleanup.append(srv)
    srv.start()
    with smtplib.SMTP_SSL("127.0.0.1", srv.submissions, timeout=20,
                          context=srv.client_context()) as s:
        s.ehlo()
        assert s.has_extn("chunking") and not s.has_extn("binarymime")
        s.login(USER, PASSWORD)
        code, text = s.mail(USER, ["BODY=BINARYMIME"])
        assert (code, text[:5]) == (555, b"5.5.4")
        assert s.mail(USER, ["BODY=8BITMIME"])[0] == 250
    assert srv.stop() == 0


@pytest.mark.parametrize(
    ("greet", "step"), [(False, "the greeting"), (True, "the reply to EHLO")],
    ids=["never-greets", "greets-then-stalls"],
)
def test_stuck_next_hop_defers_says_why_and_delivers_once_it_works(
    tmp_path: Path, cleanup: list[NextHop | StuckHop | Server], greet: bool, step: str
) -> None:
    port = free_port()
    stuck = StuckHop(port, greet=greet)
    cleanup.append(stuck)
    srv = relay_server(tmp_path / "srv", port, timeout=1)
    cleanup.append(srv)
    srv.start()
    send(srv, "stuck")
    wait_for_log(srv, f"relay 127.0.0.1:{port}: timed out after 1 s waiting for {step}",
                 "deferred to=<bob@example.net>")
    assert len(spooled(srv)) == 1  # deferred, not lost
    stuck.close()  # the relay host recovers, on the same port
    hop = NextHop(port, tmp_path / "hop")
    cleanup.append(hop)
    (got,) = hop.wait_for(1)
    assert b"Subject: stuck\r\n" in got
    wait_until_empty(srv)
    assert len(hop.messages()) == 1
    assert srv.stop() == 0


@pytest.mark.parametrize("workers", [None, 1], ids=["workers-default", "workers-1"])
def test_sigterm_during_a_stuck_delivery_exits_within_grace_and_keeps_the_message(
    tmp_path: Path, cleanup: list[NextHop | StuckHop | Server], workers: int | None
) -> None:
    port = free_port()
    stuck = StuckHop(port, greet=False)
    cleanup.append(stuck)
    # The RFC's 5-minute greeting timeout: only the shutdown can end this delivery.
    srv = relay_server(tmp_path / "srv", port, workers=workers)
    cleanup.append(srv)
    srv.start()
    send(srv, "sigterm")
    assert stuck.connected.wait(30), "the relay never connected"
    assert srv.proc is not None
    srv.proc.send_signal(signal.SIGTERM)
    try:
        rc = srv.proc.wait(timeout=GRACE + EXIT_MARGIN)
    except subprocess.TimeoutExpired:
        pytest.fail("still running after shutdown_grace + margin:\n" + srv.log_text())
    srv.proc = None
    assert rc == 0
    assert "cancelled 1 delivery in progress; " in srv.log_text()
    assert "stays queued as before" in srv.log_text()
    assert len(spooled(srv)) == 1  # still queued

    stuck.close()
    hop = NextHop(port, tmp_path / "hop")
    cleanup.append(hop)
    srv.start()
    (got,) = hop.wait_for(1)
    assert b"Subject: sigterm\r\n" in got
    wait_until_empty(srv)
    assert len(hop.messages()) == 1
    assert srv.stop() == 0


def test_a_route_for_an_internationalized_domain_takes_its_a_label_form(
    tmp_path: Path, cleanup: list[NextHop | StuckHop | Server]
) -> None:
    """``[[delivery.routes]] domain = "bücher.example"``: mail a client without
    SMTPUTF8 addressed to bob@xn--bcher-kva.example (the same domain) went to
    relay_host instead of the route's next hop."""
    default_port, routed_port = free_port(), free_port()
    default_hop = NextHop(default_port, tmp_path / "default")
    routed_hop = NextHop(routed_port, tmp_path / "routed")
    cleanup.extend([default_hop, routed_hop])
    srv = relay_server(tmp_path / "srv", default_port)
    cleanup.append(srv)
    srv.config.write_text(srv.config.read_text() + (
        f'\n[[delivery.routes]]\ndomain = "bücher.example"\nnext_hop = "127.0.0.1:{routed_port}"\n'))
    srv.start()
    msg = f"From: {USER}\r\nTo: bob@xn--bcher-kva.example\r\nSubject: idn\r\n\r\nrouted\r\n"
    with smtplib.SMTP_SSL("127.0.0.1", srv.submissions, timeout=20,
                          context=srv.client_context()) as s:
        s.login(USER, PASSWORD)
        s.sendmail(USER, ["bob@xn--bcher-kva.example", "carol@example.net"], msg)
    routed = routed_hop.wait_for(1)
    wait_until_empty(srv)
    assert len(routed) == 1 and b"X-Hop-To: bob@xn--bcher-kva.example\r\n" in routed[0]
    defaulted = default_hop.wait_for(1)
    assert len(defaulted) == 1 and b"X-Hop-To: carol@example.net\r\n" in defaulted[0]
    assert srv.stop() == 0
