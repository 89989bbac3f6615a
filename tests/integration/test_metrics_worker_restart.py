"""A worker killed and restarted leaves no metric files behind, and no total goes down.

Each process kept its counts in files named by its process id in
``smtpgate.metrics/``; a dead worker's files (128 KiB) had to stay for the totals
not to fall, so a crash-looping worker piled them up until the next start. A
supervised child now counts under its slot's name (``w1``, ``delivery``): its
replacement opens the same files and counts on. A real server with two workers,
``kill -9`` three times, scraped between the deaths.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from tests.integration.conftest import PASSWORD, USER, Server, free_port, make_server
from tests.integration.test_metrics import login, sample, scrape

pytestmark = pytest.mark.slow


def _processes(srv: Server) -> dict[str, int]:
    """Name to pid of the supervisor's children, as its status file has them."""
    [path] = srv.root.rglob("smtpgate.status.json")
    return {p["name"]: p["pid"] for p in json.loads(path.read_text())["processes"]}


def _restarted(srv: Server, name: str, dead: int) -> int:
    """The pid of ``name``'s replacement once it is ready (bounded)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            [path] = srv.root.rglob("smtpgate.status.json")
            procs = json.loads(path.read_text())["processes"]
        except (ValueError, OSError):
            procs = []
        for p in procs:
            if p["name"] == name and p["pid"] != dead and p["ready"]:
                return int(p["pid"])
        assert time.monotonic() < deadline, srv.log_text()
        time.sleep(0.1)


def test_killed_workers_leave_no_files_and_totals_never_fall(tmp_path: Path) -> None:
    port = free_port()
    srv = make_server(tmp_path / "srv", '\n[server]\nworkers = 2\n'
                                        f'\n[metrics]\nlisten = "127.0.0.1:{port}"\n')
    srv.add_user(USER, PASSWORD)
    srv.start()
    metrics_dir = srv.root / "smtpgate.metrics"
    try:
        logins = 0
        for _ in range(4):
            login(srv, USER, PASSWORD).quit()
            logins += 1
        files = sorted(os.listdir(metrics_dir))
        total = sample(scrape(port), "smtpgate_auth_attempts_total", result="success")
        assert total == logins
        for _ in range(3):
            victim = _processes(srv)["worker 1"]
            os.kill(victim, signal.SIGKILL)
            _restarted(srv, "worker 1", victim)
            # Before any login of the replacement: what the dead one counted stays.
            after = sample(scrape(port), "smtpgate_auth_attempts_total", result="success")
            assert after == total, "a total went down when a worker died"
            for _ in range(3):
                login(srv, USER, PASSWORD).quit()
                logins += 1
            total = sample(scrape(port), "smtpgate_auth_attempts_total", result="success")
            assert total == logins
            now = sorted(os.listdir(metrics_dir))
            assert not [n for n in now if n.endswith(f"_{victim}.db")], now
            assert len(now) <= len(files) + 4, now  # w2's first files may come late
        # A worker's whole set, at most: no file of any dead process.
        final = set(os.listdir(metrics_dir))
        pids = {str(p) for p in _processes(srv).values()} | {str(srv.proc.pid if srv.proc else 0)}
        for name in final:
            ident = name.rsplit("_", 1)[1].removesuffix(".db")
            assert ident in {"w1", "w2", "delivery"} or ident in pids, sorted(final)
    finally:
        srv.stop()
