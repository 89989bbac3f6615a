"""The BDAT reader (RFC 3030 CHUNKING): a command's argument, and the chunks' octets.

Theory of operation
-------------------
A BDAT chunk is exactly ``size`` raw octets: no dot-stuffing, no terminator, so
where a chunk ends is decided by its length alone and nothing inside it (a
``\\r\\n.\\r\\n``, a command line) can end the message or be read as a command.
That is the smuggling defence: the engine counts octets, never looks for lines.

The message content is otherwise held to the same rules as DATA (docs/smtp.md,
"BDAT"): a bare CR or LF makes the message refused (or, with the
``normalize`` leniency, a bare LF becomes CRLF), whatever BODY said, because
every next hop smtpgate writes to (a Maildir reader, a relay over DATA) takes
CRLF as the only line end. A CR at the end of a chunk is judged with the first
octet of the next chunk, so any split of the same octets gives the same verdict
(a property test holds this).

A message whose last chunk does not end in CRLF gets one (`ChunkStream.end`'s
``tail``), unless it is BODY=BINARYMIME (a single binary part ends where its
octets end): DATA cannot deliver such a message (its end is CRLF.CRLF), and what a
Maildir reader appends to the file, or a filter reads as the last line, should
not depend on whether the client used BDAT. Postfix's cleanup does the same.
"""

from __future__ import annotations

import re

from smtpgate.smtp.ascii_case import upper_ascii
from smtpgate.smtp.data import DataEnd

_BARE_LF = re.compile(rb"(?<!\r)\n")
#: A chunk-size has at most this many digits (RFC 3030 §2: 1*DIGIT). 10^18
#: octets is past any limit; a longer number is a framing error, not a size.
MAX_SIZE_DIGITS = 18


class BdatSyntaxError(ValueError):
    """The BDAT argument is not ``chunk-size [LAST]``: the chunk's end is unknown."""


def parse_bdat(arg: str) -> tuple[int, bool]:
    """``BDAT`` argument to (chunk size, last). RFC 3030 §2:
    ``bdat-cmd ::= "BDAT" SP chunk-size [ SP end-marker ] CR LF``. Extra spaces
    around the words are let pass, as for every other command (and Postfix): the
    size is still read exactly, and a refusal here ends the session."""
    parts = [p for p in arg.split(" ") if p]
    if not 1 <= len(parts) <= 2:
        raise BdatSyntaxError(arg)
    size = parts[0]
    if not (size.isascii() and size.isdigit()) or len(size) > MAX_SIZE_DIGITS:
        raise BdatSyntaxError(arg)
    if len(parts) == 2 and upper_ascii(parts[1]) != "LAST":
        raise BdatSyntaxError(arg)
    return int(size), len(parts) == 2


class ChunkStream:
    """The octets of one message's chunks, checked as they arrive.

    ``feed`` returns the content now final (empty once the message is doomed);
    ``end`` says how the message ended, in the terms of DATA's `DataEnd`.
    """

    __slots__ = ("_bare_cr", "_bare_lf", "_final_crlf", "_held_cr", "_last", "_max_size",
                 "_normalize", "_raw_size", "_size", "tail")

    def __init__(self, max_size: int, *, normalize_lf: bool = False,
                 final_crlf: bool = True):
        """``final_crlf``: end content that lacks it with CRLF (not BINARYMIME, whose
        octets, a single binary part's last ones too, are kept as sent)."""
        self._max_size = max_size
        self._normalize = normalize_lf
        self._final_crlf = final_crlf
        self._held_cr = False  # the last octet fed was a CR (not yet judged)
        self._raw_size = 0
        self._size = 0
        self._bare_lf = False
        self._bare_cr = False
        #: The last two octets of the content given out (a CRLF at its end?).
        self._last = b""
        #: Set by `end`: the octets the content still needs, a final CRLF or none.
        self.tail = b""

    @property
    def too_big(self) -> bool:
        return self._raw_size > self._max_size

    @property
    def doomed(self) -> bool:
        """The message will be refused whatever follows."""
        return self.too_big or self._bare_cr or (self._bare_lf and not self._normalize)

    def feed(self, data: bytes) -> bytes:
        self._raw_size += len(data)
        seg = b"\r" + data if self._held_cr else data
        self._held_cr = seg.endswith(b"\r")
        if self._held_cr:
            seg = seg[:-1]
        # A CRLF never straddles ``seg``'s ends (a final CR is held back), so
        # counting inside it is exact.
        crlf = seg.count(b"\r\n")
        if seg.count(b"\n") != crlf:
            self._bare_lf = True
        if seg.count(b"\r") != crlf:
            self._bare_cr = True
        if self.doomed:
            return b""
        if self._normalize and self._bare_lf:
            seg = _BARE_LF.sub(b"\r\n", seg)
        self._size += len(seg)
        if seg:
            self._last = (self._last + seg)[-2:]
        return seg

    def end(self) -> DataEnd:
        """The last chunk was read: a CR still held back is bare, and content that
        does not end in CRLF gets one in ``tail`` (counted in the size)."""
        if self._held_cr:
            self._held_cr = False
            self._bare_cr = True
        if (self._final_crlf and self._size and self._last != b"\r\n" and not self.doomed
                and not self.tail):
            self.tail = b"\r\n"
            self._size += len(self.tail)
        return DataEnd(self.too_big, self._bare_lf, self._bare_cr, self._size, self._raw_size)
