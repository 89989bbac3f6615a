"""A real Exim 4.96 (tests/peers/exim.py) that ends sessions at STARTTLS with a
421 (RFC 5321 §3.8: the server is closing the channel), as an Exim being taken
out of service for maintenance does through an ACL (``defer message = 421 ...``):
smtpgate's relay delivery to it, and ``smtpgate audit`` of it.

The real ``smtpgate serve`` relays with ``relay_tls`` left at "opportunistic".
Exim 4.96 keeps reading after an ACL's 421, so a client that takes the 421 to
STARTTLS as "no TLS here" goes on in clear: Exim then refused the unauthenticated
RCPT for good (550) and the message bounced, where the hop had only asked for a
later try. The audit graded it D for "no-tls" (no STARTTLS offered), where it
offers STARTTLS and only asked to be tried later.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.peers import exim as exim_peer

from .conftest import Server
from .test_audit_peers import audit, ids
from .test_frontdoor_exim import require_exim
from .test_relay_delivery import relay_server, send, spooled, wait_for_log

SHUTTING_DOWN = "421 4.3.2 Service shutting down for maintenance"


@pytest.fixture
def exim_421_to_starttls() -> Iterator[exim_peer.Exim]:
    """Exim answering STARTTLS with 421 through ``acl_smtp_starttls``."""
    require_exim()
    exim = exim_peer.make_exim("/nonexistent")  # no AUTH here: nothing logs in
    text = exim.config.read_text()
    text = text.replace("acl_smtp_rcpt = acl_check_rcpt\n",
                        "acl_smtp_rcpt = acl_check_rcpt\nacl_smtp_starttls = acl_closing\n")
    text = text.replace("begin acl\n",
                        f"begin acl\nacl_closing:\n  defer message = {SHUTTING_DOWN}\n\n")
    exim.config.write_text(text)
    try:
        exim.start()
        yield exim
    finally:
        exim.cleanup()


def test_a_421_to_starttls_defers_the_message_and_sends_nothing_in_clear(
    tmp_path: Path, exim_421_to_starttls: exim_peer.Exim
) -> None:
    exim = exim_421_to_starttls
    srv = relay_server(tmp_path / "srv", exim.port)
    try:
        srv.start()
        send(srv, "closing")
        log = wait_for_log(srv, "deferred to=<bob@example.net>")
        assert f"relay 127.0.0.1:{exim.port} refused STARTTLS: {SHUTTING_DOWN}" in log, log
        assert "bounced" not in log and "continuing in clear" not in log, log
        assert len(spooled(srv)) == 1  # kept for the next attempt
        exim_log = exim.log()
        assert f"temporarily rejected STARTTLS : {SHUTTING_DOWN}" in exim_log, exim_log
        assert "F=<" not in exim_log, exim_log  # no MAIL FROM reached Exim
        assert srv.stop() == 0
    finally:
        _kill(srv)


def _kill(srv: Server) -> None:
    if srv.proc is not None:
        srv.proc.kill()
        srv.proc.wait(10)
        srv.proc = None


def test_the_audit_of_a_server_closing_at_starttls_grades_nothing(
    exim_421_to_starttls: exim_peer.Exim
) -> None:
    code, report = audit(f"smtp://127.0.0.1:{exim_421_to_starttls.port}")
    (target,) = report["targets"]
    assert code == 3, report  # nothing could be audited
    assert "no-tls" not in ids(target), target
    assert target["error"] == (f"STARTTLS answered {SHUTTING_DOWN}: the server is "
                               "closing the session; try again later"), target
