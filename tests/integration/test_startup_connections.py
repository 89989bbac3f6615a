"""Issue 16: connections arriving while a multi-worker server starts.

The parent used to bind *and listen* on a socket of its own (to check that the
address is free), then close it for the workers' SO_REUSEPORT sockets: a
connection the kernel completed in that window was accepted and then reset
without a greeting, and a port-open readiness check took the server for ready.
Now the parent only binds: a connection during start-up is refused (nothing
listens yet) or served (a worker listens), never accepted and dropped.
"""

from __future__ import annotations

import socket
import threading
from collections import Counter
from pathlib import Path

from .conftest import Server, make_server

START_UPS = 3
#: The client's source address: not the server's, so that a connect to the port
#: while nothing listens can never connect the socket to itself.
SOURCE = "127.0.0.2"


def knock(port: int) -> str:
    """One connection: "refused", "served" (a 220 greeting) or what went wrong."""
    with socket.socket() as s:
        s.settimeout(10)
        s.bind((SOURCE, 0))
        try:
            s.connect(("127.0.0.1", port))
        except ConnectionRefusedError:
            return "refused"
        try:
            greeting = s.recv(100)
        except ConnectionResetError:
            return "reset"
        except TimeoutError:
            return "silent"
        if not greeting:
            return "closed without a greeting"
        if not greeting.startswith(b"220"):
            return f"got {greeting[:20]!r}"
        try:
            s.sendall(b"QUIT\r\n")
        except OSError:
            pass
        return "served"


def knock_until(port: int, stop: threading.Event, seen: Counter[str]) -> None:
    while not stop.is_set():
        seen[knock(port)] += 1


def test_connections_during_a_multi_worker_start_up_are_refused_or_served(tmp_path: Path) -> None:
    srv: Server = make_server(tmp_path / "srv", "\n[server]\nworkers = 2\n")
    seen: Counter[str] = Counter()
    for _ in range(START_UPS):
        stop = threading.Event()
        knocker = threading.Thread(target=knock_until, args=(srv.submission, stop, seen))
        knocker.start()
        try:
            srv.start()  # returns once both ports greet
            # A few more while the second worker may still be starting.
            for _ in range(20):
                seen[knock(srv.submission)] += 1
        finally:
            stop.set()
            knocker.join(timeout=30)
            if srv.proc is not None:
                srv.stop()
    assert seen["served"] > 0 and seen["refused"] > 0, seen  # the loop saw both phases
    assert set(seen) == {"served", "refused"}, seen
