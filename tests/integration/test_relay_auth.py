"""Relay delivery that authenticates to the smarthost, as a default install runs it:
one ``smtpgate serve`` relays (``[delivery] mode = "relay"``, ``relay_tls =
"require"``, the smarthost's CA) to another ``smtpgate serve`` on its submission
port (STARTTLS), and to the real Postfix + Dovecot pair (SCRAM through Dovecot).

Each mechanism must deliver; a wrong password must defer and deliver nothing;
``[[delivery.routes]]`` must send a domain to its own next hop while the rest
goes to the default.
"""

from __future__ import annotations

import smtplib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.peers.postfix_dovecot import SCRAM_PASSWORD, SCRAM_USER, PostfixDovecot

from .conftest import PASSWORD, USER, Server, free_port, make_server
from .test_relay_delivery import _in_table, send, spooled, wait_for_log

#: The smarthost (smtpgate) lets an account send only as itself: the relaying server
#: logs in as the sender's own account there, as a personal smarthost setup does.
RELAY_ACCOUNT = USER
RELAY_PASSWORD = "smarthost passphrase for tests"


@pytest.fixture(scope="module")
def smarthost(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = make_server(tmp_path_factory.mktemp("smarthost") / "srv")
    srv.add_user(RELAY_ACCOUNT, RELAY_PASSWORD)
    srv.start()
    yield srv
    if srv.proc is not None:
        srv.stop()


def relaying(root: Path, host: str, port: int, ca: Path, user: str, password: str,
             mechanism: str, extra: str = "") -> Server:
    srv = make_server(root)
    (root / "relay.pass").write_text(password + "\n")
    text = srv.config.read_text().replace('mode = "maildir"\n', "")
    text = _in_table(text, "delivery", "\n".join([
        'mode = "relay"', f'relay_host = "{host}"', f"relay_port = {port}",
        'relay_tls = "require"', f'relay_ca_file = "{ca}"', f'relay_user = "{user}"',
        'relay_password_file = "relay.pass"', f'relay_auth_mechanism = "{mechanism}"']))
    text = _in_table(text, "queue", "retry_initial = 60\nretry_max = 60")
    srv.config.write_text(text + extra)
    srv.add_user(USER, PASSWORD)
    srv.start()
    return srv


def wait_empty(srv: Server, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while spooled(srv):
        assert time.monotonic() < deadline, srv.log_text()
        time.sleep(0.05)


def received_by(smarthost: Server, tag: str, at_least: int = 0) -> int:
    """Copies of the message with this subject in the smarthost's Maildir, waiting
    (up to 10 s) until there are ``at_least`` (its delivery follows its 250)."""
    deadline = time.monotonic() + 10
    while True:
        n = sum(f"Subject: {tag}\r\n".encode() in p.read_bytes() for p in smarthost.delivered())
        if n >= at_least or time.monotonic() > deadline:
            return n
        time.sleep(0.05)


# PLAIN: test_relay_delivery.py; SCRAM-SHA-256: the Postfix case below and the wrong
# password; SCRAM-SHA-256-PLUS: the routes case. Each case starts a server: kept few.
@pytest.mark.parametrize("mechanism", ["LOGIN"])
def test_relay_authenticates_to_smtpgate_with(
    tmp_path: Path, smarthost: Server, mechanism: str
) -> None:
    srv = relaying(tmp_path / "srv", "127.0.0.1", smarthost.submission, smarthost.ca,
                   RELAY_ACCOUNT, RELAY_PASSWORD, mechanism)
    try:
        tag = f"auth-{mechanism}"
        send(srv, tag)
        wait_empty(srv)
        assert "delivered to=<bob@example.net> relay 127.0.0.1" in srv.log_text()
        assert received_by(smarthost, tag, at_least=1) == 1
        auth_log = (smarthost.root / "auth.log").read_text()
        assert f'"mechanism": "{mechanism}"' in auth_log or f'"mechanism":"{mechanism}"' in (
            auth_log.replace(" ", ""))
    finally:
        srv.stop()


def test_wrong_relay_password_defers_and_sends_nothing(tmp_path: Path, smarthost: Server) -> None:
    srv = relaying(tmp_path / "srv", "127.0.0.1", smarthost.submission, smarthost.ca,
                   RELAY_ACCOUNT, "not the password", "SCRAM-SHA-256")
    try:
        send(srv, "wrong-password")
        wait_for_log(srv, f"relay 127.0.0.1:{smarthost.submission} refused AUTH SCRAM-SHA-256", "deferred to=<bob@example.net>")
        assert len(spooled(srv)) == 1  # kept for a retry: the password is ours to fix
        assert received_by(smarthost, "wrong-password") == 0
    finally:
        srv.stop()


def test_routes_send_a_domain_to_its_own_next_hop(tmp_path: Path, smarthost: Server) -> None:
    """The default relay is down: mail for the routed domain still goes out."""
    down = free_port()
    route = (f'\n[[delivery.routes]]\ndomain = "Routed.Example"\n'
             f'next_hop = "127.0.0.1:{smarthost.submission}"\n')
    srv = relaying(tmp_path / "srv", "127.0.0.1", down, smarthost.ca, RELAY_ACCOUNT,
                   RELAY_PASSWORD, "SCRAM-SHA-256-PLUS", extra=route)
    try:
        msg = (f"From: {USER}\r\nTo: x\r\nSubject: routed\r\n\r\nrouted\r\n")
        with smtplib.SMTP_SSL("127.0.0.1", srv.submissions, timeout=20,
                              context=srv.client_context()) as s:
            s.login(USER, PASSWORD)
            s.sendmail(USER, ["bob@routed.example", "carol@elsewhere.example"], msg)
        wait_for_log(srv, "delivered to=<bob@routed.example>",
                     "deferred to=<carol@elsewhere.example>")
        assert received_by(smarthost, "routed", at_least=1) == 1
        assert len(spooled(srv)) == 1  # carol's copy waits for the default relay
    finally:
        srv.stop()


def test_relay_authenticates_to_postfix_with_scram_through_dovecot(
    tmp_path: Path, mta: PostfixDovecot
) -> None:
    srv = relaying(tmp_path / "srv", "localhost", mta.ports["good"], mta.ca, SCRAM_USER,
                   SCRAM_PASSWORD, "SCRAM-SHA-256")
    try:
        send(srv, "via-postfix")
        wait_empty(srv)
        assert "delivered to=<bob@example.net> relay localhost" in srv.log_text()
        deadline = time.monotonic() + 10
        while "sasl_method=SCRAM-SHA-256" not in mta.log() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert f"sasl_method=SCRAM-SHA-256, sasl_username={SCRAM_USER}" in mta.log()
    finally:
        srv.stop()
