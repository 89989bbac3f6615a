"""Parse SMTP replies (RFC 5321 §4.2) incrementally, as a client receives them.

Theory of operation: bytes go in with `ReplyParser.feed`, complete replies come
out of `next_reply`, one at a time, in order. A reply is one or more lines with
the same three-digit code; every line but the last has a "-" after the code.

Leniencies, each because real servers need it: a bare LF ends a line as well as
CRLF (some appliances and test servers send LF only); a final line of just the
code, with nothing after it, is a valid last line (RFC 5321 §4.2 allows the text
to be omitted). Anything else that is not a reply is a `RemoteProtocolError`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from smtpgate.client.errors import RemoteProtocolError, TruncatedReply

#: RFC 5321 §4.5.3.1.5 limits a reply line to 512 octets with CRLF. Servers exceed
#: it in the wild (long EHLO keywords, verbose 5xx texts), so we allow eight times
#: that; past it the peer is not talking SMTP and buffering more is a memory risk.
MAX_LINE_LENGTH = 4096
#: A SASL challenge line ("334 " and its base64) may be longer: RFC 4954 §4 names
#: 12288 octets as enough for every deployed mechanism (a Kerberos ticket, an
#: OAuth error with long URLs), and servers accept responses that long.
MAX_CHALLENGE_LINE_LENGTH = 12288 + 4
#: A reply of more lines than this is not a reply (large EHLO lists have ~30).
MAX_REPLY_LINES = 200

# RFC 3463 §2: class "." subject "." detail, 1-3 digits each; RFC 2034 §4 puts it
# first in the text, followed by a space, and its class equals the code's first digit.
_ENHANCED = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})(?: |\Z)")


#: RFC 4954 §4: the code of a SASL challenge ("334 " base64).
AUTH_CHALLENGE_CODE = 334


def split_challenge(line: bytes) -> tuple[bytes, bytes] | None:
    """(code and space, base64 text) of one reply line that is a SASL challenge,
    else None; the line without its CRLF."""
    head, text = line[:4], line[4:]
    if head != b"%d " % AUTH_CHALLENGE_CODE:
        return None
    return head, text


@dataclass(frozen=True, slots=True)
class ServerReply:
    """One complete reply. ``enhanced`` is the RFC 3463 code ("5.1.1") when the
    server sent one (RFC 2034), and is stripped from ``lines``."""

    code: int
    enhanced: str | None
    lines: tuple[str, ...]

    @property
    def text(self) -> str:
        """All lines joined with spaces (for logs and bounce texts)."""
        return " ".join(self.lines)

    @property
    def is_positive(self) -> bool:
        return 200 <= self.code < 300

    @property
    def is_temporary(self) -> bool:
        return 400 <= self.code < 500

    @property
    def is_permanent(self) -> bool:
        return 500 <= self.code < 600

    def __str__(self) -> str:
        parts = [str(self.code)]
        if self.enhanced:
            parts.append(self.enhanced)
        if self.text:
            parts.append(self.text)
        return " ".join(parts)


class ReplyParser:
    """Incremental reply parser; see the module docstring."""

    def __init__(
        self, *, max_line_length: int = MAX_LINE_LENGTH, max_lines: int = MAX_REPLY_LINES
    ) -> None:
        self._buf = bytearray()
        self._pos = 0  # start of the first unparsed line in _buf
        self._lines: list[tuple[int, str]] = []  # lines of the reply being assembled
        self._eof = False
        self._max_line = max_line_length
        self._max_lines = max_lines

    @property
    def eof(self) -> bool:
        """The peer closed its side (``feed(b"")``)."""
        return self._eof

    @property
    def idle(self) -> bool:
        """Nothing buffered and no reply half-assembled."""
        return self._pos == len(self._buf) and not self._lines

    def feed(self, data: bytes) -> None:
        """Add received bytes; ``b""`` means the peer closed the connection."""
        if not data:
            self._eof = True
            return
        if self._eof:
            raise RemoteProtocolError("data after end of stream")
        self._buf += data

    def discard(self) -> int:
        """Drop everything buffered (RFC 3207 §4.2 after STARTTLS); returns the count."""
        n = len(self._buf) - self._pos
        self._buf.clear()
        self._pos = 0
        self._lines.clear()
        return n

    def next_reply(self) -> ServerReply | None:
        """The next complete reply, or None if more bytes are needed.

        Raises:
            RemoteProtocolError: malformed reply, or too long.
            TruncatedReply: the stream ended inside a reply.
        """
        while True:
            end = self._buf.find(b"\n", self._pos)
            limit = self._limit()
            if end < 0:
                if len(self._buf) - self._pos > limit:
                    raise RemoteProtocolError("reply line too long")
                if self._eof and not self.idle:
                    raise TruncatedReply("connection closed in the middle of a reply")
                self._compact()
                return None
            raw = bytes(self._buf[self._pos : end])
            self._pos = end + 1
            if len(raw) > limit:
                raise RemoteProtocolError("reply line too long")
            if raw.endswith(b"\r"):
                raw = raw[:-1]
            code, last, text = _parse_line(raw)
            if self._lines and self._lines[0][0] != code:
                # RFC 5321 §4.2.1: every line of a multiline reply has the same code.
                raise RemoteProtocolError("reply lines with different codes")
            self._lines.append((code, text))
            if len(self._lines) > self._max_lines:
                raise RemoteProtocolError("reply has too many lines")
            if last:
                lines, self._lines = self._lines, []
                return _build(code, [t for _, t in lines])

    def _limit(self) -> int:
        """The longest line allowed for the one at ``_pos``: a 334 challenge line
        (a one-line reply, never a continuation) may be as long as RFC 4954 allows."""
        if self._buf.startswith(b"%d " % AUTH_CHALLENGE_CODE, self._pos) and not self._lines:
            return max(self._max_line, MAX_CHALLENGE_LINE_LENGTH)
        return self._max_line

    def _compact(self) -> None:
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0


def _parse_line(raw: bytes) -> tuple[int, bool, str]:
    # RFC 5321 §4.2: Reply-line = *( Reply-code "-" [ textstring ] CRLF )
    #                             Reply-code [ SP textstring ] CRLF
    # and the first digit is 2-5 (1yz is unused in SMTP).
    if len(raw) < 3 or not raw[:3].isdigit() or raw[0:1] not in b"2345":
        raise RemoteProtocolError(f"not an SMTP reply: {raw[:40]!r}")
    sep = raw[3:4]
    if sep not in (b"", b" ", b"-"):
        raise RemoteProtocolError(f"bad separator in reply: {raw[:40]!r}")
    # Replies may carry UTF-8 (RFC 6531 servers); decode leniently, they are only text.
    return int(raw[:3]), sep != b"-", raw[4:].decode("utf-8", "replace")


def _build(code: int, texts: list[str]) -> ServerReply:
    enhanced = None
    m = _ENHANCED.match(texts[0])
    if m and m.group(1) == str(code)[0]:
        enhanced = f"{m.group(1)}.{m.group(2)}.{m.group(3)}"
        prefix = enhanced + " "
        texts = [
            t[len(prefix) :] if t.startswith(prefix) else ("" if t == enhanced else t)
            for t in texts
        ]
    return ServerReply(code, enhanced, tuple(texts))
