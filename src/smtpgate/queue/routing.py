"""Per-domain next hops (``[[delivery.routes]]``): each recipient goes to the
deliverer of its domain, or to the default one.

One attempt of a message becomes one attempt per next hop, run concurrently;
their results are merged per recipient, so a next hop that is down defers only
its own recipients.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from smtpgate.queue.delivery import Deliverer, DeliveryResult, QueuedMessage


def domain_of(address: str) -> str:
    """The domain of ``address``, lower-cased ("" when it has none)."""
    return address.rpartition("@")[2].lower().rstrip(".") if "@" in address else ""


class RoutingDeliverer:
    """See the module docstring. ``routes`` maps lower-case domains to deliverers."""

    def __init__(self, routes: Mapping[str, Deliverer], default: Deliverer) -> None:
        self._routes = dict(routes)
        self._default = default

    def route(self, recipient: str) -> Deliverer:
        return self._routes.get(domain_of(recipient), self._default)

    async def deliver(
        self, message: QueuedMessage, recipients: tuple[str, ...]
    ) -> Mapping[str, DeliveryResult]:
        groups: dict[int, tuple[Deliverer, list[str]]] = {}
        for rcpt in recipients:
            hop = self.route(rcpt)
            groups.setdefault(id(hop), (hop, []))[1].append(rcpt)
        results: dict[str, DeliveryResult] = {}
        for part in await asyncio.gather(
            *(hop.deliver(message, tuple(rcpts)) for hop, rcpts in groups.values())
        ):
            results.update(part)
        return results

    async def close(self) -> None:
        for hop in {id(h): h for h in (*self._routes.values(), self._default)}.values():
            await hop.close()
