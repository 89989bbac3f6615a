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
    #: RFC 3461 §4.3 RET ("FULL" or "HDRS"), §4.4 ENVID (decoded from xtext).
    dsn_ret: str | None = None
    dsn_envid: str | None = None
    #: RFC 3461 §4.1-4.2 per recipient: NOTIFY and ORCPT as given (absent: none given).
    dsn_rcpts: tuple[RcptDsn, ...] = ()
    #: Received as BODY=BINARYMIME (RFC 3030): only a hop that offers it may take it.
    body_binary: bool = False

    def dsn_for(self, address: str) -> RcptDsn | None:
        """The DSN parameters given with recipient ``address``, if any."""
        for d in self.dsn_rcpts:
            if d.address == address:
                return d
        return None

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
        # Optional keys (added with DSN support): absent when unused, so envelopes
        # without DSN parameters read the same in an older version.
        if self.dsn_ret is not None:
            obj["ret"] = self.dsn_ret
        if self.dsn_envid is not None:
            obj["envid"] = self.dsn_envid
        if self.dsn_rcpts:
            obj["dsn"] = [[d.address, list(d.notify) if d.notify is not None else None,
                           d.orcpt] for d in self.dsn_rcpts]
        if self.body_binary:
            obj["binary"] = True
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
                dsn_ret=_optional_str(obj, "ret"),
                dsn_envid=_optional_str(obj, "envid"),
                dsn_rcpts=_rcpt_dsn(obj.get("dsn", [])),
                body_binary=_typed(obj, "binary", bool) if "binary" in obj else False,
            )
        except KeyError as e:
            raise EnvelopeFormatError(f"envelope lacks {e}") from None
        if not all(isinstance(r, str) for r in env.rcpt_to):
            raise EnvelopeFormatError("envelope recipients must be strings")
        if env.auth_identity is not None and not isinstance(env.auth_identity, str):
            raise EnvelopeFormatError("envelope auth identity must be a string or null")
        return env


@dataclass(frozen=True, slots=True)
class RcptDsn:
    """RFC 3461 parameters of one RCPT TO. ``notify`` is None when NOTIFY was not
    given, else the upper-cased keywords ("NEVER" alone, or any of "SUCCESS",
    "FAILURE", "DELAY"); ``orcpt`` is "addr-type;address", decoded from xtext."""

    address: str
    notify: tuple[str, ...] | None = None
    orcpt: str | None = None


def _optional_str(obj: dict[str, Any], key: str) -> str | None:
    value = obj.get(key)
    if value is not None and not isinstance(value, str):
        raise EnvelopeFormatError(f"envelope field {key!r} has the wrong type")
    return value


def _rcpt_dsn(raw: object) -> tuple[RcptDsn, ...]:
    bad = EnvelopeFormatError("envelope field 'dsn' has the wrong shape")
    if not isinstance(raw, list):
        raise bad
    out = []
    for item in raw:
        if not isinstance(item, list) or len(item) != 3:
            raise bad
        address, notify, orcpt = item
        if not isinstance(address, str) or not (orcpt is None or isinstance(orcpt, str)):
            raise bad
        if notify is not None and not (
            isinstance(notify, list) and all(isinstance(n, str) for n in notify)
        ):
            raise bad
        out.append(RcptDsn(address, None if notify is None else tuple(notify), orcpt))
    return tuple(out)


def _typed(obj: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    value = obj[key]
    # bool is an int subclass: a float field must not accept true/false.
    if not isinstance(value, kind) or (kind != bool and isinstance(value, bool)):
        raise EnvelopeFormatError(f"envelope field {key!r} has the wrong type")
    return value
