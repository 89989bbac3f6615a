"""Processes and signals of the real ``smtpgate serve`` (docs/operations.md).

Every server here runs as a default install does: uvloop and ``workers = 0``
(one worker per core: two on the test machines, so a parent, two workers and
the delivery process), unless a test is about ``workers = 1``.
"""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import smtplib
import socket
import sqlite3
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from smtpgate.queue.blanks import STOCK
from smtpgate.smtp import replies as R
from smtpgate.tls.certs import write_self_signed
from tests.ports import free_port

from .conftest import PASSWORD, SMTPGATE, USER, Server, make_server

#: How long a test waits for the server to log something before it fails.
WAIT = 30.0


def set_key(server: Server, table: str, line: str) -> None:
    """Add ``line`` to ``[table]`` of the server's config (the table may exist)."""
    text = server.config.read_text()
    header = f"[{table}]\n"
    if header in text:
        text = text.replace(header, header + line + "\n", 1)
    else:
        text += f"\n{header}{line}\n"
    server.config.write_text(text)


def wait_for_log(server: Server, pattern: str, count: int = 1) -> list[re.Match[str]]:
    """The first ``count`` matches of ``pattern`` in the server log, once there are."""
    deadline = time.monotonic() + WAIT
    while True:
        found = list(re.finditer(pattern, server.log_text()))
        if len(found) >= count:
            return found
        assert time.monotonic() < deadline, f"no {pattern!r} in the log:\n{server.log_text()}"
        time.sleep(0.05)


def served_certificate(server: Server) -> bytes:
    """The DER certificate a new implicit-TLS handshake gets."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", server.submissions), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        tls.recv(100)
        return der


def serve_once(server: Server) -> subprocess.CompletedProcess[str]:
    """``smtpgate serve`` expected to exit by itself (it cannot start)."""
    return subprocess.run([SMTPGATE, "serve", "--config", str(server.config)], env=server.env,
                          capture_output=True, text=True, timeout=60, check=False)


def pem_to_der(path: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(path.read_text())


def sighup(server: Server) -> None:
    assert server.proc is not None
    server.proc.send_signal(signal.SIGHUP)


def greeting(port: int) -> tuple[socket.socket, bytes]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    data = b""
    while not data.endswith(b"\r\n"):
        chunk = sock.recv(200)
        if not chunk:
            break
        data += chunk
    return sock, data


@pytest.fixture
def default_server(tmp_path: Path) -> Iterator[Server]:
    srv = make_server(tmp_path / "srv")
    srv.add_user(USER, PASSWORD)
    srv.start()
    wait_for_log(srv, r"started \d+ worker processes")
    yield srv
    if srv.proc is not None:
        srv.stop()


# --- worker supervision ---------------------------------------------------------------------


def test_kill_9_of_a_worker_is_logged_and_the_worker_restarted(default_server: Server) -> None:
    srv = default_server
    started = wait_for_log(srv, r"started (\d+) worker processes: ([\d, ]+); delivery process")[0]
    workers = [int(p) for p in started.group(2).split(", ")]
    assert len(workers) == int(started.group(1)) >= 2
    victim = workers[0]
    os.kill(victim, signal.SIGKILL)
    wait_for_log(srv, rf"ERROR smtpgate\[\d+\]: worker 1 \(pid {victim}\) killed by signal 9 \(SIGKILL\)")
    restarted = wait_for_log(srv, r"worker 1 restarted \(pid (\d+)\)")[0]
    assert int(restarted.group(1)) not in workers
    assert srv.proc is not None and srv.proc.poll() is None
    # The server keeps answering, over both protocols, and delivers.
    for _ in range(10):
        sock, banner = greeting(srv.submission)
        sock.close()
        assert banner.startswith(b"220 ")
    with smtplib.SMTP_SSL("127.0.0.1", srv.submissions, context=srv.client_context()) as s:
        s.login(USER, PASSWORD)
        s.sendmail(USER, ["bob@example.net"], f"From: {USER}\r\nSubject: after\r\n\r\nx\r\n")
    srv.wait_for_mail(1)
    assert srv.stop() == 0


def test_workers_write_messages_into_blanks_the_delivery_process_made(
        default_server: Server) -> None:
    """The delivery process keeps a stock of empty files in spool/blank/ and the
    workers' slot pools rename them into queue/ (queue/blanks.py): after 100
    messages the stock has been used and made again, and every message arrived."""
    srv = default_server
    blank_dir = srv.root / "spool" / "blank"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and (
            not blank_dir.is_dir() or len(os.listdir(blank_dir)) < STOCK):
        time.sleep(0.1)
    first = set(os.listdir(blank_dir))
    assert len(first) == STOCK
    with smtplib.SMTP_SSL("127.0.0.1", srv.submissions, context=srv.client_context()) as s:
        s.login(USER, PASSWORD)
        for i in range(100):
            s.sendmail(USER, ["bob@example.net"], f"From: {USER}\r\nSubject: {i}\r\n\r\nx\r\n")
    srv.wait_for_mail(100)
    now = set(os.listdir(blank_dir))
    assert first - now, "no blank was taken by a worker"
    assert all((blank_dir / n).stat().st_size == 0 for n in now)
    assert srv.stop() == 0


def test_a_stuck_worker_is_killed_by_the_watchdog_and_restarted(tmp_path: Path) -> None:
    """A worker that stops answering (here SIGSTOP: its loop says nothing, as one
    blocked on storage that hangs) is killed after server.worker_watchdog and
    replaced; before, its share of the connections waited for ever."""
    srv = make_server(tmp_path / "srv", "\n[server]\nworker_watchdog = 3\n")
    srv.add_user(USER, PASSWORD)
    srv.start()
    try:
        started = wait_for_log(srv, r"started (\d+) worker processes: ([\d, ]+); delivery")[0]
        victim = int(started.group(2).split(", ")[0])
        os.kill(victim, signal.SIGSTOP)
        wait_for_log(srv, rf"ERROR smtpgate\[\d+\]: worker 1 \(pid {victim}\) is unresponsive: "
                          r"its event loop said nothing for \d+ s \(server.worker_watchdog\)")
        wait_for_log(srv, rf"worker 1 \(pid {victim}\) killed by signal 9")
        restarted = wait_for_log(srv, r"worker 1 restarted \(pid (\d+)\)")[0]
        assert int(restarted.group(1)) != victim
        for _ in range(10):  # every connection is answered again, whichever worker
            sock, banner = greeting(srv.submission)
            sock.close()
            assert banner.startswith(b"220 ")
        with smtplib.SMTP_SSL("127.0.0.1", srv.submissions, context=srv.client_context()) as c:
            c.login(USER, PASSWORD)
        # The other processes, which kept saying alive, were left alone.
        assert len(re.findall(r"\) is unresponsive", srv.log_path.read_text())) == 1
    finally:
        srv.stop()


def _too_new_schema(server: Server) -> None:
    with sqlite3.connect(server.root / "accounts.sqlite") as db:
        db.execute("INSERT INTO schema_version (version, applied) VALUES (999, 'future')")


def _start_with_a_too_new_schema(
    tmp_path: Path, server_keys: str
) -> tuple[Server, subprocess.CompletedProcess[str]]:
    """``serve`` once, with ``server_keys`` in [server], on a database it must refuse."""
    srv = make_server(tmp_path / "srv")
    srv.add_user(USER, PASSWORD)
    set_key(srv, "server", server_keys)
    _too_new_schema(srv)
    return srv, serve_once(srv)


@pytest.mark.parametrize("workers", ["0", "1"])
def test_start_up_failure_is_one_line_and_a_non_zero_exit(tmp_path: Path, workers: str) -> None:
    srv, done = _start_with_a_too_new_schema(tmp_path, f"workers = {workers}")
    assert done.returncode == 2  # a config key is at fault: restarting will not help
    errors = [line for line in done.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1, done.stderr
    assert "cannot start: accounts.database:" in errors[0]
    assert "newer smtpgate" in errors[0]
    assert "Traceback" not in done.stderr
    assert "listening" not in done.stderr and "started" not in done.stderr
    assert not (srv.root / "smtpgate.pid").exists()


@pytest.mark.parametrize("workers", ["0", "1"])
def test_start_up_failure_with_a_log_file_is_said_on_stderr_too(tmp_path: Path, workers: str) -> None:
    # With server.log_file set, the reason was written to that file only: `serve` in
    # a terminal, or a systemd unit's journal, showed an exit status 2 and nothing else.
    srv, done = _start_with_a_too_new_schema(
        tmp_path, f'workers = {workers}\nlog_file = "file.log"')
    assert done.returncode == 2
    for text in (done.stderr, (srv.root / "file.log").read_text()):
        errors = [line for line in text.splitlines() if " ERROR " in line]
        assert len(errors) == 1, text
        assert "cannot start: accounts.database:" in errors[0]
    assert "INFO" not in done.stderr and "WARNING" not in done.stderr


def test_after_start_up_the_log_file_alone_gets_the_errors(tmp_path: Path) -> None:
    srv = make_server(tmp_path / "srv")
    srv.add_user(USER, PASSWORD)
    set_key(srv, "server", 'log_file = "file.log"')
    srv.start()
    log = srv.root / "file.log"
    deadline = time.monotonic() + WAIT
    while " started " not in log.read_text():  # every worker ready: start-up is over
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
    good = srv.config.read_text()
    srv.config.write_text(good + "\nbogus = 1\n")
    sighup(srv)
    deadline = time.monotonic() + WAIT
    while "reload failed" not in log.read_text():
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
    srv.config.write_text(good)
    assert srv.stop() == 0
    assert "reload failed" not in srv.log_text()  # the serve process's stderr


def test_delivery_set_up_is_checked_before_anything_listens(tmp_path: Path) -> None:
    srv = make_server(tmp_path / "srv")
    text = srv.config.read_text().replace('mode = "maildir"', 'mode = "relay"\nrelay_host = "127.0.0.1"'
                                          '\nrelay_user = "u"\nrelay_password_file = "missing"')
    srv.config.write_text(text)
    done = serve_once(srv)
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1, done.stderr
    assert "cannot start: delivery.relay_password_file: " in errors[0]
    assert "listening" not in done.stderr and "started" not in done.stderr
    assert "Traceback" not in done.stderr


def test_a_config_that_does_not_validate_is_one_line_per_key_and_exit_2(tmp_path: Path) -> None:
    srv = make_server(tmp_path / "srv")
    set_key(srv, "limits", "max_errors = 1")
    done = serve_once(srv)
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1, done.stderr
    # The file first (the unit takes it from $SMTPGATE_CONFIG), then the key.
    assert f"cannot start: {srv.config}: limits.max_errors: " in errors[0]
    assert "Traceback" not in done.stderr and "listening" not in done.stderr


def test_second_instance_leaves_the_pid_file_of_the_first(default_server: Server) -> None:
    srv = default_server
    pid_file = srv.root / "smtpgate.pid"
    assert srv.proc is not None and pid_file.read_text().strip() == str(srv.proc.pid)
    done = serve_once(srv)
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1, done.stderr
    assert "cannot start: listeners.0.address: listener 'submission' cannot bind" in errors[0]
    assert "another server (or another smtpgate) holds it" in errors[0]
    assert pid_file.read_text().strip() == str(srv.proc.pid)
    assert srv.stop() == 0
    assert not pid_file.exists()


def test_a_second_instance_on_other_ports_with_the_same_state_is_refused(
    default_server: Server,
) -> None:
    """A copy of the config with only the ports changed (a test instance) shares the pid
    file, status file, metrics directory, spool and databases: it must not start, nor
    take the pid file, which it would remove when it stops (leaving `smtpgate status`
    and `reload` with no server to find)."""
    srv = default_server
    pid_file = srv.root / "smtpgate.pid"
    assert srv.proc is not None
    copy = srv.root / "copy.toml"
    text = srv.config.read_text()
    for port in (srv.submission, srv.submissions):
        text = text.replace(f"127.0.0.1:{port}", f"127.0.0.1:{free_port()}")
    copy.write_text(text)
    counts = sorted(p.name for p in (srv.root / "smtpgate.metrics").iterdir())
    assert counts
    done = subprocess.run([SMTPGATE, "serve", "--config", str(copy)], env=srv.env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1, done.stderr
    assert f"cannot start: server.pid_file: smtpgate serve (pid {srv.proc.pid}) already runs" \
        in errors[0]
    assert "listening" not in done.stderr and "started" not in done.stderr
    assert pid_file.read_text().strip() == str(srv.proc.pid)
    # The first server's counts are still there (a start empties the directory).
    assert set(counts) <= {p.name for p in (srv.root / "smtpgate.metrics").iterdir()}
    status = srv.cli("status", "--json", check=False)
    assert status.returncode == 0, status.stdout + status.stderr
    assert json.loads(status.stdout)["server"]["pid"] == srv.proc.pid
    assert srv.stop() == 0
    assert not pid_file.exists()


# --- reload ---------------------------------------------------------------------------------


def test_sighup_new_certificate_for_new_handshakes_open_session_keeps_going(
    default_server: Server,
) -> None:
    srv = default_server
    old = pem_to_der(srv.ca)
    assert served_certificate(srv) == old
    with smtplib.SMTP_SSL("127.0.0.1", srv.submissions, context=srv.client_context()) as s:
        s.login(USER, PASSWORD)
        write_self_signed(srv.ca, srv.root / "tls" / "key.pem", "renewed.example")
        new = pem_to_der(srv.ca)
        assert new != old
        sighup(srv)
        wait_for_log(srv, "reload complete in every process")
        assert "renewed.example" in wait_for_log(srv, r"reloaded .*")[0].group(0)
        # The session in flight keeps its TLS session and carries on.
        assert s.noop()[0] == 250
        s.sendmail(USER, ["bob@example.net"], f"From: {USER}\r\nSubject: x\r\n\r\nbody\r\n")
    # Every worker hands out the new certificate.
    for _ in range(8):
        assert served_certificate(srv) == new
    assert srv.proc is not None and srv.proc.poll() is None
    assert srv.stop() == 0


def test_reload_with_a_broken_certificate_keeps_the_old_one(default_server: Server) -> None:
    srv = default_server
    old = pem_to_der(srv.ca)
    srv.ca.write_text("not a certificate\n")
    sighup(srv)
    wait_for_log(srv, "log reopen complete in every process")
    failures = [line for line in srv.log_text().splitlines() if "reload failed" in line]
    assert len(failures) == 1, srv.log_text()
    assert "tls.cert" in failures[0] and "keeping the running configuration" in failures[0]
    for _ in range(4):
        assert served_certificate(srv) == old
    assert srv.stop() == 0


def test_reload_with_a_broken_config_names_the_key(default_server: Server) -> None:
    srv = default_server
    set_key(srv, "limits", "max_connections_per_ip = 0")
    sighup(srv)
    wait_for_log(srv, "log reopen complete in every process")
    failures = [line for line in srv.log_text().splitlines() if "reload failed" in line]
    assert len(failures) == 1 and "limits.max_connections_per_ip" in failures[0]
    sock, banner = greeting(srv.submission)
    sock.close()
    assert banner.startswith(b"220 ")


def test_reload_names_keys_that_need_a_restart(default_server: Server) -> None:
    srv = default_server
    set_key(srv, "server", "workers = 3")
    sighup(srv)
    wait_for_log(srv, "reload complete in every process")
    assert re.search(r"WARNING .*reload: server\.workers changed in the file; kept as running "
                     r"until a restart", srv.log_text())


def test_logrotate_rename_then_sighup_new_records_go_to_the_new_auth_log(
    default_server: Server,
) -> None:
    srv = default_server
    log_file = srv.root / "auth.log"

    def login(password: str) -> None:
        with smtplib.SMTP_SSL("127.0.0.1", srv.submissions, context=srv.client_context()) as s:
            s.ehlo()
            s.user, s.password = USER, password
            try:
                s.auth("PLAIN", s.auth_plain)  # one mechanism: one record per attempt
            except smtplib.SMTPAuthenticationError:
                pass

    login(PASSWORD)
    assert log_file.read_text().count('"result": "success"') == 1
    rotated = srv.root / "auth.log.1"
    log_file.rename(rotated)
    sighup(srv)
    wait_for_log(srv, "reload complete in every process")
    for _ in range(4):  # a few connections, so that every worker writes
        login(PASSWORD)
    login("wrong password")
    assert log_file.exists()
    new = log_file.read_text()
    assert new.count('"result": "success"') == 4
    assert new.count('"result": "failure"') == 1
    assert rotated.read_text().count("\n") == 1


def test_reload_command_finds_the_server_and_says_when_none_runs(tmp_path: Path) -> None:
    srv = make_server(tmp_path / "srv")
    srv.add_user(USER, PASSWORD)
    none = srv.cli("reload", check=False)
    assert none.returncode == 3
    assert "no pid file" in none.stderr and "running" in none.stderr
    srv.start()
    wait_for_log(srv, "started")
    done = srv.cli("reload")
    assert done.returncode == 0
    wait_for_log(srv, "reload complete in every process")
    assert srv.stop() == 0
    # A stale pid file (the server was killed) is not mistaken for a server.
    (srv.root / "smtpgate.pid").write_text(f"{_dead_pid()}\n")
    stale = srv.cli("reload", check=False)
    assert stale.returncode == 3 and "not running" in stale.stderr


def test_reload_and_status_find_the_server_after_accounts_database_moved(
    tmp_path: Path,
) -> None:
    """The default pid file is beside accounts.database, which a reload may move: the
    server keeps its pid file where it started, and `reload`/`status`, reading the
    edited config, found no pid file in the new directory and said "not running"."""
    srv = make_server(tmp_path / "srv")
    srv.add_user(USER, PASSWORD)
    srv.start()
    wait_for_log(srv, "started")
    assert srv.proc is not None
    moved = srv.root / "moved"
    moved.mkdir()
    with sqlite3.connect(srv.root / "accounts.sqlite") as old, \
            sqlite3.connect(moved / "accounts.sqlite") as new:
        old.backup(new)
    srv.config.write_text(srv.config.read_text().replace(
        'database = "accounts.sqlite"', 'database = "moved/accounts.sqlite"', 1))
    done = srv.cli("reload", check=False)
    assert done.returncode == 0, done.stderr
    assert f"asked smtpgate (pid {srv.proc.pid}) to reload" in done.stdout
    assert "note: no pid file" in done.stderr and "until it restarts" in done.stderr
    wait_for_log(srv, "reload complete in every process")
    status = srv.cli("status", "--json", check=False)
    doc = json.loads(status.stdout)
    assert doc["server"]["running"] is True and doc["server"]["pid"] == srv.proc.pid
    assert "until it restarts" in doc["server"]["why"]
    assert srv.cli("reload", check=False).returncode == 0  # and again
    assert srv.stop() == 0
    assert not (srv.root / "smtpgate.pid").exists()
    none = srv.cli("reload", check=False)
    assert none.returncode == 3 and "no pid file" in none.stderr


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def test_pid_file_key_moves_the_pid_file(tmp_path: Path) -> None:
    srv = make_server(tmp_path / "srv")
    set_key(srv, "server", 'pid_file = "run/serve.pid"')
    (srv.root / "run").mkdir()
    srv.start()
    wait_for_log(srv, "started")
    assert srv.proc is not None
    assert (srv.root / "run" / "serve.pid").read_text().strip() == str(srv.proc.pid)
    assert srv.cli("reload").returncode == 0
    wait_for_log(srv, "reload complete in every process")
    assert srv.stop() == 0


def test_single_worker_reloads_too(tmp_path: Path) -> None:
    srv = make_server(tmp_path / "srv")
    set_key(srv, "server", "workers = 1")
    srv.start()
    old = served_certificate(srv)
    write_self_signed(srv.ca, srv.root / "tls" / "key.pem", "renewed.example")
    sighup(srv)
    wait_for_log(srv, "reloaded ")
    renewed = pem_to_der(srv.ca)
    assert served_certificate(srv) == renewed != old
    srv.ca.write_text("broken")
    sighup(srv)
    line = wait_for_log(srv, r"ERROR .*reload failed[^\n]*")[0].group(0)
    assert "tls.cert" in line
    assert served_certificate(srv) == renewed
    assert srv.stop() == 0


@pytest.mark.parametrize("workers", [1, 2])
def test_reload_command_shows_what_start_up_warns_of_in_the_new_certificate(
    tmp_path: Path, workers: int,
) -> None:
    """A certificate swapped in that expires in 10 days: the server log warned, but
    `smtpgate reload` said only "reloaded", exit 0, so an operator renewing by hand
    did not see that the renewal had not taken."""
    srv = make_server(tmp_path / "srv")
    set_key(srv, "server", f"workers = {workers}")
    srv.start()
    write_self_signed(srv.ca, srv.root / "tls" / "key.pem", "localhost", days=10)
    done = srv.cli("reload", check=False)
    assert done.returncode == 0, done.stderr
    assert "reloaded the configuration and certificate" in done.stdout
    assert "warning: tls.cert: the certificate expires on " in done.stderr, done.stderr
    assert served_certificate(srv) == pem_to_der(srv.ca)
    assert srv.stop() == 0


def _cpus_allowed(pid: int) -> set[int]:
    return os.sched_getaffinity(pid)


def _worker_pids(srv: Server) -> tuple[list[int], int]:
    started = wait_for_log(srv, r"started (\d+) worker processes: ([\d, ]+); delivery process: (\d+)")[0]
    return [int(p) for p in started.group(2).split(", ")], int(started.group(3))


@pytest.mark.parametrize("mode", ["auto", "off"])
def test_each_worker_is_bound_to_its_own_cpu_unless_off(tmp_path: Path, mode: str) -> None:
    mine = os.sched_getaffinity(0)
    srv = make_server(tmp_path / "srv")
    srv.add_user(USER, PASSWORD)
    set_key(srv, "server", "workers = 2")
    if mode == "off":
        set_key(srv, "server", 'worker_cpu_affinity = "off"')
    srv.start()
    try:
        workers, delivery = _worker_pids(srv)
        parent = srv.proc.pid if srv.proc is not None else 0
        bound = [_cpus_allowed(pid) for pid in workers]
        if mode == "auto" and len(mine) >= 2:
            first, second = sorted(mine)[:2]
            assert bound == [{first}, {second}]
            wait_for_log(srv, rf"worker 1 bound to CPU {first} \(server.worker_cpu_affinity\)")
            wait_for_log(srv, rf"worker 2 bound to CPU {second} ")
            # Threads a worker starts later (its spool and database threads) inherit it.
            with smtplib.SMTP_SSL("127.0.0.1", srv.submissions,
                                  context=srv.client_context()) as s:
                s.login(USER, PASSWORD)
                s.sendmail(USER, ["bob@example.net"], f"From: {USER}\r\nSubject: a\r\n\r\nx\r\n")
            srv.wait_for_mail(1)
            for pid in workers:
                tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
                assert len(tids) > 1
                assert {frozenset(_cpus_allowed(t)) for t in tids} == {frozenset(_cpus_allowed(pid))}
        else:
            assert bound == [mine, mine]
            assert "bound to CPU" not in srv.log_text()
        # The parent and the delivery process are left to the kernel either way.
        assert _cpus_allowed(parent) == mine and _cpus_allowed(delivery) == mine
    finally:
        assert srv.stop() == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_every_process_logs_stopped_and_the_parent_last(default_server: Server, sig: int) -> None:
    srv = default_server
    workers, delivery = _worker_pids(srv)
    parent = srv.proc.pid if srv.proc is not None else 0
    assert srv.stop(sig) == 0
    stopped = [int(m.group(1)) for m in re.finditer(r"INFO smtpgate\[(\d+)\]: stopped$",
                                                    srv.log_text(), re.MULTILINE)]
    assert sorted(stopped) == sorted([parent, *workers, delivery])
    assert stopped[-1] == parent


# --- limits for the whole server -------------------------------------------------------------


def test_per_ip_limit_holds_across_workers(tmp_path: Path) -> None:
    srv = make_server(tmp_path / "srv")
    set_key(srv, "limits", "max_connections_per_ip = 20")
    set_key(srv, "server", "workers = 2")
    srv.start()
    wait_for_log(srv, r"started 2 worker processes")
    socks: list[socket.socket] = []
    banners: list[bytes] = []
    try:
        for _ in range(25):
            sock, banner = greeting(srv.submission)
            socks.append(sock)
            banners.append(banner)
        accepted = [b for b in banners if b.startswith(b"220 ")]
        refused = [b for b in banners if not b.startswith(b"220 ")]
        assert len(accepted) == 20
        assert refused == [R.TOO_MANY_CONNECTIONS_FROM_IP.format()] * 5
    finally:
        for sock in socks:
            sock.close()
    # Closed connections give their slots back.
    deadline = time.monotonic() + WAIT
    while True:
        sock, banner = greeting(srv.submission)
        sock.close()
        if banner.startswith(b"220 "):
            break
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert srv.stop() == 0


def test_killed_worker_gives_its_connection_slots_back(tmp_path: Path) -> None:
    srv = make_server(tmp_path / "srv")
    set_key(srv, "limits", "max_connections_per_ip = 4")
    srv.start()
    started = wait_for_log(srv, r"started \d+ worker processes: ([\d, ]+);")[0]
    workers = [int(p) for p in started.group(1).split(", ")]
    socks = [greeting(srv.submission)[0] for _ in range(4)]
    for w in workers:
        os.kill(w, signal.SIGKILL)  # every connection held dies with its worker
    wait_for_log(srv, r"worker \d restarted", count=len(workers))
    for sock in socks:
        sock.close()
    held = []
    for _ in range(4):
        sock, banner = greeting(srv.submission)
        held.append(sock)
        assert banner.startswith(b"220 ")
    for sock in held:
        sock.close()
    assert srv.stop() == 0


# --- logs -----------------------------------------------------------------------------------


def test_debug_logs_the_session_but_never_auth_data(tmp_path: Path) -> None:
    srv = make_server(tmp_path / "srv")
    srv.add_user(USER, PASSWORD)
    srv.start("--debug")
    with smtplib.SMTP("127.0.0.1", srv.submission) as s:
        s.starttls(context=srv.client_context())
        s.login(USER, PASSWORD)
        s.sendmail(USER, ["bob@example.net"], f"From: {USER}\r\nSubject: d\r\n\r\nx\r\n")
    srv.wait_for_mail(1)
    text = wait_for_log(srv, r"DEBUG smtpgate\.queue\[\d+\]: queue: \S+ delivery attempt")[0].string
    for pattern in (r"DEBUG smtpgate\.session\[\d+\]: \w+ connect from 127\.0\.0\.1:\d+ on listener submission",
                    r"DEBUG .* TLS established: TLSv1\.3",
                    r"DEBUG .* command EHLO", r"DEBUG .* command STARTTLS", r"DEBUG .* command AUTH",
                    r"DEBUG .* command MAIL", r"DEBUG .* command DATA",
                    r"DEBUG .* disconnect 127\.0\.0\.1"):
        assert re.search(pattern, text), pattern
    assert PASSWORD not in text
    import base64

    assert base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode() not in text
    assert srv.stop() == 0


def test_log_times_are_iso_8601_with_a_zone(default_server: Server) -> None:
    lines = [line for line in default_server.log_text().splitlines() if " smtpgate" in line]
    assert lines
    for line in lines:
        assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d ", line), line


def _soft_nofile(pid: int) -> int:
    with open(f"/proc/{pid}/limits") as f:
        line = next(ln for ln in f if ln.startswith("Max open files"))
    return int(line.split()[3])


def test_the_open_file_limit_is_raised_for_max_connections_in_every_process(
        tmp_path: Path) -> None:
    """A service manager's soft limit of 1,024 (systemd's default) is below what
    ``limits.max_connections`` needs: serve raises it, and every worker has it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 3300:
        pytest.fail(f"this test needs a hard open-file limit of 3300 or more, not {hard}")
    srv = make_server(tmp_path / "srv")
    srv.add_user(USER, PASSWORD)
    set_key(srv, "limits", "max_connections = 3000")
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
    try:
        srv.start()  # inherits the low soft limit
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        workers, delivery = _worker_pids(srv)
        parent = srv.proc.pid if srv.proc is not None else 0
        for pid in (parent, *workers, delivery):
            assert _soft_nofile(pid) == 3000 + 256
        assert "open files" not in srv.log_text()  # no warning: the hard limit allowed it
    finally:
        assert srv.stop() == 0


def test_a_hard_open_file_limit_below_max_connections_is_a_warning_naming_the_key(
        tmp_path: Path) -> None:
    """LimitNOFILE=1024 in a unit (soft and hard) with the default 1,000 connections:
    the server starts, uses the whole limit and says which key and which setting."""
    srv = make_server(tmp_path / "srv")
    srv.add_user(USER, PASSWORD)
    with open(srv.log_path, "ab") as log:  # prlimit sets the limits, then execs serve
        srv.proc = subprocess.Popen(["prlimit", "--nofile=512:1024", SMTPGATE, "serve",
                                     "--config", str(srv.config)],
                                    stdout=log, stderr=log, env=srv.env)
    try:
        workers, _ = _worker_pids(srv)
        found = wait_for_log(srv, r"WARNING.*limits.max_connections = 1000 needs about 1256 "
                                  r"open files per process; the limit is 1024 \(hard 1024\)")
        assert "LimitNOFILE=" in found[0].group(0) or "LimitNOFILE=" in srv.log_text()
        assert len(re.findall("needs about 1256 open files", srv.log_text())) == 1  # once
        assert [_soft_nofile(pid) for pid in workers] == [1024, 1024]
    finally:
        assert srv.stop() == 0


def _connect_burst(port: int, n: int, wait: float) -> tuple[list[socket.socket], int]:
    """``n`` non-blocking connects at once; how many the kernel completed within
    ``wait`` seconds (a SYN dropped on a full accept queue is only retried after 1 s)."""
    import selectors

    socks = []
    sel = selectors.DefaultSelector()
    for _ in range(n):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        sel.register(s, selectors.EVENT_WRITE)
        socks.append(s)
    done = 0
    deadline = time.monotonic() + wait
    while done < n and (left := deadline - time.monotonic()) > 0:
        for key, _ in sel.select(left):
            sel.unregister(key.fileobj)
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                done += 1
    sel.close()
    return socks, done


def test_a_burst_of_connections_waits_in_the_backlog_while_the_server_is_busy(
        tmp_path: Path) -> None:
    """400 clients connect while the server cannot accept (stopped): the listen backlog
    (1,024) holds them all, and each gets its 220 once the server runs again. With
    asyncio's default of 100 the kernel dropped the SYNs of all but about 100."""
    srv = make_server(tmp_path / "srv")
    srv.add_user(USER, PASSWORD)
    set_key(srv, "server", "workers = 1")
    set_key(srv, "limits", "max_connections = 2000\nmax_connections_per_ip = 2000")
    srv.start()
    assert srv.proc is not None
    pid = srv.proc.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        socks, connected = _connect_burst(srv.submission, 400, wait=0.8)
    finally:
        os.kill(pid, signal.SIGCONT)
    try:
        assert connected == 400
        for s in socks:
            s.setblocking(True)
            s.settimeout(WAIT)
            assert s.recv(200).startswith(b"220 ")
    finally:
        for s in socks:
            s.close()
        assert srv.stop() == 0
