"""A server that sends one reply more than it is asked for (answers EHLO twice, in
clear). The auditor read each reply as the answer to the command after: the extra
250 was "STARTTLS refused: 250 ..." (a false no-tls, high, grade D, for a server
with working STARTTLS), and the AUTH-in-clear probe took the 250 for its answer
and missed the 334 that followed (auth-accepted-in-clear not found). Every probe
now sets such a reply aside, as ``smtpgate test`` does, and a note names it. Real
TLS, the toy server's certificate made here and trusted with ``ca_file``.
"""

from __future__ import annotations

from pathlib import Path

from tests.unit.audit_toy import audit_toy, plain_reply


def _answer(verb: bytes, line: bytes, tls: bool) -> bytes:
    if verb == b"EHLO":
        return (b"250-mx.test.local\r\n250 AUTH SCRAM-SHA-256\r\n" if tls else
                b"250-mx.test.local\r\n250-STARTTLS\r\n250 AUTH PLAIN\r\n"
                b"250 mx.test.local once more\r\n")
    if verb == b"AUTH":
        return b"334 \r\n" if not tls else b"535 5.7.8 no\r\n"
    # The dummy PLAIN response or "*" is refused.
    return plain_reply(verb) or b"535 5.7.8 Authentication failed\r\n"


async def test_a_reply_nobody_asked_for_does_not_shift_the_audit(tmp_path: Path) -> None:
    t = await audit_toy(tmp_path, lambda: _answer)
    assert t.complete, t.error
    assert t.tls_error == "" and t.tls is not None
    assert t.mechanisms_tls == ("SCRAM-SHA-256",)
    assert t.auth_clear_accepted is True
    assert t.auth_clear_detail.startswith("AUTH PLAIN in clear got 334")
    ids = {f.id for f in t.findings}
    assert "no-tls" not in ids
    assert {"auth-accepted-in-clear", "auth-offered-in-clear"} <= ids
    # The toy keeps its input across STARTTLS, as asyncio's start_tls does: the
    # injection probe, which pipelines, still sees the answer inside TLS.
    assert t.injection == "vulnerable"
    assert t.relay and not any(a.accepted for a in t.relay)
    [note] = [n for n in t.notes if "nobody asked for" in n]
    assert note.endswith("first: 250 mx.test.local once more; set aside, not taken as the "
                         "answer to the next command")
