"""``smtpgate test`` answers a server's SCRAM ``e=`` with the empty response, not "*".

Issue 8: the tester cancelled with "*" after ``e=invalid-proof``, so it never saw
the server's final reply (and made smtpgate log the guess as "client cancelled").
RFC 4954 §4: the client answers the last 334 with an empty response; the server's
verdict then arrives as 535 (or 454). The real server is exercised in
tests/integration/test_auth_decided_failures.py.
"""

from __future__ import annotations

import base64

import pytest

from smtpgate.tools.tester import ExitCode, run_test

from .test_tools_tester import (
    APP_PASSWORD,
    EHLO_PLAIN,
    PASSWORD,
    Scripted,
    Serve,
    _opts,
    serve,
)

__all__ = ["serve"]  # the fixture, shared with test_tools_tester.py


def _e(text: bytes) -> bytes:
    return b"334 " + base64.b64encode(text) + b"\r\n"


@pytest.mark.parametrize(
    ("final", "code", "outcome"),
    [
        (b"535 5.7.8 Authentication credentials invalid\r\n", ExitCode.AUTH_REFUSED,
         "auth-refused"),
        (b"454 4.7.0 Too many failed logins, try again later\r\n", ExitCode.AUTH_TEMPFAIL,
         "auth-tempfail"),
    ],
)
async def test_scram_error_is_answered_empty_and_the_final_reply_reported(
    serve: Serve, final: bytes, code: ExitCode, outcome: str
) -> None:
    script = Scripted(b"220 fake.test ESMTP\r\n", [EHLO_PLAIN, _e(b"e=other-error"), final])
    port = await serve(script)
    report = await run_test(_opts(port, auth="SCRAM-SHA-256", user="alice@example.org",
                                  password=PASSWORD))
    assert report.exit_code == code, report.transcript.lines()
    assert script.received[1].startswith(b"AUTH SCRAM-SHA-256 ")
    assert script.received[2] == b"\r\n"  # the empty response, never b"*\r\n"
    assert report.to_json()["outcome"] == outcome
    assert report.auth is not None and report.auth.reply is not None
    assert str(report.auth.reply) == final.decode().strip()
    assert "server error 'other-error'" in report.auth.detail
    assert final.decode().strip() in report.error


async def test_a_scram_server_that_does_not_prove_itself_gets_no_app_password_hint(
    serve: Serve,
) -> None:
    # It was: "235 without a SCRAM server signature: the server is not authenticated
    # (if this is an smtpgate app password: ... try --auth PLAIN)", steering the
    # user to send the password itself to a server that failed to prove itself.
    port = await serve(Scripted(b"220 fake.test ESMTP\r\n", [EHLO_PLAIN, b"235 2.7.0 ok\r\n"]))
    report = await run_test(_opts(port, auth="SCRAM-SHA-256", user="alice@example.org",
                                  password=PASSWORD))
    assert report.exit_code == ExitCode.AUTH_REFUSED
    assert report.error == ("SCRAM-SHA-256 refused: 235 without a SCRAM server signature: "
                            "the server is not authenticated")


@pytest.mark.parametrize(("password", "hinted"), [(APP_PASSWORD, True), (PASSWORD, False)])
async def test_a_refused_scram_login_keeps_the_app_password_hint(
    serve: Serve, password: str, hinted: bool,
) -> None:
    """The hint where it applies: a password in the app passwords' form."""
    port = await serve(Scripted(b"220 fake.test ESMTP\r\n",
                                [EHLO_PLAIN, b"535 5.7.8 Authentication credentials invalid\r\n"]))
    report = await run_test(_opts(port, auth="SCRAM-SHA-256", user="alice@example.org",
                                  password=password))
    assert report.exit_code == ExitCode.AUTH_REFUSED
    assert report.error.endswith("try --auth PLAIN)") is hinted
