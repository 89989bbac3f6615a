"""Unit tests of the sans-IO engine, named after the rule each checks."""

from __future__ import annotations

import base64

import pytest

from smtpgate.smtp import replies as R
from smtpgate.smtp.dsn_params import RcptParams
from smtpgate.smtp.engine import JUNK_COMMANDS, RECIPIENT_OVERSHOOT
from smtpgate.smtp.events import (
    AuthFinished,
    AuthRefused,
    CloseConnection,
    MailFrom,
    MessageStart,
    RcptTo,
    StartTls,
)
from smtpgate.smtp.states import TRANSITIONS, State

from .engine_driver import Driver

PLAIN_OK = base64.b64encode(b"\0alice@example.org\0correct horse").decode()
PLAIN_BAD = base64.b64encode(b"\0alice@example.org\0wrong").decode()
PLAIN_UNKNOWN = base64.b64encode(b"\0mallory@example.org\0wrong").decode()


def codes(out: bytes) -> list[str]:
    """The final line of each reply: '250 2.0.0 ...' etc."""
    return [ln for ln in out.decode().split("\r\n") if ln and ln[3:4] == " "]


def authed(**kw: object) -> Driver:
    d = Driver.new(tls=True, **kw)
    out = d.feed(f"EHLO client.test\r\nAUTH PLAIN {PLAIN_OK}\r\n".encode())
    assert codes(out)[-1].startswith("235 2.7.0")
    return d


# --- EHLO and the extension list -------------------------------------------------


def test_rfc4954_s4_no_auth_offered_before_starttls() -> None:
    d = Driver.new()
    out = d.feed(b"EHLO client.test\r\n").decode()
    assert "250-STARTTLS" in out or "250 STARTTLS" in out
    assert "AUTH" not in out


def test_rfc3207_s4_2_auth_offered_after_tls_and_starttls_not_again() -> None:
    d = Driver.new()
    d.feed(b"EHLO client.test\r\nSTARTTLS\r\n")
    d.start_tls()
    out = d.feed(b"EHLO client.test\r\n").decode()
    assert "AUTH PLAIN LOGIN" in out
    assert "STARTTLS" not in out


def test_ehlo_advertises_submission_extensions() -> None:
    out = Driver.new(tls=True).feed(b"EHLO c\r\n").decode()
    for ext in ("PIPELINING", "SIZE 35000000", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES"):
        assert ext in out


@pytest.mark.parametrize("verb", ["EHLO", "HELO"])
@pytest.mark.parametrize("arg", ["x y", "x\ty", "x\x0by", "x\x0cy", "x\x01y", "x\x7fy",
                                 "x\u0085y", "x\u00a0y", "x\u2028y", "x\u3000y", "\t", "x\t\x0b"])
def test_rfc5321_s4_1_1_1_one_name_after_ehlo_or_helo(verb: str, arg: str) -> None:
    """One domain or address literal: a tab split the argument as a space does, but
    ``EHLO x<TAB>y`` was accepted (and ``x?y`` written in Received) while ``EHLO x
    y`` got 501; any white space or control character is refused alike now (WSP
    around the name is ignored, ``test_white_space_around_the_name_is_ignored``)."""
    d = Driver.new(tls=True)
    out = codes(d.feed(f"{verb} {arg}\r\n".encode()))
    assert out == [str(R.SYNTAX_EHLO if verb == "EHLO" else R.SYNTAX_HELO).strip()]
    assert d.engine.helo == ""


@pytest.mark.parametrize("arg", ["x ", "x\t", " \tx \t"])
def test_white_space_around_the_name_is_ignored(arg: str) -> None:
    """Trailing spaces were taken off every command's argument; a tab is WSP too
    (RFC 5234), so ``EHLO x<TAB>`` is ``EHLO x``."""
    d = Driver.new(tls=True)
    assert codes(d.feed(f"EHLO {arg}\r\n".encode()))[-1].startswith("250 ")
    assert d.engine.helo == "x"


@pytest.mark.parametrize("arg", ["client.test", "[192.0.2.1]", "[IPv6:2001:db8::1]",
                                 "DESKTOP_7Q", "b\u00fccher.example", "localhost"])
def test_names_without_white_space_are_taken_as_sent(arg: str) -> None:
    """Lenient beyond that (docs/smtp.md): an underscore, a bare name, a U-label."""
    d = Driver.new(tls=True)
    assert codes(d.feed(f"EHLO {arg}\r\n".encode()))[-1].startswith("250 ")
    assert d.engine.helo == arg


def test_helo_works_but_offers_nothing() -> None:
    out = Driver.new(tls=True).feed(b"HELO c\r\n").decode()
    assert out == "250 mx.test\r\n"


def test_auth_in_clear_offered_only_when_listener_allows_it() -> None:
    out = Driver.new(auth_in_clear=True).feed(b"EHLO c\r\n").decode()
    assert "AUTH PLAIN LOGIN" in out


def test_plus_mechanisms_only_offered_with_channel_binding() -> None:
    mechs = ("SCRAM-SHA-256-PLUS", "PLAIN")
    d = Driver.new(tls=True, mechanisms=mechs)
    assert d.engine.offered_mechanisms() == mechs
    d2 = Driver.new(auth_in_clear=True, mechanisms=mechs)
    assert d2.engine.offered_mechanisms() == ("PLAIN",)


# --- AUTH ---------------------------------------------------------------------------


def test_rfc4954_s6_auth_plain_initial_response_success_235() -> None:
    d = Driver.new(tls=True)
    out = d.feed(f"EHLO c\r\nAUTH PLAIN {PLAIN_OK}\r\n".encode())
    assert codes(out)[-1] == "235 2.7.0 Authentication successful"
    assert d.engine.identity == "alice@example.org"


def test_rfc4954_s4_auth_plain_without_initial_response_gets_empty_334() -> None:
    d = Driver.new(tls=True)
    out = d.feed(b"EHLO c\r\nAUTH PLAIN\r\n")
    assert out.endswith(b"334 \r\n")
    out = d.feed(PLAIN_OK.encode() + b"\r\n")
    assert codes(out) == ["235 2.7.0 Authentication successful"]


def test_rfc4954_s4_equals_sign_is_empty_initial_response() -> None:
    d = Driver.new(tls=True)
    out = d.feed(b"EHLO c\r\nAUTH PLAIN =\r\n")
    assert codes(out)[-1].startswith("535 5.7.8")


def test_rfc4954_s6_wrong_password_and_unknown_user_same_535() -> None:
    d1, d2 = Driver.new(tls=True), Driver.new(tls=True)
    a = codes(d1.feed(f"EHLO c\r\nAUTH PLAIN {PLAIN_BAD}\r\n".encode()))[-1]
    b = codes(d2.feed(f"EHLO c\r\nAUTH PLAIN {PLAIN_UNKNOWN}\r\n".encode()))[-1]
    assert a == b == str(R.AUTH_FAILED)


def test_rfc4954_s6_backend_fault_is_454_not_535() -> None:
    d = Driver.new(tls=True)
    d.auth_store_down = True
    out = d.feed(f"EHLO c\r\nAUTH PLAIN {PLAIN_OK}\r\n".encode())
    assert codes(out)[-1] == str(R.AUTH_TEMPFAIL)
    finished = [e for e in d.events if isinstance(e, AuthFinished)]
    assert finished[-1].result == "tempfail"


def test_rfc4954_s4_cancel_with_star_is_501() -> None:
    d = Driver.new(tls=True)
    d.feed(b"EHLO c\r\nAUTH LOGIN\r\n")
    out = d.feed(b"*\r\n")
    assert codes(out) == ["501 5.7.0 Authentication cancelled"]
    assert [e.result for e in d.events if isinstance(e, AuthFinished)] == ["cancelled"]


def test_rfc4954_s4_bad_base64_is_501_5_5_2() -> None:
    for bad in ("AUTH PLAIN !!!!", "AUTH PLAIN AAA=B", "AUTH PLAIN =AAA", "AUTH PLAIN AAA"):
        d = Driver.new(tls=True)
        assert codes(d.feed(f"EHLO c\r\n{bad}\r\n".encode()))[-1] == str(R.AUTH_BAD_BASE64), bad


def malformed_attempts(d: Driver) -> list[tuple[str, str, str]]:
    return [(e.mechanism, e.result, e.reason) for e in d.events
            if isinstance(e, AuthFinished) and e.malformed]


def test_an_undecodable_initial_response_is_a_failed_attempt_as_a_response_is() -> None:
    """Found by the h25guard review: `AUTH PLAIN !!!!` and an AUTH line over the
    RFC 4954 §4 limit got their 501/500 with no attempt ended, so nothing was logged
    and the guard counted nothing, while the same data sent after the 334 was a
    failed attempt (logged, counted toward the address). Now both forms are one."""
    for line, reason, reply in (
        (b"AUTH PLAIN !!!!", "invalid base64", R.AUTH_BAD_BASE64),
        (b"AUTH login " + b"A" * 13000, "authentication line too long", R.AUTH_LINE_TOO_LONG),
    ):
        mechanism = line.split()[1].decode().upper()
        d = Driver.new(tls=True)
        out = d.feed(b"EHLO c\r\n" + line + b"\r\nNOOP\r\n")
        assert codes(out)[-2:] == [str(reply), str(R.NOOP_OK)]
        assert malformed_attempts(d) == [(mechanism, "failure", reason)]
        assert not d.engine.in_auth
        # The same data after the 334: the same attempt.
        d = Driver.new(tls=True)
        d.feed(b"EHLO c\r\nAUTH " + line.split()[1] + b"\r\n")
        out = d.feed(line.split(b" ", 2)[2] + b"\r\n")
        assert codes(out) == [str(reply)]
        assert malformed_attempts(d) == [(mechanism, "failure", reason)]


def test_an_undecodable_initial_response_where_auth_is_refused_anyway_is_no_attempt() -> None:
    """Before TLS, after a login, or with a mechanism not offered, the AUTH line is
    refused as such, and no attempt is made up for it."""
    d = Driver.new(tls=False)
    assert codes(d.feed(b"EHLO c\r\nAUTH PLAIN " + b"A" * 13000 + b"\r\n"))[-1] == str(
        R.AUTH_LINE_TOO_LONG)
    d = Driver.new(tls=True)
    d.feed(b"EHLO c\r\n")
    assert codes(d.feed(b"AUTH NOSUCH !!!!\r\n")) == [str(R.AUTH_UNKNOWN_MECHANISM)]
    assert codes(d.feed(b"AUTH NOSUCH " + b"A" * 13000 + b"\r\n")) == [
        str(R.AUTH_LINE_TOO_LONG)]
    assert codes(d.feed(f"AUTH PLAIN {PLAIN_OK}\r\n".encode())) == [str(R.AUTH_SUCCESS)]
    assert codes(d.feed(b"AUTH PLAIN !!!!\r\n")) == [str(R.AUTH_ALREADY)]
    assert codes(d.feed(b"AUTH PLAIN " + b"A" * 13000 + b"\r\n")) == [
        str(R.AUTH_LINE_TOO_LONG)]
    assert malformed_attempts(d) == []
    # Before EHLO (on an implicit-TLS port), and inside a transaction, which stays open.
    d = Driver.new(tls=True)
    assert codes(d.feed(b"AUTH PLAIN " + b"A" * 13000 + b"\r\n")) == [
        str(R.AUTH_LINE_TOO_LONG)]
    assert malformed_attempts(d) == []
    d = authed()
    d.feed(b"MAIL FROM:<alice@example.org>\r\n")
    out = d.feed(b"AUTH PLAIN " + b"A" * 13000 + b"\r\nRCPT TO:<bob@example.org>\r\n")
    assert codes(out) == [str(R.AUTH_LINE_TOO_LONG), "250 2.1.5 Recipient OK"]
    assert malformed_attempts(d) == []
    d = Driver.new(tls=True)
    d.feed(b"EHLO c\r\nAUTH PLAIN\r\n")
    assert codes(d.feed(b"not base64!\r\n")) == [str(R.AUTH_BAD_BASE64)]


def refused(d: Driver) -> list[tuple[str, str, str]]:
    return [(e.mechanism, e.reason, e.username) for e in d.events if isinstance(e, AuthRefused)]


LONG = b"A" * 13000


@pytest.mark.parametrize(("tls", "first", "line", "reply", "want"), [
    (False, b"EHLO c\r\n", b"AUTH PLAIN " + PLAIN_BAD.encode(), R.MUST_STARTTLS,
     ("PLAIN", "AUTH before STARTTLS", "")),
    (False, b"EHLO c\r\n", b"AUTH LOGIN", R.MUST_STARTTLS, ("LOGIN", "AUTH before STARTTLS", "")),
    (False, b"EHLO c\r\n", b"AUTH PLAIN !!!!", R.MUST_STARTTLS,
     ("PLAIN", "AUTH before STARTTLS", "")),
    (False, b"EHLO c\r\n", b"AUTH PLAIN " + LONG, R.AUTH_LINE_TOO_LONG,
     ("PLAIN", "AUTH before STARTTLS: authentication line too long", "")),
    (True, b"", b"AUTH PLAIN", R.NEED_EHLO, ("PLAIN", "AUTH before EHLO", "")),
    (True, b"", b"AUTH PLAIN " + LONG, R.AUTH_LINE_TOO_LONG,
     ("PLAIN", "AUTH before EHLO: authentication line too long", "")),
    (True, b"EHLO c\r\n", b"AUTH XOAUTH2", R.AUTH_UNKNOWN_MECHANISM,
     ("XOAUTH2", "mechanism not offered", "")),
    (True, b"EHLO c\r\n", b"auth nosuch !!!!", R.AUTH_UNKNOWN_MECHANISM,
     ("NOSUCH", "mechanism not offered", "")),
    (True, b"EHLO c\r\n", b"AUTH NOSUCH " + LONG, R.AUTH_LINE_TOO_LONG,
     ("NOSUCH", "mechanism not offered: authentication line too long", "")),
    (True, b"EHLO c\r\n", b"AUTH", R.AUTH_SYNTAX, ("", "malformed AUTH command", "")),
    (True, b"EHLO c\r\n", b"AUTH PLAIN a b", R.AUTH_SYNTAX,
     ("PLAIN", "malformed AUTH command", "")),
    (True, b"EHLO c\r\n", b"AUTH CRAM-MD5 eA==", R.AUTH_UNEXPECTED_INITIAL,
     ("CRAM-MD5", "initial response not allowed", "")),
    (True, f"EHLO c\r\nAUTH PLAIN {PLAIN_OK}\r\n".encode(), b"AUTH PLAIN !!!!", R.AUTH_ALREADY,
     ("PLAIN", "already authenticated", "alice@example.org")),
    (True, f"EHLO c\r\nAUTH PLAIN {PLAIN_OK}\r\nMAIL FROM:<alice@example.org>\r\n".encode(),
     b"AUTH LOGIN", R.AUTH_IN_TRANSACTION,
     ("LOGIN", "AUTH during a mail transaction", "alice@example.org")),
])
def test_an_auth_refused_before_any_exchange_is_one_auth_refused_event(
        tls: bool, first: bytes, line: bytes, reply: R.Reply,
        want: tuple[str, str, str]) -> None:
    """Found by the h27authlog review: AUTH in clear, before EHLO, with a mechanism
    not offered, malformed, or after a login got its reply and nothing else, so the
    auth log, fail2ban, ``smtpgate report`` and the metrics never saw a scanner
    probing AUTH. Each is now one AuthRefused, answered at once (no decision)."""
    d = Driver.new(tls=tls, mechanisms=("CRAM-MD5", "PLAIN", "LOGIN"))
    d.feed(first)
    before = len(refused(d))
    assert codes(d.feed(line + b"\r\n")) == [str(reply)]
    assert refused(d)[before:] == [want]
    assert not [e for e in d.events if isinstance(e, AuthFinished) and e.result != "success"]
    assert codes(d.feed(b"NOOP\r\n")) == [str(R.NOOP_OK)]  # no decision waited for


def test_refused_auth_commands_count_toward_max_errors_each_with_its_event() -> None:
    """A scanner sending AUTH in clear over and over: one event for each of the ten,
    then the 421 and the close, as before."""
    d = Driver.new()
    out = d.feed(b"EHLO c\r\n" + b"AUTH PLAIN\r\n" * 12)
    assert codes(out)[-2:] == [str(R.MUST_STARTTLS), str(R.TOO_MANY_ERRORS)]
    assert refused(d) == [("PLAIN", "AUTH before STARTTLS", "")] * 10
    assert isinstance(d.events[-1], CloseConnection) and d.closed


def test_rfc4954_s4_auth_in_clear_is_530() -> None:
    d = Driver.new()
    out = d.feed(f"EHLO c\r\nAUTH PLAIN {PLAIN_OK}\r\n".encode())
    assert codes(out)[-1] == "530 5.7.0 Must issue a STARTTLS command first"
    assert d.engine.identity == ""
    # Also LOGIN, and without an initial response: never a 334 in clear.
    out = d.feed(b"AUTH LOGIN\r\n")
    assert codes(out) == [str(R.MUST_STARTTLS)]


def test_rfc4954_s4_unknown_or_disabled_mechanism_is_504() -> None:
    d = Driver.new(tls=True, mechanisms=("PLAIN",))
    out = d.feed(b"EHLO c\r\nAUTH FOO\r\nAUTH LOGIN\r\n")
    assert codes(out)[-2:] == [str(R.AUTH_UNKNOWN_MECHANISM)] * 2


def test_rfc4954_s4_second_auth_after_success_is_503() -> None:
    d = authed()
    assert codes(d.feed(f"AUTH PLAIN {PLAIN_OK}\r\n".encode())) == [str(R.AUTH_ALREADY)]


def test_rfc5321_s3_8_a_421_to_mail_closes_the_session() -> None:
    """A decision that ends the session (a login revoked since, `[auth] session_recheck`)
    answers MAIL 421 and closes: nothing pipelined after it is answered."""
    d = authed()
    d.mail_reply = R.LOGIN_REVOKED
    out = d.feed(b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.net>\r\nNOOP\r\n")
    assert codes(out) == ["421 4.7.0 Authentication no longer valid, closing connection"]
    assert d.closed


def test_a_5xx_to_mail_keeps_the_session() -> None:
    d = authed()
    d.mail_reply = R.Reply(553, "5.7.1", "Sender address not owned by you")
    out = d.feed(b"MAIL FROM:<boss@example.org>\r\nNOOP\r\n")
    assert codes(out) == ["553 5.7.1 Sender address not owned by you", "250 2.0.0 OK"]
    assert not d.closed


def test_rfc4954_s4_auth_inside_transaction_is_503() -> None:
    d = Driver.new(tls=True, auth_in_clear=True)
    d.feed(f"EHLO c\r\nAUTH PLAIN {PLAIN_OK}\r\n".encode())
    d.engine.identity = ""  # pretend a transaction started before auth (not possible); use MAIL
    d = authed()
    d.feed(b"MAIL FROM:<alice@example.org>\r\n")
    d.engine.identity = ""
    assert codes(d.feed(f"AUTH PLAIN {PLAIN_OK}\r\n".encode())) == [str(R.AUTH_IN_TRANSACTION)]


def test_auth_login_username_as_initial_response_like_smtplib() -> None:
    d = Driver.new(tls=True)
    user = base64.b64encode(b"alice@example.org").decode()
    out = d.feed(f"EHLO c\r\nAUTH LOGIN {user}\r\n".encode())
    assert out.endswith(b"334 " + base64.b64encode(b"Password:") + b"\r\n")
    out = d.feed(base64.b64encode(b"correct horse") + b"\r\n")
    assert codes(out) == ["235 2.7.0 Authentication successful"]


def test_auth_login_two_step() -> None:
    d = Driver.new(tls=True)
    out = d.feed(b"EHLO c\r\nAUTH LOGIN\r\n")
    assert out.endswith(b"334 VXNlcm5hbWU6\r\n")  # "Username:"
    d.feed(base64.b64encode(b"alice@example.org") + b"\r\n")
    out = d.feed(base64.b64encode(b"correct horse") + b"\r\n")
    assert codes(out) == ["235 2.7.0 Authentication successful"]


def test_rfc4954_s4_auth_line_up_to_12288_octets_accepted() -> None:
    d = Driver.new(tls=True)
    d.feed(b"EHLO c\r\nAUTH PLAIN\r\n")
    big = base64.b64encode(b"\0alice@example.org\0" + b"x" * 9000)
    assert 9000 < len(big) <= 12288
    out = d.feed(big + b"\r\n")
    assert codes(out) == [str(R.AUTH_FAILED)]  # processed, wrong password


def test_rfc4954_s4_auth_line_over_limit_is_500_5_5_6() -> None:
    d = Driver.new(tls=True)
    d.feed(b"EHLO c\r\nAUTH PLAIN\r\n")
    out = d.feed(b"A" * 20000 + b"\r\nNOOP\r\n")
    assert codes(out) == [str(R.AUTH_LINE_TOO_LONG), str(R.NOOP_OK)]


def test_rfc4954_s4_auth_command_with_initial_response_over_limit_is_500_5_5_6() -> None:
    # The initial response is an authentication exchange line too: a token too
    # big for the AUTH line gets the AUTH reply, not the generic 500 5.5.2.
    d = Driver.new(tls=True)
    d.feed(b"EHLO c\r\n")
    out = d.feed(b"AUTH XOAUTH2 " + b"A" * 13000 + b"\r\nNOOP\r\n")
    assert codes(out) == [str(R.AUTH_LINE_TOO_LONG), str(R.NOOP_OK)]
    # Arriving in pieces (the rest of the line discarded unparsed), lower case.
    out = d.feed(b"auth plain " + b"A" * 20000)
    assert out == b""
    out = d.feed(b"A" * 20000 + b"\r\nNOOP\r\n")
    assert codes(out) == [str(R.AUTH_LINE_TOO_LONG), str(R.NOOP_OK)]
    assert d.engine.buffered == 0
    # Any other over-long command keeps the generic reply.
    out = d.feed(b"NOOP " + b"A" * 20000 + b"\r\nNOOP\r\n")
    assert codes(out) == [str(R.LINE_TOO_LONG), str(R.NOOP_OK)]


def test_the_over_long_line_markers_are_no_line_a_client_can_send() -> None:
    """Found by audit h24: an over-long line was marked by the bytes
    ``<NUL>TOOLONG`` and ``<NUL>AUTHTOOLONG``, so a client sending the second as a
    SASL response got 500 5.5.6 and the exchange stayed open (its next line read as
    the next response, no attempt logged); ``<NUL>TOOLONG`` got 'Line too long'.
    They are the short lines they are: not base64 in AUTH (501 5.5.2, the exchange
    ends), a NUL in a command (501 5.5.2)."""
    d = Driver.new(tls=True)
    d.feed(b"EHLO c\r\nAUTH LOGIN\r\n")
    out = d.feed(b"\x00AUTHTOOLONG\r\n")
    assert codes(out) == [str(R.AUTH_BAD_BASE64)]
    assert not d.engine.in_auth
    d.feed(b"AUTH PLAIN\r\n")
    out = d.feed(b"\x00TOOLONG\r\nNOOP\r\n")
    assert codes(out) == [str(R.AUTH_BAD_BASE64), str(R.NOOP_OK)]
    out = d.feed(b"\x00TOOLONG\r\n\x00AUTHTOOLONG\r\nNOOP\r\n")
    assert codes(out) == [str(R.NUL_IN_COMMAND)] * 2 + [str(R.NOOP_OK)]


def test_rfc4954_s6_plain_authzid_other_than_authcid_is_535() -> None:
    d = Driver.new(tls=True)
    ir = base64.b64encode(b"bob@example.org\0alice@example.org\0correct horse").decode()
    assert codes(d.feed(f"EHLO c\r\nAUTH PLAIN {ir}\r\n".encode()))[-1] == str(R.AUTH_FAILED)


def test_rfc4954_s4_auth_abort_repeated_leaves_no_state() -> None:
    d = Driver.new(tls=True)
    d.feed(b"EHLO c\r\n")
    for _ in range(5):
        d.feed(b"AUTH LOGIN\r\n")
        assert codes(d.feed(b"*\r\n")) == [str(R.AUTH_CANCELLED)]
        d.engine.errors = 0
    assert codes(d.feed(f"AUTH PLAIN {PLAIN_OK}\r\n".encode())) == [str(R.AUTH_SUCCESS)]


# --- Submission needs authentication ---------------------------------------------------


def test_rfc6409_s4_3_mail_before_auth_is_530() -> None:
    d = Driver.new(tls=True)
    out = d.feed(b"EHLO c\r\nMAIL FROM:<alice@example.org>\r\n")
    assert codes(out)[-1] == "530 5.7.0 Authentication required"


def test_rfc3207_s4_mail_in_clear_is_530_must_starttls() -> None:
    d = Driver.new()
    out = d.feed(b"EHLO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<victim@external.example>\r\n")
    assert codes(out)[-2:] == [str(R.MUST_STARTTLS)] * 2


def test_no_relay_without_auth_on_any_listener() -> None:
    for kw in ({"tls": True}, {"auth_in_clear": True}, {}):
        d = Driver.new(**kw)  # type: ignore[arg-type]
        out = d.feed(
            b"EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<victim@external.example>\r\n"
            b"RCPT TO:<victim%external.example@mx.test>\r\nDATA\r\n"
        )
        assert all(c.startswith(("530", "503")) for c in codes(out)[1:]), (kw, out)
        assert not d.messages


def test_rfc4954_s5_auth_param_accepted_and_not_trusted() -> None:
    d = authed()
    out = d.feed(b"MAIL FROM:<alice@example.org> AUTH=bob@example.org\r\n")
    assert codes(out) == [str(R.SENDER_OK)]
    d.feed(b"RCPT TO:<x@example.net>\r\nDATA\r\nhi\r\n.\r\n")
    assert d.messages[0].identity == "alice@example.org"


def test_rfc4954_s5_auth_param_with_encoded_crlf_refused() -> None:
    d = authed()
    out = d.feed(b"MAIL FROM:<alice@example.org> AUTH=x+0D+0AX-Injected:+20yes\r\n")
    assert codes(out) == [str(R.SYNTAX_ERROR)]


def reply_to(line: bytes) -> list[str]:
    """The codes a logged-in session answers ``line`` with (a RCPT after a MAIL)."""
    d = authed()
    if line.startswith(b"RCPT"):
        d.feed(b"MAIL FROM:<alice@example.org>\r\n")
    return codes(d.feed(line + b"\r\n"))


@pytest.mark.parametrize(("line", "reply"), [
    # Postfix: "503 5.5.4 Error: multiple AUTH= options"; the address is not at fault.
    (b"MAIL FROM:<alice@example.org> AUTH=<> AUTH=x", R.DUPLICATE_PARAMETER),
    (b"MAIL FROM:<alice@example.org> SIZE=10 size=11", R.DUPLICATE_PARAMETER),
    (b"MAIL FROM:<alice@example.org> BODY=7BIT BODY=8BITMIME", R.DUPLICATE_PARAMETER),
    (b"MAIL FROM:<alice@example.org> SMTPUTF8 SMTPUTF8=x", R.DUPLICATE_PARAMETER),
    (b"MAIL FROM:<alice@example.org> AUTH=", R.SYNTAX_ERROR),
    (b"MAIL FROM:<alice@example.org> AUTH=a=b", R.SYNTAX_ERROR),
    (b"MAIL FROM:<alice@example.org> -X=1", R.SYNTAX_ERROR),
    (b"RCPT TO:<bob@example.net> NOTIFY=NEVER NOTIFY=SUCCESS", R.DUPLICATE_PARAMETER),
    (b"RCPT TO:<bob@example.net> NOTIFY=", R.SYNTAX_ERROR),
    # RFC 5321 §4.1.1.2/§4.1.1.3: ``"MAIL FROM:" Reverse-path [SP Mail-parameters]``.
    # ``<a@b>SIZE=1`` was accepted, the parameter read as if a space were there;
    # Postfix 3.7 refuses it (501) for MAIL and RCPT alike, and so does smtpgate now.
    (b"MAIL FROM:<alice@example.org>SIZE=1", R.SYNTAX_MAIL),
    (b"MAIL FROM:<alice@example.org>BODY=8BITMIME", R.SYNTAX_MAIL),
    (b"MAIL FROM:<>SMTPUTF8", R.SYNTAX_MAIL),
    (b"RCPT TO:<bob@example.net>NOTIFY=NEVER", R.SYNTAX_RCPT),
    (b"RCPT TO:<bob@example.net>x", R.SYNTAX_RCPT),
])
def test_a_bad_parameter_is_named_not_the_address(line: bytes, reply: R.Reply) -> None:
    """A duplicate or malformed MAIL/RCPT parameter was answered "Syntax: MAIL
    FROM:<address>", pointing the sender at an address that was fine; a parameter
    glued to the path is a syntax error of the path."""
    assert reply_to(line) == [str(reply)]


@pytest.mark.parametrize(("mail", "rcpt", "sender", "recipient"), [
    (b"MAIL FROM:alice@example.org", b"RCPT TO:bob@example.net",
     "alice@example.org", "bob@example.net"),
    (b"MAIL FROM: alice@EXAMPLE.org SIZE=10", b"RCPT TO: bob@example.net NOTIFY=NEVER",
     "alice@example.org", "bob@example.net"),
    (b"mail from:alice@example.org AUTH=<> BODY=8BITMIME", b"rcpt to:Postmaster",
     "alice@example.org", "postmaster@mx.test"),
    (b"MAIL FROM:alice@example.org ", b"RCPT TO:bob@example.net ORCPT=rfc822;bob@example.net",
     "alice@example.org", "bob@example.net"),
])
def test_a_path_without_angle_brackets_is_taken_as_postfix_takes_it(
        mail: bytes, rcpt: bytes, sender: str, recipient: str) -> None:
    """Printers, scanners and old appliances send ``MAIL FROM:a@b`` (no brackets),
    which Postfix takes by default (strict_rfc821_envelopes = no); smtpgate
    answered 501 and they could not send. One address word, then parameters."""
    d = authed()
    out = d.feed(mail + b"\r\n" + rcpt + b"\r\nDATA\r\nhi\r\n.\r\n")
    assert codes(out) == [str(R.SENDER_OK), str(R.RECIPIENT_OK), str(R.START_DATA),
                          str(R.MESSAGE_ACCEPTED)]
    assert d.messages[0].sender == sender
    assert d.messages[0].recipients == (recipient,)


@pytest.mark.parametrize(("line", "reply"), [
    # Which address was meant is a guess: refused as a syntax error, not read as
    # an address and a parameter (Postfix reads "Doe" as an unknown option).
    (b"MAIL FROM:John Doe <alice@example.org>", R.SYNTAX_MAIL),
    (b"MAIL FROM:alice@example.org <bob@example.org>", R.SYNTAX_MAIL),
    (b"MAIL FROM:alice@example.org bob@example.org", R.SYNTAX_MAIL),
    (b"MAIL FROM:alice@example.org,bob@example.org", R.SYNTAX_MAIL),
    (b"MAIL FROM:alice@example.org>", R.SYNTAX_MAIL),
    (b'MAIL FROM:"alice"@example.org', R.SYNTAX_MAIL),
    (b"MAIL FROM:alice@example.org (Alice)", R.SYNTAX_MAIL),
    (b"MAIL FROM:", R.SYNTAX_MAIL),
    (b"MAIL FROM: ", R.SYNTAX_MAIL),
    (b"MAIL FROM:alice", R.BAD_SENDER_ADDRESS),
    (b"MAIL FROM:alice@example.org SIZE=10 x", R.UNKNOWN_PARAMETER),
    (b"RCPT TO:bob@example.net, carol@example.net", R.SYNTAX_RCPT),
    (b"RCPT TO:Bob <bob@example.net>", R.SYNTAX_RCPT),
    (b"RCPT TO:bob@example.net carol@example.net", R.SYNTAX_RCPT),
    # A TAB is the client's separator there, a syntax error as after <...> (it
    # was 553, as if an address held the TAB): 501 5.5.4 with or without brackets.
    (b"MAIL FROM:alice@example.org\tSIZE=10", R.SYNTAX_MAIL),
    (b"MAIL FROM:<alice@example.org>\tSIZE=10", R.SYNTAX_MAIL),
    (b"RCPT TO:bob@example.net\tNOTIFY=NEVER", R.SYNTAX_RCPT),
    (b"RCPT TO:<bob@example.net>\tNOTIFY=NEVER", R.SYNTAX_RCPT),
    (b"RCPT TO:bob\t@example.net", R.SYNTAX_RCPT),
])
def test_an_ambiguous_path_without_angle_brackets_is_refused(line: bytes, reply: R.Reply) -> None:
    assert reply_to(line) == [str(reply)]


# --- Transactions -------------------------------------------------------------------


def test_rfc5321_full_transaction_and_dot_unstuffing() -> None:
    d = authed()
    out = d.feed(
        b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.net>\r\nDATA\r\n"
        b"Subject: t\r\n\r\n..leading dot\r\n.\r\n"
    )
    assert codes(out) == [str(R.SENDER_OK), str(R.RECIPIENT_OK), str(R.START_DATA), str(R.MESSAGE_ACCEPTED)]
    assert d.messages[0].data == b"Subject: t\r\n\r\n.leading dot\r\n"
    assert d.messages[0].recipients == ("bob@example.net",)


def test_a_recipient_given_twice_is_accepted_and_kept_once() -> None:
    """Found by smtp15: RCPT TO:<a@b.example> twice (a client putting one address
    in To and Cc) was kept twice in the envelope: it counted twice toward
    limits.max_recipients, the log said rcpts=3 for two addresses, and the
    envelope's DSN parameters named it twice. Both RCPTs are answered 250; the
    envelope has the address once, with the first one's DSN parameters. A local part that differs in case is another mailbox (RFC 5321
    §2.4) and stays; the domain was already made lower case."""
    d = authed()
    out = d.feed(
        b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.net> NOTIFY=NEVER\r\n"
        b"RCPT TO:<bob@EXAMPLE.net>\r\nRCPT TO:<Bob@example.net>\r\n"
        b"RCPT TO:<bob@example.net> NOTIFY=SUCCESS\r\nDATA\r\nSubject: t\r\n\r\nx\r\n.\r\n"
    )
    assert codes(out) == ([str(R.SENDER_OK)] + [str(R.RECIPIENT_OK)] * 4
                          + [str(R.START_DATA), str(R.MESSAGE_ACCEPTED)])
    assert d.messages[0].recipients == ("bob@example.net", "Bob@example.net")
    (start,) = [e for e in d.events if isinstance(e, MessageStart)]
    assert start.dsn.rcpts == (("bob@example.net", RcptParams(("NEVER",), None)),)


def test_rfc5321_quoted_forms_of_a_local_part_are_one_recipient() -> None:
    """RFC 5321 §4.1.2: all quoted forms of a local part are one mailbox, and the
    least-quoted one is sent. "bob"@x and bob@x were two recipients (two copies,
    counted twice toward the limits and the budget); now the second is the
    first again, and the envelope holds each in its least-quoted form (a local
    part that needs its quotes keeps them, with only the backslashes it needs)."""
    d = authed()
    out = d.feed(
        b'MAIL FROM:<"alice"@example.org>\r\nRCPT TO:<"bob"@example.net>\r\n'
        b'RCPT TO:<bob@example.net>\r\nRCPT TO:<"b\\ob"@example.net>\r\n'
        b'RCPT TO:<"a\\ b"@example.net>\r\nRCPT TO:<"a b"@example.net>\r\n'
        b"DATA\r\nSubject: t\r\n\r\nx\r\n.\r\n"
    )
    assert codes(out) == ([str(R.SENDER_OK)] + [str(R.RECIPIENT_OK)] * 5
                          + [str(R.START_DATA), str(R.MESSAGE_ACCEPTED)])
    assert d.messages[0].recipients == ("bob@example.net", '"a b"@example.net')
    assert [e.recipient for e in d.events if isinstance(e, RcptTo)] == [
        "bob@example.net", '"a b"@example.net']
    assert [e.sender for e in d.events if isinstance(e, MailFrom)] == ["alice@example.org"]


def test_rfc2920_pipelined_group_replies_in_order_whole_and_bytewise() -> None:
    group = (
        b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<b@example.net>\r\nRCPT TO:<c@example.net>\r\n"
        b"DATA\r\nbody\r\n.\r\nQUIT\r\n"
    )
    outs = []
    for bytewise in (False, True):
        d = authed()
        outs.append(d.feed(group, bytewise=bytewise))
        assert d.closed
        assert d.messages[0].data == b"body\r\n"
    assert outs[0] == outs[1]


def test_rfc1870_declared_size_over_limit_is_552() -> None:
    d = authed(max_message_size=1000)
    out = d.feed(b"MAIL FROM:<alice@example.org> SIZE=5000\r\n")
    assert codes(out) == [str(R.MESSAGE_TOO_BIG)]


def test_rfc1870_actual_size_over_limit_is_552_after_end() -> None:
    d = authed(max_message_size=1024)
    d.feed(b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n")
    out = d.feed((b"x" * 70 + b"\r\n") * 100 + b".\r\nNOOP\r\n")
    assert codes(out) == [str(R.MESSAGE_TOO_BIG), str(R.NOOP_OK)]
    assert not d.messages


def test_rfc5321_s4_5_3_1_10_too_many_recipients_is_452() -> None:
    d = authed(max_recipients=2)
    out = d.feed(
        b"MAIL FROM:<alice@example.org>\r\n"
        + b"".join(b"RCPT TO:<r%d@example.net>\r\n" % i for i in range(3))
    )
    assert codes(out)[-1] == str(R.TOO_MANY_RECIPIENTS)


def test_rfc6531_non_ascii_address_needs_smtputf8() -> None:
    d = authed()
    assert codes(d.feed("MAIL FROM:<jörg@example.org>\r\n".encode())) == [str(R.UTF8_NOT_DECLARED)]
    assert codes(d.feed("MAIL FROM:<jörg@example.org> SMTPUTF8\r\n".encode())) == [str(R.SENDER_OK)]


def test_unknown_mail_parameter_is_555() -> None:
    d = authed()
    assert codes(d.feed(b"MAIL FROM:<alice@example.org> FOO=bar\r\n")) == [str(R.UNKNOWN_PARAMETER)]


# --- Line handling --------------------------------------------------------------------


def test_bare_lf_command_lines_accepted_like_postfix() -> None:
    d = Driver.new(tls=True)
    out = d.feed(b"EHLO c\nNOOP\n")
    assert codes(out)[-1] == str(R.NOOP_OK)


def test_bare_cr_never_ends_a_command_line() -> None:
    d = Driver.new(tls=True)
    out = d.feed(b"NOOP\rQUIT\r\n")
    assert not d.closed
    assert codes(out) == [str(R.UNKNOWN_COMMAND)] or codes(out)[0].startswith("50")


def test_rfc5321_s4_5_3_1_over_long_command_line_is_500_and_not_executed() -> None:
    d = Driver.new(tls=True)
    out = d.feed(b"NOOP " + b"A" * 5000 + b"QUIT\r\nNOOP\r\n")
    assert codes(out) == [str(R.LINE_TOO_LONG), str(R.NOOP_OK)]
    assert not d.closed
    out = d.feed(b"X" * 100000 + b"\r\nNOOP\r\n")
    assert codes(out) == [str(R.LINE_TOO_LONG), str(R.NOOP_OK)]
    assert d.engine.buffered == 0


def test_nul_in_command_refused() -> None:
    assert codes(Driver.new().feed(b"EHLO a\0b\r\n")) == [str(R.NUL_IN_COMMAND)]


def test_too_many_errors_closes_with_421() -> None:
    d = Driver.new(max_errors=3)
    out = d.feed(b"FOO\r\nBAR\r\nBAZ\r\nNOOP\r\n")
    assert codes(out)[-1] == str(R.TOO_MANY_ERRORS)
    assert d.closed


def test_junk_commands_past_the_limit_count_as_errors() -> None:
    """Postfix's smtpd_junk_command_limit: NOOP, RSET, VRFY, HELP, EHLO and HELO
    are free up to JUNK_COMMANDS; each further one is answered and counts as an
    error."""
    d = Driver.new(tls=True, max_errors=3)
    junk = b"EHLO c\r\n" + b"NOOP\r\nRSET\r\nVRFY x\r\nHELP\r\n" * 24 + b"HELO c\r\n"
    assert junk.count(b"\r\n") == JUNK_COMMANDS - 2
    out = d.feed(junk + b"EHLO c\r\nNOOP\r\n")
    assert str(R.TOO_MANY_ERRORS) not in out.decode()
    out = d.feed(b"NOOP\r\nRSET\r\n")
    assert codes(out) == [str(R.NOOP_OK), str(R.RESET_OK)]
    assert not d.closed
    out = d.feed(b"VRFY x\r\nNOOP\r\n")  # the third error: answered, then 421
    assert codes(out) == [str(R.VRFY_CANNOT), str(R.TOO_MANY_ERRORS)]
    assert d.closed


def test_an_accepted_message_forgives_errors_and_junk_commands() -> None:
    """As Postfix: a session that sends mail starts afresh with each message."""
    d = authed(max_errors=3)
    message = (b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<a..b@example.net>\r\n"
               b"RCPT TO:<bob@example.net>\r\nDATA\r\nFrom: alice@example.org\r\n\r\nhi\r\n.\r\n")
    for _ in range(5):  # two errors each: a bad recipient and the last NOOP
        out = d.feed(message + b"NOOP\r\n" * (JUNK_COMMANDS + 1))
        assert str(R.TOO_MANY_ERRORS) not in out.decode()
    assert len(d.messages) == 5 and not d.closed
    # One error stands (the last NOOP); a refused message forgives nothing.
    d.feed(b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.net>\r\n")
    out = d.feed(b"BDAT 4 LAST\r\nx\ny\n" + b"RCPT TO:<x>\r\n" * 2)
    assert codes(out) == [str(R.BARE_LINE_ENDING), str(R.NEED_MAIL), str(R.NEED_MAIL),
                          str(R.TOO_MANY_ERRORS)]


def test_recipients_past_the_limit_and_the_overshoot_count_as_errors() -> None:
    """Found with a RCPT loop on a server from `smtpgate init`: 400 recipients past
    limits.max_recipients all got 452, and the loop went on for ever. As Postfix's
    smtpd_recipient_overshoot_limit: the first RECIPIENT_OVERSHOOT past the limit
    are a plain 452 (a client pipelining too many sends the rest later), each
    further one counts as an error, and max_errors of them end in 421."""
    d = authed(max_recipients=2, max_errors=3)
    out = d.feed(b"MAIL FROM:<alice@example.org>\r\n" + b"".join(
        b"RCPT TO:<r%d@example.net>\r\n" % i for i in range(2 + RECIPIENT_OVERSHOOT)))
    assert codes(out)[-1] == str(R.TOO_MANY_RECIPIENTS)
    assert not d.closed
    out = d.feed(b"RCPT TO:<x1@example.net>\r\nRCPT TO:<x2@example.net>\r\n")
    assert codes(out) == [str(R.TOO_MANY_RECIPIENTS)] * 2
    assert not d.closed
    out = d.feed(b"RCPT TO:<x3@example.net>\r\nNOOP\r\n")
    assert codes(out) == [str(R.TOO_MANY_RECIPIENTS), str(R.TOO_MANY_ERRORS)]
    assert d.closed


def test_the_overshoot_is_counted_per_transaction() -> None:
    d = authed(max_recipients=1, max_errors=2)
    for _ in range(3):
        out = d.feed(b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.net>\r\n"
                     + b"RCPT TO:<carol@example.net>\r\n" * RECIPIENT_OVERSHOOT
                     + b"DATA\r\nSubject: t\r\n\r\nhi\r\n.\r\n")
        assert codes(out)[-1].startswith("250 "), codes(out)[-3:]
    assert len(d.messages) == 3 and not d.closed


def test_the_same_recipient_over_and_over_counts_as_a_noop() -> None:
    """Found alike: a recipient already given gets 250 without a decision, so the
    same RCPT for ever was never cut off."""
    d = authed(max_errors=3)
    # EHLO was one; JUNK_COMMANDS - 1 again are free, the next two are errors.
    out = d.feed(b"MAIL FROM:<alice@example.org>\r\n"
                 + b"RCPT TO:<bob@example.net>\r\n" * (JUNK_COMMANDS + 2))
    assert codes(out)[1:] == [str(R.RECIPIENT_OK)] * (JUNK_COMMANDS + 2)
    assert not d.closed
    out = d.feed(b"RCPT TO:<bob@example.net>\r\nNOOP\r\n")
    assert codes(out) == [str(R.RECIPIENT_OK), str(R.TOO_MANY_ERRORS)]
    assert d.closed


def test_bdat_0_without_last_counts_as_a_noop() -> None:
    """Found with `BDAT 0` sent 300 times after MAIL and RCPT on a server from
    `smtpgate init`: 300 times 250 Chunk received, never cut off. An empty chunk
    that is not the LAST moves nothing: it counts as a NOOP does (JUNK_COMMANDS
    free, then each an error), and the message in progress goes with the 421."""
    d = authed(max_errors=3)
    d.feed(b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.net>\r\n")
    # EHLO was one; JUNK_COMMANDS - 1 are free, the next two are errors.
    out = d.feed(b"BDAT 3\r\nabc" + b"BDAT 0\r\n" * (JUNK_COMMANDS + 1))
    assert codes(out) == [str(R.CHUNK_RECEIVED)] * (JUNK_COMMANDS + 2)
    assert not d.closed
    out = d.feed(b"BDAT 0\r\nBDAT 0 LAST\r\n")
    assert codes(out) == [str(R.CHUNK_RECEIVED), str(R.TOO_MANY_ERRORS)]
    assert d.closed and not d.messages


def test_many_non_empty_chunks_are_no_junk() -> None:
    """Legitimate chunking (a client sending a message 1 octet a chunk) is not
    touched by the bound on empty chunks."""
    d = authed(max_errors=2)
    body = b"Subject: t\r\n\r\n" + b"x" * (3 * JUNK_COMMANDS) + b"\r\n"
    out = d.feed(b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.net>\r\n"
                 + b"".join(b"BDAT 1\r\n" + body[i:i + 1] for i in range(len(body)))
                 + b"BDAT 0 LAST\r\n")
    assert codes(out)[-1].startswith("250 ") and str(R.TOO_MANY_ERRORS) not in out.decode()
    assert len(d.messages) == 1 and not d.closed


def test_alpaca_http_request_closes() -> None:
    d = Driver.new()
    out = d.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert codes(out) == [str(R.HTTP_REFUSED)]
    assert d.closed


# --- STARTTLS -------------------------------------------------------------------------


def test_rfc3207_commands_pipelined_behind_starttls_are_discarded() -> None:
    d = Driver.new(auth_in_clear=False)
    out = d.feed(b"EHLO c\r\nSTARTTLS\r\nMAIL FROM:<evil@example.org>\r\nQUIT\r\n")
    assert codes(out)[-1] == str(R.STARTTLS_READY)
    starts = [e for e in d.events if isinstance(e, StartTls)]
    assert starts and starts[0].discarded > 0
    d.start_tls()
    assert not d.closed
    assert d.engine.data_to_send() == b""
    # The session starts over: a new EHLO is required.
    assert codes(d.feed(b"AUTH PLAIN\r\n")) == [str(R.NEED_EHLO)]


def test_rfc3207_starttls_before_ehlo_is_accepted_like_gsasl() -> None:
    d = Driver.new()
    out = d.feed(b"STARTTLS\r\n")
    assert codes(out) == [str(R.STARTTLS_READY)]


def test_rfc3207_s4_2_tls_resets_authentication_and_helo() -> None:
    d = Driver.new(auth_in_clear=True)
    d.feed(f"EHLO c\r\nAUTH PLAIN {PLAIN_OK}\r\n".encode())
    assert d.engine.identity
    d.feed(b"STARTTLS\r\n")
    d.start_tls()
    assert d.engine.identity == "" and d.engine.helo == ""


def test_starttls_twice_refused() -> None:
    d = Driver.new(tls=True)
    assert codes(d.feed(b"EHLO c\r\nSTARTTLS\r\n"))[-1] == str(R.TLS_ALREADY_ACTIVE)


# --- State table ----------------------------------------------------------------------


@pytest.mark.parametrize("state", [State.CONNECTED, State.GREETED, State.MAIL, State.RCPT])
def test_illegal_command_in_each_state_is_503_and_keeps_state(state: State) -> None:
    d = authed()
    setup = {
        State.CONNECTED: b"",
        State.GREETED: b"",
        State.MAIL: b"MAIL FROM:<alice@example.org>\r\n",
        State.RCPT: b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<b@example.net>\r\n",
    }[state]
    if state is State.CONNECTED:
        d = Driver.new(tls=True)
    d.feed(setup)
    assert d.engine.state is state
    for verb in ("MAIL", "RCPT", "DATA", "AUTH"):
        if verb in TRANSITIONS[state]:
            continue
        out = d.feed(f"{verb} FROM:<x@example.org>\r\n".encode() if verb == "MAIL" else f"{verb} X\r\n".encode())
        expected = "530 5.7.0" if state is State.CONNECTED and verb != "AUTH" else "503 5.5.1"
        assert codes(out)[0].startswith(expected), (state, verb, out)
        assert d.engine.state is state
        d.engine.errors = 0


def test_rfc5321_s4_1_1_8_help_names_the_commands_not_a_dead_link() -> None:
    """HELP answered "See RFC 5321 and https://smtpgate.invalid/docs", a URL under
    the reserved .invalid name (found with HELP over openssl s_client)."""
    d = Driver.new(tls=True)
    [reply] = codes(d.feed(b"HELP\r\n"))
    assert reply.startswith("214 2.0.0 ") and ".invalid" not in reply
    named = reply.removeprefix("214 2.0.0 Commands: ").split()
    known = {v for table in TRANSITIONS.values() for v in table}
    assert set(named) <= known and {"EHLO", "AUTH", "MAIL", "RCPT", "DATA", "QUIT"} <= set(named)


def _help(d: Driver) -> list[str]:
    [reply] = codes(d.feed(b"HELP\r\n"))
    return reply.removeprefix("214 2.0.0 Commands: ").split()


def _ehlo(d: Driver) -> str:
    return d.feed(b"EHLO client.test\r\n").decode()


def test_rfc5321_s4_1_1_8_help_follows_the_session_as_ehlo_does() -> None:
    """HELP listed STARTTLS inside TLS (where it is 503) and AUTH in clear (where it
    is 530 and EHLO offers none): it names what EHLO would offer now."""
    d = Driver.new()
    assert "STARTTLS" in _help(d) and "AUTH" not in _help(d)
    assert "STARTTLS" in _ehlo(d) and "AUTH" not in _ehlo(d)
    d.feed(b"STARTTLS\r\n")
    d.start_tls()
    assert "STARTTLS" not in _help(d) and "AUTH" in _help(d)
    assert "STARTTLS" not in _ehlo(d) and "AUTH" in _ehlo(d)


def test_help_after_a_login_no_longer_names_auth() -> None:
    """Found with HELP after AUTH PLAIN over openssl s_client on a server from
    `smtpgate init`: it still listed AUTH, which is then 503 (RFC 4954 §4). A new
    TLS session forgets the login (RFC 3207 §4.2), and AUTH is back."""
    d = authed()
    assert "AUTH" not in _help(d)
    assert codes(d.feed(f"AUTH PLAIN {PLAIN_OK}\r\n".encode())) == [str(R.AUTH_ALREADY)]
    assert {"MAIL", "RCPT", "DATA", "BDAT", "QUIT"} <= set(_help(d))
    d = Driver.new()
    d.feed(b"STARTTLS\r\n")
    d.start_tls()
    d.feed(f"EHLO c\r\nAUTH PLAIN {PLAIN_OK}\r\n".encode())
    assert "AUTH" not in _help(d)


def test_help_names_auth_in_clear_only_where_the_listener_allows_it() -> None:
    assert "AUTH" in _help(Driver.new(auth_in_clear=True))
    assert "STARTTLS" not in _help(Driver.new(tls=True))


def test_an_idle_timeout_inside_data_does_not_say_waiting_for_command() -> None:
    """A client that stalled after DATA's 354 was told "Timeout waiting for
    command" (found with data_timeout = 4 and a socket that stopped mid-message);
    no command was due."""
    d = Driver.new(tls=True)
    d.feed(f"EHLO c\r\nAUTH PLAIN {PLAIN_OK}\r\n".encode())
    d.feed(b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\nSubject: x\r\n")
    d.engine.timeout()
    assert codes(d.engine.data_to_send()) == [str(R.DATA_TIMEOUT)]
    idle = Driver.new()
    idle.engine.timeout()
    assert codes(idle.engine.data_to_send()) == [str(R.TIMEOUT)]


def test_a_recipient_given_twice_counts_once_toward_max_recipients() -> None:
    d = authed(max_recipients=2)
    out = d.feed(b"MAIL FROM:<alice@example.org>\r\n" + b"RCPT TO:<bob@example.net>\r\n" * 3
                 + b"RCPT TO:<carol@example.net>\r\n")
    assert codes(out) == [str(R.SENDER_OK)] + [str(R.RECIPIENT_OK)] * 4


@pytest.mark.parametrize("ws", [" ", "\t", " \t", "\t "])
def test_trailing_space_and_tab_are_tolerated_on_every_command(ws: str) -> None:
    """A trailing tab got 501 on RCPT (read as a parameter) and 500 on ``NOOP<TAB>``
    (read as part of the verb) while trailing spaces passed; Postfix 3.7 takes
    both. Trailing SP and HTAB are now dropped from every command line."""
    d = authed()
    t = ws.encode()
    out = d.feed(b"NOOP" + t + b"\r\nRSET" + t + b"\r\nHELP" + t + b"\r\n"
                 b"MAIL FROM:<alice@example.org> SIZE=10" + t + b"\r\n"
                 b"RCPT TO:<bob@example.net>" + t + b"\r\n"
                 b"RCPT TO:<carol@example.net> NOTIFY=NEVER" + t + b"\r\n"
                 b"DATA" + t + b"\r\nSubject: t\r\n\r\nx\r\n.\r\n"
                 b"EHLO client.test" + t + b"\r\nQUIT" + t + b"\r\n")
    assert [c[:3] for c in codes(out)] == [
        "250", "250", "214", "250", "250", "250", "354", "250", "250", "221"]
    assert d.messages[0].recipients == ("bob@example.net", "carol@example.net")


def test_a_parameter_repeated_with_the_same_value_is_taken_once() -> None:
    """Python's smtplib send_message(mail_options=["SMTPUTF8"]) sends SMTPUTF8 twice
    (tests/integration/test_clients.py); it got 501 Duplicate MAIL/RCPT parameter."""
    d = authed()
    out = d.feed("MAIL FROM:<alice@example.org> SMTPUTF8 SMTPUTF8 BODY=8BITMIME "
                 "body=8BITMIME AUTH=<> AUTH=<>\r\nRCPT TO:<jörg@example.net> "
                 "NOTIFY=NEVER NOTIFY=NEVER\r\n".encode())
    assert codes(out) == [str(R.SENDER_OK), str(R.RECIPIENT_OK)]


def test_extensions_after_helo_are_honoured_as_postfix_does() -> None:
    """Decided (docs/smtp.md "Extensions after HELO"): a client that sent HELO and
    uses AUTH, MAIL parameters, DSN parameters or BDAT anyway is served, as Postfix
    3.7 serves it; a submission client cannot send mail without AUTH anyway."""
    d = Driver.new(tls=True)
    out = d.feed(f"HELO client.test\r\nAUTH PLAIN {PLAIN_OK}\r\n"
                 "MAIL FROM:<alice@example.org> SIZE=10 BODY=8BITMIME SMTPUTF8 RET=HDRS\r\n"
                 "RCPT TO:<bob@example.net> NOTIFY=NEVER\r\nBDAT 4 LAST\r\nab\r\n".encode())
    assert [c[:3] for c in codes(out)] == ["250", "235", "250", "250", "250"]
    assert len(d.messages) == 1


def test_a_recipient_repeated_once_the_limit_is_reached_is_not_452() -> None:
    """Found by audit h24: with limits.max_recipients already reached, a RCPT of an
    address already in the envelope (To and Cc alike) got 452 Too many recipients;
    the client sends a 452'd recipient again in a transaction of its own, so that
    recipient got the message twice. It is 250 and kept once, as below the limit;
    a new address is still 452."""
    d = authed(max_recipients=2)
    out = d.feed(b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.net>\r\n"
                 b"RCPT TO:<carol@example.net>\r\nRCPT TO:<bob@EXAMPLE.net>\r\n"
                 b"RCPT TO:<dave@example.net>\r\nDATA\r\nSubject: t\r\n\r\nx\r\n.\r\n")
    assert codes(out) == ([str(R.SENDER_OK)] + [str(R.RECIPIENT_OK)] * 3
                          + [str(R.TOO_MANY_RECIPIENTS), str(R.START_DATA),
                             str(R.MESSAGE_ACCEPTED)])
    assert d.messages[0].recipients == ("bob@example.net", "carol@example.net")



def test_a_repeated_recipient_is_not_put_to_the_decision_again() -> None:
    """Found by audit h24: each RCPT of an address already in the envelope was a
    RcptTo decision, and the account's recipient budget (policy/submission.py)
    counted it again: with one recipient left this hour, To: bob and Cc: bob made
    the second RCPT 450 4.7.1. It is answered 250 at once, as the duplicate it is."""
    d = authed()
    out = d.feed(b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.net>\r\n"
                 b"RCPT TO:<bob@example.net> NOTIFY=NEVER\r\nRCPT TO:<carol@example.net>\r\n")
    assert codes(out) == [str(R.SENDER_OK)] + [str(R.RECIPIENT_OK)] * 3
    asked = [e.recipient for e in d.events if isinstance(e, RcptTo)]
    assert asked == ["bob@example.net", "carol@example.net"]
