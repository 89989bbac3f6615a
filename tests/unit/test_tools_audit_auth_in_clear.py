"""The AUTH-in-clear probe rated by what the mechanism exposes. A server that took
only GSSAPI before TLS was reported ``auth-accepted-in-clear`` (high: "passwords
can cross the network in clear"), grade D, though Kerberos puts no password on
the wire. The probe now starts the offered mechanism that gives most away, and the
finding says what that is: the password (high), material to test guesses against
(medium), or nothing of the password (low). Real TLS after STARTTLS: the toy
server's certificate is made here, trusted with ``ca_file``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from smtpgate.tools import mechanisms
from tests.unit.audit_toy import Answer, audit_toy, plain_reply


def _answers(clear_mechanisms: bytes, started: list[bytes]) -> Answer:
    """One connection's answers: STARTTLS and ``AUTH clear_mechanisms`` in clear,
    each started with 334 and then refused; after TLS, AUTH PLAIN SCRAM-SHA-256,
    refusing every login."""
    login_step = 0  # in an AUTH LOGIN exchange: the prompts answered so far

    def answer(verb: bytes, line: bytes, tls: bool) -> bytes:
        nonlocal login_step
        if login_step == 1:
            login_step = 2 if line.strip() != b"*" else 0
            return b"334 UGFzc3dvcmQ6\r\n" if login_step else b"501 5.7.0 cancelled\r\n"
        if login_step == 2:
            login_step = 0
            return b"535 5.7.8 Authentication failed\r\n"
        if line.strip() == b"*":
            return b"501 5.7.0 cancelled\r\n"
        if verb == b"EHLO":
            return (b"250-mx.test.local\r\n250 AUTH PLAIN SCRAM-SHA-256\r\n" if tls
                    else b"250-mx.test.local\r\n250-STARTTLS\r\n250 AUTH "
                    + clear_mechanisms + b"\r\n")
        if verb == b"AUTH":
            mech = line.split()[1].upper()
            if not tls:
                started.append(mech)
            login_step = 1 if mech == b"LOGIN" else 0
            return (b"334 VXNlcm5hbWU6\r\n" if mech == b"LOGIN"
                    else b"535 5.7.8 Authentication failed\r\n" if len(line.split()) > 2
                    else b"334 \r\n")
        return plain_reply(verb) or b"535 5.7.8 Authentication failed\r\n"

    return answer


@pytest.mark.parametrize(("offered", "probe", "finding", "severity"), [
    (b"GSSAPI", b"GSSAPI", "auth-accepted-in-clear-no-password", "low"),
    (b"EXTERNAL", b"EXTERNAL", "auth-accepted-in-clear-no-password", "low"),
    (b"GSSAPI CRAM-MD5", b"CRAM-MD5", "auth-accepted-in-clear-guessable", "medium"),
    (b"SCRAM-SHA-256 GSSAPI", b"SCRAM-SHA-256", "auth-accepted-in-clear-guessable", "medium"),
    (b"GSSAPI SCRAM-SHA-256 LOGIN", b"LOGIN", "auth-accepted-in-clear", "high"),
])
async def test_auth_accepted_in_clear_is_rated_by_what_it_exposes(
    tmp_path: Path, offered: bytes, probe: bytes, finding: str, severity: str,
) -> None:
    started: list[bytes] = []
    t = await audit_toy(tmp_path, lambda: _answers(offered, started))
    assert t.complete, t.error
    assert started == [probe]  # the offered mechanism that gives most away
    assert t.auth_clear_accepted is True and t.auth_clear_mechanism == probe.decode()
    found = {f.id: f for f in t.findings if f.id.startswith("auth-accepted")}
    assert list(found) == [finding]
    assert found[finding].severity.label == severity
    assert found[finding].detail.startswith(f"AUTH {probe.decode()} in clear got 334")
    assert "auth-accepts-anything" not in {f.id for f in t.findings}
    assert t.to_json()["auth_before_tls"]["mechanism"] == probe.decode()  # type: ignore[index]


@pytest.mark.parametrize(("name", "exposure"), [
    ("PLAIN", "secret"), ("LOGIN", "secret"), ("XOAUTH2", "secret"),
    ("OAUTHBEARER", "secret"), ("X-UNKNOWN", "secret"), ("CRAM-MD5", "guessable"),
    ("DIGEST-MD5", "guessable"), ("SCRAM-SHA-1", "guessable"), ("ntlm", "guessable"),
    ("GSSAPI", "none"), ("EXTERNAL", "none"), ("ANONYMOUS", "none"),
])
def test_what_each_mechanism_gives_away_in_clear(name: str, exposure: str) -> None:
    assert mechanisms.clear_exposure(name) == exposure


def test_the_probe_picks_plain_then_login_among_the_secret_ones() -> None:
    assert mechanisms.most_exposing(["GSSAPI", "XOAUTH2", "LOGIN", "PLAIN"]) == "PLAIN"
    assert mechanisms.most_exposing(["GSSAPI", "XOAUTH2", "LOGIN"]) == "LOGIN"
    assert mechanisms.most_exposing(["GSSAPI", "CRAM-MD5"]) == "CRAM-MD5"
    assert mechanisms.most_exposing([]) is None
