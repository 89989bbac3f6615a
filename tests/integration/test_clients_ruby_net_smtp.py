"""Ruby's net-smtp (the gem bundled with Debian's ruby 3.1) sends through a stock
smtpgate as a Ruby script or application does: ``Net::SMTP.new(host, port)``,
``enable_starttls(context)`` (587) or ``enable_tls(context)`` (465) with an
``OpenSSL::SSL::SSLContext`` that trusts the private CA and checks the host name,
then ``start(helo, user, secret, :plain | :login)`` and ``send_message``.

net-smtp has no default mechanism (``start`` without one is ``:plain``) and does
not look at the EHLO list. It sends the message it is given, dot-stuffed; the
driver (tests/clients/ruby/send.rb) builds it with the stdlib's ``pack``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.client_pki import TestCa

from .conftest import PASSWORD, USER, Server, require_tool
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

SEND_RB = Path(__file__).resolve().parents[1] / "clients" / "ruby" / "send.rb"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from stock_server(tmp_path_factory.mktemp("ruby-net-smtp") / "srv")


def net_smtp(server: Server, mark: str, tls: bool, auth: str, *, password: str = PASSWORD,
             attach: Path | None = None, ca: Path | None = None) -> dict[str, Any]:
    """One ``start`` and ``send_message``; the outcome (``ok``, or the exception)."""
    ruby = require_tool("ruby")
    settings = {
        "port": server.submissions if tls else server.submission, "tls": tls,
        "ca": str(ca or server.ca), "user": USER, "pass": password, "auth": auth,
        **message_fields(mark, attach),
    }
    return run_json_driver([ruby, str(SEND_RB)], settings)


@pytest.mark.parametrize("tls", [False, True], ids=["enable_starttls", "enable_tls"])
@pytest.mark.parametrize("auth", ["plain", "login"])
def test_net_smtp_sends(server: Server, tmp_path: Path, tls: bool, auth: str) -> None:
    mark, log, data = marker(), AuthLog(server), attachment(tmp_path)
    result = net_smtp(server, mark, tls, auth, attach=data)
    assert result["ok"], result
    assert result["status"] == "250", result
    check_intact(server, mark, data, dots=True)
    assert log.mechanisms() == [auth.upper()]


@pytest.mark.parametrize("tls", [False, True], ids=["enable_starttls", "enable_tls"])
@pytest.mark.parametrize("auth", ["plain", "login"])
def test_net_smtp_wrong_password(server: Server, tls: bool, auth: str) -> None:
    mark, log = marker(), AuthLog(server)
    result = net_smtp(server, mark, tls, auth, password="not the password")
    assert not result["ok"]
    assert result["class"] == "Net::SMTPAuthenticationError", result
    assert result["message"] == "535 5.7.8 Authentication credentials invalid", result
    assert log.mechanisms("failure") == [auth.upper()]
    assert not delivered_with(server, mark)


def test_net_smtp_checks_the_certificate(server: Server, tmp_path: Path) -> None:
    """The driver's context really verifies: with a CA file of another CA the
    client refuses the server's certificate before any AUTH."""
    other = TestCa(tmp_path, "other").pem
    log = AuthLog(server)
    result = net_smtp(server, marker(), False, "plain", ca=other)
    assert not result["ok"] and result["class"] == "OpenSSL::SSL::SSLError", result
    assert "certificate verify failed" in result["message"], result
    assert log.mechanisms() == [] and log.mechanisms("failure") == []
