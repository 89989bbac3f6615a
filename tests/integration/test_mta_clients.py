"""Postfix 3.7 and Exim 4.96 relaying their mail through smtpgate as authenticated
clients: the MTA of a web or application server with smtpgate as its
``relayhost``/smarthost (docs/integration.md, "MTAs as clients").

Each message goes in through the MTA's own ``sendmail`` and must come out in
smtpgate's Maildir with ``ESMTPSA`` and the login in its Received line; the
MTA checks smtpgate's certificate. Postfix authenticates through Cyrus SASL
(PLAIN, LOGIN, SCRAM-SHA-1, SCRAM-SHA-256, and its own pick among what is
offered), Exim with its ``plaintext`` driver (PLAIN, LOGIN) and sends the data
with BDAT when CHUNKING is offered. A wrong password is deferred, never
delivered; a sender the account does not own is refused and bounced.
"""

from __future__ import annotations

import email
import email.policy
import json
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.peers import exim as exim_peer
from tests.peers.mta_clients import (
    PostfixRelay,
    make_exim_client,
    make_postfix_relay,
)

from .conftest import IN_CI, Server, make_server, require_mta

APP = "app@example.org"
PASSWORD = "Relay-Client-Pass-42"


@pytest.fixture(scope="module")
def smtpgate() -> Iterator[Server]:
    root = Path(tempfile.mkdtemp(prefix="sgmtac-"))
    root.chmod(0o755)
    srv = make_server(root / "srv", "\n[smtp]\nreceived_login = true\n")
    try:
        srv.add_user(APP, PASSWORD)
        srv.start()
        # The MTAs' delivery processes run as their own users and read the CA file.
        for d in (srv.root, srv.root / "tls"):
            d.chmod(0o755)
        yield srv
    finally:
        if srv.proc is not None:
            srv.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def postfix(smtpgate: Server) -> Iterator[PostfixRelay]:
    require_mta()
    pf = make_postfix_relay(smtpgate.submission, smtpgate.submissions, smtpgate.ca, APP,
                            PASSWORD)
    try:
        pf.start()
        yield pf
    finally:
        pf.cleanup()


def message(token: str, rcpt: str, sender: str = APP) -> str:
    return f"From: {sender}\nTo: {rcpt}\nSubject: {token}\n\nrelayed through an MTA\n"


def delivered(srv: Server, token: str, timeout: float = 30) -> email.message.EmailMessage:
    """The message whose Subject is ``token`` in smtpgate's Maildir."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for path in srv.delivered():
            msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
            if msg["Subject"] == token:
                assert isinstance(msg, email.message.EmailMessage)
                return msg
        time.sleep(0.1)
    raise AssertionError(f"{token} not delivered; server log:\n{srv.log_text()[-3000:]}")


def not_delivered(srv: Server, token: str) -> bool:
    return not any(token.encode() in p.read_bytes() for p in srv.delivered())


def auth_records(srv: Server) -> list[dict[str, Any]]:
    path = srv.root / "auth.log"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def logins(srv: Server, before: int) -> list[tuple[str, str]]:
    """(mechanism, result) of the AUTH attempts logged since ``before`` records."""
    return [(r["mechanism"], r["result"]) for r in auth_records(srv)[before:]]


def received_by_login(msg: email.message.EmailMessage) -> str:
    top = str(msg.get_all("Received")[0])
    assert "with ESMTPSA" in top, top
    return top


@pytest.mark.parametrize(("domain", "mech"), [
    ("plain.test", "PLAIN"), ("login.test", "LOGIN"), ("scram1.test", "SCRAM-SHA-1"),
    ("scram256.test", "SCRAM-SHA-256"), ("best.test", "SCRAM-SHA-256"),
    ("smtps.test", "SCRAM-SHA-256")])
def test_postfix_relays_through_smtpgate(smtpgate: Server, postfix: PostfixRelay, domain: str,
                                         mech: str) -> None:
    token = f"postfix-{domain}-{uuid.uuid4().hex[:8]}"
    rcpt = f"{token}@{domain}"
    before = len(auth_records(smtpgate))
    postfix.send(APP, rcpt, message(token, rcpt))
    verdict = postfix.wait_status(rcpt)
    assert "status=sent (250 2.0.0" in verdict, verdict + smtpgate.log_text()[-2000:]
    msg = delivered(smtpgate, token)
    assert APP in received_by_login(msg)
    log = postfix.maillog()
    assert "Verified TLS connection established to 127.0.0.1" in log, log[-2000:]
    # best.test: Postfix picks the strongest mechanism offered when not told which.
    assert logins(smtpgate, before) == [(mech, "success")]


def test_postfix_with_a_wrong_password_is_deferred_not_delivered(
        smtpgate: Server, postfix: PostfixRelay) -> None:
    token = f"postfix-wrong-{uuid.uuid4().hex[:8]}"
    rcpt = f"{token}@wrong.test"
    before = len(auth_records(smtpgate))
    postfix.send(APP, rcpt, message(token, rcpt))
    verdict = postfix.wait_status(rcpt)
    # Postfix picks SCRAM-SHA-256; Cyrus SASL reads the server's e=invalid-proof as a
    # protocol error and cancels, so its log says "bad protocol / cancel", not the
    # 535 that follows (docs/integration.md, "MTAs as clients").
    assert "status=deferred (SASL authentication failed" in verdict, verdict
    records = auth_records(smtpgate)[before:]
    assert [(r["mechanism"], r["result"]) for r in records] == [("SCRAM-SHA-256", "failure")]
    # Postfix either cancels ("*") or hangs up: the same failure either way.
    assert records[0]["reason"].startswith("SCRAM-SHA-256: invalid proof"), records
    assert not_delivered(smtpgate, token)


def test_postfix_relaying_a_foreign_sender_is_refused_and_bounced(
        smtpgate: Server, postfix: PostfixRelay) -> None:
    """A cron job's mail from root: the envelope sender is not the account's own, so
    smtpgate refuses it (553 5.7.1) and Postfix bounces it instead of retrying."""
    token = f"postfix-root-{uuid.uuid4().hex[:8]}"
    rcpt = f"{token}@plain.test"
    postfix.send("root@web1.example.org", rcpt, message(token, rcpt, "root@web1.example.org"))
    verdict = postfix.wait_status(rcpt)
    assert "status=bounced" in verdict and "553 5.7.1" in verdict, verdict
    assert not_delivered(smtpgate, token)


@pytest.fixture
def exim_dir() -> Iterator[Path]:
    """Exim's delivery runs as Debian-exim, which cannot enter pytest's 0700 tmp_path."""
    root = Path(tempfile.mkdtemp(prefix="sgeximc-", dir="/tmp"))
    root.chmod(0o755)
    yield root / "exim"
    shutil.rmtree(root, ignore_errors=True)


def require_exim() -> None:
    if not exim_peer.available():
        why = "Exim is not unpacked or Debian-exim is missing (run make exim as root)"
        if IN_CI:
            pytest.fail(why)
        pytest.skip(why)


@pytest.mark.parametrize(("mech", "implicit"), [
    ("PLAIN", False), ("LOGIN", False), ("PLAIN", True)])
def test_exim_relays_through_smtpgate(smtpgate: Server, exim_dir: Path, mech: str,
                                      implicit: bool) -> None:
    require_exim()
    port = smtpgate.submissions if implicit else smtpgate.submission
    client = make_exim_client(exim_dir, port, implicit, smtpgate.ca, mech, APP,
                              PASSWORD)
    token = f"exim-{mech}-{implicit}-{uuid.uuid4().hex[:8]}"
    before = len(auth_records(smtpgate))
    proc = client.send(APP, "carol@example.net", message(token, "carol@example.net"))
    log = client.mainlog()
    assert proc.returncode == 0, proc.stdout + proc.stderr + log
    sent = [line for line in log.splitlines() if "=> carol@example.net" in line]
    assert sent, log
    # CV=yes: Exim checked smtpgate's certificate; K: the data went with BDAT.
    assert "CV=yes" in sent[0] and f"A=client_{mech.lower()}" in sent[0], sent[0]
    assert " K C=\"250 2.0.0" in sent[0], sent[0]
    msg = delivered(smtpgate, token)
    assert APP in received_by_login(msg)
    assert logins(smtpgate, before) == [(mech, "success")]


def test_exim_with_a_wrong_password_defers(smtpgate: Server, exim_dir: Path) -> None:
    require_exim()
    client = make_exim_client(exim_dir, smtpgate.submission, False, smtpgate.ca,
                              "PLAIN", APP, "not-the-password-1")
    token = f"exim-wrong-{uuid.uuid4().hex[:8]}"
    client.send(APP, "carol@example.net", message(token, "carol@example.net"))
    log = client.mainlog()
    assert "== carol@example.net" in log and "authentication attempt(s) failed" in log, log
    assert "=> carol@example.net" not in log
    assert not_delivered(smtpgate, token)


@pytest.mark.parametrize("dsn_from", ["", f"Mail Delivery System <{APP}>"])
def test_exim_bounces_reach_smtpgate_only_from_an_address_the_account_owns(
        smtpgate: Server, exim_dir: Path, dsn_from: str) -> None:
    """An MTA's own bounce (MAIL FROM:<>) has From: Mailer-Daemon@its host, which
    the account does not own: smtpgate refuses it (550 5.7.1) and Exim freezes it,
    so the sender never hears of the failure. Exim's dsn_from set to the account's
    address, as docs/integration.md says, lets it through."""
    require_exim()
    main = f"dsn_from = {dsn_from}\n" if dsn_from else ""
    client = make_exim_client(exim_dir, smtpgate.submission, False, smtpgate.ca, "PLAIN", APP,
                              PASSWORD, main)
    token = f"exim-dsn-{uuid.uuid4().hex[:8]}"
    # Refused by smtpgate at the end of data (a From the account does not own):
    # Exim bounces it to APP through smtpgate, with the null sender.
    client.send(APP, "carol@example.net",
                f"From: other@example.net\nTo: carol@example.net\nSubject: {token}\n\nx\n")
    deadline = time.monotonic() + 30
    bounce: list[str] = []
    while not bounce and time.monotonic() < deadline:
        time.sleep(0.2)
        log = client.mainlog()
        bounce = [line for line in log.splitlines() if f"{APP} R=smarthost" in line]
    assert bounce, log
    if dsn_from:
        assert "=> app@example.org" in bounce[0] and "250 2.0.0" in bounce[0], log
    else:
        assert "** app@example.org" in bounce[0] and "550 5.7.1 From header" in bounce[0], log
