"""PHPMailer (Debian's libphp-phpmailer, run by php-cli) sends through a stock
smtpgate as a PHP application does: ``isSMTP()``, ``SMTPSecure = 'tls'``
(STARTTLS on 587) or ``'ssl'`` (implicit TLS on 465), ``SMTPAuth`` with
``Username``/``Password``, ``SMTPOptions['ssl']['cafile']`` for a private CA,
optionally ``AuthType``, ``CharSet = 'UTF-8'`` and ``addAttachment()``.

Without ``AuthType`` PHPMailer takes the first of CRAM-MD5, LOGIN, PLAIN and
XOAUTH2 that the server offers (its order, not the EHLO's): LOGIN on init's
config, which has no CRAM-MD5.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import PASSWORD, USER, Server, require_file, require_tool
from .mail_client_checks import (
    AuthLog,
    attachment,
    check_intact,
    delivered_with,
    marker,
    message_fields,
    run_json_driver,
    stock_server,
)

pytestmark = pytest.mark.interop

SEND_PHP = Path(__file__).resolve().parents[1] / "clients" / "php" / "send.php"
AUTOLOAD = Path("/usr/share/php/libphp-phpmailer/autoload.php")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from stock_server(tmp_path_factory.mktemp("phpmailer") / "srv")


def phpmailer(server: Server, mark: str, secure: str, *, auth_type: str | None = None,
              password: str = PASSWORD, attach: Path | None = None) -> dict[str, Any]:
    """One ``send()``; PHPMailer's outcome, error, SMTP error and (on failure) the
    dialogue its debug output logged."""
    php = require_tool("php")
    require_file(AUTOLOAD, "Debian package libphp-phpmailer")
    settings = {
        "port": server.submission if secure == "tls" else server.submissions,
        "secure": secure, "ca": str(server.ca), "user": USER, "pass": password,
        "authType": auth_type, **message_fields(mark, attach),
    }
    return run_json_driver([php, str(SEND_PHP)], settings)


@pytest.mark.parametrize("secure", ["tls", "ssl"])
@pytest.mark.parametrize("auth_type", [None, "PLAIN", "LOGIN"])
def test_phpmailer_sends(server: Server, tmp_path: Path, secure: str,
                         auth_type: str | None) -> None:
    mark, log, data = marker(), AuthLog(server), attachment(tmp_path)
    result = phpmailer(server, mark, secure, auth_type=auth_type, attach=data)
    assert result["ok"], result
    check_intact(server, mark, data, dots=True)
    assert log.mechanisms() == [auth_type or "LOGIN"]


@pytest.mark.parametrize("secure", ["tls", "ssl"])
@pytest.mark.parametrize("auth_type", [None, "PLAIN"])
def test_phpmailer_wrong_password(server: Server, secure: str, auth_type: str | None) -> None:
    """PHPMailer's exception is its own sentence, without the server's reply: the
    535 5.7.8 shows only in its debug output (``SMTPDebug``/``Debugoutput``). That
    is the client's: ``getSMTPInstance()->getError()`` would hold the code, but the
    QUIT PHPMailer sends after the failure clears it before the caller can look."""
    mark, log = marker(), AuthLog(server)
    result = phpmailer(server, mark, secure, auth_type=auth_type, password="not the password")
    assert not result["ok"]
    assert result["error"] == "SMTP Error: Could not authenticate.", result
    assert result["smtp"]["smtp_code"] == "", result["smtp"]  # cleared by its QUIT
    assert "SERVER -> CLIENT: 535 5.7.8 Authentication credentials invalid" in result["dialogue"]
    assert log.mechanisms("failure") == [auth_type or "LOGIN"]
    assert not delivered_with(server, mark)


def test_phpmailer_cram_md5_not_offered(server: Server, tmp_path: Path) -> None:
    """``AuthType = 'CRAM-MD5'`` where init's config does not offer it (it needs
    plaintext-equivalent secrets, docs/mechanisms.md): PHPMailer 6.6.3 checks the
    EHLO list itself, drops the requested mechanism without a word (only its
    lowest debug level says so) and takes its own first choice, LOGIN; CRAM-MD5
    never reaches the server."""
    mark, log = marker(), AuthLog(server)
    result = phpmailer(server, mark, "tls", auth_type="CRAM-MD5")
    assert result["ok"], result
    check_intact(server, mark)
    assert log.mechanisms() == ["LOGIN"] and log.mechanisms("failure") == []
