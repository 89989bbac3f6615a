"""A server that takes any password, but only after STARTTLS (AUTH neither offered
nor accepted in clear, as a careful set-up does, with a back end that checks
nothing: Dovecot's static passdb with nopassword left on). The made-up identity
was tried only in clear, where such a server says 530, so the audit graded it A.
It is now tried once after TLS too; a server that checks passwords is not flagged.
Real TLS: the toy server's certificate is made here, trusted with ``ca_file``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.audit_toy import Answer, audit_toy, plain_reply


def _answer(auth_reply: bytes, mechanisms: bytes = b"PLAIN LOGIN",
            auths: list[bytes] | None = None) -> Answer:
    def answer(verb: bytes, line: bytes, tls: bool) -> bytes:
        if verb == b"EHLO":
            return (b"250-mx.test.local\r\n250 AUTH " + mechanisms + b"\r\n" if tls
                    else b"250-mx.test.local\r\n250 STARTTLS\r\n")
        if verb == b"AUTH":
            if auths is not None and tls:
                auths.append(line.split()[1])
            return b"334 \r\n" if tls else b"530 5.7.0 Must issue STARTTLS first\r\n"
        # After TLS, anything else is the credentials line of the exchange.
        return plain_reply(verb) or (auth_reply if tls else b"500 5.5.2 what\r\n")

    return answer


@pytest.mark.parametrize(("auth_reply", "flagged"), [
    (b"235 2.7.0 ok\r\n", True),
    (b"535 5.7.8 Authentication failed\r\n", False),
])
async def test_a_made_up_login_after_tls(tmp_path: Path, auth_reply: bytes,
                                         flagged: bool) -> None:
    answer = _answer(auth_reply)
    t = await audit_toy(tmp_path, lambda: answer)
    assert t.complete, t.error
    assert t.auth_clear_accepted is False
    assert t.dummy_login_after_tls is flagged
    # (The toy also keeps its input across STARTTLS, as asyncio's start_tls does,
    # and offers no SCRAM: those findings are not this test's.)
    found = {f.id: f for f in t.findings}
    if flagged:
        assert found["auth-accepts-anything"].detail == (
            "a made-up identity got 235 2.7.0 ok to AUTH PLAIN after TLS")
        assert t.grade == "F"
    else:
        assert "auth-accepts-anything" not in found
    data = t.to_json()["auth_made_up_identity"]
    assert data == {"after_tls": flagged, "detail": data["detail"]}


async def test_wrong_credentials_are_not_tried_against_every_mechanism(tmp_path: Path) -> None:
    """With --user and a wrong password, every mechanism offered got a try: as many
    failed logins as mechanisms (nine against smtpgate with all of them), enough
    for fail2ban (maxretry 5) to ban the auditor, or two runs to lock the account
    for new addresses. PLAIN (or LOGIN) and the strongest other go first now, and
    when both refuse the password the others are not tried: a note says so."""
    auths: list[bytes] = []
    answer = _answer(b"535 5.7.8 Authentication failed\r\n",
                     b"SCRAM-SHA-256 SCRAM-SHA-1 LOGIN PLAIN", auths)
    t = await audit_toy(tmp_path, lambda: answer, user="alice@example.org",
                        password="wrong-Pass1")
    assert [c.mechanism for c in t.credentials] == ["PLAIN", "SCRAM-SHA-256"]
    assert "credentials-refused" in {f.id for f in t.findings}
    assert any("with SCRAM-SHA-1, LOGIN not tried: PLAIN and SCRAM-SHA-256 refused" in n
               for n in t.notes), t.notes
    # The credentials twice, then the made-up login.
    assert auths == [b"PLAIN", b"SCRAM-SHA-256", b"PLAIN"]


def test_the_trial_order_puts_a_password_mechanism_and_the_strongest_first() -> None:
    from smtpgate.tools.audit import _trial_order

    assert _trial_order(["LOGIN", "PLAIN", "CRAM-MD5", "SCRAM-SHA-1", "SCRAM-SHA-256"]) == [
        "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-1", "LOGIN", "CRAM-MD5"]
    assert _trial_order(["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256", "LOGIN"]) == [
        "LOGIN", "SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]
