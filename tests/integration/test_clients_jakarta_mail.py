"""Jakarta Mail 2.0.0 (Debian's libjakarta-mail-java on OpenJDK 17) sends through a
stock smtpgate as a Java application does: a ``Session`` with
``mail.smtp.auth``, ``mail.smtp.starttls.enable`` + ``mail.smtp.starttls.required``
(587) or ``mail.smtp.ssl.enable`` (465), ``mail.smtp.ssl.checkserveridentity``
(off by default in 2.0.0) and an ``mail.smtp.ssl.socketFactory`` that trusts the
private CA only, a ``MimeMessage`` with a UTF-8 subject and text and
``attachFile``, then ``Transport.send(msg, user, password)``.

Without ``mail.smtp.auth.mechanisms`` Jakarta Mail tries its list (LOGIN PLAIN
DIGEST-MD5 NTLM XOAUTH2) in its own order against the EHLO list: LOGIN.
"""

from __future__ import annotations

import base64
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.client_pki import TestCa

from .conftest import PASSWORD, USER, Server, require_file, require_tool
from .mail_client_checks import (
    AuthLog,
    attachment,
    check_intact,
    delivered_with,
    marker,
    message_fields,
    stock_server,
)

pytestmark = pytest.mark.interop

SEND_JAVA = Path(__file__).resolve().parents[1] / "clients" / "java" / "Send.java"
JARS = [Path("/usr/share/java/jakarta-mail.jar"), Path("/usr/share/java/jakarta-activation.jar")]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from stock_server(tmp_path_factory.mktemp("jakarta-mail") / "srv")


@pytest.fixture(scope="module")
def classes(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The class path: Send.java compiled once against Debian's jars."""
    javac = require_tool("javac")
    for jar in JARS:
        require_file(jar, "Debian package libjakarta-mail-java")
    out = tmp_path_factory.mktemp("jakarta-classes")
    cp = ":".join(str(j) for j in JARS)
    subprocess.run([javac, "-cp", cp, "-d", str(out), str(SEND_JAVA)], check=True,
                   capture_output=True, timeout=120)
    return f"{out}:{cp}"


def jakarta_send(server: Server, classes: str, mark: str, implicit: bool, *,
                 mechanisms: str | None = None, password: str = PASSWORD,
                 attach: Path | None = None, ca: Path | None = None) -> dict[str, str]:
    """One ``Transport.send``; the outcome (``ok``, or the exception's class and message)."""
    java = require_tool("java")
    props = {
        "mail.smtp.host": "localhost",
        "mail.smtp.port": str(server.submissions if implicit else server.submission),
        "mail.smtp.auth": "true",
        "mail.smtp.localhost": "client.test",
        "mail.smtp.ssl.checkserveridentity": "true",
        "mail.smtp.connectiontimeout": "20000",
        "mail.smtp.timeout": "20000",
        **({"mail.smtp.ssl.enable": "true"} if implicit else
           {"mail.smtp.starttls.enable": "true", "mail.smtp.starttls.required": "true"}),
        **({"mail.smtp.auth.mechanisms": mechanisms} if mechanisms else {}),
    }
    settings = {
        **{f"prop.{k}": v for k, v in props.items()},
        "ca": str(ca or server.ca), "user": USER, "pass": password,
        **{k: v for k, v in message_fields(mark, attach).items() if v is not None and
           (attach or k != "dotsName")},
    }
    stdin = "".join(f"{k}={base64.b64encode(v.encode()).decode()}\n" for k, v in settings.items())
    proc = subprocess.run([java, "-cp", classes, "Send"], input=stdin, capture_output=True,
                          text=True, timeout=120, check=False,
                          env={"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"})
    result = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    assert result.get("ok") in ("true", "false"), proc.stdout + proc.stderr
    assert (proc.returncode == 0) == (result["ok"] == "true"), proc.stdout + proc.stderr
    return result


@pytest.mark.parametrize("implicit", [False, True], ids=["starttls.required", "ssl.enable"])
@pytest.mark.parametrize("mechanisms", [None, "PLAIN", "LOGIN"])
def test_jakarta_mail_sends(server: Server, classes: str, tmp_path: Path, implicit: bool,
                            mechanisms: str | None) -> None:
    mark, log, data = marker(), AuthLog(server), attachment(tmp_path)
    result = jakarta_send(server, classes, mark, implicit, mechanisms=mechanisms, attach=data)
    assert result["ok"] == "true", result
    check_intact(server, mark, data, dots=True)
    assert log.mechanisms() == [mechanisms or "LOGIN"]


@pytest.mark.parametrize("implicit", [False, True], ids=["starttls.required", "ssl.enable"])
@pytest.mark.parametrize("mechanisms", [None, "PLAIN"])
def test_jakarta_mail_wrong_password(server: Server, classes: str, implicit: bool,
                                     mechanisms: str | None) -> None:
    mark, log = marker(), AuthLog(server)
    result = jakarta_send(server, classes, mark, implicit, mechanisms=mechanisms,
                          password="not the password")
    assert result["ok"] == "false"
    assert result["class"] == "jakarta.mail.AuthenticationFailedException", result
    assert result["message"] == "535 5.7.8 Authentication credentials invalid", result
    assert log.mechanisms("failure") == [mechanisms or "LOGIN"]
    assert not delivered_with(server, mark)


def test_jakarta_mail_checks_the_certificate(server: Server, classes: str,
                                             tmp_path: Path) -> None:
    """The driver's socket factory really verifies: trusting another CA, the
    client refuses the server's certificate at STARTTLS, before any AUTH."""
    log = AuthLog(server)
    result = jakarta_send(server, classes, marker(), False, ca=TestCa(tmp_path, "other").pem)
    assert result["ok"] == "false"
    assert result["class"] == "jakarta.mail.MessagingException", result
    assert "Could not convert socket to TLS" in result["message"], result
    assert log.mechanisms() == [] and log.mechanisms("failure") == []
