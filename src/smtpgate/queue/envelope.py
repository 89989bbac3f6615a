"""The envelope of a spooled message: who sent it, to whom, and how it arrived."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

#: Bump when the serialised form changes incompatibly; `from_json` refuses others.
ENVELOPE_VERSION = 1


class EnvelopeFormatError(ValueError):
    """A serialised envelope is not valid JSON of the expected shape."""


@dataclass(frozen=True, slots=True)
class Envelope:
    """Everything but the message bytes that must survive a restart.

    ``mail_from`` is "" for the null reverse-path ``<>``. ``auth_identity`` is the
    account that submitted the message (None if the listener allowed no AUTH).
    ``received_at`` is a Unix time; the queue measures ``max_age`` from it.
    """

    mail_from: str
    rcpt_to: tuple[str, ...]
    auth_identity: str | None
    client_ip: str
    helo: str
    listener: str
    smtputf8: bool = False
    body_8bit: bool = False
    received_at: float = 0.0

    def to_json(self) -> bytes:
        """Compact JSON. ASCII-only output: lone surrogates (undecodable bytes an
        engine kept with ``surrogateescape``) round-trip as ``\\udcXX`` escapes."""
        obj = {
            "v": ENVELOPE_VERSION,
            "from": self.mail_from,
            "to": list(self.rcpt_to),
            "auth": self.auth_identity,
            "ip": self.client_ip,
            "helo": self.helo,
            "listener": self.listener,
            "smtputf8": self.smtputf8,
            "8bit": self.body_8bit,
            "at": self.received_at,
        }
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=True).encode("ascii")

    @classmethod
    def from_json(cls, raw: bytes) -> Envelope:
        """Inverse of `to_json`.

        Raises:
            EnvelopeFormatError: not JSON, unknown version, or a field of the wrong type.
        """
        try:
            obj = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise EnvelopeFormatError(f"envelope is not JSON: {e}") from None
        if not isinstance(obj, dict) or obj.get("v") != ENVELOPE_VERSION:
            raise EnvelopeFormatError("unknown envelope version")
        try:
            env = cls(
                mail_from=_typed(obj, "from", str),
                rcpt_to=tuple(_typed(obj, "to", list)),
                auth_identity=obj["auth"],
                client_ip=_typed(obj, "ip", str),
                helo=_typed(obj, "helo", str),
                listener=_typed(obj, "listener", str),
                smtputf8=_typed(obj, "smtputf8", bool),
                body_8bit=_typed(obj, "8bit", bool),
                received_at=float(_typed(obj, "at", (int, float))),
            )
        except KeyError as e:
            raise EnvelopeFormatError(f"envelope lacks {e}") from None
        if not all(isinstance(r, str) for r in env.rcpt_to):
            raise EnvelopeFormatError("envelope recipients must be strings")
        if env.auth_identity is not None and not isinstance(env.auth_identity, str):
            raise EnvelopeFormatError("envelope auth identity must be a string or null")
        return env


def _typed(obj: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    value = obj[key]
    # bool is an int subclass: a float field must not accept true/false.
    if not isinstance(value, kind) or (kind != bool and isinstance(value, bool)):
        raise EnvelopeFormatError(f"envelope field {key!r} has the wrong type")
    return value
