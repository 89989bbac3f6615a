"""Relay AUTH with tokens from a token endpoint (OAuth 2.0 client credentials,
RFC 6749 §4.4), as a default install runs it.

A small token endpoint in this process (http.server on loopback) checks HTTP Basic
and ``grant_type`` and issues JWTs signed by the test issuer; the smarthost is
``smtpgate serve`` trusting that issuer's key set (XOAUTH2 on its submission port,
STARTTLS); the relaying ``smtpgate serve`` has ``[delivery] relay_oauth_*``. The
token must be fetched once for several messages; a wrong client secret must keep
the message queued with a clear ``last_error`` (never a bounce), and a rotated
secret must work without a restart.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from .conftest import USER, Server, make_server
from .oauth_issuer import SCOPE, LocalIssuer
from .test_relay_auth import received_by, wait_empty
from .test_relay_delivery import _in_table, send, spooled, wait_for_log

SECRET = "client secret: for tests"


class TokenEndpoint:
    """POST /token: client credentials with Basic auth; the right secret gets a JWT
    for ``USER`` (the smarthost's ``identity_claim = "email"``), a wrong one 401
    ``invalid_client`` (RFC 6749 §5.2). Counts requests per client id."""

    def __init__(self, issuer: LocalIssuer) -> None:
        self.issuer = issuer
        self.requests: Counter[str] = Counter()
        self.bad: list[str] = []  # requests that broke the protocol (must stay empty)
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                form = urllib.parse.parse_qs(self.rfile.read(length).decode())
                scheme, _, blob = self.headers.get("Authorization", "").partition(" ")
                client, _, secret = base64.b64decode(blob).decode().partition(":")
                client, secret = urllib.parse.unquote_plus(client), urllib.parse.unquote_plus(secret)
                endpoint.requests[client] += 1
                if (self.path != "/token" or scheme != "Basic"
                        or form.get("grant_type") != ["client_credentials"]
                        or form.get("scope") != [SCOPE]):
                    endpoint.bad.append(f"{self.path} {scheme} {form}")
                    self._answer(400, {"error": "invalid_request"})
                elif secret != SECRET:
                    self._answer(401, {"error": "invalid_client",
                                       "error_description": "client authentication failed"})
                else:
                    self._answer(200, {"access_token": endpoint.issuer.token(USER),
                                       "token_type": "Bearer", "expires_in": 600})

            def _answer(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                if status == 401:
                    self.send_header("WWW-Authenticate", 'Basic realm="token"')
                self.send_header("Content-Type", "application/json")
                self.send_header("Cache-Control", "no-store")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/token"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def issuer() -> LocalIssuer:
    return LocalIssuer()


@pytest.fixture(scope="module")
def endpoint(issuer: LocalIssuer) -> Iterator[TokenEndpoint]:
    ep = TokenEndpoint(issuer)
    yield ep
    ep.close()
    assert ep.bad == []


@pytest.fixture(scope="module")
def smarthost(tmp_path_factory: pytest.TempPathFactory, issuer: LocalIssuer) -> Iterator[Server]:
    srv = make_server(tmp_path_factory.mktemp("oauth-smarthost") / "srv")
    issuer.write_jwks(srv.root / "jwks.json")
    text = srv.config.read_text().replace(
        'log_file = "auth.log"', 'mechanisms = ["PLAIN", "XOAUTH2"]\nlog_file = "auth.log"')
    srv.config.write_text(text + issuer.config("jwks.json"))
    srv.add_user(USER, "smarthost password, unused by the relay")
    srv.start()
    yield srv
    if srv.proc is not None:
        srv.stop()


def relaying(root: Path, smarthost: Server, endpoint: TokenEndpoint, client: str,
             secret: str) -> Server:
    """``init``'s config relaying to the smarthost with XOAUTH2 and tokens from the
    endpoint; no automatic retry within the test (retry_initial 60 s)."""
    srv = make_server(root)
    (root / "client.secret").write_text(secret + "\n")
    text = srv.config.read_text().replace('mode = "maildir"\n', "")
    text = _in_table(text, "delivery", "\n".join([
        'mode = "relay"', 'relay_host = "127.0.0.1"', f"relay_port = {smarthost.submission}",
        'relay_tls = "require"', f'relay_ca_file = "{smarthost.ca}"', f'relay_user = "{USER}"',
        'relay_auth_mechanism = "XOAUTH2"', f'relay_oauth_token_url = "{endpoint.url}"',
        f'relay_oauth_client_id = "{client}"', 'relay_oauth_client_secret_file = "client.secret"',
        f'relay_oauth_scope = "{SCOPE}"']))
    srv.config.write_text(_in_table(text, "queue", "retry_initial = 60\nretry_max = 60"))
    srv.add_user(USER, "correct horse battery")
    srv.start()
    return srv


def test_one_token_delivers_several_messages(tmp_path: Path, smarthost: Server,
                                             endpoint: TokenEndpoint) -> None:
    srv = relaying(tmp_path / "srv", smarthost, endpoint, "relay-a", SECRET)
    try:
        for n in range(3):
            send(srv, f"cc-{n}")
        wait_empty(srv)
        for n in range(3):
            assert received_by(smarthost, f"cc-{n}", at_least=1) == 1
        assert endpoint.requests["relay-a"] == 1  # cached for the next two
        assert '"XOAUTH2"' in (smarthost.root / "auth.log").read_text().replace(": ", ":")
        log = srv.log_text()
        assert "new access token from " + endpoint.url in log
        assert SECRET not in log and "eyJ" not in log  # neither secret nor token logged
    finally:
        srv.stop()


def test_wrong_client_secret_keeps_the_message_until_the_secret_is_fixed(
    tmp_path: Path, smarthost: Server, endpoint: TokenEndpoint
) -> None:
    srv = relaying(tmp_path / "srv", smarthost, endpoint, "relay-b", "not the secret")
    try:
        send(srv, "cc-wrong")
        wait_for_log(srv, "deferred to=<bob@example.net>")
        # The attempt is logged, then its state saved: read the queue once it is.
        deadline = time.monotonic() + 30
        while True:
            [entry] = json.loads(srv.cli("queue", "list", "--json").stdout)
            if entry["last_error"] is not None or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert (f"relay_oauth_token_url {endpoint.url}: refused the request: HTTP 401 "
                "invalid_client (client authentication failed)") in entry["last_error"]
        assert entry["last_error"].startswith("4.7.0")  # temporary: kept, not bounced
        assert len(spooled(srv)) == 1 and received_by(smarthost, "cc-wrong") == 0
        assert "not the secret" not in srv.log_text()
        # A rotated secret is read at the next request: no restart.
        (srv.root / "client.secret").write_text(SECRET + "\n")
        srv.cli("queue", "flush")
        wait_empty(srv)
        assert received_by(smarthost, "cc-wrong", at_least=1) == 1
        assert endpoint.requests["relay-b"] == 2
    finally:
        srv.stop()
