"""A reload (SIGHUP) of the web admin's listener, the directory and the OAuth
issuers, against the real ``smtpgate serve`` as a default install runs it
(``workers = 0``: a parent, a worker per core and the delivery process, which
serves the web admin), with its accounts in the tests' slapd.

Each test writes the whole config it needs (the base plus its change) and
reloads, so the tests do not depend on each other's order; one server serves
them all.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import smtplib
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.peers.slapd import SERVICE_DN, Slapd, new_ou, person_ldif, shared_slapd

from .conftest import Server, free_port, http_status, make_server, require_tool
from .ldap_setup import ldap_table
from .oauth_issuer import LocalIssuer

ALICE = "alice@example.org"
FIRST_PW = "password in the first ou"
SECOND_PW = "password in the second ou"
BOB = "bob@example.org"
BOB_PW = "bob's password"
WAIT = 30.0


class Live:
    """The server, its base config and the two directory subtrees."""

    def __init__(self, srv: Server, slapd: Slapd, base: str, ous: tuple[str, str]) -> None:
        self.srv, self.slapd, self.base, self.ous = srv, slapd, base, ous
        self.issuer = LocalIssuer()
        self.issuer.write_jwks(srv.root / "jwks.json")

    def configure(self, *, base_dn: str | None = None, ldap: dict[str, str] | None = None,
                  admin: str = "", mechanisms: str | None = None, tail: str = "") -> None:
        """Write the base config with ``[accounts.ldap]`` on ``base_dn`` (default: the
        first ou) and ``ldap`` keys replaced, ``[admin] listen``, ``[auth]
        mechanisms``, plus ``tail``; then reload and wait for every process to
        report."""
        table = ldap_table(self.slapd, base_dn or self.ous[0])
        for key, value in (ldap or {}).items():
            table = re.sub(rf"(?m)^{key} = .*$", f"{key} = {value}", table)
        text = self.base
        if mechanisms is not None:
            text = text.replace("\n[auth]\n", f"\n[auth]\nmechanisms = {mechanisms}\n", 1)
        text += f'\n[admin]\nlisten = "{admin}"\n'
        self.srv.config.write_text(text + table + tail)
        self.reload()

    def reload(self) -> None:
        done = r"(reload|log reopen) complete in every process"
        before = len(re.findall(done, self.srv.log_text()))
        assert self.srv.proc is not None
        self.srv.proc.send_signal(signal.SIGHUP)  # what `smtpgate reload` sends
        wait_until(lambda: len(re.findall(done, self.srv.log_text())) > before, self.srv)


def wait_until(cond: object, srv: Server) -> None:
    deadline = time.monotonic() + WAIT
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, srv.log_text()
        time.sleep(0.05)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    require_tool("slapd")
    slapd = shared_slapd()
    srv = make_server(tmp_path_factory.mktemp("reload-live") / "srv")
    first, second = new_ou(slapd), new_ou(slapd)
    slapd.add(person_ldif(f"uid=alice,{first}", ALICE, FIRST_PW))
    slapd.add(person_ldif(f"uid=alice,{second}", ALICE, SECOND_PW))
    text = srv.config.read_text()
    base = text.replace("\n[accounts]\n", '\n[accounts]\nbackend = "ldap"\n', 1) + "\n"
    # The test sets [admin] itself (init may write the table).
    base = re.sub(r"(?ms)^\[admin\]\n.*?(?=^\[|\Z)", "", base)
    srv.config.write_text(base + ldap_table(slapd, first))
    srv.start()
    yield Live(srv, slapd, base, (first, second))
    if srv.proc is not None:
        srv.stop()


def login(srv: Server, password: str, mechanism: str = "PLAIN", *, user: str = ALICE,
          source: str = "127.0.0.1") -> int:
    with smtplib.SMTP("127.0.0.1", srv.submission, timeout=20,
                      source_address=(source, 0)) as s:
        s.starttls(context=srv.client_context())
        s.ehlo("client.test")
        if mechanism == "XOAUTH2":
            blob = f"user={user}\x01auth=Bearer {password}\x01\x01".encode()
            code, _ = s.docmd("AUTH", "XOAUTH2 " + base64.b64encode(blob).decode())
            if code == 334:  # the error, as a challenge: answered empty, then 535
                code, _ = s.docmd("")
            return code
        try:
            s.auth("PLAIN", lambda _=None: f"\0{user}\0{password}", initial_response_ok=True)
        except smtplib.SMTPAuthenticationError as e:
            return e.smtp_code
        return 235


def offered(srv: Server) -> list[str]:
    with smtplib.SMTP("127.0.0.1", srv.submission, timeout=20) as s:
        s.starttls(context=srv.client_context())
        s.ehlo("client.test")
        return s.esmtp_features.get("auth", "").split()


def answers(port: int) -> bool:
    try:
        return http_status(port, "/login") == 200
    except OSError:
        return False


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


def test_the_web_admin_is_opened_moved_and_closed_by_a_reload(live: Live) -> None:
    srv = live.srv
    first, second = free_port(), free_port()
    live.configure()  # no [admin] listen: off
    assert refused(first)
    live.configure(admin=f"127.0.0.1:{first}")
    wait_until(lambda: answers(first), srv)
    live.configure(admin=f"127.0.0.1:{second}")
    wait_until(lambda: answers(second), srv)
    # The old address is closed in every process, not left listening unanswered.
    assert refused(first)
    # A delivery process started after the move serves the new address.
    delivery = processes(srv)["delivery"]
    os.kill(delivery, signal.SIGKILL)
    wait_until(lambda: processes(srv).get("delivery") not in (None, delivery), srv)
    wait_until(lambda: answers(second), srv)
    assert refused(first)
    live.configure()
    wait_until(lambda: refused(second), srv)
    assert "needs a restart" not in srv.log_text() and "admin.listen changed" not in srv.log_text()


def processes(srv: Server) -> dict[str, int]:
    status = srv.root / "smtpgate.status.json"
    wait_until(lambda: status.exists() and json.loads(status.read_text()).get("processes"), srv)
    return {p["name"]: p["pid"] for p in json.loads(status.read_text())["processes"]}


def test_one_process_moves_its_web_admin_too(tmp_path: Path) -> None:
    first, second = free_port(), free_port()
    srv = make_server(tmp_path / "srv", "\n[server]\nworkers = 1\n")
    text = re.sub(r"(?ms)^\[admin\]\n.*?(?=^\[|\Z)", "", srv.config.read_text())
    srv.config.write_text(text + f'\n[admin]\nlisten = "127.0.0.1:{first}"\n')
    srv.start()
    assert srv.proc is not None
    try:
        wait_until(lambda: answers(first), srv)
        srv.config.write_text(text + f'\n[admin]\nlisten = "127.0.0.1:{second}"\n')
        srv.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: answers(second), srv)
        assert refused(first)
    finally:
        assert srv.stop() == 0


def test_a_move_to_another_address_on_the_same_port_is_made(tmp_path: Path) -> None:
    """127.0.0.1:PORT to 0.0.0.0:PORT (opening the admin to the network) cannot be
    bound beside the old socket; until 2026-12 the move failed, logged, and the admin
    (or /metrics) stayed where it was. ``localhost:PORT`` is the same clash on
    loopback. If the new address cannot be had at all, it listens where it was."""
    port, metrics = free_port(), free_port()
    srv = make_server(tmp_path / "srv", "\n[server]\nworkers = 1\n")
    text = re.sub(r"(?ms)^\[(admin|metrics)\]\n.*?(?=^\[|\Z)", "", srv.config.read_text())

    def move(admin: str, done: str, metrics_host: str = "127.0.0.1") -> None:
        before = srv.log_text().count(done)
        srv.config.write_text(text + f'\n[admin]\nlisten = "{admin}"\n'
                              f'\n[metrics]\nlisten = "{metrics_host}:{metrics}"\n')
        assert srv.proc is not None
        srv.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: srv.log_text().count(done) > before, srv)

    srv.config.write_text(text + f'\n[admin]\nlisten = "127.0.0.1:{port}"\n'
                          f'\n[metrics]\nlisten = "127.0.0.1:{metrics}"\n')
    srv.start()
    try:
        wait_until(lambda: answers(port), srv)
        move(f"localhost:{port}", f"web admin moved to http://localhost:{port}/")
        assert answers(port)
        move(f"localhost:{port}", f"metrics on http://localhost:{metrics}/metrics",
             metrics_host="localhost")
        assert http_status(metrics, "/metrics") == 200
        assert "cannot listen" not in srv.log_text()
        # Another program holds the port on 127.0.0.2: 0.0.0.0 cannot be bound.
        with socket.socket() as holder:
            holder.bind(("127.0.0.2", port))
            holder.listen()
            move(f"0.0.0.0:{port}", f"cannot listen on 0.0.0.0:{port}",
                 metrics_host="localhost")
            assert f"still on localhost:{port}" in srv.log_text()
            wait_until(lambda: answers(port), srv)
    finally:
        assert srv.stop() == 0


@pytest.mark.parametrize("workers", [1, 2])
def test_status_and_reload_name_where_the_web_admin_is_served_after_a_failed_move(
        tmp_path: Path, workers: int) -> None:
    """A move whose new address is taken leaves the web admin where it was (logged):
    until 2026-12 ``smtpgate reload`` said only "reloaded" and ``status`` showed the
    new address, where nothing answered. ``status`` now shows what the process that
    serves it bound, and ``reload`` warns when that is not what the config asks."""
    port, taken, metrics, moved = free_port(), free_port(), free_port(), free_port()
    srv = make_server(tmp_path / "srv", f"\n[server]\nworkers = {workers}\n")
    text = re.sub(r"(?ms)^\[(admin|metrics)\]\n.*?(?=^\[|\Z)", "", srv.config.read_text())

    def configure(admin: int, metrics_port: int) -> None:
        srv.config.write_text(text + f'\n[admin]\nlisten = "127.0.0.1:{admin}"\n'
                              f'\n[metrics]\nlisten = "127.0.0.1:{metrics_port}"\n')

    def shown() -> tuple[str, str]:
        doc = json.loads((srv.root / "smtpgate.status.json").read_text())
        return doc["admin"], doc["metrics"]

    configure(port, metrics)
    srv.start()
    try:
        wait_until(lambda: answers(port), srv)
        with socket.socket() as holder:  # another program has the new address
            holder.bind(("127.0.0.1", taken))
            holder.listen()
            configure(taken, moved)
            out = srv.cli("reload")
            assert (f"warning: the web admin is still served at http://127.0.0.1:{port}/, "
                    f"not at http://127.0.0.1:{taken}/ (admin.listen)") in out.stderr, out
            assert "metrics" not in out.stderr, out  # that one moved
            assert shown() == (f"http://127.0.0.1:{port}/", f"http://127.0.0.1:{moved}/metrics")
            status = srv.cli("status").stdout
            assert f"web admin:    http://127.0.0.1:{port}/" in status, status
            assert answers(port)
        out = srv.cli("reload")  # the address is free now: moved, nothing to warn about
        assert "warning" not in out.stderr, out
        wait_until(lambda: shown()[0] == f"http://127.0.0.1:{taken}/", srv)
        assert answers(taken) and refused(port)
    finally:
        assert srv.stop() == 0


def test_a_reload_opens_metrics_with_the_counts_since_start_up(tmp_path: Path) -> None:
    from .conftest import PASSWORD, USER
    from .test_metrics import sample, scrape

    port = free_port()
    srv = make_server(tmp_path / "srv")  # init's config, without [metrics]
    srv.add_user(USER, PASSWORD)
    text = srv.config.read_text()
    assert "\n[metrics]" not in text
    srv.start()
    assert srv.proc is not None
    try:
        for password in (PASSWORD, "wrong"):
            with smtplib.SMTP("127.0.0.1", srv.submission, timeout=20) as s:
                s.starttls(context=srv.client_context())
                s.ehlo("client.test")
                try:
                    s.auth("PLAIN", lambda _=None, p=password: f"\0{USER}\0{p}",
                           initial_response_ok=True)
                except smtplib.SMTPAuthenticationError:
                    pass
        assert refused(port)
        srv.config.write_text(text + f'\n[metrics]\nlisten = "127.0.0.1:{port}"\n')
        srv.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: not refused(port), srv)
        body = scrape(port)
        # Counted before the endpoint was opened, in every worker.
        assert sample(body, "smtpgate_auth_attempts_total", result="success") == 1
        assert sample(body, "smtpgate_auth_attempts_total", result="failure") == 1
        assert sample(body, "smtpgate_sessions_active") == 0
        assert "metrics.listen changed" not in srv.log_text()
    finally:
        assert srv.stop() == 0


def test_the_guard_thresholds_follow_a_reload(live: Live) -> None:
    # From an address of its own (127.0.0.2), for an account no other test uses.
    live.slapd.add(person_ldif(f"uid=bob,{live.ous[0]}", BOB, BOB_PW))
    live.configure(tail="\n[guard]\nlockout_threshold = 2\npenalty_base = 0\n")
    assert login(live.srv, "wrong", user=BOB, source="127.0.0.2") == 535
    assert login(live.srv, "wrong", user=BOB, source="127.0.0.2") == 535
    assert login(live.srv, BOB_PW, user=BOB, source="127.0.0.2") == 454  # locked out


def test_a_new_base_dn_takes_effect_on_the_next_login(live: Live) -> None:
    live.configure()
    assert login(live.srv, FIRST_PW) == 235
    live.configure(base_dn=live.ous[1])
    assert login(live.srv, SECOND_PW) == 235
    assert login(live.srv, FIRST_PW) == 535
    live.configure()
    assert login(live.srv, FIRST_PW) == 235


def test_a_new_bind_dn_and_password_file_take_effect_and_a_wrong_one_is_refused(
        live: Live, tmp_path: Path) -> None:
    # The directory's root DN as the service account: its password in a new file.
    from tests.peers.slapd import ROOT_DN, ROOT_PW

    root_pw = tmp_path / "root.pw"
    root_pw.write_text(ROOT_PW + "\n")
    before = live.slapd.binds(ROOT_DN)
    live.configure(ldap={"bind_dn": f'"{ROOT_DN}"', "bind_password_file": f'"{root_pw}"'})
    assert login(live.srv, FIRST_PW) == 235
    assert live.slapd.binds(ROOT_DN) > before  # searched as the new account
    # A password the directory refuses: the reload fails naming the key, and
    # logins keep the running directory.
    root_pw.write_text("not the password\n")
    live.configure(ldap={"bind_dn": f'"{SERVICE_DN}"', "bind_password_file": f'"{root_pw}"'})
    failed = re.findall(r"ERROR .*reload failed[^\n]*", live.srv.log_text())
    assert failed and "accounts.ldap.bind_password_file" in failed[-1]
    assert login(live.srv, FIRST_PW) == 235


def test_a_missing_bind_password_file_keeps_the_running_directory(live: Live) -> None:
    live.configure()
    failures = len(re.findall(r"reload failed", live.srv.log_text()))
    live.configure(base_dn=live.ous[1], ldap={"bind_password_file": '"/nonexistent/service.pw"'})
    failed = re.findall(r"ERROR .*reload failed[^\n]*", live.srv.log_text())
    assert len(failed) == failures + 1, live.srv.log_text()
    assert "accounts.ldap.bind_password_file" in failed[-1] and "/nonexistent" in failed[-1]
    # Still the first ou: the new base DN was not taken either.
    assert login(live.srv, FIRST_PW) == 235
    assert login(live.srv, SECOND_PW) == 535


def test_a_reload_that_adds_an_issuer_enables_xoauth2(live: Live) -> None:
    srv = live.srv
    live.configure()
    assert "XOAUTH2" not in offered(srv)
    token = live.issuer.token(ALICE)
    assert login(srv, token, "XOAUTH2") != 235  # not offered: refused
    live.configure(mechanisms='["XOAUTH2", "PLAIN"]',
                   tail=live.issuer.config(str(srv.root / "jwks.json")))
    assert "XOAUTH2" in offered(srv)
    assert login(srv, token, "XOAUTH2") == 235
    assert login(srv, live.issuer.bad_tokens(ALICE)["bad-signature"], "XOAUTH2") != 235


def test_a_broken_key_set_file_keeps_the_running_issuers(live: Live) -> None:
    srv = live.srv
    live.configure()
    junk = srv.root / "junk-jwks.json"
    junk.write_text("this is not a JSON Web Key Set\n")
    live.configure(mechanisms='["XOAUTH2", "PLAIN"]', tail=live.issuer.config(str(junk)))
    failed = re.findall(r"ERROR .*reload failed[^\n]*", srv.log_text())
    assert failed and "auth.oauth_issuers.0.jwks_file" in failed[-1]
    assert "XOAUTH2" not in offered(srv)
    assert login(srv, FIRST_PW) == 235
