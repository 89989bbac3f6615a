"""What the mail-client tests (test_clients_*.py) share: a stock server, the message
they send, and the checks that it landed intact.

Each test sends one message with a marker of its own in the Subject, so one
server per module serves every case and a message is found by its marker. The
message carries what breaks clients and servers in practice: a UTF-8 subject and
body, a line far over 998 octets (the client must encode it; a raw one must
still arrive whole), a line starting with a dot and a binary attachment.
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from .conftest import LOGIN_IN_RECEIVED, USER, Server, serving_alice

SUBJECT = "Grüße aus Köln"
BODY_FIRST = "Grüße, Bob — ünïcödé ☃"
LONG_LINE = "long:" + "ü" * 1200
DOT_LINE = ".a line that starts with a dot"
BODY = f"{BODY_FIRST}\n{LONG_LINE}\n{DOT_LINE}\nend\n"
#: An ASCII text part the client sends as it is (7bit), where BODY's dot line ends up
#: quoted-printable or base64: lines that only SMTP's dot-stuffing carries through,
#: a lone dot (the end of DATA, if a side fails to stuff it) among them.
DOTS_NAME = "dots.txt"
DOTS = ".leading dot\n..two dots\n.\n. a dot and a space\nend\n"


def stock_server(root: Path) -> Iterator[Server]:
    """``smtpgate init``'s config (its listeners, mechanisms and TLS) with alice, and
    the login in Received so a test can tell that the message was authenticated."""
    yield from serving_alice(root, LOGIN_IN_RECEIVED)


def marker() -> str:
    return uuid.uuid4().hex[:12]


def attachment(directory: Path) -> Path:
    """A binary attachment (about 100 KB, random) the client reads from a file."""
    path = directory / f"data-{marker()}.bin"
    path.write_bytes(os.urandom(100_000))
    return path


def message_fields(mark: str, attach: Path | None) -> dict[str, str | None]:
    """What every client driver (tests/clients/*) is told to send: the marked UTF-8
    subject, BODY, and with ``attach`` the binary file and the 7bit DOTS part."""
    return {"subject": f"{SUBJECT} {mark}", "text": BODY,
            "attachment": str(attach) if attach else None,
            "dots": DOTS if attach else None, "dotsName": DOTS_NAME}


def run_json_driver(argv: list[str], settings: dict[str, Any],
                    cwd: Path | None = None) -> dict[str, Any]:
    """Run a driver that reads ``settings`` as JSON on stdin and prints its outcome
    as one JSON line last (``ok`` and the client's own fields); its exit status
    must agree with ``ok``."""
    proc = subprocess.run(argv, input=json.dumps(settings), capture_output=True, text=True,
                          timeout=60, check=False, cwd=cwd,
                          env={"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"})
    assert proc.stdout.strip(), proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (proc.returncode == 0) == result["ok"], proc.stdout + proc.stderr
    return result


def delivered_with(server: Server, mark: str) -> list[Path]:
    """The delivered files that carry ``mark`` (none, after a refused login)."""
    return [p for p in server.delivered() if mark.encode() in p.read_bytes()]


def wait_for(server: Server, mark: str, timeout: float = 30) -> tuple[bytes, EmailMessage]:
    """The delivered message whose Subject carries ``mark``, raw and parsed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for path in server.delivered():
            raw = path.read_bytes()
            msg = email.message_from_bytes(raw, policy=email.policy.default)
            if mark in str(msg.get("Subject", "")):
                assert isinstance(msg, EmailMessage)
                return raw, msg
        time.sleep(0.05)
    raise AssertionError(f"no message with {mark} delivered; server log:\n{server.log_text()}")


def check_intact(server: Server, mark: str, attached: Path | None = None,
                 dots: bool = False) -> EmailMessage:
    """The message arrived authenticated and whole: subject, every body line,
    the attachment's bytes, and with ``dots`` the DOTS part, unencoded."""
    raw, msg = wait_for(server, mark)
    received = msg.get_all("Received") or []
    assert received and "with ESMTPSA" in str(received[0]), received
    assert f"Authenticated sender: {USER}" in str(received[0])
    assert SUBJECT in str(msg["Subject"]), msg["Subject"]
    text = msg.get_body(("plain",))
    assert text is not None
    content = text.get_content()
    assert isinstance(content, str)
    lines = content.replace("\r\n", "\n").split("\n")
    for want in (BODY_FIRST, LONG_LINE, DOT_LINE):
        assert want in lines, (want[:40], lines[:6])
    if attached is not None:
        parts = [p for p in msg.iter_attachments() if p.get_filename() == attached.name]
        assert len(parts) == 1, [p.get_filename() for p in msg.iter_attachments()]
        data = parts[0].get_content()
        assert isinstance(data, bytes)
        assert hashlib.sha256(data).digest() == hashlib.sha256(attached.read_bytes()).digest()
    if dots:
        parts = [p for p in msg.iter_attachments() if p.get_filename() == DOTS_NAME]
        assert len(parts) == 1, [p.get_filename() for p in msg.iter_attachments()]
        assert parts[0].get("Content-Transfer-Encoding", "7bit").lower() == "7bit"
        got = parts[0].get_content()
        assert isinstance(got, str) and got.replace("\r\n", "\n") == DOTS, got
        assert b"\n.\n" in raw.replace(b"\r\n", b"\n")  # the lone dot, stored as sent
    return msg


def auth_records(server: Server) -> list[dict[str, Any]]:
    path = server.root / "auth.log"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


class AuthLog:
    """The auth-log records written after it was made (the server writes a record
    before its final reply, so after the client has finished they are all there)."""

    def __init__(self, server: Server) -> None:
        self._server = server
        self._start = len(auth_records(server))

    def records(self, result: str = "success") -> list[dict[str, Any]]:
        return [r for r in auth_records(self._server)[self._start:] if r.get("result") == result]

    def mechanisms(self, result: str = "success") -> list[str]:
        return [str(r["mechanism"]) for r in self.records(result)]
