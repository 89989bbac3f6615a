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

Streaming
---------
The engine uses `DataStream`, which never holds the message: each ``feed``
returns the unstuffed bytes that are final so far, for the I/O layer to write to
the spool. It keeps back the last 4 raw bytes (they may begin the terminator)
and remembers the 2 bytes before them, which are all the context every rule
needs: whether a dot starts a line, whether an LF is bare (the byte before it),
whether a CR is bare (the byte after it, always among the bytes kept back). So
any split of the same bytes gives the same output and the same verdict as
`DataReader` with `unstuff` (a property test holds this).
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

_END = b"\r\n.\r\n"
#: A dot that starts a line: dot-stuffing's quoting dot, not counted in the size.
_QUOTING_DOT = b"\r\n."
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
            # Dot-stuffing at most doubles the octets sent, so past twice the
            # limit the message is too big whatever its quoting dots.
            if len(buf) - 2 > 2 * self._max_size + 5:
                # Over the limit: keep scanning for the end but stop storing. Keep
                # only the last 4 real bytes (they may start the terminator); the
                # virtual CRLF must go, or it could fake a line start.
                self._too_big = True
                del buf[:-4]
                self._scan_from = 0
            return None, b""
        leftover = bytes(buf[end + 5 :])
        # RFC 1870 §4: the size excludes the quoting dots (buf starts with CRLF).
        if self._too_big or end - buf.count(_QUOTING_DOT, 0, end + 2) > self._max_size:
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


#: Largest header section the engine collects for the From/Sender checks (the
#: header bytes up to the empty line). A message whose header section is longer
#: is refused (552 5.3.4): mail clients write a few KiB; 256 KiB leaves room for
#: long ARC/DKIM chains and keeps the per-session buffer small.
MAX_HEADER_SECTION = 256 * 1024

#: The fields an MSA may add when a message lacks them (RFC 6409 §8.2, §8.3), as
#: `HeaderSection.missing` names them.
DATE, MESSAGE_ID = "Date", "Message-ID"


def _any_case(name: bytes) -> bytes:
    return b"".join(b"[%c%c]" % (c, c ^ 0x20) if c >= 0x61 else b"%c" % c for c in name)


# Either name at a line start, in any letter case, with RFC 5322 §4.5's obsolete
# white space before the colon. Spelled out letter by letter and found after the
# line's LF rather than with IGNORECASE and "^" (MULTILINE): so the regex engine
# skips to each LF, ten times as fast (about 4 us for a mail client's header).
_NAMES = b"(%s|%s)[ \t]*:" % (_any_case(b"date"), _any_case(b"message-id"))
_FIRST_FIELD = re.compile(_NAMES)
_NEXT_FIELD = re.compile(b"\n" + _NAMES)

#: RFC 5321 §6.3: a message with more Received fields than this is taken for a
#: mail loop and refused (554 5.4.6). "SMTP servers using this technique SHOULD
#: use a large rejection threshold, normally at least 100 Received entries"
#: (Postfix's hopcount_limit is 50, Exim's received_headers_max 30).
MAX_HOPS = 100
_RECEIVED = re.compile(b"(?:^|\n)%s[ \t]*:" % _any_case(b"received"))


@dataclass(frozen=True, slots=True)
class DataEnd:
    """How a streamed message ended. ``size`` counts the octets ``DataStream``
    returned (unstuffed); ``raw_size`` the octets the client sent for it."""

    too_big: bool
    bare_lf: bool
    bare_cr: bool
    size: int
    raw_size: int


class DataStream:
    """The DATA reader that hands the message on as it arrives (see "Streaming").

    ``normalize_lf``: a bare LF becomes CRLF in the output (Postfix's ``normalize``).
    Whether the message is acceptable is known from the flags once it has ended;
    ``doomed`` says early that it will not be (the caller may stop writing it).
    """

    __slots__ = ("_bare_cr", "_bare_lf", "_max_size", "_normalize", "_prev", "_prev_out",
                 "_quoting", "_raw", "_raw_size", "_size")

    def __init__(self, max_size: int, *, normalize_lf: bool = False):
        self._max_size = max_size
        self._normalize = normalize_lf
        self._raw = bytearray()
        # The 2 raw octets before ``_raw`` (at first the virtual CRLF), and the 2
        # octets of the normalized stream before it (dot-unstuffing looks at those).
        self._prev = b"\r\n"
        self._prev_out = b"\r\n"
        self._raw_size = 0
        self._quoting = 0  # quoting dots among the _raw_size octets
        self._size = 0
        self._bare_lf = False
        self._bare_cr = False

    @property
    def too_big(self) -> bool:
        """RFC 1870 §4: the message size counts the octets sent, less the dots
        that dot-stuffing added (a message a client declared with SIZE at the
        limit is not refused for its lines that start with a dot)."""
        return self._raw_size - self._quoting > self._max_size

    @property
    def doomed(self) -> bool:
        """The message will be refused whatever follows (too big, bare CR, or bare
        LF when not normalizing)."""
        return self.too_big or self._bare_cr or (self._bare_lf and not self._normalize)

    def feed(self, data: bytes | bytearray) -> tuple[bytes, DataEnd | None, bytes]:
        """Take bytes; return (output, end, leftover). ``output`` is unstuffed
        message content now final (empty once the message is doomed); ``end`` is
        set when the terminator was seen, and ``leftover`` is what followed it
        (pipelined commands)."""
        self._raw += data
        buf = self._prev + self._raw
        end = buf.find(_END)
        cut = end + 2 if end >= 0 else len(buf) - 4
        out = self._take(buf, cut) if cut > 2 else b""
        if end < 0:
            if cut > 2:
                self._prev = bytes(buf[cut - 2 : cut])
                del self._raw[: cut - 2]
            return out, None, b""
        leftover = bytes(buf[end + 5 :])
        self._raw.clear()
        return out, DataEnd(self.too_big, self._bare_lf, self._bare_cr, self._size,
                            self._raw_size), leftover

    def _take(self, buf: bytes, cut: int) -> bytes:
        """Account for and unstuff ``buf[2:cut]``; ``buf[:2]`` is context and
        ``buf[cut]`` exists (a byte kept back, or the terminator's dot)."""
        seg = buf[2:cut]
        self._raw_size += len(seg)
        # Each quoting dot is in ``seg`` (at index 2 or later of ``buf[:cut]``).
        self._quoting += buf.count(_QUOTING_DOT, 0, cut)
        # An LF is bare unless the byte before it is CR; a CR unless the next is LF.
        if seg.count(b"\n") != buf[1:cut].count(b"\r\n"):
            self._bare_lf = True
        if seg.count(b"\r") != buf[2 : cut + 1].count(b"\r\n"):
            self._bare_cr = True
        if self.doomed:
            return b""
        if self._normalize and self._bare_lf:
            if seg[:1] == b"\n" and buf[1:2] == b"\r":
                seg = b"\n" + _BARE_LF.sub(b"\r\n", seg[1:])
            else:
                seg = _BARE_LF.sub(b"\r\n", seg)
        joined = self._prev_out + seg
        self._prev_out = joined[-2:]
        # A dot is removed where the normalized stream has CRLF before it; the two
        # context octets are never changed (a removed dot is at index 2 or later).
        out = joined.replace(b"\r\n.", b"\r\n")[2:]
        self._size += len(out)
        return out


class HeaderSection:
    """Collects the header section of a streamed message (RFC 5322 §2.1: up to
    the first empty line), at most ``limit`` octets."""

    __slots__ = ("_buf", "_limit", "_started", "done", "folded_start", "too_big")

    def __init__(self, limit: int = MAX_HEADER_SECTION):
        self._buf = bytearray()
        self._limit = limit
        self._started = False
        self.done = False
        self.too_big = False
        #: The message's first octet is SP or HTAB (RFC 5322 §2.2.3: a folded line
        #: continues the field above it): its first line would continue whatever
        #: field is put above it, the Received header first.
        self.folded_start = False

    def feed(self, out: bytes) -> bool:
        """Take the next unstuffed message octets; True if they ended the header
        section (the empty line), which happens once."""
        if self.done or self.too_big or not out:
            return False
        if not self._started:
            self._started = True
            self.folded_start = out[:1] in (b" ", b"\t")
        start = max(0, len(self._buf) - 3)
        self._buf += out
        if self._buf.startswith(b"\r\n"):
            end = 0  # no header fields at all
        else:
            found = self._buf.find(b"\r\n\r\n", start)
            end = found + 2 if found >= 0 else -1
        if end >= 0 and end <= self._limit:
            del self._buf[end:]
            self.done = True
            return True
        if len(self._buf) > self._limit:
            self.too_big = True
            self._buf.clear()
        return False

    def missing(self) -> tuple[str, ...]:
        """Which of `DATE` and `MESSAGE_ID` the header section kept so far lacks
        (both, of an empty one). One scan of its field names, stopped once both
        are found; asked once, when the section is complete."""
        date = message_id = False
        found = _NEXT_FIELD.finditer(self._buf)
        first = _FIRST_FIELD.match(self._buf)
        for m in itertools.chain((first,), found) if first else found:
            if len(m[1]) == 4:
                date = True
            else:
                message_id = True
            if date and message_id:
                return ()
        return (DATE,) * (not date) + (MESSAGE_ID,) * (not message_id)

    def header(self) -> bytes:
        """The header section (each field's CRLF included, not the empty line); a
        message without an empty line is all header."""
        return bytes(self._buf)

    @property
    def too_many_hops(self) -> bool:
        """The header section kept so far has more than `MAX_HOPS` Received fields:
        a mail loop (RFC 5321 §6.3), which every pass through smtpgate, the MTA
        that submits to it and a relay it delivers to would otherwise keep going,
        a copy each time. Asked once the section is complete: one C-level scan."""
        return len(_RECEIVED.findall(self._buf)) > MAX_HOPS

    @property
    def has_nul(self) -> bool:
        """The header section kept so far holds a NUL octet (RFC 5322 §2.2: field
        bodies are printable US-ASCII and white space; §4.1's obsolete NUL must not
        be generated). Asked once the section is complete: one C-level scan."""
        return b"\x00" in self._buf
