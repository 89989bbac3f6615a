"""delivery.drop_fields: which header fields leave a message on delivery."""

from __future__ import annotations

import pytest

from smtpgate.queue.header_drop import DEFAULT_DROP_FIELDS, field_pattern, without_fields

DEFAULT = field_pattern(DEFAULT_DROP_FIELDS)


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (b"Bcc: a@example.org\r\nSubject: x\r\n\r\nbody\r\n", b"Subject: x\r\n\r\nbody\r\n"),
        (b"Subject: x\r\nbcc : a@example.org,\r\n\tb@example.org\r\nTo: c@example.org\r\n\r\nb\r\n",
         b"Subject: x\r\nTo: c@example.org\r\n\r\nb\r\n"),
        (b"Resent-Bcc: a@example.org\r\nContent-Length: 12\r\nReturn-Path: <x@y>\r\n\r\nb\r\n",
         b"\r\nb\r\n"),
        # Not fields of the header section: a body line, a field whose name only
        # starts like one, an empty Bcc: all dropped or kept by their own names.
        (b"Subject: x\r\n\r\nBcc: in the body\r\n", b"Subject: x\r\n\r\nBcc: in the body\r\n"),
        (b"Bccx: kept\r\nX-Bcc: kept\r\n\r\nb\r\n", b"Bccx: kept\r\nX-Bcc: kept\r\n\r\nb\r\n"),
        (b"Bcc:\r\nSubject: x\r\n\r\nb\r\n", b"Subject: x\r\n\r\nb\r\n"),
        # All header, no empty line (a BDAT message may end so); no header at all.
        (b"Subject: x\r\nBcc: a@example.org", b"Subject: x\r\n"),
        (b"\r\nBcc: a@example.org\r\n", b"\r\nBcc: a@example.org\r\n"),
    ],
)
def test_the_default_fields_leave_the_header_section_only(message: bytes, expected: bytes) -> None:
    assert without_fields(message, DEFAULT) == expected


def test_a_message_without_them_is_not_copied() -> None:
    message = b"Subject: x\r\n\r\n" + b"y" * 100_000
    assert without_fields(message, DEFAULT) is message


def test_no_field_named_keeps_everything() -> None:
    assert field_pattern([]) is None
    assert without_fields(b"Bcc: a@example.org\r\n\r\nb", None) == b"Bcc: a@example.org\r\n\r\nb"
