"""Per-recipient delivery state of a spooled message, and the retry schedule.

Everything here is pure: the current time comes in as an argument, so the
backoff and give-up rules are tested without sleeping (STYLE.md §11).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from enum import Enum

from smtpgate.plural import count
from smtpgate.queue.delivery import Delivered, DeliveryResult, PermFailure, TempFailure

STATE_VERSION = 1


class StateFormatError(ValueError):
    """A state file is not what `MessageState.to_json` writes."""


class RcptStatus(Enum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class RecipientState:
    address: str
    status: RcptStatus = RcptStatus.PENDING
    attempts: int = 0
    #: Clock time before which no new attempt is made (0: as soon as possible).
    next_attempt: float = 0.0
    last_result: str = ""
    #: A delay warning (RFC 3464, action "delayed") went to the sender already.
    warned: bool = False


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One line of a message's delivery history, shown by ``queue show``."""

    at: float
    address: str
    kind: str  # an Outcome kind, or an administrator's action ("held", "flushed", ...)
    detail: str


#: History lines kept per message: enough to see a pattern in the retries, bounded
#: so a message retried for days does not grow its state file without end.
MAX_HISTORY = 50


@dataclass(frozen=True, slots=True)
class MessageState:
    recipients: tuple[RecipientState, ...]
    #: Put on hold by ``smtpgate queue hold``: the worker does not touch it.
    held: bool = False
    history: tuple[HistoryEntry, ...] = ()

    @classmethod
    def initial(cls, rcpt_to: Iterable[str]) -> MessageState:
        """All recipients pending. Duplicates collapse: one copy per address."""
        return cls(tuple(RecipientState(a) for a in dict.fromkeys(rcpt_to)))

    @property
    def pending(self) -> tuple[str, ...]:
        return tuple(r.address for r in self.recipients if r.status is RcptStatus.PENDING)

    @property
    def finished(self) -> bool:
        return not self.pending

    @property
    def next_attempt(self) -> float:
        """Earliest next attempt of a pending recipient (inf when finished)."""
        times = [r.next_attempt for r in self.recipients if r.status is RcptStatus.PENDING]
        return min(times, default=float("inf"))

    def with_history(self, entries: Iterable[HistoryEntry]) -> MessageState:
        """This state with ``entries`` appended to the history (the oldest dropped
        beyond `MAX_HISTORY`)."""
        return replace(self, history=(*self.history, *entries)[-MAX_HISTORY:])

    def to_json(self) -> bytes:
        # "held", "hist" and the sixth recipient field came later: optional on read,
        # so a state written by an older version still loads.
        obj: dict[str, object] = {
            "v": STATE_VERSION,
            "rcpts": [
                [r.address, r.status.value, r.attempts, r.next_attempt, r.last_result,
                 r.warned]
                for r in self.recipients
            ],
        }
        if self.held:
            obj["held"] = True
        if self.history:
            obj["hist"] = [[h.at, h.address, h.kind, h.detail] for h in self.history]
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=True).encode("ascii")

    @classmethod
    def from_json(cls, raw: bytes) -> MessageState:
        """Raises: StateFormatError."""
        try:
            obj = json.loads(raw)
            if obj["v"] != STATE_VERSION:
                raise StateFormatError("unknown state version")
            rcpts = tuple(
                RecipientState(str(r[0]), RcptStatus(r[1]), int(r[2]), float(r[3]), str(r[4]),
                               bool(r[5]) if len(r) > 5 else False)
                for r in obj["rcpts"]
            )
            history = tuple(
                HistoryEntry(float(at), str(a), str(k), str(d))
                for at, a, k, d in obj.get("hist", ())
            )
            held = obj.get("held", False)
            if not isinstance(held, bool):
                raise StateFormatError("bad state file: 'held' must be true or false")
        except StateFormatError:
            raise
        except (ValueError, KeyError, TypeError, IndexError) as e:
            raise StateFormatError(f"bad state file: {e}") from None
        return cls(rcpts, held, history)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one attempt meant for one recipient, for the log and the DSNs."""

    address: str
    kind: str  # "delivered" | "bounced" | "expired" | "deferred"
    detail: str
    next_attempt: float = 0.0
    #: For "delivered": the action of a success report (`Delivered.dsn_action`).
    dsn_action: str = ""


def retry_delay(attempts: int, initial: float, maximum: float) -> float:
    """Delay after the ``attempts``-th failed attempt: initial, 2x, 4x ... capped.

    Doubling is what Postfix and chasquid do in spirit: quick retries for a blip,
    then an hourly trickle (the default ``retry_max``) for a long outage.
    """
    if attempts < 1:
        return 0.0
    # Cap the exponent: 2**60 * initial overflows nothing but is past any maximum.
    return min(maximum, initial * 2.0 ** min(attempts - 1, 60))


def apply_results(
    state: MessageState,
    results: Mapping[str, DeliveryResult],
    *,
    now: float,
    received_at: float,
    retry_initial: float,
    retry_max: float,
    max_age: float,
) -> tuple[MessageState, tuple[Outcome, ...]]:
    """The state after an attempt on every pending recipient, and what happened.

    A temporary failure of a message older than ``max_age`` becomes final
    ("expired"). Otherwise the next attempt is backed off, but never later than
    the expiry time, so the last try happens at the deadline and not after it.
    """
    deadline = received_at + max_age
    new: list[RecipientState] = []
    outcomes: list[Outcome] = []
    for r in state.recipients:
        if r.status is not RcptStatus.PENDING:
            new.append(r)
            continue
        result = results.get(r.address, TempFailure("no result from the deliverer"))
        attempts = r.attempts + 1
        if isinstance(result, Delivered):
            new.append(replace(r, status=RcptStatus.DELIVERED, attempts=attempts,
                               last_result=result.detail or "delivered"))
            outcomes.append(Outcome(r.address, "delivered", result.detail,
                                    dsn_action=result.dsn_action))
        elif isinstance(result, PermFailure):
            new.append(replace(r, status=RcptStatus.FAILED, attempts=attempts,
                               last_result=result.reply))
            outcomes.append(Outcome(r.address, "bounced", result.reply))
        elif now >= deadline:
            detail = f"gave up after {count(attempts, 'attempt')}: {result.reply}"
            new.append(replace(r, status=RcptStatus.FAILED, attempts=attempts,
                               last_result=detail))
            outcomes.append(Outcome(r.address, "expired", detail))
        else:
            when = min(now + retry_delay(attempts, retry_initial, retry_max), deadline)
            new.append(replace(r, attempts=attempts, next_attempt=when,
                               last_result=result.reply))
            outcomes.append(Outcome(r.address, "deferred", result.reply, when))
    after = replace(state, recipients=tuple(new)).with_history(
        HistoryEntry(now, o.address, o.kind, o.detail) for o in outcomes
    )
    return after, tuple(outcomes)

