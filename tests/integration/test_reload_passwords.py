"""`smtpgate reload` applies `[passwords]` and `auth.session_recheck` in the running
server (it named them as needing a restart and kept the old values), and says that a
new `hostname` reaches delivery only at a restart; against the real `smtpgate serve`
(a parent, a worker per core and the delivery process)."""

from __future__ import annotations

import re
import signal
import smtplib
import time
from pathlib import Path

import pytest

from .conftest import Server, make_server

ALICE = "alice@example.org"
PASSWORD = "correct horse battery staple"
WAIT = 30.0


def reload(srv: Server) -> None:
    done = r"(reload|log reopen) complete in every process"
    before = len(re.findall(done, srv.log_text()))
    assert srv.proc is not None
    srv.proc.send_signal(signal.SIGHUP)  # what `smtpgate reload` sends
    deadline = time.monotonic() + WAIT
    while len(re.findall(done, srv.log_text())) <= before:
        assert time.monotonic() < deadline, srv.log_text()
        time.sleep(0.05)


def login(srv: Server) -> int:
    with smtplib.SMTP("127.0.0.1", srv.submission, timeout=20) as s:
        s.starttls(context=srv.client_context())
        s.ehlo("client.test")
        try:
            s.login(ALICE, PASSWORD)
        except smtplib.SMTPAuthenticationError as e:
            return e.smtp_code
        return 235


def test_password_max_age_and_hostname_follow_a_reload(tmp_path: Path) -> None:
    # The four refusals of the expired password made each next login wait the
    # guard's penalty (0.5 s doubling up to 4 s); the penalty is not what is checked.
    srv = make_server(tmp_path / "srv", "\n[guard]\npenalty_base = 0.01\npenalty_max = 0.05\n")
    srv.add_user(ALICE, PASSWORD)
    base = srv.config.read_text()
    srv.start()
    try:
        for _ in range(4):  # every worker
            assert login(srv) == 235
        # A maximum age of a few seconds: the password set a moment ago has expired.
        time.sleep(1.5)
        srv.config.write_text(base + "\n[passwords]\nmax_age_days = 0.00001\n")
        text = srv.config.read_text()
        srv.config.write_text(text.replace('hostname = "', 'hostname = "new-', 1))
        reload(srv)
        log = srv.log_text()
        assert "kept as running until a restart" not in log, log
        assert re.search(r"reload: hostname: new sessions use it now; delivery keeps "
                         r"'[^']+' \(its EHLO", log), log
        for _ in range(4):
            assert login(srv) == 535
        srv.config.write_text(base)
        reload(srv)
        assert login(srv) == 235
    finally:
        srv.stop()


@pytest.mark.parametrize("processes", ["", "[server]\nworkers = 1\n"],
                         ids=["supervisor", "one process"])
def test_smtpgate_reload_prints_what_needs_a_restart_and_why_a_reload_failed(
    tmp_path: Path, processes: str,
) -> None:
    """`smtpgate reload` said only "asked ...; the server log says how it went" (exit
    0) after a reload that failed or kept keys until a restart."""
    srv = make_server(tmp_path / "srv", processes)
    base = srv.config.read_text()
    srv.start()
    try:
        r = srv.cli("reload")
        assert r.returncode == 0 and "reloaded the configuration and certificate (pid " in r.stdout
        assert r.stderr == ""
        srv.config.write_text(base.replace('spool = "spool"', 'spool = "spool"\nretry_max = 7200.0')
                              + "\n[passwords]\nmin_length = 20\n")
        r = srv.cli("reload")
        assert r.returncode == 0, r.stderr
        assert r.stderr == ("warning: changed in the file, kept as running until a restart: "
                            "queue.retry_max\n")
        srv.config.write_text(base)
        cert = srv.root / "tls" / "cert.pem"
        good = cert.read_bytes()
        cert.write_text("not a certificate\n")
        try:
            r = srv.cli("reload", check=False)
        finally:
            cert.write_bytes(good)
        assert r.returncode == 1, (r.stdout, r.stderr)
        assert "reload failed (pid " in r.stderr
        assert "the running configuration and certificate are kept: " in r.stderr
        assert "tls.cert" in r.stderr
    finally:
        srv.stop()


def test_status_json_gives_the_last_reload_with_an_iso_time(tmp_path: Path) -> None:
    import json

    srv = make_server(tmp_path / "srv", "[server]\nworkers = 1\n")
    srv.start()
    try:
        assert json.loads(srv.cli("status", "--json").stdout)["server"]["last_reload"] is None
        srv.cli("reload")
        last = json.loads(srv.cli("status", "--json").stdout)["server"]["last_reload"]
        assert last["ok"] is True and last["kept"] == [] and last["error"] is None
        assert last["at"].endswith("Z")
    finally:
        srv.stop()
