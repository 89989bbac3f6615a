"""Postfix policy delegation protocol (SMTPD_POLICY_README), sans-IO."""

from __future__ import annotations

import pytest

from smtpgate.frontdoor.policy import (
    MAX_ATTRIBUTES,
    MAX_LINE,
    MAX_REQUEST,
    PolicyParser,
    action_for,
    format_action,
)
from smtpgate.smtp import replies as R

REQUEST = (
    b"request=smtpd_access_policy\n"
    b"protocol_state=RCPT\n"
    b"protocol_name=ESMTP\n"
    b"client_address=192.0.2.9\n"
    b"sasl_method=PLAIN\n"
    b"sasl_username=alice@example.org\n"
    b"sender=alice@example.org\n"
    b"recipient=bob@example.net\n"
    b"recipient_count=0\n"
    b"instance=123.456.7.0\n"
    b"size=0\n"
    b"future_attribute=kept\n"
    b"\n"
)


@pytest.mark.parametrize("bytewise", [False, True])
def test_several_requests_per_connection(bytewise: bool) -> None:
    p = PolicyParser()
    data = REQUEST + REQUEST.replace(b"RCPT", b"END-OF-MESSAGE").replace(b"count=0", b"count=3")
    chunks = [data[i : i + 1] for i in range(len(data))] if bytewise else [data]
    got = [r for c in chunks for r in p.receive_data(c)]
    assert [r.protocol_state for r in got] == ["RCPT", "END-OF-MESSAGE"]
    assert got[0].get("sasl_username") == "alice@example.org"
    assert got[0].get("future_attribute") == "kept"
    assert got[1].recipient_count == 3


@pytest.mark.parametrize("data", [
    b"request=smtpd_access_policy\nno equals sign\n\n",
    b"=value\n\n",
    b"request=smtpd_access_policy\nsen\x01der=ab\n\n",  # a name Postfix never sends
    b"request=smtpd_access_policy\nsender=\xff\n\n",
    b"request=smtpd_access_policy\nsender=a\nsender=b\n\n",
    b"request=something_else\n\n",
    b"protocol_state=RCPT\n\n",  # no request= at all
    b"\n",
])
def test_malformed_requests_are_protocol_errors(data: bytes) -> None:
    p = PolicyParser()
    assert p.receive_data(data) == []
    assert p.error
    assert p.receive_data(REQUEST) == []  # nothing more is read


def test_control_characters_in_a_value_are_part_of_it() -> None:
    """Postfix 3.7 passes ``MAIL FROM:<"a\\<0x01>b"@x>`` (a quoted-pair) with the
    control character raw in ``sender``. Refused as a protocol error, the client got
    ``451 4.3.5 Server configuration problem`` and Postfix's log a fault of the
    policy server, for a sender nobody owns. Only LF ends a value."""
    p = PolicyParser()
    odd = '"a\\\x01b\tc\x7f\x9b"@x.test'
    got = p.receive_data(b"request=smtpd_access_policy\nsender=" + odd.encode() + b"\n\n" + REQUEST)
    assert p.error is None
    assert [r.get("sender") for r in got] == [odd, "alice@example.org"]


def test_oversize_line_refused_before_its_newline() -> None:
    p = PolicyParser()
    p.receive_data(b"sender=" + b"a" * MAX_LINE)
    assert p.error == f"line over {MAX_LINE} bytes"


def test_requests_before_an_error_are_returned() -> None:
    p = PolicyParser()
    got = p.receive_data(REQUEST + b"garbage\n\n")
    assert len(got) == 1 and p.error


def test_too_many_attributes_and_oversize_request() -> None:
    many = b"request=smtpd_access_policy\n" + b"".join(
        b"a%d=x\n" % i for i in range(MAX_ATTRIBUTES + 1))
    p = PolicyParser()
    p.receive_data(many)
    assert p.error == f"more than {MAX_ATTRIBUTES} attributes"
    big = b"".join(b"a%d=%s\n" % (i, b"x" * 2000) for i in range(MAX_REQUEST // 2000 + 2))
    p = PolicyParser()
    p.receive_data(big)
    assert p.error == f"request over {MAX_REQUEST} bytes"


def test_actions() -> None:
    assert action_for(R.MESSAGE_RATE_EXCEEDED) == (
        "DEFER_IF_PERMIT 4.7.1 Message rate limit reached for this account, try again later")
    assert action_for(R.SENDER_NOT_OWNED).startswith("REJECT 5.7.1 ")
    assert format_action("DUNNO") == b"action=DUNNO\n\n"
    with pytest.raises(ValueError):
        format_action("DUNNO\n\naction=OK")
