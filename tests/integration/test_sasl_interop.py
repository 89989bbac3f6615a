"""Every SASL mechanism against the running server, with real third-party clients.

Clients: gsasl (``--smtp``; implicit TLS through socat), msmtp, curl and Python's
smtplib, as described in /work/shared/peers/README.md. Each positive test checks the
client's own verdict *and* the server's auth log (mechanism, TLS version, success);
the msmtp and curl tests send a message and find it in the Maildir. The OAuth tests
use a local issuer (``oauth_issuer.py``): an EC key pair made for the session, its
JWKS file in the server directory, tokens minted with PyJWT.

Wire-level negatives (the 'y' downgrade, channel-binding data from another
connection, a tampered nonce) use ``sasl_wire.WireSmtp``, whose TLS is the client
side of OpenSSL, so its channel bindings are computed independently of the server.
"""

from __future__ import annotations

import base64
import json
import smtplib
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from smtpgate.sasl.base import ChannelBinding
from smtpgate.sasl.cram_md5 import CramMd5Client
from smtpgate.sasl.scram import ScramClient

from .conftest import require_tool
from .oauth_issuer import ISSUER, SCOPE
from .sasl_server import (
    PASSWORD,
    PLAIN_PASSWORD,
    PLAIN_USER,
    SCRAM_ONLY_PASSWORD,
    SCRAM_ONLY_USER,
    USER,
    SaslServer,
    build_sasl_server,
)
from .sasl_wire import WireSmtp

pytestmark = pytest.mark.interop

TIMEOUT = 60


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SaslServer]:
    s = build_sasl_server(tmp_path_factory.mktemp("sasl") / "srv")
    yield s
    if s.server.proc is not None:
        s.server.stop()


def run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    if "input" not in kw:
        kw["stdin"] = subprocess.DEVNULL
    return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=TIMEOUT, **kw)


class AuthLog:
    """The auth-log records a test produced (read after the client finished: the
    server writes the record before its final reply goes out)."""

    def __init__(self, srv: SaslServer) -> None:
        self._srv = srv
        self._start = len(srv.auth_records())

    def new(self) -> list[dict[str, Any]]:
        return self._srv.auth_records()[self._start :]

    def one(self, **match: Any) -> dict[str, Any]:
        records = [r for r in self.new() if all(r.get(k) == v for k, v in match.items())]
        assert len(records) == 1, f"want one record {match}, have {self.new()}"
        return records[0]

    def wait_one(self, timeout: float = 20, **match: Any) -> dict[str, Any]:
        """For a record written when the server notices the client has gone."""
        deadline = time.monotonic() + timeout
        while not any(all(r.get(k) == v for k, v in match.items()) for r in self.new()):
            assert time.monotonic() < deadline, f"no record {match} in {self.new()}"
            time.sleep(0.05)
        return self.one(**match)


def message(marker: str, sender: str = USER) -> str:
    return (
        f"From: {sender}\r\nTo: bob@example.net\r\nSubject: {marker}\r\n"
        f"Message-ID: <{marker}@example.org>\r\n\r\nSent by the SASL interop tests.\r\n"
    )


def check_delivered(srv: SaslServer, marker: str, identity: str = USER) -> None:
    data = srv.wait_for_message(marker).decode("utf-8", "replace")
    assert "with ESMTPSA" in data and f"Authenticated sender: {identity}" in data, data[:600]


# --- gsasl ---------------------------------------------------------------------------

GSASL_MECHANISMS = [
    "PLAIN",
    "LOGIN",
    "CRAM-MD5",
    "SCRAM-SHA-1",
    "SCRAM-SHA-256",
    "SCRAM-SHA-1-PLUS",
    "SCRAM-SHA-256-PLUS",
]
TLS_VERSIONS = {"1.3": ("TLSv1.3", "tls-exporter"), "1.2": ("TLSv1.2", "tls-unique")}


def gsasl_client_first(output: str, mech: str) -> str:
    """The decoded first client message after ``AUTH <mech>`` in gsasl's transcript."""
    lines = output.splitlines()
    start = lines.index(f"AUTH {mech}")
    for line in lines[start + 1 :]:
        if not line.startswith(("334", "235", "535")):
            return base64.b64decode(line).decode()
    raise AssertionError(output)


@pytest.mark.parametrize("tls", ["1.3", "1.2"])
@pytest.mark.parametrize("mech", GSASL_MECHANISMS)
def test_gsasl_starttls(srv: SaslServer, mech: str, tls: str) -> None:
    """gsasl --smtp over STARTTLS: TLS 1.3 (-PLUS binds with tls-exporter) and TLS 1.2
    forced with --priority (-PLUS binds with tls-unique)."""
    gsasl = require_tool("gsasl")
    version, cb_type = TLS_VERSIONS[tls]
    cmd = [
        gsasl, "--smtp", f"--connect=127.0.0.1:{srv.submission}", "--starttls",
        f"--x509-ca-file={srv.ca}", "--hostname=localhost", "-d",
        "-m", mech, "-a", USER, "-p", PASSWORD,
    ]  # fmt: skip
    if tls == "1.2":
        cmd.append("--priority=NORMAL:-VERS-TLS1.3")
    if mech.startswith("SCRAM") and not mech.endswith("-PLUS"):
        # gsasl 2.2.0 cannot run a non-PLUS SCRAM while it holds binding data (see
        # test_gsasl_y_flag_never_authenticates); --no-cb makes it send 'n'.
        cmd.append("--no-cb")
    log = AuthLog(srv)
    proc = run(cmd)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "235 2.7.0" in out
    record = log.one(mechanism=mech, result="success")
    assert record["username"] == USER and record["tls"] == version
    if mech.startswith("SCRAM"):
        gs2 = gsasl_client_first(proc.stdout, mech).split(",")[0]
        # The binding type proves which TLS-layer value the server matched.
        assert gs2 == (f"p={cb_type}" if mech.endswith("-PLUS") else "n")


@pytest.mark.parametrize("mech", ["PLAIN", "LOGIN", "CRAM-MD5", "SCRAM-SHA-1", "SCRAM-SHA-256"])
def test_gsasl_implicit_tls_through_socat(srv: SaslServer, mech: str) -> None:
    """gsasl has no implicit TLS: socat holds the TLS connection (and verifies the
    certificate) and runs gsasl on the plaintext side, so no channel binding."""
    gsasl = require_tool("gsasl")
    socat = require_tool("socat")
    require_tool("stdbuf")
    log = AuthLog(srv)
    client = (
        f"stdbuf -o0 {gsasl} --client --smtp -d --quiet --no-cb -m {mech} -a {USER} -p {PASSWORD}"
    )
    proc = run(
        [socat, f"OPENSSL:127.0.0.1:{srv.submissions},cafile={srv.ca},commonname=localhost",
         f"EXEC:{client},stderr"]
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    record = log.one(mechanism=mech, result="success")
    assert record["listener"] == "submissions" and record["username"] == USER


def test_gsasl_wrong_password_is_refused_with_invalid_proof(srv: SaslServer) -> None:
    """A real SCRAM client with the wrong password: the server answers e=invalid-proof.
    gsasl hangs up at that point, before the 535; the attempt is still logged as a
    failure (it used to leave no record at all)."""
    gsasl = require_tool("gsasl")
    log = AuthLog(srv)
    proc = run(
        [gsasl, "--smtp", f"--connect=127.0.0.1:{srv.submission}", "--starttls",
         f"--x509-ca-file={srv.ca}", "--hostname=localhost", "-d",
         "-m", "SCRAM-SHA-256-PLUS", "-a", USER, "-p", "Wrong-Password-For-Alice-1"]
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "235 " not in out
    assert "334 " + base64.b64encode(b"e=invalid-proof").decode() in out
    record = log.wait_one(mechanism="SCRAM-SHA-256-PLUS", result="failure")
    assert "connection closed during AUTH" in record["reason"]


def test_gsasl_y_flag_never_authenticates(srv: SaslServer) -> None:
    """gsasl SCRAM-SHA-256 (non-PLUS) over TLS with binding data, against a server that
    advertised -PLUS: must never succeed (RFC 5802 §6).

    gsasl 2.2.0 actually refuses this itself before sending anything (its client sets
    the binding *name* together with the 'y' flag, and its own validator rejects the
    pair: lib/scram/client.c + validate.c), so the server-side refusal of a real 'y'
    on the wire is shown by test_y_flag_downgrade_refused_on_the_wire. Should a later
    gsasl send 'y', this test requires the server to refuse it."""
    gsasl = require_tool("gsasl")
    log = AuthLog(srv)
    proc = run(
        [gsasl, "--smtp", f"--connect=127.0.0.1:{srv.submission}", "--starttls",
         f"--x509-ca-file={srv.ca}", "--hostname=localhost", "-d",
         "-m", "SCRAM-SHA-256", "-a", USER, "-p", PASSWORD]
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert "235 " not in out and proc.returncode != 0
    assert not [r for r in log.new() if r["result"] == "success"]
    lines = proc.stdout.splitlines()  # the SMTP transcript; diagnostics are on stderr
    sent = [ln for ln in lines[lines.index("AUTH SCRAM-SHA-256") + 1 :] if not ln.startswith("334")]
    if sent and sent[0].strip():  # a gsasl that does send its client-first
        assert base64.b64decode(sent[0]).startswith(b"y,")
        assert "334 " + base64.b64encode(b"e=server-does-support-channel-binding").decode() in out


# --- msmtp ---------------------------------------------------------------------------

MSMTP_CASES = ["scram-sha-256", "cram-md5", "oauthbearer", "xoauth2"]


@pytest.mark.parametrize("mode", ["starttls", "implicit"])
@pytest.mark.parametrize("auth", MSMTP_CASES)
def test_msmtp_sends(srv: SaslServer, auth: str, mode: str, tmp_path: Path) -> None:
    msmtp = require_tool("msmtp")
    secret = srv.issuer.token(USER) if auth in ("oauthbearer", "xoauth2") else PASSWORD
    secret_file = tmp_path / "secret"
    secret_file.write_text(secret)
    marker = f"msmtp-{auth}-{mode}-{uuid.uuid4().hex[:8]}"
    port = srv.submission if mode == "starttls" else srv.submissions
    log = AuthLog(srv)
    proc = run(
        [msmtp, "-v", "--host=127.0.0.1", f"--port={port}", "--tls=on",
         f"--tls-starttls={'on' if mode == 'starttls' else 'off'}",
         f"--tls-trust-file={srv.ca}", f"--auth={auth}", f"--user={USER}",
         f"--passwordeval=cat {secret_file}", f"--from={USER}", "bob@example.net"],
        input=message(marker),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    mech = auth.upper()
    assert f"--> AUTH {mech}" in proc.stdout and "<-- 235 2.7.0" in proc.stdout
    record = log.one(mechanism=mech, result="success")
    assert record["listener"] == ("submission" if mode == "starttls" else "submissions")
    check_delivered(srv, marker)


# --- curl ----------------------------------------------------------------------------


def curl_send(
    srv: SaslServer, port: int, mode: str, marker: str, auth_args: list[str]
) -> subprocess.CompletedProcess[str]:
    curl = require_tool("curl")
    scheme = "smtp" if mode == "starttls" else "smtps"
    tls = ["--ssl-reqd"] if mode == "starttls" else []
    return run(
        [curl, "-sS", "-v", "--max-time", "30", "--url", f"{scheme}://127.0.0.1:{port}/client.test",
         *tls, "--cacert", str(srv.ca), *auth_args, "--mail-from", USER,
         "--mail-rcpt", "bob@example.net", "-T", "-"],
        input=message(marker),
    )  # fmt: skip


@pytest.mark.parametrize("mode", ["starttls", "implicit"])
@pytest.mark.parametrize("mech", ["PLAIN", "LOGIN", "CRAM-MD5"])
def test_curl_password_mechanisms(srv: SaslServer, mech: str, mode: str) -> None:
    marker = f"curl-{mech}-{mode}-{uuid.uuid4().hex[:8]}"
    port = srv.submission if mode == "starttls" else srv.submissions
    log = AuthLog(srv)
    proc = curl_send(
        srv, port, mode, marker, ["--user", f"{USER}:{PASSWORD}", "--login-options", f"AUTH={mech}"]
    )
    assert proc.returncode == 0, proc.stderr
    assert f"> AUTH {mech}" in proc.stderr and "< 235 2.7.0" in proc.stderr
    log.one(mechanism=mech, result="success")
    check_delivered(srv, marker)


@pytest.mark.parametrize("mode", ["starttls", "implicit"])
def test_curl_oauthbearer(srv: SaslServer, mode: str) -> None:
    """curl --oauth2-bearer picks OAUTHBEARER when it is offered (curl 7.88)."""
    marker = f"curl-oauthbearer-{mode}-{uuid.uuid4().hex[:8]}"
    port = srv.submission if mode == "starttls" else srv.submissions
    log = AuthLog(srv)
    proc = curl_send(
        srv, port, mode, marker, ["--user", USER, "--oauth2-bearer", srv.issuer.token(USER)]
    )
    assert proc.returncode == 0, proc.stderr
    assert "> AUTH OAUTHBEARER" in proc.stderr and "< 235 2.7.0" in proc.stderr
    log.one(mechanism="OAUTHBEARER", result="success")
    check_delivered(srv, marker)


@pytest.mark.parametrize("mode", ["starttls", "implicit"])
def test_curl_xoauth2_on_xoauth2_only_listener(srv: SaslServer, mode: str) -> None:
    """On a listener whose ``mechanisms = ["XOAUTH2"]``, curl falls back to XOAUTH2."""
    marker = f"curl-xoauth2-{mode}-{uuid.uuid4().hex[:8]}"
    port = srv.ports[f"xoauth2-{mode}"]
    log = AuthLog(srv)
    proc = curl_send(
        srv, port, mode, marker, ["--user", USER, "--oauth2-bearer", srv.issuer.token(USER)]
    )
    assert proc.returncode == 0, proc.stderr
    assert "< 250 AUTH XOAUTH2" in proc.stderr  # the only mechanism offered there
    assert "> AUTH XOAUTH2" in proc.stderr and "< 235 2.7.0" in proc.stderr
    record = log.one(mechanism="XOAUTH2", result="success")
    assert record["listener"] == f"xoauth2-{mode}"
    check_delivered(srv, marker)


def test_xoauth2_and_oauthbearer_for_an_internationalised_address(srv: SaslServer) -> None:
    """An SMTPUTF8 account (RFC 6531) logs in with a token through XOAUTH2, whose
    user= was refused as not printable ASCII, and through OAUTHBEARER."""
    user = "jos\u00e9@example.org"
    srv.server.add_user(user, "Glacier-Tulip-Anvil-62")
    token = srv.issuer.token(user)
    log = AuthLog(srv)
    for mech, port, blob in (
        ("XOAUTH2", srv.ports["xoauth2-implicit"],
         f"user={user}\x01auth=Bearer {token}\x01\x01"),
        ("OAUTHBEARER", srv.submissions, f"n,a={user},\x01auth=Bearer {token}\x01\x01"),
    ):
        with smtplib.SMTP_SSL(
            "127.0.0.1", port, timeout=20, context=srv.server.client_context()
        ) as s:
            s.ehlo("client.test")
            code, text = s.docmd("AUTH", f"{mech} " + base64.b64encode(blob.encode()).decode())
            assert code == 235, (mech, code, text)
        log.one(mechanism=mech, result="success")


def test_curl_expired_token_refused(srv: SaslServer) -> None:
    log = AuthLog(srv)
    token = srv.issuer.bad_tokens(USER)["expired"]
    proc = curl_send(
        srv, srv.submissions, "implicit", "never-sent", ["--user", USER, "--oauth2-bearer", token]
    )
    assert proc.returncode != 0
    assert "< 535 5.7.8" in proc.stderr
    log.one(mechanism="OAUTHBEARER", result="failure")


# --- Python smtplib ------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["starttls", "implicit"])
def test_smtplib_cram_md5(srv: SaslServer, mode: str) -> None:
    marker = f"smtplib-cram-{mode}-{uuid.uuid4().hex[:8]}"
    log = AuthLog(srv)
    ctx = srv.server.client_context()
    s: smtplib.SMTP
    if mode == "starttls":
        s = smtplib.SMTP("127.0.0.1", srv.submission, timeout=20)
        s.starttls(context=ctx)
    else:
        s = smtplib.SMTP_SSL("127.0.0.1", srv.submissions, timeout=20, context=ctx)
    with s:
        s.ehlo("client.test")
        assert "CRAM-MD5" in s.esmtp_features["auth"].split()
        s.user, s.password = USER, PASSWORD
        code, _ = s.auth("CRAM-MD5", s.auth_cram_md5)
        assert code == 235
        s.sendmail(USER, ["bob@example.net"], message(marker))
    log.one(mechanism="CRAM-MD5", result="success")
    check_delivered(srv, marker)


def test_cram_md5_refused_for_account_that_did_not_opt_in(srv: SaslServer) -> None:
    """bob never ran `user cram-md5 --enable`: the right password is refused (535),
    as an unknown account would be."""
    log = AuthLog(srv)
    with smtplib.SMTP_SSL(
        "127.0.0.1", srv.submissions, timeout=20, context=srv.server.client_context()
    ) as s:
        s.ehlo("client.test")
        s.user, s.password = PLAIN_USER, PLAIN_PASSWORD
        with pytest.raises(smtplib.SMTPAuthenticationError) as exc:
            s.auth("CRAM-MD5", s.auth_cram_md5)
        assert exc.value.smtp_code == 535 and exc.value.smtp_error.startswith(b"5.7.8")
        # The same password works with PLAIN, so it was CRAM-MD5 that was refused.
        assert s.auth("PLAIN", s.auth_plain)[0] == 235
    assert "not enabled" in log.one(mechanism="CRAM-MD5", result="failure")["reason"]


# --- OAuth negatives: the RFC 7628 error flow -----------------------------------------


class BearerAuth:
    """smtplib authobject: the initial response, then the dummy answer to the error
    challenge (0x01 for OAUTHBEARER, empty for XOAUTH2); records the challenge."""

    def __init__(self, mech: str, user: str, token: str) -> None:
        self.mech = mech
        self.user = user
        self.token = token
        self.challenges: list[bytes] = []

    def __call__(self, challenge: bytes | None = None) -> str:
        if challenge is None:
            if self.mech == "OAUTHBEARER":
                return f"n,a={self.user},\x01auth=Bearer {self.token}\x01\x01"
            return f"user={self.user}\x01auth=Bearer {self.token}\x01\x01"
        self.challenges.append(challenge)
        return "\x01" if self.mech == "OAUTHBEARER" else ""


BAD_TOKEN_KINDS = [
    "expired",
    "not-yet-valid",
    "wrong-audience",
    "wrong-issuer",
    "bad-signature",
    "alg-none",
    "missing-scope",
    "unknown-account",
    "other-account",
]


def bad_token(srv: SaslServer, kind: str) -> str:
    if kind == "unknown-account":
        return srv.issuer.token("nobody@example.org")  # valid token, no such account
    if kind == "other-account":
        return srv.issuer.token(PLAIN_USER)  # valid token for bob, presented as alice
    return srv.issuer.bad_tokens(USER)[kind]


@pytest.mark.parametrize("mech", ["OAUTHBEARER", "XOAUTH2"])
@pytest.mark.parametrize("kind", BAD_TOKEN_KINDS)
def test_bad_token_refused_after_error_flow(srv: SaslServer, mech: str, kind: str) -> None:
    """334 <base64 JSON status>, the client's dummy answer, then 535 5.7.8."""
    user = "nobody@example.org" if kind == "unknown-account" else USER
    auth = BearerAuth(mech, user, bad_token(srv, kind))
    log = AuthLog(srv)
    refusal = _refused(srv, mech, auth)
    assert refusal.smtp_code == 535 and refusal.smtp_error.startswith(b"5.7.8")
    assert len(auth.challenges) == 1
    status = json.loads(auth.challenges[0])
    # RFC 7628 §3.2.2 / RFC 6750 §3.1: a good token short of the scope is
    # insufficient_scope (XOAUTH2: 403); any other refusal invalid_token (401).
    scoped = kind == "missing-scope"
    if mech == "OAUTHBEARER":
        want = "insufficient_scope" if scoped else "invalid_token"
    else:
        want = "403" if scoped else "401"
    assert status == error_json(mech, want)
    log.one(mechanism=mech, result="failure")


def _refused(srv: SaslServer, mech: str, auth: BearerAuth) -> smtplib.SMTPAuthenticationError:
    """AUTH ``mech`` over implicit TLS with ``auth`` answering; the refusal it gets."""
    with smtplib.SMTP_SSL(
        "127.0.0.1", srv.submissions, timeout=20, context=srv.server.client_context()
    ) as s:
        s.ehlo("client.test")
        with pytest.raises(smtplib.SMTPAuthenticationError) as exc:
            s.auth(mech, auth)
    return exc.value


def error_json(mech: str, status: str) -> dict[str, str]:
    """The error JSON of RFC 7628 §3.2.2 (XOAUTH2: Google's), from the one issuer:
    OAUTHBEARER also names its OpenID Connect discovery document."""
    body = {"status": status, "schemes": "bearer", "scope": SCOPE}
    if mech == "OAUTHBEARER":
        body["openid-configuration"] = f"{ISSUER}/.well-known/openid-configuration"
    return body


class MalformedBearer(BearerAuth):
    """A request that is not 'Bearer <b64token>' (a Basic credential)."""

    def __call__(self, challenge: bytes | None = None) -> str:
        if challenge is None:
            if self.mech == "OAUTHBEARER":
                return f"n,a={self.user},\x01auth=Basic {self.token}\x01\x01"
            return f"user={self.user}\x01auth=Basic {self.token}\x01\x01"
        return super().__call__(challenge)


@pytest.mark.parametrize(("mech", "want"), [("OAUTHBEARER", "invalid_request"),
                                            ("XOAUTH2", "400")])
def test_malformed_bearer_request_is_announced_as_invalid_request(
    srv: SaslServer, mech: str, want: str
) -> None:
    """RFC 7628 §3.2.2: a request the server cannot parse gets the error JSON with
    status invalid_request (XOAUTH2: 400), then 535."""
    auth = MalformedBearer(mech, USER, base64.b64encode(b"alice:pw").decode())
    assert _refused(srv, mech, auth).smtp_code == 535
    assert [json.loads(c) for c in auth.challenges] == [error_json(mech, want)]


# --- wire-level SCRAM: channel binding, downgrade, tampering -------------------------


def scram(mech: str, user: str = USER, password: str = PASSWORD, **kw: Any) -> ScramClient:
    hash_name = "sha256" if "SHA-256" in mech else "sha1"
    return ScramClient(hash_name, user, password, plus=mech.endswith("-PLUS"), **kw)


@pytest.mark.parametrize(
    ("tls", "cb_type"),
    [("1.3", "tls-exporter"), ("1.3", "tls-server-end-point"),
     ("1.2", "tls-unique"), ("1.2", "tls-server-end-point")],
)  # fmt: skip
@pytest.mark.parametrize("listener", ["starttls", "implicit"])
def test_plus_with_client_computed_binding(
    srv: SaslServer, tls: str, cb_type: str, listener: str
) -> None:
    """Our client on the client side of OpenSSL computes each binding type itself;
    the server's value (tls/session.py) must match it byte for byte. Covers
    tls-server-end-point, which no peer client uses."""
    port = srv.submission if listener == "starttls" else srv.submissions
    with WireSmtp(port, srv.ca, tls=listener, tls_version=tls) as c:
        assert c.tls_version == TLS_VERSIONS[tls][0]
        assert "SCRAM-SHA-256-PLUS" in c.mechanisms
        client = scram("SCRAM-SHA-256-PLUS", channel_binding=c.channel_binding(), cb_type=cb_type)
        result = c.auth(client)
        assert result.final.code == 235, result
        assert client.done  # the server's signature verified too


def test_y_flag_downgrade_refused_on_the_wire(srv: SaslServer) -> None:
    """RFC 5802 §6: a client that can bind sends 'y' when it thinks the server cannot;
    the server advertised -PLUS, so someone stripped it: refuse."""
    log = AuthLog(srv)
    with WireSmtp(srv.submission, srv.ca) as c:
        assert "SCRAM-SHA-256-PLUS" in c.mechanisms
        client = scram("SCRAM-SHA-256", channel_binding=c.channel_binding())
        result = c.auth(client)
    assert result.sent[0].startswith(b"y,,")
    assert result.challenges == [b"e=server-does-support-channel-binding"]
    assert result.final.code == 535 and result.final.last.startswith("535 5.7.8")
    log.one(mechanism="SCRAM-SHA-256", result="failure")


def test_y_flag_accepted_where_plus_is_not_offered(srv: SaslServer) -> None:
    """The control: on the 'noplus' listener (no -PLUS advertised) 'y' is honest."""
    with WireSmtp(srv.ports["noplus"], srv.ca) as c:
        assert c.mechanisms == ["SCRAM-SHA-256", "SCRAM-SHA-1"]
        client = scram("SCRAM-SHA-256", channel_binding=c.channel_binding())
        result = c.auth(client)
    assert result.sent[0].startswith(b"y,,")
    assert result.final.code == 235 and client.done


@pytest.mark.parametrize(("tls", "cb_type"), [("1.3", "tls-exporter"), ("1.2", "tls-unique")])
def test_binding_from_another_connection_refused(srv: SaslServer, tls: str, cb_type: str) -> None:
    """Two real TLS connections; the SCRAM exchange on the second carries the binding
    data of the first (what a man in the middle relaying the exchange would have)."""
    log = AuthLog(srv)
    with (
        WireSmtp(srv.submission, srv.ca, tls_version=tls) as a,
        WireSmtp(srv.submission, srv.ca, tls_version=tls) as b,
    ):
        cb_a, cb_b = a.channel_binding(), b.channel_binding()
        assert cb_a.data[cb_type] != cb_b.data[cb_type]
        client = scram("SCRAM-SHA-256-PLUS", channel_binding=cb_a, cb_type=cb_type)
        result = b.auth(client)
        # The honest client on connection a still succeeds with its own data.
        ok = a.auth(scram("SCRAM-SHA-256-PLUS", channel_binding=cb_a, cb_type=cb_type))
    assert result.challenges[-1] == b"e=channel-bindings-dont-match"
    assert result.final.code == 535 and result.final.last.startswith("535 5.7.8")
    assert ok.final.code == 235
    log.one(mechanism="SCRAM-SHA-256-PLUS", result="failure")


@pytest.mark.parametrize("mech", ["SCRAM-SHA-1", "SCRAM-SHA-256", "SCRAM-SHA-256-PLUS"])
def test_wrong_scram_proof_refused(srv: SaslServer, mech: str) -> None:
    log = AuthLog(srv)
    with WireSmtp(srv.submissions, srv.ca, tls="implicit") as c:
        cb = c.channel_binding() if mech.endswith("-PLUS") else ChannelBinding()
        result = c.auth(scram(mech, password="Not-Alices-Password-7", channel_binding=cb))
    assert result.challenges[-1] == b"e=invalid-proof"
    assert result.final.code == 535 and result.final.last.startswith("535 5.7.8")
    assert log.one(mechanism=mech, result="failure")["username"] == USER


def test_tampered_nonce_refused(srv: SaslServer) -> None:
    """The client-final names a nonce other than the combined one the server sent."""
    with WireSmtp(srv.submission, srv.ca) as c:
        client = scram("SCRAM-SHA-256")
        first = client.start()
        assert first is not None
        c.send_line(b"AUTH SCRAM-SHA-256 " + base64.b64encode(first))
        r = c.reply()
        assert r.code == 334
        final = client.step(base64.b64decode(r.last[4:]))
        nonce = final.split(b",r=")[1].split(b",")[0]
        tampered = nonce[:-1] + (b"B" if nonce.endswith(b"A") else b"A")
        c.send_line(base64.b64encode(final.replace(b"r=" + nonce, b"r=" + tampered)))
        r = c.reply()
        assert r.code == 334 and base64.b64decode(r.last[4:]).startswith(b"e=")
        c.send_line(b"")
        assert c.reply().last.startswith("535 5.7.8")


def test_plus_before_tls_is_refused(srv: SaslServer) -> None:
    """-PLUS over cleartext: on a normal listener AUTH needs TLS first (530); on a
    listener with auth_in_clear, -PLUS is neither offered nor accepted (504), and a
    'p=' flag on plain SCRAM is refused with e=channel-binding-not-supported."""
    with WireSmtp(srv.submission, srv.ca, tls="none") as c:
        assert c.mechanisms == []
        assert c.command("AUTH SCRAM-SHA-256-PLUS").last.startswith("530 5.7.0")
    with WireSmtp(srv.ports["clear"], srv.ca, tls="none") as c:
        assert "SCRAM-SHA-256" in c.mechanisms and "SCRAM-SHA-256-PLUS" not in c.mechanisms
        first = base64.b64encode(b"p=tls-unique,,n=alice@example.org,r=abcdefghijklmnop").decode()
        assert c.command(f"AUTH SCRAM-SHA-256-PLUS {first}").last.startswith("504 5.5.4")
        r = c.command(f"AUTH SCRAM-SHA-256 {first}")
        assert r.code == 334 and base64.b64decode(r.last[4:]).startswith(b"e=")
        assert c.command("").last.startswith("535 5.7.8")
        # And without the flag, SCRAM in clear works on this listener.
        assert c.auth(scram("SCRAM-SHA-256")).final.code == 235


def test_cram_md5_our_client_on_the_wire(srv: SaslServer) -> None:
    with WireSmtp(srv.submission, srv.ca) as c:
        assert c.auth(CramMd5Client(USER, PASSWORD)).final.code == 235


# --- per-account policy end to end ----------------------------------------------------


def test_account_mechanism_policy(srv: SaslServer) -> None:
    """carol may use SCRAM-SHA-256 (set with `user mechanisms --allow SCRAM-SHA-256`,
    which also allows -PLUS): PLAIN with her right password is refused."""
    log = AuthLog(srv)
    with WireSmtp(srv.submissions, srv.ca, tls="implicit") as c:
        plain = base64.b64encode(f"\0{SCRAM_ONLY_USER}\0{SCRAM_ONLY_PASSWORD}".encode()).decode()
        assert c.command(f"AUTH PLAIN {plain}").last.startswith("535 5.7.8")
        client = scram(
            "SCRAM-SHA-256-PLUS",
            SCRAM_ONLY_USER,
            SCRAM_ONLY_PASSWORD,
            channel_binding=c.channel_binding(),
        )
        assert c.auth(client).final.code == 235
    assert "not allowed" in log.one(mechanism="PLAIN", result="failure")["reason"]
    log.one(mechanism="SCRAM-SHA-256-PLUS", result="success")


def test_user_list_mechanisms_after_logins(srv: SaslServer) -> None:
    """Each success records its mechanism; `user list --mechanisms` groups accounts by
    it (the view a phased move away from PLAIN needs)."""
    with WireSmtp(srv.submissions, srv.ca, tls="implicit") as c:
        plain = base64.b64encode(f"\0{PLAIN_USER}\0{PLAIN_PASSWORD}".encode()).decode()
        assert c.command(f"AUTH PLAIN {plain}").code == 235

    def listed() -> dict[str, str]:
        out = srv.server.cli("user", "list", "--mechanisms").stdout
        return {
            name: line
            for line in out.splitlines()
            for name in (USER, PLAIN_USER, SCRAM_ONLY_USER)
            if name in line
        }

    # Last-login bookkeeping is written in the background: poll (bounded).
    wait_until(lambda: "PLAIN" in listed().get(PLAIN_USER, ""))
    assert "PLAIN" in listed()[PLAIN_USER]
    out = srv.server.cli("user", "list").stdout
    alice = next(line for line in out.splitlines() if USER in line)
    assert "YES (plaintext-equivalent)" in alice  # the CRAM-MD5 flag


def wait_until(cond: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.1)


# --- SASLprep: one password through PLAIN, LOGIN and SCRAM ----------------------------

#: Set with a non-breaking space (U+00A0) and "é" precomposed (NFC).
UNICODE_USER = "unicode@example.org"
UNICODE_PASSWORD = "Caf\u00e9\u00a0Quartz-Harbor-58"
#: The same password as other clients type it: a plain space, "é" as e + U+0301 (NFD).
UNICODE_SPACE = "Caf\u00e9 Quartz-Harbor-58"
UNICODE_NFD = "Cafe\u0301\u00a0Quartz-Harbor-58"


@pytest.fixture(scope="module")
def unicode_user(srv: SaslServer) -> str:
    srv.server.add_user(UNICODE_USER, UNICODE_PASSWORD)
    return UNICODE_USER


@pytest.mark.parametrize(("mech", "password"), [
    ("PLAIN", UNICODE_NFD), ("LOGIN", UNICODE_SPACE), ("PLAIN", UNICODE_PASSWORD),
])
def test_swaks_password_in_another_unicode_form_logs_in(
    srv: SaslServer, unicode_user: str, mech: str, password: str
) -> None:
    """RFC 4616 §2: PLAIN (and LOGIN) passwords are SASLprep'd as SCRAM's are, so the
    NFD spelling and a plain space for the non-breaking one log in too."""
    swaks = require_tool("swaks")
    log = AuthLog(srv)
    proc = run(
        [swaks, "-s", "127.0.0.1", "-p", str(srv.submission), "-tls", "--tls-verify",
         "--tls-ca-path", str(srv.ca), "-a", mech, "-au", unicode_user, "-ap", password,
         "--quit-after", "AUTH"],
    )  # fmt: skip
    assert "235 2.7.0" in proc.stdout, proc.stdout + proc.stderr
    log.one(mechanism=mech, result="success")


@pytest.mark.parametrize("mech", ["SCRAM-SHA-256", "SCRAM-SHA-1"])
def test_gsasl_scram_with_the_password_in_another_unicode_form(
    srv: SaslServer, unicode_user: str, mech: str
) -> None:
    gsasl = require_tool("gsasl")
    log = AuthLog(srv)
    proc = run(
        [gsasl, "--smtp", f"--connect=127.0.0.1:{srv.submission}", "--starttls",
         f"--x509-ca-file={srv.ca}", "--hostname=localhost", "-d", "--no-cb",
         "-m", mech, "-a", unicode_user, "-p", UNICODE_NFD]
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "235 2.7.0" in out, out
    log.one(mechanism=mech, result="success")
