"""Delivery status notifications (RFC 3464) that smtpgate sends to a sender.

Pure: the caller gives the time, the reporting host name and what happened; the
result is an envelope and the bytes of a ``multipart/report`` message, which the
worker spools like any other message so it takes the same delivery path.

Loops: a report always has the null reverse-path (RFC 3461 §6.2, RFC 5321
§4.5.5), and nothing is ever reported to a null sender, so a report that cannot
be delivered is dropped rather than answered by another report.

Internationalized mail (SMTPUTF8) gets an RFC 6533 report: ``global-delivery-status``
with ``utf-8`` addresses and the original as ``message/global`` (or
``message/global-headers``); UTF-8 appears as it is only there, never in an ASCII
report, where a ``utf-8`` ORCPT is written in its 7-bit form.

Who is told (RFC 3461 §4.1): a recipient whose NOTIFY parameter was given gets a
report only for the conditions it lists (NEVER: none; SUCCESS: "delivered" into a
mailbox, or "relayed" to a next hop without DSN); without NOTIFY, failures and
delays are reported, successes not, which is what RFC 3461 §4.1 allows.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, replace

from smtpgate.queue.envelope import Envelope
from smtpgate.queue.state import Outcome
from smtpgate.smtp import utf8_addr
from smtpgate.smtp.received import utc_date

#: An enhanced status code (RFC 3463) inside a reply or a diagnostic; not three
#: numbers of a dotted IPv4 address ("relay 192.5.1.1:25" holds no 5.1.1).
_STATUS = re.compile(r"(?<![\w.])([245])\.(\d{1,3})\.(\d{1,3})(?!\w|\.\d)")
#: Where an SMTP reply starts inside a deliverer's detail: after "...: " ("relay
#: refused recipient: 550 5.1.1 ..."), never a number in smtpgate's own words
#: ("timed out after 250 s").
_REPLY = re.compile(r"(?:^|: )([245]\d\d[ -])")
#: The next hop a relay or LMTP detail names (`RelayDeliverer.where`): "relay
#: mx.example.net:25", "relay ::1:25", "lmtp unix:/run/dovecot/lmtp", each followed
#: by " refused ...", " greeting", ":" or the end.
_HOP = re.compile(r"(?:^|[ ])(?:relay|lmtp) (unix:[^ ]+?|[^ ]+:\d+)(?=:? |:?$)")
_UNSAFE = re.compile(r"[^\x20-\x7e]")
#: Control characters (C0, DEL, C1): never in a report, even an internationalized one.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
#: Statuses (RFC 3463) saying the next hop cannot take the message's content as it
#: is: too big (5.3.4), or 8-bit/binary data it cannot take (5.6.3). A report that
#: returned the whole original would meet the same refusal on its way back to the
#: sender (it takes the same delivery path) and be dropped, so it carries the
#: original's header only. The same for a next hop without SMTPUTF8 (5.6.7), whose
#: report must also not need SMTPUTF8 (see `build_report`).
_CONTENT_REFUSED = frozenset({"5.3.4", "5.6.3", "5.6.7"})
#: Statuses saying the next hop cannot take what an RFC 6533 report is: 8-bit data
#: (5.6.3, no 8BITMIME) or internationalized mail (5.6.7, no SMTPUTF8).
_NO_GLOBAL_REPORT = frozenset({"5.6.3", "5.6.7"})


@dataclass(frozen=True, slots=True)
class Report:
    """One recipient's line in a report."""

    address: str
    #: RFC 3464 §2.3.3 action: "failed", "delayed", "delivered" or "relayed".
    action: str
    #: What the next hop replied, or smtpgate's own words when no reply came.
    diagnostic: str
    #: The ORCPT parameter given with the recipient ("rfc822;user@example.com"), if any.
    original_recipient: str | None = None
    #: When the recipient was last tried, if not in the attempt the report is about
    #: (None: then, the report's date). `queue bounce` reports an earlier attempt;
    #: 0.0 when there was none, and the optional Last-Attempt-Date is left out
    #: (RFC 3464 §2.3.7: the date of an attempt, not of the report).
    last_attempt: float | None = None
    #: The Status field when the diagnostic's own code is not it (None: from the
    #: diagnostic, `status_code`): `queue bounce` gives up a recipient whose last
    #: attempt was deferred (`given_up_status`).
    status: str | None = None
    #: Words before the diagnostic in the report's text part (the diagnostic is then
    #: the last attempt's, and these say why the recipient was given up).
    note: str = ""

    @property
    def status_field(self) -> str:
        return self.status or status_code(self.action, self.diagnostic)


def given_up_status(diagnostic: str) -> str:
    """The Status of a recipient given up after ``diagnostic`` (an attempt that was
    deferred, RFC 3463): its code made permanent, ``4.4.1`` (no answer from host)
    as ``5.4.1``, since the subject and detail of a code mean the same in either
    class; ``5.0.0`` when it holds none."""
    for m in _STATUS.finditer(diagnostic):
        if m.group(1) in "45":
            return f"5.{m.group(2)}.{m.group(3)}"
    return "5.0.0"


def notify_allows(notify: tuple[str, ...] | None, action: str) -> bool:
    """Whether a recipient with this NOTIFY wants to hear of ``action``."""
    if notify is None:
        return action in ("failed", "delayed")
    wanted = {"failed": "FAILURE", "delayed": "DELAY", "delivered": "SUCCESS",
              "relayed": "SUCCESS"}[action]
    return wanted in notify


def reports_for(envelope: Envelope, outcomes: Sequence[Outcome], action: str) -> list[Report]:
    """The report lines for ``outcomes`` whose recipients asked (or, without NOTIFY,
    did not decline) to hear of ``action``."""
    out = []
    for o in outcomes:
        params = envelope.dsn_for(o.address)
        if notify_allows(params.notify if params else None, action):
            out.append(Report(o.address, action, o.detail, params.orcpt if params else None))
    return out


def status_code(action: str, diagnostic: str) -> str:
    """The Status field: the enhanced code in the diagnostic when its class fits the
    action, else a generic one (RFC 3463: 5.0.0 / 4.0.0 / 2.0.0)."""
    want = {"failed": "5", "delayed": "4"}.get(action, "2")
    for m in _STATUS.finditer(diagnostic):
        if m.group(1) == want:
            return m.group(0)
    if action == "failed" and "gave up" in diagnostic:
        return "5.4.7"  # RFC 3463 §3.5: delivery time expired
    return f"{want}.0.0"


def diagnostic_code(diagnostic: str) -> str:
    """RFC 3464 §2.3.6: ``smtp; <reply>`` when a next hop replied, else smtpgate's
    own words under the ``x-smtpgate`` type."""
    m = _REPLY.search(diagnostic)
    if m is not None:
        return "smtp; " + _clean(diagnostic[m.start(1):])
    return "x-smtpgate; " + _clean(diagnostic)


def remote_mta(diagnostic: str) -> str | None:
    """RFC 3464 §2.3.5: the Remote-MTA field's value, ``dns; <host>`` of the next
    hop whose reply the diagnostic holds, or None when no hop replied (a
    connection that failed, a timeout, a Maildir). The port is not part of an MTA's
    name; an LMTP server on a unix socket has no DNS name, so it is named by its
    path under the ``x-unix`` type (RFC 3464 §2.1.2 allows ``x-`` types). A relay
    given as an IP address is named by its address literal (``dns; [192.0.2.1]``,
    ``dns; [IPv6:2001:db8::1]``): IANA registers no address type for an MTA name,
    and a bare address is no domain name."""
    reply = _REPLY.search(diagnostic)
    if reply is None:
        return None
    hops = list(_HOP.finditer(diagnostic, 0, reply.start(1)))
    if not hops:
        return None
    hop = hops[-1].group(1)
    if hop.startswith("unix:"):
        return "x-unix; " + _clean(hop.removeprefix("unix:"))
    host = hop.rpartition(":")[0]
    if not host:
        return None
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return "dns; " + _clean(host)
    # A host named by its address: the "dns" type's name is a domain, and RFC
    # 5321 §4.1.3's address literal is the domain form of an address.
    return f"dns; [{ip}]" if ip.version == 4 else f"dns; [IPv6:{ip}]"


def build_report(
    *,
    envelope: Envelope,
    queue_id: str,
    data: bytes,
    reports: Sequence[Report],
    reporting_mta: str,
    now: float,
    size_limit: int | None = None,
) -> tuple[Envelope, bytes] | None:
    """The envelope and bytes of the report about ``reports`` (recipients of one
    message, all with the same kind of action), or None when nobody must be told:
    the sender is null (a report of a report) or the list is empty.

    A failure report returns the original whole (``message/rfc822``) unless the
    sender asked for headers only (RET=HDRS), as Postfix does by default; other
    reports return its header only. So does a failure report that would be larger
    than ``size_limit`` (``limits.max_message_size``) with the original whole: a
    message near the limit plus the report around it is over it, a next hop with
    that limit refuses the report, and a report (from the null sender) that cannot
    be delivered is dropped: the sender would never hear of the failure. And so
    does one of a message with 8-bit data sent without BODY=8BITMIME: returned
    whole, the report would be 8-bit and refused by a next hop without 8BITMIME.
    """
    if not envelope.mail_from or not reports:
        return None
    statuses = {r.status_field for r in reports}
    # RFC 6533: a global report for internationalized mail, unless the message failed
    # because the next hop lacks SMTPUTF8 or 8BITMIME (a global report is 8-bit
    # data): the report takes the same way back and would meet the same refusal, so
    # to an ASCII sender it is a plain one (UTF-8 addresses in their 7-bit form).
    utf8 = envelope.smtputf8 and not (not statuses.isdisjoint(_NO_GLOBAL_REPORT)
                                      and envelope.mail_from.isascii())
    clean = _clean_utf8 if utf8 else _clean
    failed = any(r.action == "failed" for r in reports)
    delayed = all(r.action == "delayed" for r in reports)
    boundary = f"{queue_id}/{secrets.token_hex(8)}"
    date = utc_date(now)
    host = _clean(reporting_mta)
    if failed:
        subject = "Undelivered Mail Returned to Sender"
        intro = "Your message could not be delivered to the recipients below. It was given up."
    elif delayed:
        subject = "Delayed Mail (still being retried)"
        intro = ("Your message has not been delivered yet to the recipients below. "
                 "smtpgate keeps trying; you need not send it again.")
    else:
        subject = "Successful Mail Delivery Report"
        intro = "Your message was delivered to the recipients below."
    human = [intro, ""]
    for r in reports:
        human.append(_fold(f"<{_human_address(r.address, utf8)}>: "
                           f"{_clean(r.note + r.diagnostic)}"))
    # RFC 3464 §2.2's order: Original-Envelope-Id, Reporting-MTA, Arrival-Date,
    # then extension fields.
    per_message = []
    if envelope.dsn_envid:
        per_message.append(f"Original-Envelope-Id: {_clean(envelope.dsn_envid)}")
    per_message.append(f"Reporting-MTA: dns; {host}")
    if envelope.received_at:
        per_message.append(
            "Arrival-Date: " + utc_date(envelope.received_at))
    per_message.append(f"X-Smtpgate-Queue-ID: {queue_id}")
    blocks = ["\r\n".join(per_message)]
    for r in reports:
        fields = []
        if r.original_recipient:
            fields.append(f"Original-Recipient: {_original(r.original_recipient, utf8)}")
        fields += [
            f"Final-Recipient: {_final(r.address, utf8)}",
            f"Action: {r.action}",
            f"Status: {r.status_field}",
        ]
        remote = remote_mta(r.diagnostic)
        if remote is not None:
            fields.append(f"Remote-MTA: {remote}")
        fields.append(f"Diagnostic-Code: {diagnostic_code(r.diagnostic)}")
        if r.last_attempt is None:
            fields.append(f"Last-Attempt-Date: {date}")
        elif r.last_attempt:
            fields.append(f"Last-Attempt-Date: {utc_date(r.last_attempt)}")
        blocks.append("\r\n".join(_fold(f) for f in fields))
    # RFC 3461 §4.3: RET is about failure reports; delay warnings and success
    # reports carry the header only, as Postfix's do.
    # A binary original (BINARYMIME) would make the report binary: its header only.
    content_refused = not statuses.isdisjoint(_CONTENT_REFUSED)
    # 8-bit data its client sent without BODY=8BITMIME: a report that returned it
    # would have to be declared 8-bit (RFC 6152), which a next hop without 8BITMIME
    # cannot take, though the original itself went there as it came. The report
    # (null sender) would be refused and dropped; it carries the header only.
    undeclared_8bit = not utf8 and not envelope.body_8bit and not data.isascii()
    if (envelope.dsn_ret == "HDRS" or not failed or envelope.body_binary or content_refused
            or undeclared_8bit):
        end = data.find(b"\r\n\r\n")
        original = data if end < 0 else data[: end + 2]
        original_type = "message/global-headers" if utf8 else "text/rfc822-headers"
        if (content_refused or undeclared_8bit) and not utf8 and not original.isascii():
            # Raw 8-bit octets in the header (a Subject in UTF-8 without SMTPUTF8):
            # the report would be 8-bit and meet the refusal it reports, or one
            # for want of 8BITMIME. Each such octet becomes "?": the header stays
            # readable, the report 7-bit.
            original = original.translate(_ASCII_ONLY)
        whole = False
    else:
        original = data
        original_type = "message/global" if utf8 else "message/rfc822"
        whole = True
    report_type = "global-delivery-status" if utf8 else "delivery-status"
    # What the report really carries: a header-only report of an 8-bit message is
    # 7-bit; a whole original declared BODY=8BITMIME is 8-bit.
    eight_bit = not original.isascii()
    cte = "8bit" if eight_bit or utf8 else "7bit"
    head = "\r\n".join([
        f"From: Mail Delivery System <MAILER-DAEMON@{host}>",
        f"To: <{clean(envelope.mail_from)}>",
        f"Subject: {subject}",
        f"Date: {date}",
        f"Message-ID: <{queue_id}.{secrets.token_hex(4)}.dsn@{host}>",
        # RFC 3834 §5: automatic responses must not trigger other responses.
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type={report_type}; boundary="{boundary}"',
        "",
        "This is a MIME-encapsulated delivery status notification.",
        "",
        f"--{boundary}",
        f"Content-Type: text/plain; charset={'utf-8' if utf8 else 'us-ascii'}",
        *(["Content-Transfer-Encoding: 8bit"] if utf8 else []),
        "Content-Description: Notification",
        "",
        "\r\n".join(human),
        "",
        f"--{boundary}",
        f"Content-Type: message/{report_type}",
        *(["Content-Transfer-Encoding: 8bit"] if utf8 else []),
        "Content-Description: Delivery report",
        "",
        "\r\n\r\n".join(blocks),
        "",
        f"--{boundary}",
        f"Content-Type: {original_type}",
        f"Content-Transfer-Encoding: {cte}",
        "Content-Description: The original message",
        "",
        "",
    ]).encode("utf-8" if utf8 else "ascii")
    if not original.endswith(b"\r\n"):
        original += b"\r\n"
    body = head + original + f"\r\n--{boundary}--\r\n".encode("ascii")
    if whole and size_limit is not None and len(body) > size_limit:
        return build_report(envelope=replace(envelope, dsn_ret="HDRS"), queue_id=queue_id,
                            data=data, reports=reports, reporting_mta=reporting_mta,
                            now=now)
    report_env = Envelope(
        mail_from="",  # RFC 3461 §6.2: a report has the null reverse-path
        rcpt_to=(envelope.mail_from,),
        auth_identity=None,
        client_ip="127.0.0.1",
        helo=reporting_mta,
        listener="dsn",
        smtputf8=utf8,
        body_8bit=not body.isascii(),  # what it carries, not what the original said
        received_at=now,
    )
    return report_env, body


#: Where a report line is folded (RFC 5322 §2.1.1: SHOULD be no more than 78
#: characters), and the longest word kept whole: with its folding space and CRLF a
#: line stays well under RFC 5322's limit of 998 octets.
_FOLD_AT = 78
_WORD_MAX = 900


def _fold(line: str) -> str:
    """``line`` folded before spaces (RFC 5322 §2.2.3) into lines of about
    `_FOLD_AT` characters, none over 998 octets: a next hop's reply text (RFC
    5321 allows 512 octets a line, real servers send more, several lines of a
    multi-line reply are joined) made the report's Diagnostic-Code, and its line
    in the text part, longer than a line of a message may be. Unfolding (removing
    each CRLF) gives ``line`` back, but for a word over `_WORD_MAX` octets (no reply
    has one), which is cut short and ends with "..."."""
    pieces = line.split(" ")
    out: list[str] = []
    current = _cut(pieces[0])
    for piece in pieces[1:]:
        piece = _cut(piece)
        # Never fold before an empty piece (a run of spaces): a folded line may not
        # be whitespace only.
        if piece and len(current.encode()) + 1 + len(piece.encode()) > _FOLD_AT \
                and current.strip():
            out.append(current)
            current = " " + piece
        else:
            current += " " + piece
    out.append(current)
    return "\r\n".join(out)


def _cut(word: str) -> str:
    """``word``, or its first `_WORD_MAX` octets and "..." when it is longer."""
    raw = word.encode()
    if len(raw) <= _WORD_MAX:
        return word
    return raw[:_WORD_MAX].decode("utf-8", "ignore") + "..."


#: Octets 0x80-0xFF as "?", the rest unchanged (`bytes.translate`).
_ASCII_ONLY = bytes(range(128)) + b"?" * 128


def _clean(text: str) -> str:
    """One header-safe line: no CR, LF or other controls can reach the report."""
    return _UNSAFE.sub("?", text)


def _clean_utf8(text: str) -> str:
    """`_clean` for an internationalized report: UTF-8 stays, controls do not."""
    return _CONTROL.sub("?", text)


def _final(address: str, utf8: bool) -> str:
    """Final-Recipient: ``rfc822`` for an ASCII address, RFC 6533's ``utf-8``
    otherwise (escapes leave no control character or line break in it)."""
    if address.isascii():
        return "rfc822; " + _clean(address)
    return f"{utf8_addr.UTF8_TYPE}; " + utf8_addr.encode(address, unitext=utf8)


def _human_address(address: str, utf8: bool) -> str:
    """A recipient in the text part: as it is in a global report; in a plain one a
    UTF-8 address takes the 7-bit form of its Final-Recipient (``j\\x{F6}rg@...``),
    as the text part is US-ASCII: each non-ASCII character as "?" made
    ``用户@例子.广告`` read ``??@??.??``, and the sender could not tell which
    recipient had failed."""
    if utf8:
        return _clean_utf8(address)
    if address.isascii():
        return _clean(address)
    return utf8_addr.encode(address, unitext=False)


def _original(orcpt: str, utf8: bool) -> str:
    """Original-Recipient from the ORCPT kept as "type;address"; a ``utf-8`` one in
    the form the report's type allows (RFC 6533 §3)."""
    addr_type, _, address = orcpt.partition(";")
    if utf8_addr.is_utf8_type(addr_type):
        return f"{addr_type};" + utf8_addr.encode(address, unitext=utf8)
    return _clean(orcpt)
