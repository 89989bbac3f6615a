"""nodemailer (npm, pinned in tests/clients/node/package-lock.json; ``make test``
runs ``npm ci`` there) sends through smtpgate as a Node.js application does:
``secure: true`` on the implicit-TLS port (465 style), or ``requireTLS: true``
on the STARTTLS port, ``tls.ca`` for a private CA, ``auth: {user, pass}`` with
or without ``authMethod``, or ``auth: {type: 'OAuth2', accessToken}`` (XOAUTH2).

Without ``authMethod`` nodemailer takes the first of PLAIN, LOGIN, CRAM-MD5 and
XOAUTH2 the server offers (in that order, whatever the EHLO order): PLAIN. The
server here is ``smtpgate init``'s config with a local OAuth issuer
(tests/integration/oauth_issuer.py) and XOAUTH2 added to the mechanisms.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .conftest import (
    LOGIN_IN_RECEIVED,
    PASSWORD,
    USER,
    Server,
    make_server,
    require_file,
    require_tool,
)
from .mail_client_checks import (
    AuthLog,
    attachment,
    check_intact,
    delivered_with,
    marker,
    message_fields,
    run_json_driver,
)
from .oauth_issuer import SCOPE, LocalIssuer

pytestmark = pytest.mark.interop

NODE_DIR = Path(__file__).resolve().parents[1] / "clients" / "node"
#: The version package-lock.json pins (what docs/integration.md names).
NODEMAILER_VERSION = "10.6.1"
NODEMAILER_PACKAGE = NODE_DIR / "node_modules" / "nodemailer" / "package.json"


@dataclass
class OAuthServer:
    server: Server
    issuer: LocalIssuer


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OAuthServer]:
    root = tmp_path_factory.mktemp("nodemailer") / "srv"
    issuer = LocalIssuer()
    server = make_server(root, issuer.config("oauth/jwks.json") + LOGIN_IN_RECEIVED)
    text = server.config.read_text()
    assert "\n[auth]\n" in text
    server.config.write_text(text.replace(
        "\n[auth]\n",
        '\n[auth]\nmechanisms = ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256", "PLAIN", "LOGIN",'
        f' "XOAUTH2"]\noauth_scope = "{SCOPE}"\n', 1))
    issuer.write_jwks(root / "oauth" / "jwks.json")
    server.add_user(USER, PASSWORD)
    server.start()
    yield OAuthServer(server, issuer)
    if server.proc is not None:
        server.stop()


def nodemailer(server: Server, mark: str, secure: bool, *, method: str | None = None,
               password: str = PASSWORD, token: str | None = None,
               attach: Path | None = None) -> dict[str, Any]:
    """One sendMail; its outcome (``ok``, or nodemailer's error's fields)."""
    node = require_tool("node")
    require_file(NODEMAILER_PACKAGE, f"npm ci in {NODE_DIR}")
    settings = {
        "port": server.submissions if secure else server.submission,
        "secure": secure, "requireTLS": not secure, "ca": str(server.ca),
        "user": USER, "pass": password, "accessToken": token, "authMethod": method,
        **message_fields(mark, attach),
    }
    return run_json_driver([node, str(NODE_DIR / "send.mjs")], settings, cwd=NODE_DIR)


def test_the_pinned_version_is_installed() -> None:
    require_tool("node")
    meta = json.loads(require_file(NODEMAILER_PACKAGE, f"npm ci in {NODE_DIR}").read_text())
    lock = json.loads((NODE_DIR / "package-lock.json").read_text())
    assert meta["version"] == NODEMAILER_VERSION
    assert lock["packages"]["node_modules/nodemailer"]["version"] == NODEMAILER_VERSION
    assert shutil.which("npm")  # make test's npm ci


@pytest.mark.parametrize("secure", [False, True], ids=["requireTLS", "secure"])
@pytest.mark.parametrize("method", [None, "PLAIN", "LOGIN"])
def test_nodemailer_sends(srv: OAuthServer, tmp_path: Path, secure: bool,
                          method: str | None) -> None:
    mark, log, data = marker(), AuthLog(srv.server), attachment(tmp_path)
    result = nodemailer(srv.server, mark, secure, method=method, attach=data)
    assert result["ok"], result
    assert result["accepted"] == ["bob@example.net"]
    assert result["response"].startswith("250 2.0.0"), result
    check_intact(srv.server, mark, data, dots=True)
    assert log.mechanisms() == [method or "PLAIN"]


@pytest.mark.parametrize("secure", [False, True], ids=["requireTLS", "secure"])
def test_nodemailer_xoauth2(srv: OAuthServer, tmp_path: Path, secure: bool) -> None:
    """``auth: {type: 'OAuth2', user, accessToken}``: a token of the configured
    issuer (ES256, audience, scope, email claim) logs alice in with XOAUTH2."""
    mark, log, data = marker(), AuthLog(srv.server), attachment(tmp_path)
    result = nodemailer(srv.server, mark, secure, token=srv.issuer.token(USER), attach=data)
    assert result["ok"], result
    check_intact(srv.server, mark, data, dots=True)
    assert log.mechanisms() == ["XOAUTH2"]


@pytest.mark.parametrize("secure", [False, True], ids=["requireTLS", "secure"])
@pytest.mark.parametrize("method", [None, "LOGIN"])
def test_nodemailer_wrong_password(srv: OAuthServer, secure: bool, method: str | None) -> None:
    mark, log = marker(), AuthLog(srv.server)
    result = nodemailer(srv.server, mark, secure, method=method, password="not the password")
    assert not result["ok"]
    assert result["code"] == "EAUTH" and result["responseCode"] == 535, result
    assert result["response"] == "535 5.7.8 Authentication credentials invalid", result
    assert result["command"] == f"AUTH {method or 'PLAIN'}"
    assert log.mechanisms("failure") == [method or "PLAIN"]
    assert not delivered_with(srv.server, mark)


def test_nodemailer_xoauth2_expired_token(srv: OAuthServer) -> None:
    """An expired token: smtpgate answers XOAUTH2's 334 with the JSON error
    (``{"status":"401",...}``), nodemailer sends the empty line and, on the 535,
    asks its token source for a fresh token; a bare ``accessToken`` has no way to
    renew, so nodemailer 10.6.1 tries the same token once more in the same session
    (nodemailer's own retry: two refusals in the auth log), and its error is then
    the server's 535 5.7.8."""
    mark, log = marker(), AuthLog(srv.server)
    token = srv.issuer.bad_tokens(USER)["expired"]
    result = nodemailer(srv.server, mark, False, token=token)
    assert not result["ok"]
    assert result["code"] == "EAUTH" and result["command"] == "AUTH XOAUTH2", result
    assert result["response"] == "535 5.7.8 Authentication credentials invalid", result
    assert [(r["mechanism"], r["reason"]) for r in log.records("failure")] == [
        ("XOAUTH2", "token rejected: token expired")] * 2
    assert not delivered_with(srv.server, mark)
