"""Which process serves the web admin, and its socket: the server itself with one
process; the delivery process with several, on the socket the main process bound
(a restarted delivery process serves it again); a port already taken stops the
start-up with the key named (exit 2)."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path

from tests.integration.conftest import SMTPGATE, free_port, make_server, wait_http


def test_one_process_serves_it_itself(tmp_path: Path) -> None:
    port = free_port()
    srv = make_server(tmp_path / "srv", f'\n[server]\nworkers = 1\n\n[admin]\nlisten = "127.0.0.1:{port}"\n')
    srv.start()
    try:
        wait_http(srv, port)
        assert f"web admin on http://127.0.0.1:{port}/" in srv.log_text()
    finally:
        assert srv.stop() == 0
    with socket.socket() as s:  # closed at exit: the port is free again
        s.bind(("127.0.0.1", port))


def test_with_workers_the_delivery_process_serves_it_and_again_after_a_restart(
        tmp_path: Path) -> None:
    port = free_port()
    srv = make_server(tmp_path / "srv", f'\n[server]\nworkers = 2\n\n[admin]\nlisten = "127.0.0.1:{port}"\n')
    srv.start()
    try:
        wait_http(srv, port)
        status = srv.root / "smtpgate.status.json"
        deadline = time.monotonic() + 10
        while not status.exists() or not json.loads(status.read_text()).get("processes"):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        procs = {p["name"]: p["pid"] for p in json.loads(status.read_text())["processes"]}
        delivery = procs["delivery"]
        os.kill(delivery, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while True:  # the supervisor starts a new delivery process, on the same socket
            now = {p["name"]: p["pid"] for p in json.loads(status.read_text())["processes"]}
            if now.get("delivery") not in (None, delivery):
                break
            assert time.monotonic() < deadline, srv.log_text()
            time.sleep(0.1)
        wait_http(srv, port)
    finally:
        assert srv.stop() == 0


def test_a_taken_admin_port_stops_the_start_with_the_key_named(tmp_path: Path) -> None:
    import subprocess

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        srv = make_server(tmp_path / "srv", f'\n[admin]\nlisten = "127.0.0.1:{port}"\n')
        run = subprocess.run([SMTPGATE, "serve", "--config", str(srv.config)], env=srv.env,
                             capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 2, run.stderr
    assert "admin.listen" in run.stderr and "cannot listen" in run.stderr
