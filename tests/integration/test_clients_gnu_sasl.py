"""mutt and neomutt on their default settings send through a stock smtpgate (issue 8).

Both are built on GNU SASL in Debian, which picks SCRAM-SHA-256-PLUS whenever it
is offered; neither hands GNU SASL the channel-binding data, so they give up on
the -PLUS exchange before their first message ("*" from mutt, a hang-up from
neomutt) and do not try another mechanism. smtpgate then holds -PLUS back from
that address (docs/mechanisms.md, "-PLUS and GNU SASL clients"), so the retry
uses SCRAM-SHA-256 and the message goes out. Clients that can bind (gsasl) keep
getting -PLUS, and the hold-back opens no downgrade: a "y" flag is still refused.

The server is ``smtpgate init``'s config as is (plus cheaper Argon2), run as a
default install runs it (uvloop, ``workers = 0``): the retry may reach another
worker, which must see the hold-back too.
"""

from __future__ import annotations

import base64
import json
import os
import smtplib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from smtpgate.smtp import replies as R

from .conftest import PASSWORD, USER, Server, make_server, require_tool
from .test_protection import connect

pytestmark = pytest.mark.interop

HELD_BACK = "channel binding: -PLUS held back from 127.0.0.1"
OFFERED_AGAIN = "channel binding: -PLUS offered to 127.0.0.1 again"


@pytest.fixture
def stock(tmp_path: Path) -> Iterator[Server]:
    srv = make_server(tmp_path / "srv")
    srv.add_user(USER, PASSWORD)
    srv.start()
    yield srv
    if srv.proc is not None:
        srv.stop()


def auth_log(server: Server) -> list[dict[str, object]]:
    path = server.root / "auth.log"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def wait_for_log(server: Server, text: str, count: int = 1) -> None:
    """The server logs the hold-back once it is stored (in the database every
    worker reads); a hang-up stores it after the connection is gone."""
    deadline = time.monotonic() + 10
    while server.log_text().count(text) < count:
        assert time.monotonic() < deadline, server.log_text()
        time.sleep(0.05)


def muttrc(server: Server, home: Path) -> Path:
    """Only what any user must set (server, account, password, trust); nothing about
    mechanisms: ``smtp_authenticators`` stays unset, mutt's default."""
    rc = home / "muttrc"
    rc.write_text(
        f'set smtp_url = "smtp://{USER}@127.0.0.1:{server.submission}/"\n'
        f'set smtp_pass = "{PASSWORD}"\n'
        "set ssl_starttls = yes\n"
        "set ssl_force_tls = yes\n"
        # The test CA, so the certificate verifies and nothing asks a question.
        f'set certificate_file = "{server.ca}"\n'
        f'set from = "{USER}"\n'
        'set record = ""\n'
    )
    return rc


def send_with(
    program: str, server: Server, home: Path, subject: str
) -> subprocess.CompletedProcess[str]:
    """One batch-mode send: ``mutt -n -F rc -s SUBJECT rcpt < body``."""
    return subprocess.run(
        [program, "-n", "-F", str(muttrc(server, home)), "-s", subject, "bob@example.net"],
        input="Hello Bob.\n", capture_output=True, text=True, timeout=60,
        env={**os.environ, "HOME": str(home), "TERM": "dumb"}, check=False,
    )


@pytest.mark.parametrize("program", ["mutt", "neomutt"])
def test_mutt_and_neomutt_send_through_a_stock_server(
    stock: Server, tmp_path: Path, program: str
) -> None:
    path = require_tool(program)
    version = subprocess.run(
        [path, "-v"], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    # The case at issue: a build on GNU SASL (Debian's), not Cyrus SASL.
    assert "+USE_GSASL" in version or "+gsasl" in version, version
    home = tmp_path / "home"
    home.mkdir()

    # First try: GNU SASL takes SCRAM-SHA-256-PLUS and gives up before its first
    # message. This is the one failure the fallback costs (docs/mechanisms.md).
    first = send_with(path, stock, home, "first try")
    assert first.returncode != 0, first.stdout + first.stderr
    # (neomutt hangs up: its record and the hold-back are written as the server
    # notices, which may be just after neomutt has exited.)
    wait_for_log(stock, HELD_BACK)
    [record] = auth_log(stock)
    assert (record["mechanism"], record["result"], record["username"]) == (
        "SCRAM-SHA-256-PLUS", "cancelled", ""
    )

    # The retry, and every send after it, works: SCRAM-SHA-256, delivered.
    for n, subject in enumerate(("second try", "third try"), start=1):
        proc = send_with(path, stock, home, subject)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        files = stock.wait_for_mail(n)
        assert any(f"Subject: {subject}".encode() in f.read_bytes() for f in files)
    records = auth_log(stock)
    assert [(r["mechanism"], r["result"]) for r in records[1:]] == [
        ("SCRAM-SHA-256", "success")
    ] * 2
    assert stock.log_text().count(HELD_BACK) == 1  # no churn


def gsasl(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_tool("gsasl"), "--smtp", f"--connect=127.0.0.1:{server.submission}",
         "--starttls", f"--x509-ca-file={server.ca}", "--hostname=localhost", "-d",
         "--quiet", "-a", USER, "-p", PASSWORD, *args],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, check=False,
    )


def offered(server: Server) -> list[str]:
    with smtplib.SMTP("127.0.0.1", server.submission, timeout=10) as s:
        s.starttls(context=server.client_context())
        s.ehlo("client.test")
        return s.esmtp_features["auth"].split()


def hold_back_like_mutt(server: Server) -> None:
    """What mutt does on its first try: AUTH X-PLUS, the empty 334, then "*"."""
    r = connect(server, "127.0.0.1", implicit=False)
    try:
        assert r.cmd("AUTH SCRAM-SHA-256-PLUS") == "334 "
        assert r.cmd("*") == str(R.AUTH_CANCELLED)
    finally:
        r.close()
    wait_for_log(server, HELD_BACK)


def test_a_client_that_can_bind_gets_channel_binding(stock: Server) -> None:
    # A stock server offers -PLUS, and gsasl (which hands GNU SASL the binding
    # data) picks it on its own and binds.
    assert "SCRAM-SHA-256-PLUS" in offered(stock)
    proc = gsasl(stock)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [(r["mechanism"], r["result"]) for r in auth_log(stock)] == [
        ("SCRAM-SHA-256-PLUS", "success")
    ]
    # Where -PLUS is held back, a client that asks for it still binds, and that
    # shows -PLUS is wanted there: it is offered to the address again.
    hold_back_like_mutt(stock)
    assert "SCRAM-SHA-256-PLUS" not in offered(stock)
    proc = gsasl(stock, "-m", "SCRAM-SHA-256-PLUS")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert auth_log(stock)[-1]["mechanism"] == "SCRAM-SHA-256-PLUS"
    assert auth_log(stock)[-1]["result"] == "success"
    wait_for_log(stock, OFFERED_AGAIN)
    assert "SCRAM-SHA-256-PLUS" in offered(stock)


def test_gsasl_left_without_plus_gets_it_back_on_its_retry(stock: Server) -> None:
    """gsasl on its defaults cannot do plain SCRAM over TLS (it has binding data and
    cannot send "y"): where -PLUS is held back it gives up before its first
    message, which brings -PLUS back for its retry."""
    hold_back_like_mutt(stock)
    failed = gsasl(stock)
    assert failed.returncode != 0
    wait_for_log(stock, OFFERED_AGAIN)  # written once the server sees the hang-up
    assert (auth_log(stock)[-1]["mechanism"], auth_log(stock)[-1]["result"]) == (
        "SCRAM-SHA-256", "cancelled"
    )
    proc = gsasl(stock)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert auth_log(stock)[-1]["mechanism"] == "SCRAM-SHA-256-PLUS"


def test_held_back_plus_opens_no_downgrade(stock: Server) -> None:
    """The attack: get -PLUS held back from one's own address (cancel a -PLUS
    exchange), then relay a victim's client that can bind. That client sees no
    -PLUS and says so with the gs2 flag "y"; RFC 5802 §6 makes the server refuse,
    since it does support binding there. The hold-back must not change that."""
    hold_back_like_mutt(stock)
    r = connect(stock, "127.0.0.1", implicit=False)
    try:
        ehlo = r.cmd("EHLO client.test")
        assert "SCRAM-SHA-256" in ehlo and "-PLUS" not in ehlo
        first = base64.b64encode(f"y,,n={USER},r=fyko+d2lbbFgONRv9qkxdawL".encode()).decode()
        reply = r.cmd(f"AUTH SCRAM-SHA-256 {first}")
        assert base64.b64decode(reply[4:]) == b"e=server-does-support-channel-binding"
        # The refusal stands (a failure in the log); the "*" itself gets 501, as RFC
        # 4954 §4 says a cancel MUST.
        assert r.cmd("*") == str(R.AUTH_CANCELLED)
    finally:
        r.close()
    record = auth_log(stock)[-1]
    assert (record["result"], record["username"]) == ("failure", USER)
    assert "y flag" in str(record["reason"])
