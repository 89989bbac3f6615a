"""Prometheus metrics end to end: a real Prometheus scrapes ``smtpgate serve``.

The server runs as ``smtpgate init`` writes it (``workers = 0``: one per core, so
several processes on any CI machine with two cores) plus ``[metrics] listen``, a
guard that locks an account after three wrong passwords and a limit of three
messages an hour. A scripted mix of
logins and messages is run, then Prometheus' HTTP API must report exactly what
the script did. A direct scrape checks that two workers' counts add up and
survive a worker's death, and that the Grafana dashboard names only metrics the
server exports.
"""

from __future__ import annotations

import json
import os
import re
import signal
import smtplib
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import (
    PASSWORD,
    SMTPGATE,
    USER,
    Server,
    free_port,
    make_server,
    require_tool,
)

pytestmark = [pytest.mark.interop, pytest.mark.slow]

MALLORY = "mallory@example.org"
GUARD = """
[guard]
lockout_threshold = 3
penalty_base = 0.01
penalty_max = 0.05

[limits]
messages_per_hour = 3
"""


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        assert r.headers["Content-Type"].startswith("text/plain")
        return r.read().decode()


def sample(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        m = re.match(r"([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(m.group(3))
    return total


def login(srv: Server, user: str, password: str) -> smtplib.SMTP:
    """An SMTP session after STARTTLS and one AUTH PLAIN attempt (exactly one: no
    fallback to LOGIN as smtplib.login would try)."""
    s = smtplib.SMTP("127.0.0.1", srv.submission, timeout=30)
    s.starttls(context=srv.client_context())
    s.ehlo()
    s.user, s.password = user, password
    try:
        s.auth("PLAIN", s.auth_plain)
    except smtplib.SMTPException:
        pass
    return s


def send_one(s: smtplib.SMTP, rcpt: str = "bob@example.net") -> None:
    s.sendmail(USER, [rcpt], f"From: {USER}\r\nTo: {rcpt}\r\nSubject: m\r\n\r\nhi\r\n")


def _server(root: Path) -> tuple[Server, int]:
    port = free_port()
    srv = make_server(root, f'\n[metrics]\nlisten = "127.0.0.1:{port}"\n' + GUARD)
    srv.add_user(USER, PASSWORD)
    srv.add_user(MALLORY, PASSWORD)
    srv.start()
    return srv, port


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, int]]:
    """A server that has seen a login, a message and a wrong password."""
    srv, port = _server(tmp_path_factory.mktemp("metrics") / "srv")
    s = login(srv, USER, PASSWORD)
    send_one(s)
    s.quit()
    login(srv, USER, "wrong password").quit()
    yield srv, port
    if srv.proc is not None:
        srv.stop()


class Prometheus:
    def __init__(self, root: Path, target: int) -> None:
        binary = require_tool("prometheus")
        self.port = free_port()
        root.mkdir(parents=True, exist_ok=True)
        (root / "prometheus.yml").write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
            "scrape_configs:\n  - job_name: smtpgate\n    static_configs:\n"
            f"      - targets: ['127.0.0.1:{target}']\n"
        )
        self.log = open(root / "prometheus.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [binary, f"--config.file={root / 'prometheus.yml'}",
             f"--storage.tsdb.path={root / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + 60
        while not self._ready():
            assert self.proc.poll() is None, (root / "prometheus.log").read_text()
            assert time.monotonic() < deadline, "Prometheus did not become ready"
            time.sleep(0.2)

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2):
                return True
        except OSError:
            return False

    def query(self, promql: str) -> float | None:
        url = (f"http://127.0.0.1:{self.port}/api/v1/query?"
               + urllib.parse.urlencode({"query": promql}))
        with urllib.request.urlopen(url, timeout=10) as r:
            body = json.load(r)
        assert body["status"] == "success", body
        result = body["data"]["result"]
        return float(result[0]["value"][1]) if result else None

    def settle(self, promql: str, expected: float, timeout: float = 30) -> float | None:
        """The value of ``promql`` once it reached ``expected`` (scrapes lag), or
        the last value seen when it did not within ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.query(promql)
            if got == expected or time.monotonic() > deadline:
                return got
            time.sleep(0.25)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self.log.close()


def test_prometheus_sees_exactly_the_scripted_mix(tmp_path: Path) -> None:
    srv, port = _server(tmp_path / "srv")
    try:
        _mix(srv, port, tmp_path)
    finally:
        srv.stop()


def _mix(srv: Server, port: int, tmp_path: Path) -> None:
    before = scrape(port)
    # The connections the start-up probes made are in the baseline.
    base_conns = sample(before, "smtpgate_connections_total", listener="submission")
    assert sample(before, "smtpgate_auth_attempts_total") == 0

    # 3 good logins, each sending one message; a 4th message is over the hourly limit.
    for _ in range(3):
        s = login(srv, USER, PASSWORD)
        send_one(s)
        s.quit()
    s = login(srv, USER, PASSWORD)
    with pytest.raises(smtplib.SMTPSenderRefused):
        send_one(s)
    s.quit()
    # 2 wrong passwords for alice (a known address: far from her lockout).
    for _ in range(2):
        login(srv, USER, "wrong password").quit()
    # 3 wrong passwords for mallory lock her out for new addresses (the guard) ...
    for _ in range(3):
        login(srv, MALLORY, "guess").quit()
    # ... so her next attempt, even with the right password, is refused by the guard.
    s = login(srv, MALLORY, PASSWORD)
    s.quit()
    srv.wait_for_mail(3)

    prom = Prometheus(tmp_path / "prometheus", port)
    try:
        expected = {
            'sum(smtpgate_auth_attempts_total{result="success",mechanism="PLAIN",'
            'front_door="smtp"})': 4,
            'sum(smtpgate_auth_attempts_total{result="failure"})': 5,
            'sum(smtpgate_auth_attempts_total{result="refused_guard"})': 1,
            "sum(smtpgate_auth_attempts_total)": 10,
            "sum(smtpgate_login_duration_seconds_count)": 10,
            'sum(smtpgate_guard_blocks_started_total{kind="account-new"})': 1,
            "sum(smtpgate_guard_blocks_started_total)": 1,
            'smtpgate_guard_blocks_active{kind="account-new"}': 1,
            'smtpgate_guard_blocks_active{kind="address"}': 0,
            "smtpgate_guard_accounts_locked": 1,
            'sum(smtpgate_messages_accepted_total{listener="submission"})': 3,
            "sum(smtpgate_spool_commit_duration_seconds_count)": 3,
            'sum(smtpgate_deliveries_total{outcome="delivered"})': 3,
            'sum(smtpgate_deliveries_total{outcome="deferred"})': 0,
            "smtpgate_queue_messages": 0,
            'sum(smtpgate_connections_total{listener="submission"})': base_conns + 10,
            'sum(smtpgate_sessions_total{listener="submission",tls_version="TLSv1.3"})': 10,
            'sum(smtpgate_sessions_active{listener="submission"})': 0,
            'smtpgate_rate_limit_refusals_total{limit="messages"}': 1,
            'smtpgate_rate_limit_refusals_total{limit="recipients"}': 0,
            "sum(smtpgate_backend_errors_total)": 0,
        }
        got = {q: prom.settle(q, v) for q, v in expected.items()}
        assert got == expected
        # Bytes: three messages, each counted as spooled (with its Received header).
        size = prom.query('sum(smtpgate_messages_accepted_bytes_total)')
        assert size is not None and 3 * 60 < size < 3 * 2000
        # The directory and the guard state were called, and timed.
        assert (prom.query('sum(smtpgate_backend_duration_seconds_count{store="directory"})')
                or 0) >= 5
    finally:
        prom.stop()


def test_no_account_or_address_in_any_label(server: tuple[Server, int]) -> None:
    """Labels are bounded sets: never an account name or a client address."""
    _, port = server
    text = scrape(port)
    assert "example.org" not in text
    assert "127.0.0.1" not in text


def test_dashboard_uses_only_exported_metrics(server: tuple[Server, int]) -> None:
    srv, port = server
    dashboard = subprocess.run([SMTPGATE, "contrib", "grafana"], capture_output=True,
                               text=True, check=True, env=srv.env, timeout=60).stdout
    json.loads(dashboard)  # a valid JSON document
    used = set(re.findall(r"\bsmtpgate_[a-z_]+", dashboard))
    assert len(used) >= 12
    text = scrape(port)
    exported = set(re.findall(r"^(smtpgate_[a-z_]+)", text, re.MULTILINE))
    assert used <= exported, sorted(used - exported)


def _worker_pids(srv: Server) -> set[int]:
    return {int(p) for p in re.findall(r"smtpgate\.auth\[(\d+)\]: auth success", srv.log_text())}


def test_two_workers_add_up_and_survive_a_worker_death(tmp_path: Path) -> None:
    port = free_port()
    srv = make_server(tmp_path / "srv", f'\n[server]\nworkers = 2\n'
                                        f'\n[metrics]\nlisten = "127.0.0.1:{port}"\n')
    srv.add_user(USER, PASSWORD)
    srv.start()
    try:
        logins = 0
        # The kernel spreads connections over the workers (SO_REUSEPORT): log in
        # until both have served one (bounded), counting every login.
        while len(_worker_pids(srv)) < 2 and logins < 60:
            login(srv, USER, PASSWORD).quit()
            logins += 1
        pids = _worker_pids(srv)
        assert len(pids) == 2, "the logins all went to one worker"
        text = scrape(port)
        assert sample(text, "smtpgate_auth_attempts_total", result="success") == logins
        assert sample(text, "smtpgate_login_duration_seconds_count") == logins
        # Files of both workers were read: one per worker slot in the metrics directory.
        files = os.listdir(srv.root / "smtpgate.metrics")
        assert {"counter_w1.db", "counter_w2.db"} <= set(files)

        # A worker dies: its counts stay (totals never go down), its live gauge
        # files go, and its replacement counts on top.
        victim = min(pids)
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while "restarted" not in srv.log_text():
            assert time.monotonic() < deadline, srv.log_text()
            time.sleep(0.1)
        left = os.listdir(srv.root / "smtpgate.metrics")
        assert not [n for n in left if n.endswith(f"_{victim}.db")], left
        login(srv, USER, PASSWORD).quit()
        text = scrape(port)
        assert sample(text, "smtpgate_auth_attempts_total", result="success") == logins + 1
        # The client has its 221; the server ends the session when its side of the
        # close is done, which a scrape right after may precede: wait for it (bounded).
        deadline = time.monotonic() + 10
        while (active := sample(scrape(port), "smtpgate_sessions_active")) != 0:
            assert time.monotonic() < deadline, f"{active} sessions still active"
            time.sleep(0.05)
    finally:
        srv.stop()


def _series(text: str, name: str) -> set[tuple[tuple[str, str], ...]]:
    """The label sets of ``name``'s samples in a scrape."""
    out = set()
    for line in text.splitlines():
        m = re.match(r"([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$", line)
        if m and m.group(1) == name:
            out.add(tuple(sorted(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))))
    return out


def test_labelled_series_are_there_at_zero_before_their_first_event(tmp_path: Path) -> None:
    """smtpgate_auth_attempts_total and smtpgate_sessions_total had no series until
    their first event after a start (in the worker that saw it), so an alert on
    rate(...{result="failure"}) had nothing to compute and increase() missed the
    first failures. Two workers: each process's file holds the zeros."""
    port = free_port()
    srv = make_server(tmp_path / "srv", f'\n[server]\nworkers = 2\n'
                                        f'\n[metrics]\nlisten = "127.0.0.1:{port}"\n')
    srv.start()
    try:
        # (The start-up probes' sessions are counted; TLS 1.2 and the logins are not
        # used by anything before the scrape.)
        text = scrape(port)
        attempts = _series(text, "smtpgate_auth_attempts_total")
        for result in ("success", "failure", "temporary", "refused_guard",
                       "refused_policy", "cancelled"):
            key = (("front_door", "smtp"), ("mechanism", "PLAIN"), ("result", result))
            assert key in attempts, sorted(attempts)
        assert sample(text, "smtpgate_auth_attempts_total") == 0
        sessions = _series(text, "smtpgate_sessions_total")
        for version in ("none", "TLSv1.2", "TLSv1.3"):
            assert (("listener", "submission"), ("tls_version", version)) in sessions, sessions
        assert (("listener", "submissions"), ("tls_version", "none")) not in sessions
        durations = _series(text, "smtpgate_login_duration_seconds_count")
        assert (("result", "failure"),) in durations, durations
        # The backends' latency too (its errors were primed, its histogram was not:
        # no p99 panel or rate() until each store's first call after a start).
        backends = _series(text, "smtpgate_backend_duration_seconds_count")
        for store, operation in (("directory", "read"), ("guard_state", "read"),
                                 ("guard_state", "write"), ("rate_counters", "read"),
                                 ("rate_counters", "write")):
            assert (("operation", operation), ("store", store)) in backends, backends
    finally:
        srv.stop()


@pytest.mark.parametrize("workers", [1, 0])
def test_reload_moves_and_closes_the_endpoint(tmp_path: Path, workers: int) -> None:
    port, moved = free_port(), free_port()
    srv = make_server(tmp_path / "srv", f"\n[server]\nworkers = {workers}\n"
                                        f'\n[metrics]\nlisten = "127.0.0.1:{port}"\n')
    srv.start()
    assert srv.proc is not None
    try:
        assert "smtpgate_connections_total" in scrape(port)
        text = srv.config.read_text()
        srv.config.write_text(text.replace(f"127.0.0.1:{port}", f"127.0.0.1:{moved}"))
        srv.proc.send_signal(signal.SIGHUP)  # what `smtpgate reload` sends
        deadline = time.monotonic() + 30
        while True:
            try:
                assert "smtpgate_connections_total" in scrape(moved)
                break
            except OSError:
                assert time.monotonic() < deadline, srv.log_text()
                time.sleep(0.1)
        # The old address is closed in every process, not left listening unanswered.
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
        srv.config.write_text(text.replace(f'listen = "127.0.0.1:{port}"', 'listen = ""'))
        srv.proc.send_signal(signal.SIGHUP)  # what `smtpgate reload` sends
        while True:
            try:
                socket.create_connection(("127.0.0.1", moved), timeout=5).close()
            except ConnectionRefusedError:
                break
            assert time.monotonic() < deadline, srv.log_text()
            time.sleep(0.1)
    finally:
        srv.stop()
