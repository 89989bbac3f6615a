"""``smtpgate status``: what a running server reports of itself, and what the
command says when it is stopped or stuck."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from .conftest import PASSWORD, USER, Server, free_port, make_server
from .test_processes import set_key


@pytest.fixture(params=["0", "1"], ids=["workers=0", "workers=1"])
def running(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Server]:
    # The web admin and metrics on, as in the config init writes (on free ports).
    srv = make_server(tmp_path / "srv", f'\n[admin]\nlisten = "127.0.0.1:{free_port()}"\n'
                      f'\n[metrics]\nlisten = "127.0.0.1:{free_port()}"\n')
    srv.add_user(USER, PASSWORD)
    set_key(srv, "server", f"workers = {request.param}")
    srv.start()
    yield srv
    if srv.proc is not None:
        srv.stop()


def status(srv: Server) -> tuple[int, dict[str, Any]]:
    done = srv.cli("status", "--json", check=False)
    assert "Traceback" not in done.stderr
    return done.returncode, json.loads(done.stdout)


def zoned(value: str) -> datetime:
    t = datetime.fromisoformat(value)
    assert t.utcoffset() is not None, value
    return t


def wait_status(srv: Server, ok: Any, timeout: float = 15) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        code, doc = status(srv)
        if code == 0 and ok(doc["server"]):
            return doc
        if time.monotonic() > deadline:
            raise AssertionError(doc)
        time.sleep(0.2)


def test_running_server_reports_itself(running: Server) -> None:
    srv = running
    assert srv.proc is not None
    with socket.create_connection(("127.0.0.1", srv.submission)) as held:
        assert held.recv(100).startswith(b"220 ")
        doc = wait_status(srv, lambda s: s["sessions"] == 1 and all(
            p["ready"] for p in s["processes"]))
    server = doc["server"]
    assert server["pid"] == srv.proc.pid and server["stale"] is False
    assert server["config_file"] == str(srv.config.resolve())
    assert [lst["address"] for lst in server["listeners"]] == [
        f"127.0.0.1:{srv.submission}", f"127.0.0.1:{srv.submissions}"]
    names = sorted(p["name"] for p in server["processes"])
    if server["workers"] > 1:
        assert names == sorted([*(f"worker {i + 1}" for i in range(server["workers"])), "delivery"])
    else:
        assert names == []
    config = srv.config.read_text()
    admin = re.search(r'\[admin\]\nlisten = "([^"]+)"', config)
    metrics = re.search(r'\[metrics\]\nlisten = "([^"]+)"', config)
    assert admin is not None and metrics is not None
    assert server["admin"] == f"http://{admin.group(1)}/"
    assert server["metrics"] == f"http://{metrics.group(1)}/metrics"
    queue = dict(doc["queue"])
    assert queue.pop("free_bytes") > 0 and queue.pop("reserve_bytes") == 52_500_000
    assert queue.pop("free_inodes") > 1000
    assert queue == {"messages": 0, "unreadable": 0, "set_aside": 0, "held": 0, "bytes": 0,
                     "oldest_age": None}
    assert doc["guard"]["blocks"] == 0
    assert doc["certificate"]["days_left"] > 300
    # Times in ISO 8601 with their zone, as in every command's JSON (docs/cli.md).
    loaded = zoned(server["config_loaded"])
    assert zoned(server["updated"]) >= zoned(server["started"])
    assert all(zoned(p["started"]) for p in server["processes"])
    srv.cli("reload")
    wait_status(srv, lambda s: zoned(s["config_loaded"]) > loaded)
    text = srv.cli("status").stdout
    assert f"running, pid {srv.proc.pid}" in text and "queue:        0 messages" in text
    assert re.search(r"spool disk:   \d+ MB free, 52 MB kept in reserve \(queue.min_free_space\); "
                     r"\d+ inodes free\n",
                     text)
    assert f"web admin:    http://{admin.group(1)}/\n" in text
    assert f"metrics:      http://{metrics.group(1)}/metrics\n" in text


def test_stuck_and_stopped(running: Server) -> None:
    srv = running
    assert srv.proc is not None
    wait_status(srv, lambda s: True)
    srv.proc.send_signal(signal.SIGSTOP)  # a main loop that no longer runs
    try:
        deadline = time.monotonic() + 20
        while (code := status(srv)[0]) == 0 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert code == 1
        assert "STALE" in srv.cli("status", check=False).stdout
    finally:
        srv.proc.send_signal(signal.SIGCONT)
    assert srv.stop() == 0
    code, doc = status(srv)
    assert code == 3 and doc["server"]["running"] is False
    assert not list(srv.root.glob("*.status.json"))
    assert "not running" in srv.cli("status", check=False).stdout


def test_a_failed_reload_shows_on_screen(running: Server) -> None:
    """Before: a reload that failed (here a key that belongs to another certificate,
    as a botched renewal leaves it) showed nowhere in `status` but the JSON, while
    its certificate line read the new file: the screen looked healthy with the old
    certificate still served. Now a reload: line says FAILED and why, and a good
    reload says what it kept until a restart."""
    srv = running
    loaded = zoned(wait_status(srv, lambda s: True)["server"]["config_loaded"])
    assert "reload:" not in srv.cli("status").stdout  # no reload yet
    tls = srv.root / "tls"
    good_key = (tls / "key.pem").read_bytes()
    other = subprocess.run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt",
                            "ec_paramgen_curve:P-256"], check=True, capture_output=True)
    (tls / "key.pem").write_bytes(other.stdout)
    assert srv.cli("reload", check=False).returncode == 1
    text = srv.cli("status").stdout
    assert re.search(r"\nreload:       FAILED \d+ s ago: tls\.key: .*; the running "
                     r"configuration and certificate are kept\n", text), text
    (tls / "key.pem").write_bytes(good_key)
    set_key(srv, "server", "shutdown_grace = 7")
    assert srv.cli("reload").returncode == 0
    wait_status(srv, lambda s: zoned(s["config_loaded"]) > loaded)
    text = srv.cli("status").stdout
    assert re.search(r"\nreload:       ok \d+ s ago; kept as running until a restart: "
                     r"server\.shutdown_grace\n", text), text
