"""The swaks-style transcript of a tool session, with SASL steps decoded and secrets masked.

Lines are ``->`` (we sent), ``<-`` (the server sent), ``  >``/``  <`` (the decoded
SASL payload of the line above), ``==`` (what happened: TLS started, verified)
and ``**`` (an error). Every line is recorded as an `Entry` so that ``--json``
carries exactly what the text shows.

Masking (what never appears in a transcript, text or JSON): the password, the
bearer token, and anything that allows an offline guess of the password from a
pasted transcript: the SCRAM ClientProof, the SCRAM ServerSignature (``v=``: with
the salt, the iteration count and the nonces shown, it tests a guessed password as
well as the proof does) and the CRAM-MD5 digest. The base64 of a masked payload is
masked as a whole, since it would reveal the same.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Literal

from smtpgate import mechanism_facts as facts
from smtpgate.visible import visible

if TYPE_CHECKING:
    from smtpgate.client.auth import ClientAuthResult

MASK = "********"

Kind = Literal["send", "recv", "sasl-send", "sasl-recv", "info", "error"]

PREFIX: dict[Kind, str] = {
    "send": "->",
    "recv": "<-",
    "sasl-send": "  >",
    "sasl-recv": "  <",
    "info": "==",
    "error": "**",
}


@dataclass(frozen=True, slots=True)
class Entry:
    kind: Kind
    text: str
    tls: bool = False

    def render(self) -> str:
        return f"{PREFIX[self.kind]} {self.text}"

    def to_json(self) -> dict[str, object]:
        return {"dir": PREFIX[self.kind].strip(), "kind": self.kind, "text": self.text,
                "tls": self.tls}


@dataclass
class Transcript:
    """An append-only list of entries; ``listener`` sees each as it is added."""

    entries: list[Entry] = field(default_factory=list)
    listener: Callable[[Entry], None] | None = None
    #: Applied to every text added (the session's ``Masker.text``): a server's reply
    #: quoted in an error line may hold what it was sent.
    scrub: Callable[[str], str] | None = None

    def add(self, kind: Kind, text: str, tls: bool = False) -> None:
        # Every line, not only those received: an error or info line quotes the
        # server too ("STARTTLS refused: <reply>"). Escaping is idempotent, so a
        # received line, already `printable`, stays as it is. A tab moves nothing
        # and folds the header lines of a message sent: it stays.
        text = visible(self.scrub(text) if self.scrub is not None else text, keep="\t")
        entry = Entry(kind, text, tls)
        self.entries.append(entry)
        if self.listener is not None:
            self.listener(entry)

    def lines(self) -> list[str]:
        return [e.render() for e in self.entries]

    def to_json(self) -> list[dict[str, object]]:
        return [e.to_json() for e in self.entries]


def printable(data: bytes) -> str:
    """Bytes for a person: UTF-8 where possible, NUL as ``\\0``, 0x01 as ``^A``,
    other controls as ``\\xNN``, and the rest of what ``smtpgate.visible`` escapes
    (C1, U+202E and the other format characters, U+2028) as it does: a server's
    reply must not reverse or drive the tester's terminal."""
    text = data.decode("utf-8", "backslashreplace")
    out = []
    for ch in text:
        if ch == "\0":
            out.append("\\0")
        elif ch == "\x01":
            out.append("^A")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(visible(ch))
    return "".join(out)


#: A word that may be base64 (padding optional): long enough to hold a secret.
_BASE64_WORD = re.compile(r"[A-Za-z0-9+/]{4,}={0,2}")


def _decodes_to_any(word: str, secrets: list[str]) -> bool:
    bare = word.rstrip("=")
    if len(bare) % 4 == 1:
        return False  # no base64 has this length
    try:
        data = base64.b64decode(bare + "=" * (-len(bare) % 4), validate=True)
    except ValueError:
        return False
    text = data.decode("utf-8", "replace")
    return any(secret in text for secret in secrets)


_SCRAM_PROOF = re.compile(rb"(,p=)[^,]*")
_SCRAM_SIGNATURE = re.compile(rb"(^|,)(v=)[^,]*")
_BEARER = re.compile(rb"(auth=Bearer )[^\x01]*", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Masker:
    """Knows the secrets of one session and how each mechanism carries them."""

    secrets: tuple[str, ...] = ()

    def client_sasl(self, mechanism: str, step: int, data: bytes) -> tuple[str, bool]:
        """(decoded text to show, whether anything was masked) for a client payload.

        ``step`` counts the client's payloads from 0 (the initial response, or the
        answer to the first challenge).
        """
        mech = mechanism.upper()
        masked = data
        if mech == "PLAIN":
            parts = data.split(b"\0")
            if len(parts) == 3:
                masked = b"\0".join([parts[0], parts[1], MASK.encode()])
        elif mech == "LOGIN":
            # LOGIN sends the user name, then the password: mask every step but the
            # first, and the first too if it is not the user name (guessing is
            # cheaper than leaking).
            if step >= 1:
                masked = MASK.encode()
        elif mech == "CRAM-MD5":
            user, sep, _digest = data.rpartition(b" ")
            if sep:
                masked = user + b" " + MASK.encode()
        elif mech.startswith("SCRAM-"):
            masked = _SCRAM_PROOF.sub(rb"\1" + MASK.encode(), data)
        elif mech in facts.OAUTH:
            masked = _BEARER.sub(rb"\1" + MASK.encode(), data)
        text = printable(masked)
        for secret in self.secrets:
            # Whatever the structure, a secret never shows (e.g. LOGIN password
            # sent as an initial response by a mis-ordered server exchange).
            if len(secret) >= 3 and secret in text:
                text = text.replace(secret, MASK)
        return text, masked != data or MASK in text

    def server_sasl(self, mechanism: str, data: bytes) -> tuple[str, bool]:
        """(decoded text to show, whether anything was masked) for a server challenge.

        The SCRAM server-final message's ``v=`` (ServerSignature) is masked: it is
        HMAC(ServerKey, AuthMessage), and everything else in AuthMessage is shown,
        so it would let a pasted transcript be used to guess the password offline.
        """
        masked = data
        if mechanism.upper().startswith("SCRAM-"):
            masked = _SCRAM_SIGNATURE.sub(rb"\1\2" + MASK.encode(), data)
        return printable(masked), masked != data

    def text(self, line: str) -> str:
        """``line`` with each secret masked, as written or inside a base64 word (a
        server quoting the AUTH line it got, or a challenge holding the password:
        anyone could decode it from a pasted transcript)."""
        secrets = [s for s in self.secrets if len(s) >= 3]
        if not secrets:
            return line
        for secret in secrets:
            line = line.replace(secret, MASK)
        return _BASE64_WORD.sub(
            lambda m: MASK if _decodes_to_any(m.group(), secrets) else m.group(), line)

    def auth_result(self, result: ClientAuthResult) -> ClientAuthResult:
        """``result`` with the secret masked wherever the server quoted it: a broken
        server, or a trap, may echo what it was sent into its reply."""
        reply, detail = result.reply, self.text(result.detail)
        if reply is not None and (lines := tuple(self.text(ln) for ln in reply.lines)) != reply.lines:
            reply = replace(reply, lines=lines)
        if reply is result.reply and detail == result.detail:
            return result  # nothing quoted: the very result
        return replace(result, reply=reply, detail=detail)
