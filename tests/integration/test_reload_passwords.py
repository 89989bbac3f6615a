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
    srv = make_server(tmp_path / "srv")
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
