"""STARTTLS response injection (the client side of RFC 3207 §4.2, "NO STARTTLS",
USENIX Security 2021): bytes that come in clear after the server's 220 to STARTTLS,
before the handshake. The auditor discards them, as every client must, but until
2026-12 it said nothing of them, so a server (or something on its path: a
firewall's SMTP inspection, a man in the middle) that sends them graded A. They
are now the finding ``starttls-response-injection``; a server that sends nothing
more after its 220 is not flagged. Real TLS, the toy server's certificate made
here and trusted with ``ca_file``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.unit.audit_toy import audit_toy, plain_reply

INJECTED = b"250-mx.test.local\r\n250 AUTH PLAIN\r\n"


def _answer(verb: bytes, line: bytes, tls: bool) -> bytes:
    if verb == b"EHLO":
        return (b"250-mx.test.local\r\n250 AUTH SCRAM-SHA-256\r\n" if tls
                else b"250-mx.test.local\r\n250 STARTTLS\r\n")
    return plain_reply(verb) or (b"530 5.7.0 Must issue STARTTLS first\r\n" if not tls
                                 else b"502 5.5.2 what\r\n")


@pytest.mark.parametrize("extra", [INJECTED, b""])
async def test_bytes_after_the_220_to_starttls_are_a_finding(tmp_path: Path,
                                                             extra: bytes) -> None:
    # The extra bytes go in the same segment as the 220.
    t = await audit_toy(tmp_path, lambda: _answer, after_starttls=extra)
    assert t.complete, t.error
    # The injected EHLO reply was not taken: AUTH after TLS is what TLS said.
    assert t.mechanisms_tls == ("SCRAM-SHA-256",)
    found = [f for f in t.findings if f.id == "starttls-response-injection"]
    data = json.loads(json.dumps(t.to_json()))
    if extra:
        assert [f.detail for f in found] == [
            (f"main probe: {len(extra)} bytes in clear after the 220 to STARTTLS, before "
             "the handshake (discarded)")]
        assert found[0].severity.label == "high"
        assert data["starttls_response_injection"] == [found[0].detail]
    else:
        assert found == []
        assert data["starttls_response_injection"] == []
