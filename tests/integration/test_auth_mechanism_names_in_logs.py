"""A mechanism name is the client's text: a bidi override, zero-width, line
separator or C1 character in ``AUTH PL\\u202eAIN`` must reach no log raw (the real
server, its server log and auth log)."""

from __future__ import annotations

import smtplib

from smtpgate.smtp import replies as R

from .conftest import Server

UNSAFE = ("\u202e", "\u2066", "\u200b", "\u2028", "\x85", "\x1b")


def test_a_mechanism_name_with_controls_is_refused_and_logged_nowhere_raw(server: Server) -> None:
    with smtplib.SMTP("127.0.0.1", server.submission, timeout=10) as s:
        s.command_encoding = "latin-1"  # smtplib's way to send bytes beyond ASCII
        s.starttls(context=server.client_context())
        s.ehlo("client.example")
        for c in UNSAFE:
            line = f"AUTH PL{c}AIN".encode().decode("latin-1")  # the UTF-8 bytes
            code, _ = s.docmd(line)
            assert code == R.AUTH_UNKNOWN_MECHANISM.code
    logs = [server.log_text(), *(p.read_text(errors="replace")
                                 for p in server.root.glob("*.log"))]
    for text in logs:
        for c in UNSAFE:
            assert c not in text
