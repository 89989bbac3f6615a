"""A failure the server has decided stays that failure, whatever the client does next.

Issue 8: a SCRAM client that reads ``e=invalid-proof`` and answers ``*`` got
``501 Authentication cancelled``, was logged "client cancelled" and was never
counted, so password guesses over SCRAM cost nothing. RFC 4954 §4 lets "*" cancel
an exchange, but not undo a verdict already given in a 334: SCRAM's ``e=`` and the
OAUTHBEARER/XOAUTH2 error JSON. The engine must end such an attempt in exactly one
``AuthFinished`` with result "failure" and the server's reason, whether the client
sends "*", an empty line, the dummy 0x01, garbage, an over-long line, or hangs up.
The reply is the failure's (535 5.7.8, 454 if temporary), except to "*": RFC 4954
§4 says the server MUST answer a cancel 501, so it gets 501 5.7.0, and is still
that failure in the auth log and the guard.
"""

from __future__ import annotations

import base64

import pytest

from smtpgate.sasl import base as sasl
from smtpgate.sasl.scram import ScramClient, scram_credentials_from_password
from smtpgate.smtp import replies as R
from smtpgate.smtp.engine import MAX_AUTH_LINE
from smtpgate.smtp.events import AuthFinished, AuthQuery

from .engine_driver import ACCOUNTS, Driver

USER = "alice@example.org"
PASSWORD = ACCOUNTS[USER]
CREDS = scram_credentials_from_password(PASSWORD, "sha256", 4096)
SCRAM = ("SCRAM-SHA-256-PLUS", "SCRAM-SHA-256", "OAUTHBEARER", "XOAUTH2", "PLAIN", "LOGIN")


class ScramDriver(Driver):
    """The engine driver with SCRAM keys, token checks and a switchable policy."""

    lookup: sasl.CredentialAnswer = CREDS
    confirm: sasl.Verdict = sasl.Verdict(ok=True, identity=USER)

    def answer(self, q: sasl.CredentialQuery) -> sasl.CredentialAnswer:
        if isinstance(q, sasl.LookupScram):
            return self.lookup
        if isinstance(q, sasl.ConfirmIdentity):
            return self.confirm
        if isinstance(q, sasl.ProofArrived):
            return sasl.Verdict(ok=True)
        if isinstance(q, sasl.VerifyToken):
            ok = q.token == "good-token"
            reason = "" if ok else "token rejected"
            return sasl.Verdict(ok=ok, identity=USER if ok else "", reason=reason)
        return super().answer(q)


def session(**kw: object) -> ScramDriver:
    d = ScramDriver(Driver.new(tls=True, mechanisms=SCRAM, **kw).engine)
    assert d.feed(b"EHLO client.test\r\n").startswith(b"250")
    return d


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def lines(out: bytes) -> list[str]:
    return out.decode().splitlines()


def finished(d: Driver) -> list[AuthFinished]:
    return [e for e in d.events if isinstance(e, AuthFinished)]


def scram_to_verdict(d: Driver, password: str, *, plus: bool = False) -> bytes:
    """Run SCRAM-SHA-256 up to the server's final 334; its decoded payload."""
    cb = d.engine.tls.channel_binding if d.engine.tls and plus else sasl.ChannelBinding()
    client = ScramClient("sha256", USER, password, cb, plus=plus)
    first = client.start()
    assert first is not None
    name = b"SCRAM-SHA-256-PLUS" if plus else b"SCRAM-SHA-256"
    out = d.feed(b"AUTH " + name + b" " + b64(first) + b"\r\n")
    assert out.startswith(b"334 "), out
    if base64.b64decode(out[4:].strip()).startswith(b"e="):
        return base64.b64decode(out[4:].strip())
    final = client.step(base64.b64decode(out[4:].strip()))
    out = d.feed(b64(final) + b"\r\n")
    assert out.startswith(b"334 "), out
    return base64.b64decode(out[4:].strip())


# What a client may send after the server's e= (or the OAuth error JSON).
ANSWERS = [
    pytest.param(b"*\r\n", id="star"),
    pytest.param(b"\r\n", id="empty"),
    pytest.param(b"QUIT\r\n", id="quit-as-garbage"),
    pytest.param(b64(b"c=biws,r=x,p=AAAA") + b"\r\n", id="another-client-final"),
    pytest.param(b"A" * (MAX_AUTH_LINE + 10) + b"\r\n", id="over-long-line"),
]


@pytest.mark.parametrize("answer", ANSWERS)
def test_rfc4954_s4_any_answer_to_scram_invalid_proof_is_the_failure(answer: bytes) -> None:
    d = session()
    assert scram_to_verdict(d, "wrong password") == b"e=invalid-proof"
    out = d.feed(answer)
    # 535 5.7.8; a "*" is answered 501 as RFC 4954 §4 says, and still the failure.
    expected = R.AUTH_CANCELLED if answer == b"*\r\n" else R.AUTH_FAILED
    assert lines(out)[0] == str(expected)
    [ev] = finished(d)
    assert (ev.mechanism, ev.result, ev.username) == ("SCRAM-SHA-256", "failure", USER)
    assert ev.reason == "SCRAM-SHA-256: invalid proof"
    assert d.engine.abandon_auth("connection closed") is None  # counted once
    # The session goes on: the right password still works afterwards.
    assert scram_to_verdict(d, PASSWORD).startswith(b"v=")
    assert lines(d.feed(b"\r\n")) == [str(R.AUTH_SUCCESS)]


def test_star_before_any_verdict_is_still_a_cancel_501() -> None:
    d = session()
    client = ScramClient("sha256", USER, "wrong password", sasl.ChannelBinding())
    first = client.start()
    assert first is not None
    assert d.feed(b"AUTH SCRAM-SHA-256 " + b64(first) + b"\r\n").startswith(b"334 ")
    assert lines(d.feed(b"*\r\n")) == [str(R.AUTH_CANCELLED)]
    [ev] = finished(d)
    assert (ev.result, ev.reason) == ("cancelled", "client cancelled")


def test_scram_policy_refusal_at_confirm_then_star_is_a_failure_with_the_policy_reason() -> None:
    d = session()
    d.confirm = sasl.Verdict(ok=False, reason="access policy: listener submissions not allowed")
    assert scram_to_verdict(d, PASSWORD) == b"e=other-error"
    assert lines(d.feed(b"*\r\n")) == [str(R.AUTH_CANCELLED)]  # RFC 4954 §4
    [ev] = finished(d)
    assert (ev.result, ev.reason) == ("failure", "access policy: listener submissions not allowed")


def test_scram_policy_refusal_at_lookup_fails_at_the_proof_with_the_policy_reason() -> None:
    d = session()
    # The auth service refuses before any secret is read: the decoy runs, the wire
    # shows e=invalid-proof like a wrong password, the log has the real reason.
    why = "access policy: address 192.0.2.1 not in the account's networks"
    d.lookup = sasl.NotFound(reason=why)
    assert scram_to_verdict(d, PASSWORD) == b"e=invalid-proof"
    assert lines(d.feed(b"*\r\n")) == [str(R.AUTH_CANCELLED)]  # RFC 4954 §4
    [ev] = finished(d)
    assert ev.result == "failure"
    assert ev.reason == why


def test_scram_unknown_user_is_logged_as_such() -> None:
    d = session()
    d.lookup = sasl.NotFound()
    assert scram_to_verdict(d, PASSWORD) == b"e=invalid-proof"
    d.feed(b"\r\n")
    assert [(e.result, e.reason) for e in finished(d)] == [("failure", "unknown user")]


def test_temporary_refusal_announced_with_e_then_star_is_tempfail_answered_501() -> None:
    d = session()
    # What the guard's refusal looks like to the mechanism (server/connection.py).
    d.lookup = sasl.NotFound(reason="address blocked", temporary=True)
    assert scram_to_verdict(d, PASSWORD) == b"e=other-error"
    assert lines(d.feed(b"*\r\n")) == [str(R.AUTH_CANCELLED)]  # RFC 4954 §4
    assert [(e.result, e.reason) for e in finished(d)] == [("tempfail", "address blocked")]


def test_hang_up_after_scram_error_is_the_failure_once() -> None:
    d = session()
    scram_to_verdict(d, "wrong password")
    ev = d.engine.abandon_auth("connection closed during AUTH")
    assert ev is not None and (ev.result, ev.username) == ("failure", USER)
    assert ev.reason == "SCRAM-SHA-256: invalid proof (connection closed during AUTH)"
    assert d.engine.abandon_auth("again") is None


def test_star_after_the_server_signature_is_a_cancel_not_a_failure() -> None:
    d = session()
    assert scram_to_verdict(d, PASSWORD).startswith(b"v=")
    assert lines(d.feed(b"*\r\n")) == [str(R.AUTH_CANCELLED)]
    assert [e.result for e in finished(d)] == ["cancelled"]
    assert d.engine.identity == ""


# --- OAUTHBEARER and XOAUTH2: the error JSON announces the failure --------------------


def _oauthbearer(token: str) -> bytes:
    return f"n,a={USER},\x01auth=Bearer {token}\x01\x01".encode()


def _xoauth2(token: str) -> bytes:
    return f"user={USER}\x01auth=Bearer {token}\x01\x01".encode()


@pytest.mark.parametrize(
    ("mechanism", "message", "dummy"),
    [
        # RFC 7628 §3.2.3: the client answers the error with 0x01 (AQ==).
        ("OAUTHBEARER", _oauthbearer, b64(b"\x01") + b"\r\n"),
        # Google's XOAUTH2 flow: the client answers with an empty response.
        ("XOAUTH2", _xoauth2, b"\r\n"),
    ],
)
@pytest.mark.parametrize("how", ["dummy", "star", "garbage", "hang-up"])
def test_rfc7628_s3_2_3_oauth_error_is_the_failure_however_the_client_answers(
    mechanism: str, message: object, dummy: bytes, how: str
) -> None:
    d = session()
    assert callable(message)
    out = d.feed(f"AUTH {mechanism} ".encode() + b64(message("bad-token")) + b"\r\n")
    assert out.startswith(b"334 ") and b"status" in base64.b64decode(out[4:].strip())
    assert finished(d) == []  # announced, not yet answered
    if how == "hang-up":
        ev = d.engine.abandon_auth("connection closed during AUTH")
        assert ev is not None
        events = [ev]
    else:
        answer = {"dummy": dummy, "star": b"*\r\n", "garbage": b"!!\r\n"}[how]
        expected = R.AUTH_CANCELLED if how == "star" else R.AUTH_FAILED  # RFC 4954 §4
        assert lines(d.feed(answer)) == [str(expected)]
        events = finished(d)
    assert [(e.mechanism, e.result, e.username) for e in events] == [(mechanism, "failure", USER)]
    assert events[0].reason.startswith("token rejected")
    assert d.engine.abandon_auth("again") is None


def test_oauth_good_token_still_succeeds() -> None:
    d = session()
    out = d.feed(b"AUTH OAUTHBEARER " + b64(_oauthbearer("good-token")) + b"\r\n")
    assert lines(out) == [str(R.AUTH_SUCCESS)]


# --- the other mechanisms decide and answer in one step --------------------------------


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_failure_answered_at_once_is_counted_once_even_if_the_client_then_leaves(
    mechanism: str,
) -> None:
    d = Driver.new(tls=True, mechanisms=SCRAM)
    d.feed(b"EHLO c\r\n")
    d.engine.receive_data(
        b"AUTH PLAIN " + b64(f"\0{USER}\0wrong".encode()) + b"\r\n"
        if mechanism == "PLAIN"
        else b"AUTH LOGIN\r\n" + b64(USER.encode()) + b"\r\n" + b64(b"wrong") + b"\r\n"
    )
    ev = d.engine.next_event()
    while not isinstance(ev, AuthFinished):  # the LOGIN prompts, the AuthQuery
        if isinstance(ev, AuthQuery):
            d.engine.auth_answer(d.answer(ev.query))
        ev = d.engine.next_event()
    assert ev.result == "failure"
    # The server holds its 535 for the failure floor; the client hangs up meanwhile.
    assert d.engine.abandon_auth("connection closed during AUTH") is None


def test_over_long_line_mid_exchange_is_logged_as_a_failure() -> None:
    d = session()
    assert d.feed(b"AUTH LOGIN\r\n").startswith(b"334 ")
    out = d.feed(b"A" * (MAX_AUTH_LINE + 10) + b"\r\nNOOP\r\n")
    assert lines(out) == [str(R.AUTH_LINE_TOO_LONG), str(R.NOOP_OK)]
    assert [(e.result, e.reason) for e in finished(d)] == [
        ("failure", "authentication line too long")
    ]


# --- what an exchange shows about channel binding --------------------------------------


def test_plus_given_up_before_the_first_message_shows_cannot_bind() -> None:
    """mutt and neomutt (GNU SASL without binding data): AUTH X-PLUS, the empty 334,
    then "*" (mutt) or a hang-up (neomutt)."""
    d = session()
    assert d.feed(b"AUTH SCRAM-SHA-256-PLUS\r\n") == b"334 \r\n"
    assert lines(d.feed(b"*\r\n")) == [str(R.AUTH_CANCELLED)]
    assert [(e.result, e.binding) for e in finished(d)] == [("cancelled", "cannot-bind")]
    d.feed(b"AUTH SCRAM-SHA-256-PLUS\r\n")
    ev = d.engine.abandon_auth("connection closed during AUTH")
    assert ev is not None and ev.binding == "cannot-bind"


def test_plus_success_shows_can_bind_and_plain_scram_shows_nothing() -> None:
    d = session()
    assert scram_to_verdict(d, PASSWORD, plus=True).startswith(b"v=")
    d.feed(b"\r\n")
    assert [(e.result, e.binding) for e in finished(d)] == [("success", "can-bind")]
    d = session()
    scram_to_verdict(d, PASSWORD)
    d.feed(b"\r\n")
    d2 = session()
    d2.feed(b"AUTH SCRAM-SHA-256\r\n*\r\n")  # -PLUS offered: a plain SCRAM cancel says nothing
    assert [e.binding for e in finished(d) + finished(d2)] == ["", ""]


def test_held_back_plus_is_not_advertised_but_still_accepted() -> None:
    d = Driver.new(tls=True, mechanisms=SCRAM)
    d.engine.hide_plus = True
    out = d.feed(b"EHLO c\r\n").decode()
    assert "AUTH SCRAM-SHA-256 OAUTHBEARER" in out and "-PLUS" not in out
    d = session()
    d.engine.hide_plus = True
    assert scram_to_verdict(d, PASSWORD, plus=True).startswith(b"v=")
    d.feed(b"\r\n")
    assert [(e.result, e.binding) for e in finished(d)] == [("success", "can-bind")]


def test_rfc5802_s6_y_flag_where_plus_is_held_back_is_still_a_downgrade() -> None:
    """The fallback must not open RFC 5802 §6's hole: an attacker who got -PLUS held
    back from its own address and relays a client that can bind (flag "y") is
    refused, as if it had stripped -PLUS from EHLO itself."""
    d = session()
    d.engine.hide_plus = True
    assert d.engine.tls is not None
    client = ScramClient("sha256", USER, PASSWORD, d.engine.tls.channel_binding)
    first = client.start()
    assert first is not None and first.startswith(b"y,")
    out = d.feed(b"AUTH SCRAM-SHA-256 " + b64(first) + b"\r\n")
    assert base64.b64decode(out[4:].strip()) == b"e=server-does-support-channel-binding"
    assert lines(d.feed(b"\r\n")) == [str(R.AUTH_FAILED)]
    [ev] = finished(d)
    assert (ev.result, ev.binding) == ("failure", "can-bind")


def test_plain_scram_given_up_where_plus_is_held_back_shows_can_bind() -> None:
    """gsasl (which hands GNU SASL the binding data) gives up on plain SCRAM before
    its first message: that client wants -PLUS back."""
    d = session()
    d.engine.hide_plus = True
    d.feed(b"AUTH SCRAM-SHA-256\r\n")
    ev = d.engine.abandon_auth("connection closed during AUTH")
    assert ev is not None and (ev.result, ev.binding) == ("cancelled", "can-bind")
