"""The DATA reader: finds the end of a message and undoes dot-stuffing (RFC 5321 §4.5.2).

Theory of operation
-------------------
Only ``<CRLF>.<CRLF>`` ends a message (RFC 5321 §4.1.1.4). The reader keeps the
message as one byte buffer that starts with a virtual CRLF (the one that ended
the DATA command line), so "end of data" is always the five bytes
``\\r\\n.\\r\\n`` and a message may end right at its start. A bare LF or bare CR
is never a line end here, so ``<LF>.<LF>``, ``<CR>.<CR>`` and their mixes stay
inside the message: that is the SMTP-smuggling defence. Whether a message that
*contains* a bare CR or LF is accepted is decided after its real end.

The scan is done with ``bytes.find`` over the new bytes only, not line by line,
so large messages cost a few C-level passes rather than a Python loop per line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_END = b"\r\n.\r\n"
_BARE_LF = re.compile(rb"(?<!\r)\n")


@dataclass(frozen=True, slots=True)
class DataResult:
    """A finished message: ``data`` unstuffed (None if it was too big)."""

    data: bytes | None
    too_big: bool
    bare_lf: bool
    bare_cr: bool


class DataReader:
    """Accumulates message bytes until the terminator; bounded by ``max_size``."""

    __slots__ = ("_buf", "_max_size", "_scan_from", "_too_big")

    def __init__(self, max_size: int):
        self._buf = bytearray(b"\r\n")
        self._max_size = max_size
        self._scan_from = 0
        self._too_big = False

    def feed(self, data: bytes | bytearray) -> tuple[DataResult | None, bytes]:
        """Take bytes; return (result, leftover) once the end is seen, else (None, b"").

        ``leftover`` is what followed the terminator (pipelined commands).
        """
        buf = self._buf
        buf += data
        end = buf.find(_END, self._scan_from)
        if end < 0:
            self._scan_from = max(0, len(buf) - 4)
            if len(buf) - 2 > self._max_size + 5:
                # Over the limit: keep scanning for the end but stop storing. Keep
                # only the last 4 real bytes (they may start the terminator); the
                # virtual CRLF must go, or it could fake a line start.
                self._too_big = True
                del buf[:-4]
                self._scan_from = 0
            return None, b""
        leftover = bytes(buf[end + 5 :])
        if self._too_big or end > self._max_size:
            return DataResult(None, True, False, False), leftover
        # The message is buf[2 : end + 2]: from after the virtual CRLF up to and
        # including the CRLF before the final dot.
        body = bytes(buf[: end + 2])
        return self._finish(body), leftover

    @staticmethod
    def _finish(body_with_lead: bytes) -> DataResult:
        crlf = body_with_lead.count(b"\r\n")
        bare_lf = body_with_lead.count(b"\n") != crlf
        bare_cr = body_with_lead.count(b"\r") != crlf
        return DataResult(body_with_lead, False, bare_lf, bare_cr)


def unstuff(body_with_lead: bytes, *, normalize_lf: bool) -> bytes:
    """Remove the leading dot of every line (RFC 5321 §4.5.2) and the virtual CRLF.

    With ``normalize_lf`` a bare LF first becomes CRLF (Postfix's ``normalize``),
    so a line after it is unstuffed like any other.
    """
    if normalize_lf:
        body_with_lead = _BARE_LF.sub(b"\r\n", body_with_lead)
    return body_with_lead.replace(b"\r\n.", b"\r\n")[2:]
