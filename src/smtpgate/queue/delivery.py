"""What a delivery attempt can return, per recipient, and what a deliverer is.

STYLE.md §11: retry decisions are made on these types, never on reply strings.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from smtpgate.queue.envelope import Envelope

if TYPE_CHECKING:
    from smtpgate.queue.tmpfiles import TempPool


@dataclass(frozen=True, slots=True)
class Delivered:
    """The recipient's copy is safe at the next hop (``detail`` is for the log).

    ``dsn_action`` is what a success report (RFC 3464 §2.3.3, for NOTIFY=SUCCESS)
    would say: "delivered" (a mailbox has it), "relayed" (a next hop without DSN
    has it), or "" when the next hop speaks DSN and reports itself.
    """

    detail: str = ""
    dsn_action: str = "delivered"


@dataclass(frozen=True, slots=True)
class TempFailure:
    """Try again later (an SMTP 4xx, a connection failure, a full disk)."""

    reply: str


@dataclass(frozen=True, slots=True)
class PermFailure:
    """Never deliverable as it stands (an SMTP 5xx): give up and bounce."""

    reply: str


DeliveryResult = Delivered | TempFailure | PermFailure


@dataclass(frozen=True, slots=True)
class QueuedMessage:
    """One message handed to a deliverer.

    ``maybe_delivered`` is True when an earlier attempt may have completed without
    the spool learning of it (the process died between delivering and recording).
    A deliverer that can recognise its own earlier copy must check for it then;
    that is what makes delivery exactly-once across ``kill -9``.
    """

    queue_id: str
    envelope: Envelope
    data: bytes
    maybe_delivered: bool = False


class Deliverer(Protocol):
    """Hands a message to the next hop.

    Returns a result for each of ``recipients`` (a missing one counts as a temporary
    failure). Must not raise for delivery problems; an exception is treated as a
    temporary failure of every recipient and logged as a bug.
    """

    async def deliver(
        self, message: QueuedMessage, recipients: tuple[str, ...]
    ) -> Mapping[str, DeliveryResult]: ...

    async def close(self) -> None:
        """Finish deliveries in progress and release threads or connections."""


@runtime_checkable
class Recycling(Protocol):
    """A deliverer that writes files and takes spent spool inodes for them."""

    @property
    def recycle_pool(self) -> TempPool | None: ...


@runtime_checkable
class BlockingBatch(Protocol):
    """A deliverer whose work is all local disk I/O (the Maildir): the worker hands
    it every message due at once from one thread of its own, together with the
    message locks, the reads and the spool removals, so a batch costs one thread
    hop instead of several per message (see `worker`)."""

    def deliver_blocking(self, messages: Sequence[QueuedMessage]) -> list[DeliveryResult]:
        """One result per message, for all its recipients. Blocks; never raises for
        delivery problems (they are results)."""
        ...
