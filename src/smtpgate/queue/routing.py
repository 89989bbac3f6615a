"""Per-domain next hops (``[[delivery.routes]]``): each recipient goes to the
deliverer of its domain, or to the default one.

One attempt of a message becomes one attempt per next hop, run concurrently;
their results are merged per recipient, so a next hop that is down defers only
its own recipients.
"""

from __future__ import annotations

import asyncio
import unicodedata
from collections.abc import Mapping

from smtpgate.auth.names import unified_domain
from smtpgate.queue.delivery import Deliverer, DeliveryResult, QueuedMessage


def route_key(domain: str) -> str:
    """``domain`` in the one spelling routes are looked up by: lower case, no final
    dot, NFC, and an internationalized label as its U-label whether it came as
    one or as its A-label (``xn--bcher-kva`` is ``bücher``, RFC 5890: one name in
    DNS). A client without SMTPUTF8 sends the A-label, one with it may send
    either, and a route is written in either."""
    return unified_domain(unicodedata.normalize("NFC", domain.lower().rstrip(".")))


def domain_of(address: str) -> str:
    """The domain of ``address`` as a `route_key` ("" when it has none)."""
    return route_key(address.rpartition("@")[2]) if "@" in address else ""


class RoutingDeliverer:
    """See the module docstring. ``routes`` maps domains (any spelling, see
    `route_key`) to deliverers."""

    def __init__(self, routes: Mapping[str, Deliverer], default: Deliverer) -> None:
        self._routes = {route_key(domain): hop for domain, hop in routes.items()}
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
