"""The auth log: one structured record per AUTH attempt.

Each record goes twice: as one JSON line appended to ``[auth].log_file`` (the
source for reports, metrics and fail2ban-style tools) and as one readable line
to the ``smtpgate.auth`` logger (which the server sends to stderr).

Several server processes append to one file. The file is opened with
``O_APPEND`` and every record is one ``os.write`` of one whole line, so the
kernel places each record at the end in one piece: lines from different
processes never interleave, with no lock and no Python-side buffering that
could split a long line across two writes.

Usernames, reasons and mechanism names come from the client, and a CR, LF or
escape sequence in them must not forge a log line or drive a terminal. Each
value is escaped once, where it is written: in the JSON line and in the text
line's quoted ``user=`` and ``reason=`` by JSON's own escapes (``json_string``:
the value read back is the one the client sent, ``a\\b@x`` for the name
``a\b@x``), in the text line's unquoted fields by ``neutralize``. The record
itself keeps the values as sent, only bounded in length.
"""

from __future__ import annotations

import json
import logging
import os
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import fields as dataclass_fields
from datetime import UTC, datetime
from pathlib import Path

from smtpgate.smtp.peer_address import host_port

logger = logging.getLogger("smtpgate.auth")

#: The outcomes of an AUTH attempt: tempfail is a backend fault (454), cancelled
#: is the client's "*" (RFC 4954 §4) or a dropped connection, refused an AUTH
#: command the protocol refused before any exchange began (no STARTTLS yet, a
#: mechanism not offered, a login already made: no credential was looked at).
RESULTS: frozenset[str] = frozenset(("success", "failure", "tempfail", "cancelled", "refused"))
#: The result of an AUTH refused before any exchange (``smtp/events.AuthRefused``).
REFUSED = "refused"

#: Longest string field kept, in characters. Generous for any real username
#: (RFC 5321 caps an address at 254 octets); longer values are truncated so a
#: client cannot make one record arbitrarily large.
MAX_FIELD_CHARS = 320


def neutralize(value: str, limit: int = MAX_FIELD_CHARS, *, backslash: bool = True) -> str:
    r"""Make a client-supplied string safe for one log line.

    Control, format and line/paragraph-separator characters (Unicode Cc, Cf,
    Zl, Zp: CR, LF, ESC, DEL, C1, bidi overrides, U+2028 ...) become ``\xNN`` or
    ``\uNNNN``, and a backslash becomes ``\\`` so the escapes stay unambiguous
    (``backslash=False``: left as it is, for a display a person reads, where
    ``a\b`` doubled would be the wrong name).
    """
    if len(value) > limit:
        value = value[:limit] + "…"
    if value.isascii() and value.isprintable() and "\\" not in value:
        return value  # the common case: no ASCII control character (Cc) and no escape
    out: list[str] = []
    for c in value:
        if c == "\\" and backslash:
            out.append("\\\\")
        elif unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp", "Cs"):
            o = ord(c)
            out.append(
                f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}" if o < 0x10000 else f"\\U{o:08x}"
            )
        else:
            out.append(c)
    return "".join(out)


def _bounded(value: str, limit: int = MAX_FIELD_CHARS) -> str:
    return value[:limit] + "…" if len(value) > limit else value


def _json_escape(m: re.Match[str]) -> str:
    # Characters above U+FFFF as their UTF-16 pair, as JSON writes them (RFC 8259 §7).
    encoded = m[0].encode("utf-16-be", "surrogatepass")
    return "".join(f"\\u{int.from_bytes(encoded[i:i + 2]):04x}" for i in range(0, len(encoded), 2))


#: Where ``json.dumps(ensure_ascii=False)`` may leave something a terminal or a
#: reader acts on: DEL, C1, format characters (bidi overrides), line and paragraph
#: separators, lone surrogates (which UTF-8 cannot hold); ``_unsafe`` picks them
#: out. Below U+0020 JSON escapes by itself.
_JSON_UNSAFE = re.compile(r"[^\x00-\x7e]")


def _unsafe(m: re.Match[str]) -> str:
    if unicodedata.category(m[0]) in ("Cc", "Cf", "Zl", "Zp", "Cs"):
        return _json_escape(m)
    return m[0]


def json_string(value: object) -> str:
    """``value`` as JSON, every string in it escaped once by JSON's own escapes, with
    the characters `neutralize` makes visible written as ``\\uNNNN``: one line,
    nothing a terminal acts on, and ``json.loads`` gives back the value."""
    return _JSON_UNSAFE.sub(_unsafe, json.dumps(value, ensure_ascii=False))


@dataclass(frozen=True, slots=True)
class AuthRecord:
    """One AUTH attempt; field names are the JSON keys."""

    time: str
    listener: str
    client_ip: str
    client_port: int
    tls: str | None
    mechanism: str
    username: str
    result: str
    reason: str
    session: str
    #: How the attempt reached smtpgate: "smtp" (its own listeners), or the
    #: protocol of an auth listener ("dovecot", "auth_http"); last, so that
    #: filters written for the fields before it keep matching.
    front_door: str = "smtp"

    def json_line(self) -> bytes:
        # The fields in order, without ``asdict``'s recursive copy (half the cost of
        # a login's record).
        fields = {name: getattr(self, name) for name in _FIELDS}
        return (json_string(fields) + "\n").encode("utf-8")

    def text(self) -> str:
        n = neutralize
        return (
            f"auth {self.result} listener={n(self.listener)} "
            f"client={host_port(n(self.client_ip), self.client_port)} "
            f"tls={n(self.tls or 'none')} mech={n(self.mechanism or '-')} "
            f"user={json_string(self.username)} reason={json_string(self.reason)} "
            f"session={n(self.session)}"
            + ("" if self.front_door == "smtp" else f" door={n(self.front_door)}")
        )


_FIELDS = tuple(f.name for f in dataclass_fields(AuthRecord))


def _utc_stamp() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class AuthLog:
    """Writes auth records; ``path`` None logs to the ``smtpgate.auth`` logger only.

    ``write`` never raises: a full disk must not turn into failed logins. A
    write error is reported on the logger (once, until writes succeed again).

    Raises (constructor):
        OSError: the log file cannot be opened.
    """

    def __init__(self, path: Path | None, *, clock: Callable[[], str] = _utc_stamp) -> None:
        self._path = path
        self._clock = clock
        self._fd: int | None = None
        self._failing = False
        if path is not None:
            self._fd = self._open(path)

    @staticmethod
    def _open(path: Path) -> int:
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)

    @property
    def path(self) -> Path | None:
        return self._path

    def make_record(
        self,
        *,
        listener: str,
        client_ip: str,
        client_port: int,
        tls: str | None,
        mechanism: str,
        username: str,
        result: str,
        reason: str,
        session: str,
        front_door: str = "smtp",
    ) -> AuthRecord:
        """Build a record stamped now, every string field bounded (``MAX_FIELD_CHARS``)
        and kept as sent: it is escaped where it is written (``json_line``, ``text``).

        Raises:
            ValueError: ``result`` is not one of ``RESULTS`` (a bug in the caller).
        """
        if result not in RESULTS:
            raise ValueError(f"unknown auth result {result!r}")
        n = _bounded
        return AuthRecord(
            time=self._clock(),
            listener=n(listener),
            client_ip=n(client_ip),
            client_port=client_port,
            tls=None if tls is None else n(tls),
            mechanism=n(mechanism),
            username=n(username),
            result=result,
            reason=n(reason),
            session=n(session),
            front_door=n(front_door),
        )

    def write(self, record: AuthRecord) -> None:
        """Emit ``record`` to the file (one write) and to the logger."""
        level = logging.WARNING if record.result == "tempfail" else logging.INFO
        logger.log(level, "%s", record.text())
        if self._fd is None:
            return
        line = record.json_line()
        if self._failing:
            # A record cut short by a full disk may end the file, this process's or
            # another's: a newline first, so that this record starts a line of its
            # own instead of being glued to the broken one (readers skip blank lines).
            line = b"\n" + line
        try:
            written = os.write(self._fd, line)
            if written != len(line):
                self._drop_partial(written)
                raise OSError(f"short write ({written} of {len(line)} bytes)")
        except OSError as e:
            if not self._failing:
                logger.error("cannot write auth log %s: %s", self._path, e)
            self._failing = True
        else:
            self._failing = False

    def _drop_partial(self, written: int) -> None:
        """Cut off the ``written`` bytes of a record the disk took only in part, if
        they still end the file (no other process appended since), so the file
        keeps whole lines; else the newline of the next write ends them."""
        if self._fd is None or written <= 0:
            return
        try:
            end = os.lseek(self._fd, 0, os.SEEK_CUR)
            if os.fstat(self._fd).st_size == end:
                os.ftruncate(self._fd, end - written)
        except OSError:
            pass

    def reopen(self) -> None:
        """Open the file anew (after log rotation moved it away)."""
        if self._path is None:
            return
        fd = self._open(self._path)
        old, self._fd = self._fd, fd
        if old is not None:
            os.close(old)

    def close(self) -> None:
        """Close the file; idempotent."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
