"""A listener on ``[::]:PORT`` (dual-stack on Linux) reached over IPv4: the kernel
reports the client as ``::ffff:a.b.c.d``, and smtpgate named it so in the auth log
and the Received line, where the guard already counted the IPv4 address. fail2ban
bans what the log says, so its ban (an IPv6 rule) never met the client's IPv4
packets."""

from __future__ import annotations

import json
import smtplib
from pathlib import Path

import pytest

from .conftest import PASSWORD, USER, make_server


def test_an_ipv4_client_of_a_dual_stack_listener_is_its_ipv4_address(tmp_path: Path) -> None:
    srv = make_server(tmp_path / "srv")
    srv.add_user(USER, PASSWORD)
    srv.config.write_text(srv.config.read_text().replace(
        f'"127.0.0.1:{srv.submission}"', f'"[::]:{srv.submission}"'))
    srv.start()
    try:
        with smtplib.SMTP("127.0.0.1", srv.submission, timeout=10,
                          source_address=("127.0.0.51", 0)) as s:
            s.starttls(context=srv.client_context())
            with pytest.raises(smtplib.SMTPAuthenticationError):
                s.login(USER, "not the password")
            s.login(USER, PASSWORD)
            s.sendmail(USER, [USER], b"From: alice@example.org\r\nSubject: dual stack\r\n\r\nhi\r\n")
        (msg,) = srv.wait_for_mail(1)
        head = msg.read_text().split("\n\n", 1)[0]
        records = [json.loads(x) for x in (srv.root / "auth.log").read_text().splitlines()]
    finally:
        srv.stop()
    # smtplib tries each mechanism offered before it gives up: failures, then the 235.
    assert {r["client_ip"] for r in records} == {"127.0.0.51"}, records
    assert [r["result"] for r in records][-1] == "success"
    assert "failure" in [r["result"] for r in records]
    assert "[127.0.0.51]" in head and "ffff" not in head, head
    assert "::ffff:127.0.0.51" not in srv.log_text()
