"""A sans-IO SMTP client: formats commands, parses replies, tracks EHLO extensions.

Theory of operation
-------------------
The mirror of the server engine, in the h11 shape: the I/O layer feeds received
bytes with `receive_data` (``b""`` at end of stream) and drains `next_event`,
which returns a `ServerReply`, `NEED_DATA` or, once the stream has ended,
`CLOSED`. Every command method returns the bytes to write and records that one
reply is due for it, so the engine knows which reply answers EHLO (and updates
`extensions` from it) even when commands are pipelined (RFC 2920).

The engine decides nothing: which command to send next and what a reply code
means for the mail is the caller's business. It does refuse to *format* what
would be a protocol violation or an injection (a CR or LF in an argument, a
non-ASCII address without SMTPUTF8) with `LocalProtocolError`.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections import deque
from collections.abc import Sequence
from enum import Enum

from smtpgate.client.errors import LocalProtocolError, RemoteProtocolError
from smtpgate.client.extensions import Extensions
from smtpgate.client.replies import ReplyParser, ServerReply


class Sentinel(Enum):
    #: No complete reply yet: feed more bytes.
    NEED_DATA = "NEED_DATA"
    #: The server closed the connection and every reply has been returned.
    CLOSED = "CLOSED"


NEED_DATA = Sentinel.NEED_DATA
CLOSED = Sentinel.CLOSED


class _Awaiting(Enum):
    GREETING = "greeting"
    EHLO = "ehlo"
    OTHER = "other"


# RFC 4422 §3.1: sasl-mech = 1*20mech-char; mech-char = UPPER-ALPHA / DIGIT / "-" / "_"
_SASL_NAME = re.compile(r"[A-Z0-9_-]{1,20}\Z")
# RFC 5321 §4.1.2: esmtp-keyword ["=" esmtp-value]; esmtp-value excludes SP, "=" and
# controls (RFC 6531 §3.3 also allows UTF-8 in the value).
_PARAM = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*(=[^\x00-\x20=\x7f]+)?\Z")
_FORBIDDEN_IN_ARG = re.compile(r"[\x00\r\n]")
_FORBIDDEN_IN_PATH = re.compile(r"[\x00-\x1f\x7f<>]")

_EOL = re.compile(rb"\r\n|\r|\n")


#: The longest text line RFC 5321 §4.5.3.1.6 lets a client send, without its CRLF.
MAX_LINE = 998
#: Anchored at a line's start: unanchored, a search that fails on a line of up to
#: 998 octets was tried again from each of its octets (quadratic: 20 s of the
#: delivery process's loop for a 12 MB message of 998-octet lines, 1.7 s for a
#: 12 MB base64 attachment). Content is CRLF-only by the time it runs.
_LONG_LINE = re.compile(rb"(?m)^[^\r\n]{%d}[^\r\n]+" % MAX_LINE)


def _fold_long_line(m: re.Match[bytes]) -> bytes:
    """One line over ``MAX_LINE`` octets as several within it: each piece after the
    first starts with a space (what Postfix's smtp_line_length_limit does: a long
    header line becomes a folded one, and a long body line, which only a broken
    or hand-made message has, keeps all its text)."""
    line = m.group(0)
    pieces = [line[:MAX_LINE]]
    step = MAX_LINE - 1
    pieces += [b" " + line[i:i + step] for i in range(MAX_LINE, len(line), step)]
    return b"\r\n".join(pieces)


def dot_stuff(content: bytes) -> bytes:
    """The DATA payload for ``content``: CRLF line ends, lines of at most 998 octets,
    dot-stuffed, ending CRLF.CRLF.

    RFC 5321 §4.5.2: a line starting with "." gets one more. Bare CR and bare LF
    are turned into CRLF first: RFC 5321 §2.3.8 forbids them, and a server that
    reads a bare LF as a line end would otherwise see "<LF>.<LF>" as the end of the
    data, letting one message smuggle a second (the 2023 "SMTP smuggling" bugs).
    A line longer than RFC 5321 §4.5.3.1.6 allows (the server accepted it from a
    client, as Postfix does) is broken into lines within it (`_fold_long_line`):
    passed on whole, a strict next hop refuses the message.
    """
    crlf = content.count(b"\r\n")
    if content.count(b"\r") != crlf or content.count(b"\n") != crlf:
        content = _EOL.sub(b"\r\n", content)
    if len(content) > MAX_LINE and _LONG_LINE.search(content):
        content = _LONG_LINE.sub(_fold_long_line, content)
    if content.startswith(b"."):
        content = b"." + content
    content = content.replace(b"\r\n.", b"\r\n..")
    if content and not content.endswith(b"\r\n"):
        content += b"\r\n"
    return content + b".\r\n"


def xtext(value: str) -> str:
    """RFC 3461 §4 xtext: "+" and "=", controls, SP and non-ASCII octets become "+HH"."""
    out = []
    for byte in value.encode("utf-8"):
        if 33 <= byte <= 126 and byte not in (0x2B, 0x3D):
            out.append(chr(byte))
        else:
            out.append(f"+{byte:02X}")
    return "".join(out)


class ClientEngine:
    """One SMTP client connection's protocol state; see the module docstring."""

    def __init__(self, *, expect_greeting: bool = True) -> None:
        self._parser = ReplyParser()
        self._awaiting: deque[_Awaiting] = deque()
        if expect_greeting:
            self._awaiting.append(_Awaiting.GREETING)
        self._extensions: Extensions | None = None
        self._utf8_transaction = False

    # --- input ------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the server; ``b""`` means it closed the connection."""
        self._parser.feed(data)

    def next_event(self) -> ServerReply | Sentinel:
        """The next reply, `NEED_DATA`, or `CLOSED` after the stream ended.

        Raises:
            RemoteProtocolError: the server sent something that is not a reply.
        """
        reply = self._parser.next_reply()
        if reply is None:
            return CLOSED if self._parser.eof else NEED_DATA
        kind = self._awaiting.popleft() if self._awaiting else None
        if kind is _Awaiting.EHLO and reply.code == 250:
            self._extensions = Extensions.from_ehlo_lines(reply.lines[1:])
        return reply

    @property
    def extensions(self) -> Extensions:
        """From the last successful EHLO; empty before it (or after HELO)."""
        return self._extensions if self._extensions is not None else Extensions()

    @property
    def esmtp(self) -> bool:
        """Whether the last EHLO succeeded."""
        return self._extensions is not None

    @property
    def unread_input(self) -> bool:
        """Bytes from the server not yet taken as a reply: with no command
        outstanding, a reply nobody asked for (the replies after it would each
        answer the command before)."""
        return not self._parser.idle

    def unsolicited_replies(self, data: bytes = b"") -> list[ServerReply]:
        """The complete replies in what is buffered plus ``data``, taken as answers
        to no command (the replies owed stay owed, so the next one read still
        answers the next command). Only the caller knows when this holds: a client
        that waits for each reply before it sends again, asking before it sends,
        when every byte here came unasked. A reply not yet complete stays buffered.

        Raises:
            RemoteProtocolError: what came is not a reply.
        """
        if data:  # b"" would say the stream ended
            self._parser.feed(data)
        replies = []
        while (reply := self._parser.next_reply()) is not None:
            replies.append(reply)
        return replies

    @property
    def replies_due(self) -> int:
        """Replies still owed for the commands formatted so far."""
        return len(self._awaiting)

    def tls_established(self) -> int:
        """Call once TLS is up after a 220 to STARTTLS; returns the bytes discarded.

        RFC 3207 §4.2: the client "MUST discard any knowledge obtained from the
        server" before TLS, so the extensions are forgotten (send EHLO again), and
        anything received in clear after the 220 is dropped: it can only be an
        injection by someone on the path.
        """
        self._extensions = None
        self._awaiting.clear()
        return self._parser.discard()

    # --- commands ---------------------------------------------------------------

    def ehlo(self, name: str) -> bytes:
        """RFC 5321 §4.1.1.1; a 250 reply updates `extensions`."""
        self._check_domain(name)
        self._extensions = None
        return self._command(f"EHLO {name}", _Awaiting.EHLO)

    def lhlo(self, name: str) -> bytes:
        """RFC 2033 §4.1: LMTP's EHLO; a 250 reply updates `extensions` likewise."""
        self._check_domain(name)
        self._extensions = None
        return self._command(f"LHLO {name}", _Awaiting.EHLO)

    def helo(self, name: str) -> bytes:
        """RFC 5321 §4.1.1.1: for servers that refuse EHLO (no extensions then)."""
        self._check_domain(name)
        self._extensions = None
        return self._command(f"HELO {name}")

    def starttls(self) -> bytes:
        """RFC 3207 §4; after a 220, do the handshake and call `tls_established`."""
        return self._command("STARTTLS")

    def auth(self, mechanism: str, initial: bytes | None) -> bytes:
        """RFC 4954 §4: ``AUTH mech [initial-response]``; an empty initial response
        is sent as "=", None sends none (the server then sends an empty challenge)."""
        if not _SASL_NAME.match(mechanism):
            raise LocalProtocolError(f"not a SASL mechanism name: {mechanism!r}")
        if initial is None:
            return self._command(f"AUTH {mechanism}")
        encoded = base64.b64encode(initial).decode("ascii") or "="
        return self._command(f"AUTH {mechanism} {encoded}")

    def auth_response(self, data: bytes) -> bytes:
        """RFC 4954 §4: the base64 answer to a 334 challenge (an empty line for b"")."""
        return self._command(base64.b64encode(data).decode("ascii"))

    def auth_cancel(self) -> bytes:
        """RFC 4954 §4: "*" cancels the exchange; the server answers 501."""
        return self._command("*")

    @staticmethod
    def challenge(reply: ServerReply) -> bytes:
        """Decode the base64 challenge of a 334 reply.

        Raises:
            RemoteProtocolError: not a 334, or not valid base64.
        """
        if reply.code != 334:
            raise RemoteProtocolError(f"expected a 334 challenge, got {reply.code}")
        text = reply.lines[0].strip() if reply.lines else ""
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise RemoteProtocolError("challenge is not valid base64") from None

    def mail(self, sender: str, params: Sequence[str] = ()) -> bytes:
        """``MAIL FROM:<sender> params``; "" is the null reverse-path ``<>``.

        RFC 6531 §3.4: a non-ASCII address needs the SMTPUTF8 parameter here, and
        then RCPT may carry non-ASCII addresses too.
        """
        self._utf8_transaction = any(p.upper() == "SMTPUTF8" for p in params)
        self._check_path(sender)
        return self._command(f"MAIL FROM:<{sender}>{self._params(params)}")

    def rcpt(self, recipient: str, params: Sequence[str] = ()) -> bytes:
        """``RCPT TO:<recipient> params``."""
        if not recipient:
            raise LocalProtocolError("empty recipient")
        self._check_path(recipient)
        return self._command(f"RCPT TO:<{recipient}>{self._params(params)}")

    def data(self) -> bytes:
        """RFC 5321 §4.1.1.4: expect 354, then send `message`."""
        return self._command("DATA")

    def message(self, content: bytes) -> bytes:
        """The message after a 354: see `dot_stuff`. One reply is due for it."""
        self._awaiting.append(_Awaiting.OTHER)
        return dot_stuff(content)

    def bdat(self, chunk: bytes, *, last: bool = False) -> bytes:
        """RFC 3030 §2: ``BDAT <size> [LAST]`` and the chunk's octets, sent as they
        are (no dot-stuffing; the size frames them). One reply is due. The caller
        checks `Extensions.chunking` first; the content rules are the caller's:
        a message for a server that refuses bare CR/LF must already use CRLF."""
        line = f"BDAT {len(chunk)}{' LAST' if last else ''}"
        return self._command(line) + chunk

    def rset(self) -> bytes:
        return self._command("RSET")

    def noop(self) -> bytes:
        return self._command("NOOP")

    def quit(self) -> bytes:
        return self._command("QUIT")

    # --- helpers ----------------------------------------------------------------

    def _command(self, line: str, awaiting: _Awaiting = _Awaiting.OTHER) -> bytes:
        if _FORBIDDEN_IN_ARG.search(line):
            raise LocalProtocolError("CR, LF or NUL in a command")
        self._awaiting.append(awaiting)
        return line.encode("utf-8") + b"\r\n"

    @staticmethod
    def _check_domain(name: str) -> None:
        if not name or any(c.isspace() or c in "<>" for c in name) or not name.isascii():
            raise LocalProtocolError(f"invalid EHLO name {name!r}")

    def _check_path(self, address: str) -> None:
        if _FORBIDDEN_IN_PATH.search(address):
            raise LocalProtocolError("control character or angle bracket in an address")
        if not address.isascii() and not self._utf8_transaction:
            raise LocalProtocolError("non-ASCII address without SMTPUTF8 (RFC 6531 §3.4)")

    @staticmethod
    def _params(params: Sequence[str]) -> str:
        for p in params:
            if not _PARAM.match(p):
                raise LocalProtocolError(f"invalid ESMTP parameter {p!r}")
        return "".join(" " + p for p in params)
