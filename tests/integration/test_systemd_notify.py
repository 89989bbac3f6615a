"""``Type=notify``: the server tells systemd when it is ready (its listeners greet),
reloading and stopping, and pings the watchdog, from the main process only
(the unit's default ``NotifyAccess=main``)."""

from __future__ import annotations

import signal
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import PASSWORD, USER, Server, make_server
from .test_processes import set_key


class NotifySocket:
    """A stand-in for systemd's notification socket that records who sent what."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.received: list[tuple[int, dict[str, str]]] = []

    def wait_for(self, key: str, value: str = "1", timeout: float = 30) -> tuple[int, dict[str, str]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for got in self.received:
                if got[1].get(key) == value:
                    self.received.remove(got)
                    return got
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data, anc, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
            except TimeoutError:
                break
            pid = next(struct.unpack("iII", d)[0] for lvl, typ, d in anc
                       if lvl == socket.SOL_SOCKET and typ == socket.SCM_CREDENTIALS)
            fields = dict(line.split("=", 1) for line in data.decode().splitlines())
            self.received.append((pid, fields))
        raise AssertionError(f"no {key}={value} within {timeout} s; got {self.received}")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(params=["0", "1"], ids=["workers=0", "workers=1"])
def notified(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Server, NotifySocket]]:
    srv = make_server(tmp_path / "srv")
    srv.add_user(USER, PASSWORD)
    set_key(srv, "server", f"workers = {request.param}")
    sock = NotifySocket(tmp_path / "notify")
    srv.env = {**srv.env, "NOTIFY_SOCKET": str(sock.path), "WATCHDOG_USEC": "400000"}
    yield srv, sock
    if srv.proc is not None:
        srv.stop()
    sock.close()


def test_ready_reload_watchdog_and_stop_come_from_the_main_process(
    notified: tuple[Server, NotifySocket],
) -> None:
    srv, sock = notified
    srv.start()  # returns once both listeners greet
    assert srv.proc is not None
    main = srv.proc.pid
    pid, ready = sock.wait_for("READY")
    assert pid == main and ready["MAINPID"] == str(main)
    assert ready["STATUS"].startswith("serving")
    # Half of WatchdogSec= (0.4 s): several pings while we wait a second.
    pings = [sock.wait_for("WATCHDOG")[0] for _ in range(3)]
    assert pings == [main] * 3
    srv.cli("reload")
    pid, reloading = sock.wait_for("RELOADING")
    assert pid == main and int(reloading["MONOTONIC_USEC"]) > 0
    assert sock.wait_for("READY")[0] == main
    srv.proc.send_signal(signal.SIGTERM)
    assert sock.wait_for("STOPPING")[0] == main
    assert srv.stop() == 0
    # No worker or delivery process ever spoke.
    assert {pid for pid, _ in sock.received} <= {main}


def test_without_notify_socket_nothing_is_sent(tmp_path: Path) -> None:
    """Type=simple and a terminal: the variables are absent and the server serves."""
    srv = make_server(tmp_path / "srv")
    srv.env.pop("NOTIFY_SOCKET", None)
    srv.start()
    assert srv.stop() == 0
    assert "systemd notification" not in srv.log_text()
