"""Keywords match without case in ASCII only: ``str.upper`` turns "ı" into "I" and
"ſ" into "S", so without the check ``AUTH PLAıN`` was PLAIN, ``BDAT 5 LAſT`` the
last chunk and ``RET=HDRſ`` HDRS (smtp/ascii_case.py)."""

from __future__ import annotations

import pytest

from smtpgate.frontdoor.dovecot import RequestRefused
from smtpgate.smtp import replies as R
from smtpgate.smtp.bdat import BdatSyntaxError, parse_bdat
from smtpgate.smtp.events import AuthQuery

from .engine_driver import Driver
from .test_frontdoor_dovecot import HELLO_POSTFIX, engine, feed, lines
from .test_smtp_engine import PLAIN_OK, authed, codes


def test_a_mechanism_name_with_a_dotless_i_is_not_plain() -> None:
    d = Driver.new(tls=True)
    out = d.feed(f"EHLO client.test\r\nAUTH PLA\u0131N {PLAIN_OK}\r\n".encode())
    assert codes(out)[-1] == str(R.AUTH_UNKNOWN_MECHANISM)
    assert not any(isinstance(e, AuthQuery) for e in d.events)
    # The ASCII spelling in any case still works.
    out = d.feed(f"AUTH pLaIn {PLAIN_OK}\r\n".encode())
    assert codes(out)[-1].startswith("235 2.7.0")


def test_a_body_value_with_a_dotless_i_is_refused() -> None:
    d = authed()
    out = d.feed(b"MAIL FROM:<alice@example.org> BODY=8B\xc4\xb1TMIME\r\n")
    assert codes(out) == [str(R.BAD_BODY_PARAMETER)]
    assert codes(d.feed(b"MAIL FROM:<alice@example.org> BODY=8bitmime\r\n"))[0].startswith("250")


@pytest.mark.parametrize("mail, rcpt", [
    (b"RET=HDR\xc5\xbf", b""),
    (b"", b"NOTIFY=\xc5\xbfUCCESS"),
])
def test_dsn_values_with_a_long_s_are_refused(mail: bytes, rcpt: bytes) -> None:
    d = authed()
    out = d.feed(b"MAIL FROM:<alice@example.org> " + mail + b"\r\n")
    if mail:
        assert codes(out) == [str(R.BAD_DSN_PARAMETER)]
        return
    out = d.feed(b"RCPT TO:<bob@example.net> " + rcpt + b"\r\n")
    assert codes(out) == [str(R.BAD_DSN_PARAMETER)]


def test_bdat_last_with_a_long_s_is_a_syntax_error() -> None:
    with pytest.raises(BdatSyntaxError):
        parse_bdat("5 LA\u017fT")
    assert parse_bdat("5 last") == (5, True)


@pytest.mark.parametrize("name, refused", [("PLA\u0131N", True), ("plain", False)])
def test_the_dovecot_door_takes_no_dotless_i_for_plain(name: str, refused: bool) -> None:
    _, events = feed(engine(), (HELLO_POSTFIX + lines(
        f"AUTH<TAB>1<TAB>{name}<TAB>service=smtp<TAB>secured<TAB>rip=127.0.0.1")).encode())
    reasons = [e.reason for e in events if isinstance(e, RequestRefused)]
    assert reasons == (["Unsupported authentication mechanism"] if refused else [])
