"""RFC 3461 DSN parameters in the server engine: advertised, parsed, kept with the
transaction, and malformed ones refused with 501 (never a traceback)."""

from __future__ import annotations

import pytest

from smtpgate.smtp import replies as R
from smtpgate.smtp.dsn_params import RcptParams, TransactionDsn
from smtpgate.smtp.events import MessageStart

from .test_smtp_engine import authed, codes


def start_of(d: object) -> MessageStart:
    (start,) = [e for e in d.events if isinstance(e, MessageStart)]  # type: ignore[attr-defined]
    return start


def test_rfc3461_s4_dsn_is_advertised() -> None:
    d = authed()
    assert "250-DSN" in d.feed(b"EHLO again.test\r\n").decode()


@pytest.mark.parametrize("bytewise", [False, True])
def test_rfc3461_parameters_reach_the_transaction(bytewise: bool) -> None:
    d = authed()
    out = d.feed(
        b"MAIL FROM:<alice@example.org> RET=HDRS ENVID=QQ+2B314159\r\n"
        b"RCPT TO:<bob@example.net> NOTIFY=FAILURE,delay ORCPT=rfc822;Bob+40example.net\r\n"
        b"RCPT TO:<carol@example.net>\r\n"
        b"RCPT TO:<dave@example.net> NOTIFY=NEVER\r\n"
        b"DATA\r\n", bytewise=bytewise)
    assert codes(out) == [str(R.SENDER_OK)] + [str(R.RECIPIENT_OK)] * 3 + [str(R.START_DATA)]
    assert start_of(d).dsn == TransactionDsn(
        ret="HDRS", envid="QQ+314159",
        rcpts=(("bob@example.net", RcptParams(("FAILURE", "DELAY"), "rfc822;Bob@example.net")),
               ("dave@example.net", RcptParams(("NEVER",), None))),
    )


def test_rfc3461_s4_4_envid_is_100_characters_decoded_not_on_the_wire() -> None:
    """Postfix (sendmail -V) takes an ENVID of up to 100 characters and relays it as
    xtext, each space three characters (+20): 99 with 33 spaces are 165 on the
    wire. Until the h29mta review that was 501 and Postfix bounced the message."""
    envid = ("ab " * 33)[:99]
    wire = envid.replace(" ", "+20").encode()
    d = authed()
    assert codes(d.feed(b"MAIL FROM:<a@example.org> ENVID=" + wire + b"\r\n")) == [
        str(R.SENDER_OK)]
    d.feed(b"RCPT TO:<b@example.net>\r\nDATA\r\n")
    assert start_of(d).dsn == TransactionDsn(envid=envid)
    # 101 decoded characters are still too many, however they are written.
    d = authed()
    assert codes(d.feed(b"MAIL FROM:<a@example.org> ENVID=" + b"+20" * 50 + b"a" * 51 + b"\r\n")) == [
        str(R.BAD_DSN_PARAMETER)]


def test_rset_forgets_the_parameters() -> None:
    d = authed()
    d.feed(b"MAIL FROM:<a@example.org> RET=FULL\r\nRCPT TO:<b@example.net> NOTIFY=SUCCESS\r\n"
           b"RSET\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n")
    assert start_of(d).dsn == TransactionDsn()


@pytest.mark.parametrize("command", [
    b"MAIL FROM:<a@example.org> RET=BODY\r\n",
    b"MAIL FROM:<a@example.org> RET\r\n",
    b"MAIL FROM:<a@example.org> ENVID=" + b"x" * 101 + b"\r\n",
    b"MAIL FROM:<a@example.org> ENVID=a+0D+0AX-Injected:+20yes\r\n",  # encoded CR LF
    # RFC 3461 §4.4: printable US-ASCII. Found by smtp15: +C3+A4 was kept as two
    # Latin-1 characters and relayed as ENVID=a+C3+83+C2+A4; +9B is a C1 CSI.
    b"MAIL FROM:<a@example.org> ENVID=a+C3+A4\r\n",
    b"MAIL FROM:<a@example.org> ENVID=a+9B2J\r\n",
])
def test_malformed_mail_parameters_get_501(command: bytes) -> None:
    d = authed()
    assert codes(d.feed(command)) == [str(R.BAD_DSN_PARAMETER)]


@pytest.mark.parametrize("param", [
    b"NOTIFY=NEVER,FAILURE",  # RFC 3461 §4.1: NEVER stands alone
    b"NOTIFY=SOMETIMES",
    b"NOTIFY=FAILURE,FAILURE",
    b"NOTIFY",
    b"ORCPT=bob@example.net",  # no addr-type
    b"ORCPT=rfc822;b+0Ab",  # an encoded LF
    # RFC 3461 §4.2: printable US-ASCII (UTF-8 has RFC 6533's utf-8 type); it was
    # kept as j\xc3\xb6rg, relayed as j+C3+83+C2+B6rg and reported as j??rg.
    b"ORCPT=rfc822;j+C3+B6rg@example.net",
])
def test_malformed_rcpt_parameters_get_501(param: bytes) -> None:
    d = authed()
    d.feed(b"MAIL FROM:<a@example.org>\r\n")
    assert codes(d.feed(b"RCPT TO:<b@example.net> " + param + b"\r\n")) == [
        str(R.BAD_DSN_PARAMETER)]


def test_other_rcpt_parameters_are_still_unknown() -> None:
    d = authed()
    d.feed(b"MAIL FROM:<a@example.org>\r\n")
    assert codes(d.feed(b"RCPT TO:<b@example.net> FOO=1\r\n")) == [str(R.UNKNOWN_PARAMETER)]


def test_rfc6533_utf8_orcpt_in_an_smtputf8_transaction_is_kept_decoded() -> None:
    d = authed()
    out = d.feed(
        "MAIL FROM:<alice@example.org> SMTPUTF8\r\n"
        "RCPT TO:<用户@例子.广告> ORCPT=utf-8;用户@例子.广告\r\n"
        "RCPT TO:<bob@example.net> ORCPT=UTF-8;b\\x{2B}1@\\x{4F8B}.example\r\n"
        "DATA\r\n".encode())
    assert codes(out) == [str(R.SENDER_OK)] + [str(R.RECIPIENT_OK)] * 2 + [str(R.START_DATA)]
    assert start_of(d).dsn.rcpts == (
        ("用户@例子.广告", RcptParams(None, "utf-8;用户@例子.广告")),
        ("bob@example.net", RcptParams(None, "utf-8;b+1@例.example")),
    )


@pytest.mark.parametrize("param", [
    "ORCPT=utf-8;用户@example.org".encode(),  # UTF-8 as it is needs SMTPUTF8
    b"ORCPT=utf-8;a+b@example.org",  # "+" must be \x{2B} in this type
    b"ORCPT=utf-8;a\\x{0D}\\x{0A}X-Injected:\\x{20}yes@example.org",  # an escaped CR LF
    b"ORCPT=utf-8;a\\x{D800}@example.org",  # a surrogate is no character
    b"ORCPT=utf-8;a\\b@example.org",  # a backslash that escapes nothing
    # Audit h24: what RCPT TO refuses in a UTF-8 address (audit h19), escaped or
    # not: a line separator, a bidi override, the BOM, a C1 control.
    b"ORCPT=utf-8;a\\x{2028}b@example.org",
    b"ORCPT=utf-8;a\\x{202E}b@example.org",
    b"ORCPT=utf-8;a\\x{FEFF}b@example.org",
    b"ORCPT=utf-8;a\\x{85}b@example.org",
])
def test_rfc6533_malformed_utf8_orcpt_gets_501(param: bytes) -> None:
    d = authed()
    d.feed(b"MAIL FROM:<a@example.org>\r\n")
    assert codes(d.feed(b"RCPT TO:<b@example.net> " + param + b"\r\n")) == [
        str(R.BAD_DSN_PARAMETER)]


def test_a_utf8_orcpt_is_held_to_the_rule_of_utf8_addresses_as_unitext_too() -> None:
    """Audit h24: in an SMTPUTF8 transaction a bidi override written as it is in
    a utf-8 ORCPT was kept, and went into an internationalized report's
    Original-Recipient field, while RCPT TO refuses it in the address (h19)."""
    d = authed()
    d.feed(b"MAIL FROM:<a@example.org> SMTPUTF8\r\n")
    out = d.feed("RCPT TO:<b@example.net> ORCPT=utf-8;a\u202eb@example.org\r\n"
                 "RCPT TO:<c@example.net> ORCPT=utf-8;jörg@example.org\r\n".encode())
    assert codes(out) == [str(R.BAD_DSN_PARAMETER), str(R.RECIPIENT_OK)]
