"""Inputs the fuzz targets of fuzz/ (or writing them) turned up, kept as regression
tests (docs/security.md, "Fuzzing": what was found)."""

from __future__ import annotations

import base64

from smtpgate.client.extensions import Extensions
from smtpgate.smtp import replies as R

from .engine_driver import Driver


def _authenticated() -> Driver:
    d = Driver.new(tls=True)
    d.feed(b"EHLO client.test\r\n")
    plain = base64.b64encode(b"\0alice@example.org\0correct horse")
    assert d.feed(b"AUTH PLAIN " + plain + b"\r\n").startswith(b"235 ")
    return d


def test_mail_size_of_a_non_ascii_digit_is_a_syntax_error() -> None:
    """SIZE=² passed str.isdigit() and int() raised ValueError: a traceback in the
    engine instead of a reply (RFC 1870 §3: size-value is ASCII digits)."""
    d = _authenticated()
    for value in ("²", "١٢٣", "1²"):
        out = d.feed(f"MAIL FROM:<alice@example.org> SIZE={value}\r\n".encode())
        assert out == R.SYNTAX_ERROR.format()
    assert d.feed(b"MAIL FROM:<alice@example.org> SIZE=100\r\n").startswith(b"250 ")


def test_ehlo_size_of_a_non_ascii_digit_reads_as_no_limit() -> None:
    """A server's "SIZE ²" made Extensions.size raise ValueError in the client (the
    relay, the tester); an unreadable SIZE is "no fixed limit", as a bad one was."""
    assert Extensions.from_ehlo_lines(["SIZE ²"]).size == 0
    assert Extensions.from_ehlo_lines(["SIZE ١٢٣"]).size == 0
    assert Extensions.from_ehlo_lines(["SIZE 35000000"]).size == 35_000_000
