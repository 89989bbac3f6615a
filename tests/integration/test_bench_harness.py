"""The performance harness (bench/run.py, bench/workloads.py) gives right answers
(bench/README.md): its own Postfix serves smtpgate's certificate with Postfix's default
process limit; the idle-session, flood, bare-TLS and SCRAM clients succeed where they
should and fail where they should. No timings are asserted."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import run as bench_run
from bench import workloads as wl
from tests.peers.postfix_dovecot import SCRAM_PASSWORD, SCRAM_USER, PostfixDovecot

from .conftest import PASSWORD, USER, Server, free_port, make_server, require_mta

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(scope="module")
def sg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = make_server(tmp_path_factory.mktemp("bench") / "srv",
                      "\n[limits]\nmax_connections_per_ip = 100\n")
    srv.add_user(USER, PASSWORD)
    srv.start()
    yield srv
    if srv.proc is not None:
        srv.stop()


def test_idle_sessions_are_held_and_measured(sg: Server) -> None:
    assert sg.proc is not None
    res = asyncio.run(wl.idle_sessions(sg.submission, sg.ca, USER, PASSWORD, 12, sg.proc.pid,
                                       probes=3))
    assert res["authenticated"] == 12 and res["failures"] == {}
    assert res["noop_sample_alive"] == "12/12"
    assert res["new_client_220"]["n"] == 3 and res["new_client_220_timeouts"] == 0
    assert res["processes"] >= 1 and res["rss_held_kib"] > 0


def test_flood_is_refused_and_owner_still_logs_in(sg: Server) -> None:
    res = asyncio.run(wl.login_under_flood(sg.submission, sg.ca, USER, PASSWORD, 3,
                                           flooders=2))
    assert res["unloaded_failures"] == {} and res["flooded_failures"] == {}
    assert res["unloaded_login"]["n"] == 3 and res["flooded_login"]["n"] == 3
    assert res["flood"]["sessions"] >= 1
    assert "auth_235" not in res["flood"]


def test_bare_tls_reference_completes_handshakes(sg: Server) -> None:
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(BENCH / "tls_ref.py"), str(port),
                             str(sg.ca), str(sg.root / "tls" / "key.pem")],
                            stdout=subprocess.PIPE, start_new_session=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        deadline = time.monotonic() + 20
        while True:  # the children bind after "ready"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        res = asyncio.run(wl.bare_tls(port, sg.ca, 4, 2))
        assert res["handshakes_ok"] == 4 and res["errors"] == 0
        # The certificate presented is smtpgate's: one handshake verified against it.
        with ssl.create_default_context(cafile=str(sg.ca)).wrap_socket(
                socket.create_connection(("127.0.0.1", port)),
                server_hostname="localhost") as s:
            assert s.version() is not None
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        if proc.stdout is not None:
            proc.stdout.close()


def test_scram_in_process_verifies_every_exchange() -> None:
    res = wl.scram_inprocess(20, iterations=64)
    assert res["verifications_ok"] == 20


def test_scram_on_dovecot_socket_right_and_wrong(mta: PostfixDovecot) -> None:
    sock = mta.root / "dovecot" / "auth-postfix"
    master = int((mta.root / "dovecot" / "run" / "master.pid").read_text().split()[0])
    right = asyncio.run(wl.scram_dovecot(sock, master, SCRAM_USER, SCRAM_PASSWORD, None, 6,
                                         concurrency=2))
    assert right["verifications_ok"] == 6 and right["failed"] == 0
    wrong = asyncio.run(wl.scram_dovecot(sock, master, SCRAM_USER, SCRAM_PASSWORD + "x", None,
                                         4, concurrency=2))
    assert wrong["verifications_ok"] == 0 and wrong["failed"] == 4


def test_own_postfix_serves_smtpgates_certificate(sg: Server) -> None:
    require_mta()
    pd = bench_run.start_own_postfix(sg.root)
    try:
        main_cf = (pd.postfix_dir / "etc" / "main.cf").read_text()
        assert f"default_process_limit = {bench_run.POSTFIX_DEFAULT_PROCESS_LIMIT}" in main_cf
        target = bench_run.Target("postfix", "127.0.0.1", pd.ports["bench"], SCRAM_USER,
                                  SCRAM_PASSWORD, sg.ca)
        probe = bench_run.probe_tls(target)
        der = ssl.PEM_cert_to_DER_cert(sg.ca.read_text())
        assert probe["cert_sha256"] == hashlib.sha256(der).hexdigest()
        held = asyncio.run(wl.idle_sessions(pd.ports["bench"], sg.ca, SCRAM_USER,
                                            SCRAM_PASSWORD, 2, None, probes=1))
        assert held["authenticated"] == 2
    finally:
        pd.cleanup()
