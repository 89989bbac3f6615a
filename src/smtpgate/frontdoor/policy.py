"""Postfix SMTP access policy delegation (``check_policy_service``, Postfix's
SMTPD_POLICY_README): the attribute protocol, sans-IO.

Theory of operation
-------------------
Postfix keeps a connection open and sends one request after another: lines of
``name=value`` ending in LF, a blank line ending the request. The answer is
``action=...`` and a blank line; one answer per request, in order. The request
carries the SMTP session's facts (``request=smtpd_access_policy``,
``protocol_state``, ``sasl_username``, ``sender``, ``recipient``,
``recipient_count``, ``client_address``, ``size``, ``instance`` and more; Postfix
adds attributes over its versions, so unknown names are kept, not refused).

``PolicyParser.receive_data`` returns the complete requests; at the first thing
that is not this protocol (a line without ``=`` or whose name has a control
character, bytes that are not UTF-8, a line, a request or an attribute count over
the limits below, a request that is not ``smtpd_access_policy``) it sets
``error`` and reads no further. A value may hold any character but LF: it is the
SMTP client's text as Postfix read it. The shell
answers the requests before it, then closes the connection: Postfix then answers
its client with a temporary error (``451 4.3.5 Server configuration problem``)
and tries again later, so a broken peer fails closed, never open.
"""

from __future__ import annotations

from dataclasses import dataclass

from smtpgate.smtp.replies import Reply

#: One attribute line, at most. Postfix's longest values are addresses (an SMTP
#: path is at most 256 octets) and TLS certificate names; 4 KiB leaves room.
MAX_LINE = 4096
#: Attributes in one request (Postfix 3.7 sends about 30).
MAX_ATTRIBUTES = 100
#: One request, at most (the two limits above bound it too; this bounds what a
#: peer can make us buffer without a newline arriving).
MAX_REQUEST = 64 * 1024


class PolicyProtocolError(ValueError):
    """Not Postfix's policy protocol; the text goes to our log only."""


@dataclass(frozen=True, slots=True)
class PolicyRequest:
    """One request's attributes (each "" when Postfix did not send it)."""

    attrs: dict[str, str]

    def get(self, name: str) -> str:
        return self.attrs.get(name, "")

    @property
    def protocol_state(self) -> str:
        return self.get("protocol_state").upper()

    @property
    def recipient_count(self) -> int:
        text = self.get("recipient_count")
        # ASCII digits only: "²" passes str.isdigit() but not int().
        return int(text) if text.isascii() and text.isdigit() and len(text) < 10 else 0

    @property
    def client_port(self) -> int:
        """The SMTP client's TCP port; 0 when Postfix sent none or something that is
        no port (ASCII digits up to 65535 only: "²" and "١٢" pass str.isdigit())."""
        text = self.get("client_port")
        port = int(text) if text.isascii() and text.isdigit() and len(text) <= 5 else 0
        return port if port <= 65535 else 0


class PolicyParser:
    """Splits the byte stream into requests."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._attrs: dict[str, str] = {}
        self._size = 0
        #: Why the stream stopped being the policy protocol (None: it has not).
        self.error: str | None = None

    def receive_data(self, data: bytes) -> list[PolicyRequest]:
        """The requests ``data`` completed, in order, up to the first protocol error
        (then ``error`` is set and nothing more is read)."""
        if self.error is not None:
            return []
        out: list[PolicyRequest] = []
        self._buf += data
        try:
            self._parse(out)
        except PolicyProtocolError as e:
            self.error = str(e)
            self._buf.clear()
        return out

    @property
    def request_unfinished(self) -> bool:
        """Part of a request has arrived (a line without its newline, or attributes
        without the empty line that ends them). Postfix writes a request whole and
        may then stay silent for hours; a request left half-sent is given a
        deadline by the shell (``server/front_doors.py``)."""
        return self.error is None and bool(self._buf or self._attrs)

    def _parse(self, out: list[PolicyRequest]) -> None:
        while True:
            nl = self._buf.find(b"\n")
            if nl < 0:
                if len(self._buf) > MAX_LINE:
                    raise PolicyProtocolError(f"line over {MAX_LINE} bytes")
                return
            line = bytes(self._buf[:nl])
            del self._buf[: nl + 1]
            if len(line) > MAX_LINE:
                raise PolicyProtocolError(f"line over {MAX_LINE} bytes")
            if line.endswith(b"\r"):
                line = line[:-1]  # telnet-style tests send CRLF; Postfix sends LF
            if not line:
                out.append(self._end())
                continue
            self._size += len(line) + 1
            if self._size > MAX_REQUEST:
                raise PolicyProtocolError(f"request over {MAX_REQUEST} bytes")
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError:
                raise PolicyProtocolError("attribute is not UTF-8") from None
            name, sep, value = text.partition("=")
            # Only the name is checked for control characters: a value is the SMTP
            # client's text as Postfix read it (a quoted-pair's control character
            # in ``sender`` arrives raw), so it may hold any character but LF; it is
            # escaped wherever it is logged.
            if not sep or not name or not name.isprintable():
                raise PolicyProtocolError("not a name=value line")
            if name in self._attrs:
                raise PolicyProtocolError(f"attribute {name} repeated")
            if len(self._attrs) >= MAX_ATTRIBUTES:
                raise PolicyProtocolError(f"more than {MAX_ATTRIBUTES} attributes")
            self._attrs[name] = value

    def _end(self) -> PolicyRequest:
        attrs, self._attrs, self._size = self._attrs, {}, 0
        if attrs.get("request") != "smtpd_access_policy":
            raise PolicyProtocolError("not an smtpd_access_policy request")
        return PolicyRequest(attrs)


#: The action that leaves the decision to Postfix's next restriction.
DUNNO = "DUNNO"


def action_for(reply: Reply) -> str:
    """smtpgate's SMTP reply as a policy action: a temporary one as
    ``DEFER_IF_PERMIT`` (Postfix still rejects if a later restriction would), a
    permanent one as ``REJECT``, each with the enhanced code and text."""
    verb = "DEFER_IF_PERMIT" if reply.is_temporary else "REJECT"
    return f"{verb} {reply.enhanced} {reply.text}"


def format_action(action: str) -> bytes:
    """One answer on the wire.

    Raises:
        ValueError: the action has a line break (a bug, never client data).
    """
    if "\n" in action or "\r" in action:
        raise ValueError("line break in a policy action")
    return f"action={action}\n\n".encode()
