"""SASL EXTERNAL with TLS client certificates, against the real ``smtpgate serve``.

One server for the module, as ``smtpgate init`` writes it, with its two listeners
set to ``client_certificates = "optional"`` and a third, ``required`` one with
``client_cert_san_login``. The PKI is made here with ``cryptography``: a trusted
CA, another CA, good, expired, removed and unregistered certificates. Peers:
msmtp (GnuTLS, ``auth external``) and Python's smtplib, over STARTTLS and 465.
Each refusal is tried over the wire: a certificate from another CA, an expired
one, a removed fingerprint, no certificate on the required listener; the guard
counts EXTERNAL failures; sender ownership applies to the certificate's account.
"""

from __future__ import annotations

import base64
import email
import json
import smtplib
import ssl
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.client_pki import Issued, TestCa

from .backends import BACKENDS
from .conftest import LOGIN_IN_RECEIVED, Server, free_port, make_server, require_tool

ALICE = "alice@example.org"
CAROL = "carol@example.org"
PASSWORD = "correct horse battery"
#: The guard blocks an address after ADDRESS_FAILURES failures: each test that
#: fails on purpose does so from an address of its own.
ADDRESS_FAILURES = 4
GUARD_SOURCE = "127.0.0.77"


class Pki:
    def __init__(self, root: Path) -> None:
        self.ca = TestCa(root, "trusted")
        self.other_ca = TestCa(root, "other")
        self.alice = self.ca.issue("alice", emails=(ALICE,))
        self.expired = self.ca.issue("alice-expired", emails=(ALICE,), expired=True)
        self.foreign = self.other_ca.issue("alice-foreign", emails=(ALICE,))
        self.removed = self.ca.issue("alice-removed", emails=(ALICE,))
        self.stranger = self.ca.issue("stranger")
        self.carol_san = self.ca.issue("carol-san", emails=(CAROL,))


class CertServer:
    def __init__(self, srv: Server, pki: Pki, required_port: int) -> None:
        self.srv, self.pki, self.required = srv, pki, required_port

    def context(self, issued: Issued | None) -> ssl.SSLContext:
        ctx = self.srv.client_context()
        if issued is not None:
            ctx.load_cert_chain(issued.cert, issued.key)
        return ctx

    def starttls(self, issued: Issued | None, source: str = "127.0.0.1") -> smtplib.SMTP:
        s = smtplib.SMTP("127.0.0.1", self.srv.submission, timeout=20,
                         source_address=(source, 0))
        s.starttls(context=self.context(issued))
        s.ehlo("client.example")
        return s

    def implicit(
        self, issued: Issued | None, port: int | None = None, source: str = "127.0.0.1"
    ) -> smtplib.SMTP_SSL:
        s = smtplib.SMTP_SSL("127.0.0.1", port or self.srv.submissions, timeout=20,
                             context=self.context(issued), source_address=(source, 0))
        s.ehlo("client.example")
        return s

    def auth_log(self) -> list[dict[str, Any]]:
        path = self.srv.root / "auth.log"
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _with_client_certs(srv: Server, required_port: int, ca: Path) -> None:
    text = srv.config.read_text()
    for tls in ('tls = "starttls"\n', 'tls = "implicit"\n'):
        text = text.replace(tls, tls + f'client_certificates = "optional"\nclient_ca = "{ca}"\n', 1)
    text += f"""
[[listeners]]
name = "certonly"
address = "127.0.0.1:{required_port}"
tls = "implicit"
client_certificates = "required"
client_ca = "{ca}"
client_cert_san_login = true

[guard]
penalty_base = 0.05
penalty_max = 0.2
address_failure_limit = {ADDRESS_FAILURES}
""" + LOGIN_IN_RECEIVED  # the account's name in Received: what the tests read
    srv.config.write_text(text)


@pytest.fixture(scope="module")
def cs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CertServer]:
    root = tmp_path_factory.mktemp("certs") / "srv"
    srv = make_server(root)
    pki = Pki(root / "pki")
    required_port = free_port()
    _with_client_certs(srv, required_port, pki.ca.pem)
    srv.add_user(ALICE, PASSWORD)
    srv.add_user(CAROL, PASSWORD)
    srv.cli("user", "cert", "add", ALICE, str(pki.alice.cert))
    srv.cli("user", "cert", "add", ALICE, str(pki.removed.cert))
    srv.cli("user", "cert", "remove", ALICE, pki.removed.fingerprint)
    srv.start()
    yield CertServer(srv, pki, required_port)
    if srv.proc is not None:
        srv.stop()


def _message(marker: str, sender: str = ALICE) -> str:
    return (f"From: {sender}\r\nTo: bob@example.net\r\nSubject: {marker}\r\n"
            f"Message-ID: <{marker}@example.org>\r\n\r\n{marker}\r\n")


def _delivered(cs: CertServer, marker: str) -> email.message.Message:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for path in cs.srv.delivered():
            if marker.encode() in path.read_bytes():
                return email.message_from_bytes(path.read_bytes())
        time.sleep(0.05)
    raise AssertionError(f"message {marker} not delivered")


def _external(s: smtplib.SMTP, authzid: str = "") -> tuple[int, bytes]:
    arg = base64.b64encode(authzid.encode()).decode() if authzid else "="
    return s.docmd("AUTH", f"EXTERNAL {arg}")


def _auth_mechanisms(s: smtplib.SMTP) -> list[str]:
    return s.esmtp_features.get("auth", "").split()


# --- the good certificate: smtplib over both ports, msmtp ------------------------------


def test_smtplib_starttls_external_delivers_as_the_certificates_account(cs: CertServer) -> None:
    marker = f"ext-starttls-{uuid.uuid4().hex[:8]}"
    with cs.starttls(cs.pki.alice) as s:
        assert _auth_mechanisms(s)[0] == "EXTERNAL"
        assert _external(s)[0] == 235
        assert s.sendmail(ALICE, ["bob@example.net"], _message(marker)) == {}
    msg = _delivered(cs, marker)
    assert ALICE in msg["Received"] and "ESMTPSA" in msg["Received"]
    record = [r for r in cs.auth_log() if r["mechanism"] == "EXTERNAL"][-1]
    assert (record["result"], record["listener"]) == ("success", "submission")


def test_smtplib_implicit_tls_external_with_authzid_and_sender_ownership(cs: CertServer) -> None:
    marker = f"ext-465-{uuid.uuid4().hex[:8]}"
    with cs.implicit(cs.pki.alice) as s:
        assert _external(s, ALICE)[0] == 235
        # The certificate's account owns alice@ only: ownership applies as for a password.
        with pytest.raises(smtplib.SMTPSenderRefused) as refused:
            s.sendmail(CAROL, ["bob@example.net"], _message("forged", CAROL))
        assert refused.value.smtp_code == 553
        assert s.sendmail(ALICE, ["bob@example.net"], _message(marker)) == {}
    assert ALICE in _delivered(cs, marker)["Received"]


def test_authzid_of_another_account_is_refused(cs: CertServer) -> None:
    with cs.implicit(cs.pki.alice, source="127.0.0.21") as s:
        assert _external(s, CAROL)[0] == 535


@pytest.mark.parametrize("mode", ["starttls", "implicit"])
def test_msmtp_auth_external_with_client_certificate(
    cs: CertServer, mode: str, tmp_path: Path
) -> None:
    msmtp = require_tool("msmtp")
    marker = f"msmtp-ext-{mode}-{uuid.uuid4().hex[:8]}"
    port = cs.srv.submission if mode == "starttls" else cs.srv.submissions
    proc = subprocess.run(
        [msmtp, "-v", "--host=127.0.0.1", f"--port={port}", "--tls=on",
         f"--tls-starttls={'on' if mode == 'starttls' else 'off'}",
         f"--tls-trust-file={cs.srv.ca}", f"--tls-cert-file={cs.pki.alice.cert}",
         f"--tls-key-file={cs.pki.alice.key}", "--auth=external", f"--user={ALICE}",
         f"--from={ALICE}", "bob@example.net"],
        input=_message(marker), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # msmtp sends its user as the authzid, in answer to the empty 334 (without a
    # user, msmtp 1.8 never answers that challenge: docs/mechanisms.md).
    authzid = base64.b64encode(ALICE.encode()).decode()
    assert "--> AUTH EXTERNAL" in proc.stdout and f"--> {authzid}" in proc.stdout
    assert "<-- 235 2.7.0" in proc.stdout
    assert ALICE in _delivered(cs, marker)["Received"]


# --- refusals over the wire ------------------------------------------------------------


@pytest.mark.parametrize("which", ["foreign", "expired"])
def test_untrusted_certificate_gets_no_external(cs: CertServer, which: str) -> None:
    """Another CA's certificate, or an expired one, on an 'optional' listener: the
    session goes on without EXTERNAL, and asking for it anyway is refused."""
    issued = cs.pki.foreign if which == "foreign" else cs.pki.expired
    for s in (cs.starttls(issued), cs.implicit(issued)):
        with s:
            assert "EXTERNAL" not in _auth_mechanisms(s)
            assert _external(s)[0] == 504
            assert _external(s, ALICE)[0] == 504
    why = "expired" if which == "expired" else "issuer not in client_ca"
    assert f"not trusted: {why}" in cs.srv.log_text()


def test_removed_fingerprint_is_refused(cs: CertServer) -> None:
    with cs.starttls(cs.pki.removed, "127.0.0.22") as s:
        assert "EXTERNAL" in _auth_mechanisms(s)  # it verifies: the CA is trusted
        assert _external(s)[0] == 535
        assert _external(s, ALICE)[0] == 535
        with pytest.raises(smtplib.SMTPSenderRefused):
            s.sendmail(ALICE, ["bob@example.net"], _message("no"))
    # SAN login would map it to alice: the removal still wins.
    with cs.implicit(cs.pki.removed, cs.required, "127.0.0.22") as s:
        assert _external(s)[0] == 535
    reasons = [r["reason"] for r in cs.auth_log() if r["mechanism"] == "EXTERNAL"]
    assert any("removed from alice@example.org" in r for r in reasons)


def test_a_refused_certificate_is_logged_under_its_account(cs: CertServer) -> None:
    """`AUTH EXTERNAL =` names nobody; the certificate does. A login its account
    refuses (a removed fingerprint, a locked account) is logged under that
    account, so an administrator looking for why it cannot log in finds the
    attempts (until 2026-12 their username was "")."""
    with cs.starttls(cs.pki.removed, "127.0.0.24") as s:
        assert _external(s)[0] == 535
    cs.srv.cli("user", "lock", CAROL, "--reason", "lost laptop")
    try:
        with cs.implicit(cs.pki.carol_san, cs.required, "127.0.0.24") as s:
            assert _external(s)[0] == 535
    finally:
        cs.srv.cli("user", "unlock", CAROL)
    mine = [(r["username"], r["reason"]) for r in cs.auth_log() if r["client_ip"] == "127.0.0.24"]
    assert [name for name, _ in mine] == [ALICE, CAROL]
    assert "removed from alice@example.org" in mine[0][1]
    assert mine[1][1] == "account locked: lost laptop"


def test_required_listener_refuses_the_handshake_without_a_trusted_certificate(
    cs: CertServer,
) -> None:
    refused = (ssl.SSLError, smtplib.SMTPServerDisconnected, ConnectionError)
    for issued in (None, cs.pki.foreign, cs.pki.expired):
        with pytest.raises(refused), cs.implicit(issued, cs.required) as s:
            s.noop()  # TLS 1.3: the client learns of the refusal on its first read


def test_required_listener_san_email_logs_in(cs: CertServer) -> None:
    """client_cert_san_login: carol's unregistered certificate logs in by its SAN
    email; one naming no email (or a stranger's) does not."""
    with cs.implicit(cs.pki.carol_san, cs.required) as s:
        assert _external(s)[0] == 235
    with cs.implicit(cs.pki.stranger, cs.required, "127.0.0.23") as s:
        assert _external(s)[0] == 535


def test_guard_counts_external_failures(cs: CertServer) -> None:
    """An unregistered certificate from one address: each EXTERNAL failure counts,
    and past address_failure_limit the address is blocked, even for alice's good
    certificate."""
    codes = []
    for _ in range(ADDRESS_FAILURES):
        with cs.starttls(cs.pki.stranger, GUARD_SOURCE) as s:
            codes.append(_external(s)[0])
    assert codes == [535] * ADDRESS_FAILURES
    with cs.starttls(cs.pki.alice, GUARD_SOURCE) as s:
        assert _external(s)[0] == 454
    mine = [r for r in cs.auth_log() if r["client_ip"] == GUARD_SOURCE]
    assert [r["result"] for r in mine] == ["failure"] * ADDRESS_FAILURES + ["tempfail"]
    assert mine[-1]["reason"].startswith("blocked")
    # Other addresses are untouched.
    with cs.starttls(cs.pki.alice) as s:
        assert _external(s)[0] == 235


def test_user_cert_list_shows_active_and_removed(cs: CertServer) -> None:
    out = cs.srv.cli("user", "cert", "list", ALICE, "--json").stdout
    rows = {r["sha256"]: r for r in map(json.loads, out.splitlines())}
    assert rows[cs.pki.alice.fingerprint]["removed"] is None
    assert rows[cs.pki.removed.fingerprint]["removed"] is not None
    # Removing it again is a change that already holds: exit 0 (docs/cli.md).
    again = cs.srv.cli("user", "cert", "remove", ALICE, cs.pki.removed.fingerprint, check=False)
    assert again.returncode == 0 and "removed already" in again.stdout + again.stderr


@pytest.mark.parametrize("backend", ["postgresql", "ldap"])
def test_other_backends_map_and_refuse_certificates(
    cs: CertServer, tmp_path: Path, backend: str
) -> None:
    """The same on PostgreSQL (its table, schema v2 by `smtpgate db migrate`) and on
    LDAP (the overlay beside the directory): a registered certificate logs in, a
    removed one is refused."""
    srv = make_server(tmp_path / backend)
    _with_client_certs(srv, free_port(), cs.pki.ca.pem)
    BACKENDS[backend].configure(srv)
    if backend == "ldap":  # the uid is a login name too (docs/directories.md)
        srv.config.write_text(srv.config.read_text().replace("[accounts.ldap]\n", "[accounts.ldap]\n"
            'user_filter = "(&(objectClass=inetOrgPerson)(|(mail={login})(uid={login})))"\n'
            'login_attributes = ["mail", "uid"]\n', 1))
    BACKENDS[backend].add_user(srv, ALICE, PASSWORD)
    for cmd in (("add", ALICE, str(cs.pki.alice.cert)), ("add", ALICE, str(cs.pki.removed.cert)),
                ("remove", ALICE, cs.pki.removed.fingerprint)):
        srv.cli("user", "cert", *cmd)
    srv.start()
    try:
        pg = CertServer(srv, cs.pki, 0)
        with pg.starttls(cs.pki.alice) as s:
            assert _external(s)[0] == 235
        if backend == "ldap":
            # The authzid may be any login name of the entry, its uid too, as for
            # PLAIN and SCRAM (docs/mechanisms.md): msmtp sends its `user`, which an
            # LDAP site's users set to the uid they log in with by password (until
            # 2026-12: 535, "authorization identity differs from account").
            uid = ALICE.replace("@", ".")
            for authzid in (uid, uid.upper()):
                with pg.starttls(cs.pki.alice) as s:
                    assert _external(s, authzid)[0] == 235
            with pg.starttls(cs.pki.alice) as s:
                assert _external(s, "carol.example.org")[0] == 535  # no proxy authorization
        with pg.implicit(cs.pki.removed) as s:
            assert _external(s)[0] == 535
        listed = srv.cli("user", "cert", "list", ALICE, "--json").stdout
        assert listed.count('"removed": null') == 1
    finally:
        srv.stop()
