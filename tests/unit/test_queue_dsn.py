"""RFC 3464 reports built by queue/dsn.py, and RFC 3461 parameters kept in the envelope."""

from __future__ import annotations

import email
import email.message
import email.policy
from collections.abc import Callable
from pathlib import Path

import pytest

from smtpgate.config import QueueConfig
from smtpgate.queue import dsn
from smtpgate.queue.delivery import (
    Delivered,
    DeliveryResult,
    PermFailure,
    QueuedMessage,
    TempFailure,
)
from smtpgate.queue.envelope import Envelope, EnvelopeFormatError, RcptDsn
from smtpgate.queue.spool import Spool, SpoolError
from smtpgate.queue.state import Outcome, RcptStatus
from smtpgate.queue.worker import DeliveryWorker

ORIGINAL = b"From: alice@example.org\r\nSubject: plans\r\n\r\nsecret body\r\n"


def env(**kw: object) -> Envelope:
    base = Envelope("alice@example.org", ("bob@example.net", "carol@example.net"), "alice",
                    "192.0.2.7", "laptop", "submission", received_at=1_700_000_000.0)
    return Envelope(**{**{f: getattr(base, f) for f in base.__slots__}, **kw})  # type: ignore[arg-type]


def build(envelope: Envelope, outcomes: list[Outcome], action: str = "failed") -> bytes | None:
    built = dsn.build_report(envelope=envelope, queue_id="q1", data=ORIGINAL,
                             reports=dsn.reports_for(envelope, outcomes, action),
                             reporting_mta="mx.example.org", now=1_700_000_100.0)
    return None if built is None else built[1]


def parts(data: bytes) -> list[email.message.Message]:
    msg = email.message_from_bytes(data)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    payload = msg.get_payload()
    assert isinstance(payload, list)
    return payload


def test_rfc3464_bounce_names_recipient_reply_and_code() -> None:
    data = build(env(), [Outcome("bob@example.net", "bounced",
                                 "RCPT TO: 550 5.1.1 <bob@example.net>: no such user")])
    assert data is not None
    text, status, original = parts(data)
    assert text.get_content_type() == "text/plain"
    assert status.get_content_type() == "message/delivery-status"
    per_message, per_rcpt = status.get_payload()
    assert per_message["Reporting-MTA"] == "dns; mx.example.org"
    assert per_rcpt["Final-Recipient"] == "rfc822; bob@example.net"
    assert per_rcpt["Action"] == "failed"
    assert per_rcpt["Status"] == "5.1.1"
    assert per_rcpt["Diagnostic-Code"] == "smtp; 550 5.1.1 <bob@example.net>: no such user"
    assert original.get_content_type() == "message/rfc822"
    assert b"secret body" in data


def test_rfc3461_s6_2_report_has_null_sender_and_goes_to_the_sender() -> None:
    built = dsn.build_report(envelope=env(), queue_id="q1", data=ORIGINAL,
                             reports=[dsn.Report("bob@example.net", "failed", "550 no")],
                             reporting_mta="mx", now=0.0)
    assert built is not None
    report_env, _ = built
    assert report_env.mail_from == "" and report_env.rcpt_to == ("alice@example.org",)


def test_no_report_to_the_null_sender() -> None:
    assert build(env(mail_from=""), [Outcome("bob@example.net", "bounced", "550 no")]) is None


def test_rfc3461_s4_1_notify_never_and_notify_lists() -> None:
    never = env(dsn_rcpts=(RcptDsn("bob@example.net", ("NEVER",)),))
    assert build(never, [Outcome("bob@example.net", "bounced", "550 no")]) is None
    success_only = env(dsn_rcpts=(RcptDsn("bob@example.net", ("SUCCESS",)),))
    assert build(success_only, [Outcome("bob@example.net", "deferred", "451 later")],
                 "delayed") is None
    # Without NOTIFY: failures and delays are reported.
    assert build(env(), [Outcome("bob@example.net", "deferred", "451 later")], "delayed")


def test_rfc3461_ret_hdrs_returns_headers_only_and_envid_orcpt_are_reported() -> None:
    e = env(dsn_ret="HDRS", dsn_envid="QQ314159",
            dsn_rcpts=(RcptDsn("bob@example.net", ("FAILURE",), "rfc822;Bob@Example.net"),))
    data = build(e, [Outcome("bob@example.net", "expired",
                             "gave up after 9 attempts: 451 4.4.1 no answer")])
    assert data is not None
    _, status, original = parts(data)
    per_message, per_rcpt = status.get_payload()
    assert per_message["Original-Envelope-Id"] == "QQ314159"
    # RFC 3464 §2.2: the per-message fields in its order, extension fields last
    # (until 2026-12 Reporting-MTA came first and the queue id before Arrival-Date).
    assert list(per_message.keys()) == ["Original-Envelope-Id", "Reporting-MTA",
                                        "Arrival-Date", "X-Smtpgate-Queue-ID"]
    assert per_rcpt["Original-Recipient"] == "rfc822;Bob@Example.net"
    assert per_rcpt["Status"] == "5.4.7"  # RFC 3463: delivery time expired
    assert original.get_content_type() == "text/rfc822-headers"
    assert b"secret body" not in data


def test_remote_text_cannot_inject_header_lines_into_the_report() -> None:
    data = build(env(), [Outcome("bob@example.net", "bounced",
                                 "550 5.1.1 no\r\nX-Injected: yes")])
    assert data is not None
    _, status, _ = parts(data)
    assert status.get_payload()[1]["X-Injected"] is None


@pytest.mark.parametrize("diagnostic, action, expected", [
    ("550 5.7.1 refused", "failed", "5.7.1"),
    ("550 refused", "failed", "5.0.0"),
    ("451 4.2.2 mailbox full", "delayed", "4.2.2"),
    ("connection refused", "delayed", "4.0.0"),
])
def test_status_code_comes_from_the_reply_when_its_class_fits(
    diagnostic: str, action: str, expected: str
) -> None:
    assert dsn.status_code(action, diagnostic) == expected


@pytest.mark.parametrize("diagnostic, action, status, code", [
    # A relay given by its IPv4 address: its numbers are no enhanced status code.
    # The expired connection failure read "5.1.1" (bad mailbox), the success "2.4.5".
    ("gave up after 3 attempts: 4.4.1 relay 192.5.1.1:25: cannot connect: Connection refused",
     "failed", "5.4.7",
     ("x-smtpgate; gave up after 3 attempts: 4.4.1 relay 192.5.1.1:25: cannot connect: "
      "Connection refused")),
    ("relay 10.2.4.5: 250 2.0.0 queued", "relayed", "2.0.0", "smtp; 250 2.0.0 queued"),
    # smtpgate's own number ("250 s") is no SMTP reply: it was "smtp; 250 s waiting ...".
    ("4.4.2 relay mx.example.net:25: timed out after 250 s waiting for the reply to DATA",
     "delayed", "4.4.2",
     ("x-smtpgate; 4.4.2 relay mx.example.net:25: timed out after 250 s waiting for the "
      "reply to DATA")),
    ("gave up after 2 attempts: relay refused recipient: 450 4.2.0 busy", "failed", "5.4.7",
     "smtp; 450 4.2.0 busy"),
    ("relay refused recipient: 550 5.1.1 no such user.", "failed", "5.1.1",
     "smtp; 550 5.1.1 no such user."),
])
def test_rfc3464_status_and_diagnostic_come_from_the_reply_only(
    diagnostic: str, action: str, status: str, code: str
) -> None:
    assert dsn.status_code(action, diagnostic) == status
    assert dsn.diagnostic_code(diagnostic) == code


def test_envelope_keeps_dsn_parameters_and_reads_older_envelopes() -> None:
    e = env(dsn_ret="FULL", dsn_envid="id+2B1",
            dsn_rcpts=(RcptDsn("bob@example.net", ("SUCCESS", "FAILURE"), "rfc822;b@x"),))
    assert Envelope.from_json(e.to_json()) == e
    plain = env()
    assert b"dsn" not in plain.to_json()  # unchanged format without DSN parameters
    assert Envelope.from_json(plain.to_json()) == plain
    bad = plain.to_json().replace(b"}", b',"dsn":[["a",7,null]]}')
    with pytest.raises(EnvelopeFormatError):
        Envelope.from_json(bad)


async def test_rfc3461_notify_success_gets_a_success_report(tmp_path: Path) -> None:
    from smtpgate.config import QueueConfig
    from smtpgate.queue.delivery import Delivered
    from smtpgate.queue.spool import Spool
    from smtpgate.queue.worker import DeliveryWorker

    class Hop:
        def __init__(self) -> None:
            self.seen: list[QueuedMessage] = []

        async def deliver(self, message: QueuedMessage,
                          recipients: tuple[str, ...]) -> dict[str, DeliveryResult]:
            self.seen.append(message)
            return dict.fromkeys(recipients, Delivered("relay hop: 250 ok", "relayed"))

        async def close(self) -> None:
            pass

    spool = Spool(tmp_path / "spool", prefill=False)
    hop = Hop()
    try:
        asked = env(rcpt_to=("bob@example.net",),
                    dsn_rcpts=(RcptDsn("bob@example.net", ("SUCCESS",)),))
        spool.store_sync(asked, ORIGINAL)
        spool.store_sync(env(rcpt_to=("carol@example.net",)), ORIGINAL)  # no NOTIFY
        worker = DeliveryWorker(spool, hop, QueueConfig(), lambda: 1_700_000_100.0,
                                reporting_mta="mx.example.org")
        await worker.run_once()
        # The report took the same path: the hop got it, from the null sender.
        (report,) = [m for m in hop.seen if m.envelope.mail_from == ""]
        assert report.envelope.rcpt_to == ("alice@example.org",)
        _, status, original = parts(report.data)
        assert status.get_payload()[1]["Action"] == "relayed"
        assert status.get_payload()[1]["Status"] == "2.0.0"
        assert original.get_content_type() == "text/rfc822-headers"  # success: header only
        assert b"carol" not in report.data and len(hop.seen) == 3
        assert spool.list_ids() == []
    finally:
        await spool.close()


def test_rfc3030_a_binary_original_comes_back_as_its_header_only() -> None:
    data = build(env(body_8bit=True, body_binary=True),
                 [Outcome("bob@example.net", "bounced", "5.6.3 message is binary")])
    assert data is not None
    _, _, original = parts(data)
    assert original.get_content_type() == "text/rfc822-headers"
    assert b"secret body" not in data



@pytest.mark.parametrize("reply", [
    "5.3.4 message size 2184 exceeds relay limit 200",
    "5.6.3 relay does not accept 8-bit data (8BITMIME)",
    "relay refused message: 552 5.3.4 message too big",
])
def test_a_report_about_content_the_relay_refused_carries_the_header_only(reply: str) -> None:
    # Found by a relay advertising SIZE 200 (or no 8BITMIME): the bounce returned
    # the whole original, so it was as big (as 8-bit) as the message the relay had
    # refused, met the same refusal and was dropped: the sender was never told.
    data = ORIGINAL.replace(b"secret body", "caf\u00e9 body".encode()) + b"x" * 5000
    built = dsn.build_report(envelope=env(body_8bit=True), queue_id="q1", data=data,
                             reports=[dsn.Report("bob@example.net", "failed", reply)],
                             reporting_mta="mx.example.org", now=1_700_000_100.0)
    assert built is not None
    report_env, report = built
    _, _, original = parts(report)
    assert original.get_content_type() == "text/rfc822-headers"
    assert b"body" not in report and len(report) < 2000
    assert report_env.body_8bit is False and b"Content-Transfer-Encoding: 8bit" not in report


def _failed_report(data: bytes, envelope: Envelope, reply: str) -> tuple[Envelope, bytes]:
    """The report (its envelope, its bytes) of ``data`` failed for bob@example.net
    with ``reply``."""
    built = dsn.build_report(envelope=envelope, queue_id="q1", data=data,
                             reports=[dsn.Report("bob@example.net", "failed", reply)],
                             reporting_mta="mx.example.org", now=1_700_000_100.0)
    assert built is not None
    return built


def test_a_content_refused_report_of_a_raw_8bit_header_is_7bit() -> None:
    # A relay without 8BITMIME refused the message (5.6.3); its header held raw UTF-8
    # (no SMTPUTF8). Its header copied as it was made the report 8-bit: refused too.
    data = ORIGINAL.replace(b"Subject: ", "Subject: caf\u00e9 ".encode())
    assert not data.split(b"\r\n\r\n")[0].isascii()
    report_env, report = _failed_report(data, env(body_8bit=True),
                                        "5.6.3 relay does not accept 8-bit data (8BITMIME)")
    assert report.isascii() and report_env.body_8bit is False
    assert b"Subject: caf?? " in report


def test_a_report_is_marked_8bit_when_it_carries_8bit_data() -> None:
    # 8-bit data declared with BODY=8BITMIME, returned whole: the report must not
    # claim 7bit.
    data = ORIGINAL.replace(b"secret body", "caf\u00e9".encode())
    built = dsn.build_report(envelope=env(body_8bit=True), queue_id="q1", data=data,
                             reports=[dsn.Report("bob@example.net", "failed", "550 5.1.1 no")],
                             reporting_mta="mx.example.org", now=1_700_000_100.0)
    assert built is not None
    assert built[0].body_8bit is True
    assert b"Content-Transfer-Encoding: 8bit" in built[1]
    assert "caf\u00e9".encode() in built[1]


@pytest.mark.parametrize("ret", [None, "HDRS"])
def test_a_report_of_undeclared_8bit_data_is_7bit_with_the_header_only(ret: str | None) -> None:
    # Found with a relay without 8BITMIME: 8-bit data sent without BODY=8BITMIME went
    # there as it came and a recipient was refused (550 5.1.1); the bounce returned
    # the message whole, was marked 8-bit, and our own relay client refused it
    # (5.6.3, no 8BITMIME there): dropped (null sender), the sender never knew.
    data = (ORIGINAL.replace(b"secret body", "caf\u00e9 body".encode())
            .replace(b"Subject: ", "Subject: caf\u00e9 ".encode()))
    report_env, report = _failed_report(data, env(dsn_ret=ret),
                                        "relay mx:25 refused recipient: 550 5.1.1 no")
    assert report.isascii() and report_env.body_8bit is False
    assert b"Content-Transfer-Encoding: 8bit" not in report
    _, _, original = parts(report)
    assert original.get_content_type() == "text/rfc822-headers"
    assert b"Subject: caf?? plans" in report and b"body" not in report


def _global_parts(data: bytes) -> tuple[email.message.Message, list[email.message.Message]]:
    msg = email.message_from_string(data.decode("utf-8"), policy=email.policy.SMTPUTF8)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "global-delivery-status"
    payload = msg.get_payload()
    assert isinstance(payload, list)
    return msg, payload


def test_rfc6533_an_internationalized_message_gets_a_global_report() -> None:
    e = env(mail_from="アリス@例子.广告", rcpt_to=("用户@例子.广告",), smtputf8=True,
            dsn_rcpts=(RcptDsn("用户@例子.广告", ("FAILURE",), "utf-8;用户+1@例子.广告"),))
    data = build(e, [Outcome("用户@例子.广告", "bounced", "550 5.1.1 no such user")])
    assert data is not None
    msg, (text, status, original) = _global_parts(data)
    assert "To: <アリス@例子.广告>\r\n".encode() in data  # RFC 6532: UTF-8, not "?"
    assert msg["To"].addresses[0].addr_spec == "アリス@例子.广告"
    assert text.get_content_charset() == "utf-8"
    assert "\r\n<用户@例子.广告>: 550 5.1.1 no such user\r\n".encode() in data
    assert status.get_content_type() == "message/global-delivery-status"
    fields = data.decode("utf-8")
    assert "Final-Recipient: utf-8; 用户@例子.广告\r\n" in fields
    assert "Original-Recipient: utf-8;用户\\x{2B}1@例子.广告\r\n" in fields
    assert original.get_content_type() == "message/global"
    assert b"secret body" in data



def test_rfc6533_a_report_for_a_hop_without_smtputf8_is_not_itself_smtputf8() -> None:
    # Found with a relay that does not advertise SMTPUTF8: the 5.6.7 bounce was an
    # SMTPUTF8 report, refused by that relay for the same reason and dropped, so an
    # ASCII sender never heard of it. Now it is a plain (downgraded) report.
    e = env(rcpt_to=("用户@例子.广告",), smtputf8=True)
    built = dsn.build_report(
        envelope=e, queue_id="q1", data=ORIGINAL,
        reports=dsn.reports_for(e, [Outcome("用户@例子.广告", "bounced",
                                            "5.6.7 relay does not support SMTPUTF8")],
                                "failed"),
        reporting_mta="mx.example.org", now=1_700_000_100.0)
    assert built is not None
    report_env, data = built
    assert report_env.smtputf8 is False and report_env.body_8bit is False
    _, status, original = parts(data)
    assert status.get_payload()[1]["Final-Recipient"].startswith("utf-8; \\x{7528}")
    assert original.get_content_type() == "text/rfc822-headers"
    assert b"secret body" not in data
    # A UTF-8 sender can only be reached with SMTPUTF8: the global report stays.
    e = env(mail_from="アリス@例子.广告", smtputf8=True)
    built = dsn.build_report(
        envelope=e, queue_id="q1", data=ORIGINAL,
        reports=[dsn.Report("bob@example.net", "failed", "5.6.7 no SMTPUTF8")],
        reporting_mta="mx.example.org", now=1_700_000_100.0)
    assert built is not None and built[0].smtputf8 is True


def test_rfc6533_a_report_for_a_hop_without_8bitmime_is_plain_7bit() -> None:
    # Found with a relay that offers neither 8BITMIME nor SMTPUTF8: an SMTPUTF8
    # message with 8-bit content to a UTF-8 recipient failed 5.6.3 (8-bit data is
    # checked first), and its report, a global one with the UTF-8 address as it is,
    # was 8-bit too: refused by that relay in turn and dropped (null sender), so
    # the ASCII sender never heard of it. Now it is a plain 7-bit report.
    data = ORIGINAL.replace(b"Subject: plans", "Subject: Gr\u00fc\u00dfe".encode())
    assert data != ORIGINAL
    e = env(rcpt_to=("j\u00fcrgen@example.net",), smtputf8=True, body_8bit=True)
    built = dsn.build_report(
        envelope=e, queue_id="q1", data=data,
        reports=dsn.reports_for(e, [Outcome("j\u00fcrgen@example.net", "bounced",
                                            "5.6.3 relay mx:25 does not accept 8-bit data "
                                            "(8BITMIME)")], "failed"),
        reporting_mta="mx.example.org", now=1_700_000_100.0)
    assert built is not None
    report_env, report = built
    assert report.isascii()
    assert report_env.smtputf8 is False and report_env.body_8bit is False
    text, status, original = parts(report)
    assert status.get_payload()[1]["Final-Recipient"] == "utf-8; j\\x{FC}rgen@example.net"
    # The text part names the recipient in that form too, not as "j?rgen": an
    # address of CJK characters read "??@??.??", which recipient failed unknown.
    assert "<j\\x{FC}rgen@example.net>: 5.6.3" in text.get_payload()
    assert original.get_content_type() == "text/rfc822-headers"
    assert b"Subject: Gr????e\r\n" in report


def test_a_failure_report_over_the_size_limit_returns_the_header_only() -> None:
    # Found with a relay taking SIZE 35000000 (limits.max_message_size, as another
    # smtpgate's): a 34.99 MB message refused at RCPT (550 5.1.1) got a report
    # carrying it whole, 35000751 octets, which the same relay refused (5.3.4); a
    # report from the null sender that cannot be delivered is dropped, so the
    # sender never heard that the message was not delivered.
    data = b"From: alice@example.org\r\nSubject: big\r\n\r\n" + b"a" * 76 * 1000
    e = env()
    reports = dsn.reports_for(e, [Outcome("bob@example.net", "bounced",
                                          "relay mx:25 refused recipient: 550 5.1.1 no")],
                              "failed")

    def report(size_limit: int) -> tuple[Envelope, bytes] | None:
        return dsn.build_report(envelope=e, queue_id="q1", data=data, reports=reports,
                                reporting_mta="mx.example.org", now=1_700_000_100.0,
                                size_limit=size_limit)

    built = report(len(data) + 100)
    assert built is not None
    small = built[1]
    assert len(small) < 4096
    _, status, original = parts(small)
    assert original.get_content_type() == "text/rfc822-headers"
    assert b"Subject: big\r\n" in small and b"aaaa" not in small
    assert status.get_payload()[1]["Status"] == "5.1.1"
    # Under the limit, the whole message as before.
    built = report(len(data) + 4096)
    assert built is not None and data in built[1]
    assert parts(built[1])[2].get_content_type() == "message/rfc822"


def test_rfc6533_headers_only_of_an_internationalized_message() -> None:
    e = env(rcpt_to=("用户@例子.广告",), smtputf8=True, dsn_ret="HDRS")
    data = build(e, [Outcome("用户@例子.广告", "bounced", "550 5.1.1 no")])
    assert data is not None
    _, (_, _, original) = _global_parts(data)
    assert original.get_content_type() == "message/global-headers"
    assert b"secret body" not in data


def test_rfc6533_an_ascii_report_writes_a_utf8_orcpt_in_its_7bit_form() -> None:
    e = env(dsn_rcpts=(RcptDsn("bob@example.net", ("FAILURE",), "utf-8;用户@example.net"),))
    data = build(e, [Outcome("bob@example.net", "bounced", "550 5.1.1 no")])
    assert data is not None and data.isascii()
    _, status, _ = parts(data)
    per_rcpt = status.get_payload()[1]
    assert per_rcpt["Original-Recipient"] == "utf-8;\\x{7528}\\x{6237}@example.net"
    assert per_rcpt["Final-Recipient"] == "rfc822; bob@example.net"


def test_rfc6533_an_escaped_line_break_stays_escaped_in_the_report() -> None:
    e = env(rcpt_to=("用户@例子.广告",), smtputf8=True,
            dsn_rcpts=(RcptDsn("用户@例子.广告", None, "utf-8;a\r\nX-Injected: yes"),))
    data = build(e, [Outcome("用户@例子.广告", "bounced", "550 no")])
    assert data is not None
    assert b"\r\nX-Injected" not in data
    assert b"Original-Recipient: utf-8;a\\x{0D}\\x{0A}X-Injected:\\x{20}yes" in data


class _Hop:
    """A relay next hop that answers each recipient with ``answer(recipient, attempt)``
    (attempts counted from 1) and remembers each attempt's sender and recipients."""

    def __init__(self, answer: Callable[[str, int], DeliveryResult]) -> None:
        self.answer = answer
        self.seen: list[tuple[str, tuple[str, ...]]] = []

    async def deliver(self, message: QueuedMessage,
                      recipients: tuple[str, ...]) -> dict[str, DeliveryResult]:
        self.seen.append((message.envelope.mail_from, recipients))
        return {r: self.answer(r, len(self.seen)) for r in recipients}

    async def close(self) -> None:
        pass


class _Clock:
    now = 1_700_000_100.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("notify", [None, ("SUCCESS", "FAILURE")])
async def test_a_report_the_spool_cannot_take_never_sends_a_relay_the_message_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, notify: tuple[str, ...] | None
) -> None:
    """The relay took bob and refused carol; the bounce for carol could not be
    spooled (a full spool). The attempt was then not recorded at all, so bob got
    the message again a minute later, and again, until the spool had room. Now
    bob's delivery is recorded and only what the lost report was about is tried
    again (with NOTIFY=SUCCESS bob's report is one of them, as Postfix defers a
    recipient whose success record it cannot write)."""
    def answer(rcpt: str, attempt: int) -> DeliveryResult:
        return (Delivered("relay hop: 250 ok", "relayed") if rcpt.startswith("bob")
                else PermFailure("relay refused recipient: 550 5.1.1 no such user"))

    spool = Spool(tmp_path / "spool", prefill=False)
    hop, clock = _Hop(answer), _Clock()
    try:
        rcpts = ("bob@example.net", "carol@example.net")
        dsn_rcpts = tuple(RcptDsn(r, notify) for r in rcpts) if notify else ()
        qid = spool.store_sync(env(rcpt_to=rcpts, dsn_rcpts=dsn_rcpts), ORIGINAL)
        worker = DeliveryWorker(spool, hop, QueueConfig(), clock)
        real_store = spool.store

        async def full(envelope: Envelope, data: bytes) -> str:
            raise SpoolError("cannot write /spool/queue/x.msg: [Errno 28] No space left")

        monkeypatch.setattr(spool, "store", full)
        await worker.run_once()
        state = spool.load_state(qid)
        assert state is not None
        status = {r.address: r.status for r in state.recipients}
        assert status["carol@example.net"] is RcptStatus.PENDING  # its bounce is owed
        assert status["bob@example.net"] is (
            RcptStatus.PENDING if notify else RcptStatus.DELIVERED)
        monkeypatch.setattr(spool, "store", real_store)
        clock.now += 61
        await worker.run_once()
        to_bob = [rs for sender, rs in hop.seen if sender and "bob@example.net" in rs]
        assert len(to_bob) == (2 if notify else 1)
        reports = [rs for sender, rs in hop.seen if not sender]
        assert reports and all(rs == ("alice@example.org",) for rs in reports)
        assert spool.list_ids() == []
    finally:
        await spool.close()


@pytest.mark.parametrize("second", ["delivered", "refused"])
async def test_a_state_the_spool_cannot_save_never_sends_a_relay_the_message_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, second: str
) -> None:
    """The relay took bob, carol was deferred, and the state could not be saved (a
    full spool): the next attempt started from the state on the disk and gave bob
    the message again, every minute until the spool had room. Now it starts from
    the outcome it could not record."""
    def answer(rcpt: str, attempt: int) -> DeliveryResult:
        if rcpt.startswith("bob") or (rcpt.startswith("carol") and second == "delivered"
                                      and attempt > 1):
            return Delivered("relay hop: 250 ok", "relayed")
        if rcpt.startswith("carol") and attempt > 1:
            return PermFailure("relay refused recipient: 550 5.1.1 no such user")
        return TempFailure("relay refused recipient: 451 4.3.0 later")

    spool = Spool(tmp_path / "spool", prefill=False)
    hop, clock = _Hop(answer), _Clock()
    try:
        qid = spool.store_sync(env(rcpt_to=("bob@example.net", "carol@example.net")),
                               ORIGINAL)
        worker = DeliveryWorker(spool, hop, QueueConfig(), clock)
        real_save = spool.save_state

        async def full(qid: str, state: object) -> None:
            raise SpoolError("cannot write /spool/queue/x.state: [Errno 28] No space left")

        monkeypatch.setattr(spool, "save_state", full)
        await worker.run_once()
        assert spool.load_state(qid) is None  # nothing recorded
        monkeypatch.setattr(spool, "save_state", real_save)
        clock.now += 61
        await worker.run_once()
        to_bob = [rs for sender, rs in hop.seen if sender and "bob@example.net" in rs]
        assert len(to_bob) == 1
        assert hop.seen[1] == ("alice@example.org", ("carol@example.net",))
        reports = [rs for sender, rs in hop.seen if not sender]
        assert reports == ([] if second == "delivered" else [("alice@example.org",)])
        assert qid not in spool.list_ids()  # every recipient done, recorded
    finally:
        await spool.close()


@pytest.mark.parametrize(("diagnostic", "remote"), [
    ("relay mx.example.net:25 refused recipient: 550 5.1.1 no such user",
     "dns; mx.example.net"),
    ("gave up after 4 attempts: relay 192.0.2.1:587 refused message: 451 4.3.0 later",
     "dns; [192.0.2.1]"),
    # An IP-literal relay: RFC 5321 §4.1.3's address literal, not a bare address
    # written as if it were a domain name.
    ("relay ::1:25 refused sender: 553 5.7.1 not you", "dns; [IPv6:::1]"),
    ("relay 127.0.0.1:2525 refused recipient: 550 5.1.1 no", "dns; [127.0.0.1]"),
    ("lmtp unix:/run/dovecot/lmtp refused message: 552 5.2.2 over quota",
     "x-unix; /run/dovecot/lmtp"),
    ("relay mx.example.net:25: 250 2.0.0 queued as 4711", "dns; mx.example.net"),
    ("relay mx.example.net:25 greeting: 554 5.3.2 go away", "dns; mx.example.net"),
    ("relay mx.example.net:587 refused AUTH PLAIN: 535 5.7.8 bad credentials",
     "dns; mx.example.net"),
    # No reply from a hop: no Remote-MTA (nothing the hop said is reported).
    ("4.4.1 relay mx.example.net:25: cannot connect: Connection refused", None),
    ("4.4.2 relay mx.example.net:25: timed out after 250 s waiting for the greeting", None),
    ("4.3.1 maildir /var/mail/bob: No space left on device", None),
    ("RCPT TO: 550 5.1.1 no such user", None),
])
def test_rfc3464_s2_3_5_remote_mta_names_the_hop_that_replied(
    diagnostic: str, remote: str | None
) -> None:
    assert dsn.remote_mta(diagnostic) == remote


@pytest.mark.parametrize("action", ["failed", "delayed"])
def test_rfc3464_s2_3_5_report_carries_remote_mta_before_diagnostic_code(action: str) -> None:
    """A bounce or delay notice of a refusal by a relay says which MTA refused: the
    per-recipient block had Diagnostic-Code but no Remote-MTA (RFC 3464 §2.3.5: "MUST
    be supplied" when relaying via SMTP). The report stays a valid multipart/report."""
    kind = "bounced" if action == "failed" else "deferred"
    code = "550 5.1.1 no such user" if action == "failed" else "450 4.2.1 try later"
    data = build(env(), [
        Outcome("bob@example.net", kind, f"relay mx.example.net:25 refused recipient: {code}"),
        Outcome("carol@example.net", kind, "4.4.1 relay mx.example.net:25: cannot connect: "
                "Connection refused"),
    ], action)
    assert data is not None
    _, status, _ = parts(data)
    per_message, bob, carol = status.get_payload()
    assert per_message["Reporting-MTA"] == "dns; mx.example.org"
    assert bob["Remote-MTA"] == "dns; mx.example.net"
    assert bob["Diagnostic-Code"] == f"smtp; {code}"
    assert bob.keys() == ["Final-Recipient", "Action", "Status", "Remote-MTA",
                          "Diagnostic-Code", "Last-Attempt-Date"]
    assert carol["Remote-MTA"] is None
    assert carol["Diagnostic-Code"].startswith("x-smtpgate; 4.4.1")
    assert email.message_from_bytes(data, policy=email.policy.strict).defects == []


def test_the_reports_dates_are_rfc5322_not_its_obsolete_zone() -> None:
    """Found by smtp15: a report's Date and Arrival-Date ended in "GMT", RFC 5322's
    obsolete zone (§4.3), which §4 says must not be generated; UTC is "+0000"."""
    data = build(env(), [Outcome("bob@example.net", "bounced", "RCPT TO: 550 5.1.1 no")])
    assert data is not None
    assert email.message_from_bytes(data)["Date"] == "Tue, 14 Nov 2023 22:15:00 +0000"
    per_message, _ = parts(data)[1].get_payload()
    assert per_message["Arrival-Date"] == "Tue, 14 Nov 2023 22:13:20 +0000"


def test_rfc5322_a_long_reply_is_folded_in_the_report_not_a_line_over_998_octets() -> None:
    # Found with a next hop whose 550 reply text ran to 1,500 octets: the report's
    # Diagnostic-Code line and its line in the text part were 1,000+ octets, over
    # RFC 5322's limit for a line of a message (the Maildir copy kept them so; a
    # relay broke them mid-word).
    words = " ".join(f"word{i:04d}" for i in range(200))
    reply = f"relay mx:25 refused recipient: 550 5.1.1 no such user  {words}"
    long_word = "y" * 2000
    built = dsn.build_report(envelope=env(), queue_id="q1", data=ORIGINAL,
                             reports=[dsn.Report("bob@example.net", "failed", reply),
                                      dsn.Report("carol@example.net", "failed",
                                                 f"550 5.7.1 see {long_word} now")],
                             reporting_mta="mx.example.org", now=1_700_000_100.0)
    assert built is not None
    report = built[1]
    assert max(len(line) for line in report.split(b"\r\n")) <= 998
    assert b"\n" not in report.replace(b"\r\n", b"")
    _, status, _ = parts(report)
    bob, carol = status.get_payload()[1:]
    # Folded before spaces only: unfolding gives the reply back, double space and all.
    assert bob["Diagnostic-Code"].replace("\r\n", "") == (
        f"smtp; 550 5.1.1 no such user  {words}")
    assert f"<bob@example.net>: {reply}".encode() in report.replace(b"\r\n", b"")
    # A word no line can hold is cut short: the reply's rest still comes.
    assert carol["Diagnostic-Code"].replace("\r\n", "") == (
        f"smtp; 550 5.7.1 see {'y' * 900}... now")
    assert carol["Status"] == "5.7.1"
