"""s-nail (Debian's mailx) sends through a stock smtpgate as a user's script does:
``mta=smtp://HOST:587`` with ``smtp-use-starttls``, or ``mta=smtps://HOST:465``,
``smtp-auth`` (default plain), ``user``/``password`` and ``tls-ca-file``, with a
UTF-8 body and subject and an attachment (``-a``). s-nail encodes the long line
(quoted-printable) and the attachment (base64) itself.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import PASSWORD, USER, Server, require_tool
from .mail_client_checks import (
    BODY,
    SUBJECT,
    AuthLog,
    attachment,
    check_intact,
    marker,
    stock_server,
)

pytestmark = pytest.mark.interop


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from stock_server(tmp_path_factory.mktemp("s-nail") / "srv")


def s_nail(server: Server, home: Path, mark: str, implicit: bool, *settings: str,
           password: str = PASSWORD, attach: Path | None = None,
           ) -> subprocess.CompletedProcess[str]:
    program = require_tool("s-nail")
    mta = (f"mta=smtps://localhost:{server.submissions}" if implicit
           else f"mta=smtp://localhost:{server.submission}")
    options = ["-S", mta, *([] if implicit else ["-S", "smtp-use-starttls"])]
    for setting in settings:
        options += ["-S", setting]
    return subprocess.run(
        [program, "-n", "-#", "-S", "v15-compat", "-S", "ttycharset=utf-8",
         "-S", f"DEAD={home / 'dead.letter'}", "-S", f"tls-ca-file={server.ca}",
         "-S", f"from={USER}", "-S", "hostname=client.test", "-S", f"user={USER}",
         "-S", f"password={password}", *options, "-s", f"{SUBJECT} {mark}",
         *(["-a", str(attach)] if attach else []), "bob@example.net"],
        input=BODY, capture_output=True, text=True, timeout=60, check=False,
        env={"HOME": str(home), "MAILRC": "/dev/null", "LC_ALL": "C.UTF-8", "PATH": "/usr/bin:/bin"},
    )


@pytest.mark.parametrize("implicit", [False, True])
@pytest.mark.parametrize("auth", [None, "plain", "login"])
def test_s_nail_sends(server: Server, tmp_path: Path, implicit: bool, auth: str | None) -> None:
    mark, log, data = marker(), AuthLog(server), attachment(tmp_path)
    proc = s_nail(server, tmp_path, mark, implicit, *([f"smtp-auth={auth}"] if auth else []),
                  attach=data)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    check_intact(server, mark, data)
    assert log.mechanisms() == [(auth or "plain").upper()]


@pytest.mark.parametrize("implicit", [False, True])
def test_s_nail_wrong_password(server: Server, tmp_path: Path, implicit: bool) -> None:
    proc = s_nail(server, tmp_path, marker(), implicit, password="not-the-password")
    assert proc.returncode != 0
    assert "SMTP server: 535 5.7.8 Authentication credentials invalid" in proc.stderr, proc.stderr
    assert "message not sent" in proc.stderr
    assert (tmp_path / "dead.letter").exists()  # kept for the user to send again
