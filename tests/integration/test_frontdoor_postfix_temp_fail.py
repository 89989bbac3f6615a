"""Why the Dovecot door answers a temporary failure by closing the connection, not
with ``FAIL id code=temp_fail temp`` (docs/integration.md, "Temporary failures").

The protocol has a temporary FAIL (protocol digest §3.1.4), and closing the
connection also ends every other request on it. But Postfix (3.7 here) reads
every ``FAIL`` as wrong credentials: its client gets ``535 5.7.8``, is told its
password is wrong, and Postfix logs an authentication failure (fail2ban's food).
Only a lost connection becomes ``454 4.7.0``. A scripted auth server answers
Postfix both ways; if a Postfix release learns ``temp``, the first test fails and
the door's choice should be revisited.
"""

from __future__ import annotations

import base64
import shutil
import smtplib
import socket
import ssl
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.peers.postfix_dovecot import GOOD, running

from .conftest import require_mta

HANDSHAKE = (b"VERSION\t1\t2\nMECH\tPLAIN\tplaintext\nSPID\t1\nCUID\t1\nCOOKIE\t"
             + b"0" * 32 + b"\nDONE\n")


def _serve(listener: socket.socket, temp_fail: bool) -> None:
    """Each AUTH is answered with a temporary FAIL, or by closing the connection."""
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        with conn:
            conn.sendall(HANDSHAKE)
            buf = b""
            while data := conn.recv(4096):
                buf += data
                lines, _, buf = buf.rpartition(b"\n")
                for line in lines.split(b"\n"):
                    fields = line.split(b"\t")
                    if fields[0] != b"AUTH":
                        continue
                    if not temp_fail:
                        break
                    conn.sendall(b"FAIL\t" + fields[1] + b"\tcode=temp_fail\ttemp\n")
                else:
                    continue
                break


@contextmanager
def postfix_with_scripted_auth(temp_fail: bool) -> Iterator[int]:
    """Postfix's SMTP port, its SASL going to the scripted server."""
    require_mta()
    sockdir = Path(tempfile.mkdtemp(prefix="sgtf-", dir="/tmp"))
    sockdir.chmod(0o755)
    path = sockdir / "auth"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    path.chmod(0o666)
    listener.listen(4)
    threading.Thread(target=_serve, args=(listener, temp_fail), daemon=True).start()
    try:
        with running({"x": {**GOOD, "smtpd_sasl_path": str(path)}}) as pd:
            ctx = ssl.create_default_context(cafile=str(pd.ca))
            ctx.check_hostname = False
            with smtplib.SMTP("127.0.0.1", pd.ports["x"], timeout=30) as s:
                s.starttls(context=ctx)
                s.ehlo("client.test")
                code, _ = s.docmd("AUTH", "PLAIN " + base64.b64encode(b"\0a@b.example\0pw").decode())
                yield code
    finally:
        listener.close()
        shutil.rmtree(sockdir, ignore_errors=True)


@pytest.mark.parametrize(("temp_fail", "code"), [(True, 535), (False, 454)],
                         ids=["FAIL code=temp_fail temp", "connection closed"])
def test_postfix_reads_a_temporary_fail_as_wrong_credentials(temp_fail: bool, code: int) -> None:
    with postfix_with_scripted_auth(temp_fail) as got:
        assert got == code
