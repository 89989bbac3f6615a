"""A cap on the connections one listener holds at once: in total, and per client
address. Used by the HTTP endpoints (the web admin, /metrics: ``web/http_port.py``)
and by the front doors (``server/front_doors.py``); here, in ``web``, because
that is the lower of the two layers that accept connections.

Why: every open connection is a descriptor of a process that has other work. The
web admin and /metrics run in the delivery process, the doors in every worker; a
peer that opens connections and keeps them (slowly, or idle) would otherwise take
descriptors until ``accept`` fails with EMFILE, and then the same process can no
longer open a spool file or a connection to a relay. A connection over the cap
is closed at once, before a byte of it is read: the cheapest answer there is,
and what nginx's ``limit_conn`` and Postfix's ``smtpd_client_connection_count_limit``
do.

Per address, so that one stranger cannot fill the listener for everybody: an
IPv4 address counts alone; an IPv6 address counts with its /64, which one host
usually has whole (a client picking new addresses in it is still one client).
Addresses in ``exempt`` (a reverse proxy that carries every browser's requests)
count only towards the total. A unix socket's peers have no address: the total
is their only cap.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable, Sequence
from typing import cast

from smtpgate.auth.networks import IPNetwork, in_networks, parse_ip


def address_key(peer: str) -> str:
    """What the per-address count is kept under: the address; an IPv6 one's /64;
    "" when ``peer`` is no IP address (a unix socket)."""
    ip = parse_ip(peer)
    if ip is None:
        return ""
    if isinstance(ip, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
    return str(ip)


class ConnectionCap:
    """Counts one listener's open connections (in one process). ``admit`` says
    whether a new one may stay; each admitted one is ``release``d when it ends.
    ``per_address`` 0: no per-address cap."""

    def __init__(self, total: int, per_address: int = 0,
                 exempt: Sequence[IPNetwork] = ()) -> None:
        self.total = total
        self.per_address = per_address
        self.exempt = tuple(exempt)
        self.open = 0
        self._by_address: dict[str, int] = {}

    def _key(self, peer: str) -> str:
        if not self.per_address or in_networks(parse_ip(peer), self.exempt):
            return ""
        return address_key(peer)

    def admit(self, peer: str) -> str | None:
        """None: counted (call ``release(peer)`` when the connection ends); else
        why it is refused, for the log."""
        if self.open >= self.total:
            return f"{self.total} connections open (the listener's cap)"
        key = self._key(peer)
        if key and self._by_address.get(key, 0) >= self.per_address:
            return f"{self.per_address} connections open from {key} (the per-address cap)"
        self.open += 1
        if key:
            self._by_address[key] = self._by_address.get(key, 0) + 1
        return None

    def release(self, peer: str) -> None:
        self.open -= 1
        key = self._key(peer)
        if key:
            left = self._by_address.get(key, 1) - 1
            if left > 0:
                self._by_address[key] = left
            else:
                self._by_address.pop(key, None)


def peer_host(transport: asyncio.BaseTransport) -> str:
    """The peer's address ("" for a unix socket, or when already reset)."""
    peer = transport.get_extra_info("peername")
    return str(peer[0]) if isinstance(peer, tuple) and peer else ""


#: The connections whose reading can be held (``CappedProtocol.hold``), by their
#: transport: what an aiohttp request names as ``request.transport``.
_HOLDABLE: dict[asyncio.BaseTransport, CappedProtocol] = {}


def holdable(transport: asyncio.BaseTransport | None) -> CappedProtocol | None:
    """The ``CappedProtocol`` of ``transport`` if its reading can be held."""
    return None if transport is None else _HOLDABLE.get(transport)


class CappedProtocol(asyncio.Protocol):
    """Stands in front of the protocol ``factory`` makes: a connection over ``cap``
    is aborted in ``connection_made`` (``refused(peer, why)`` then logs it) and
    the real protocol is never made; an admitted one is passed through, and
    released from the count when it ends. ``admitted``: the connection was
    counted already, at ``accept`` (``web/http_port.py``), under that address.

    ``hold_limit`` (the HTTP endpoints; 0: never held): between ``hold`` and
    ``release`` what arrives is kept here, not given to the real protocol, and the
    transport is paused; more than ``hold_limit`` bytes of it abort the connection.
    Why: aiohttp parses the requests a client sends ahead (pipelined) while a
    handler runs, up to 32 per connection, each head up to 256 KiB, kept twice
    (bytes and text); a handler that runs for seconds (a login waiting out the
    guard's penalty, scrapes in turn) let a stranger's connections make the
    process grow by 130 MiB per address. Pausing the transport alone does not
    hold: aiohttp resumes it whenever a handler reads its body."""

    def __init__(self, factory: Callable[[], asyncio.BaseProtocol], cap: ConnectionCap,
                 refused: Callable[[str, str], None], admitted: str | None = None,
                 hold_limit: int = 0) -> None:
        self._factory = factory
        self._cap = cap
        self._refused = refused
        self._peer = admitted
        self._inner: asyncio.Protocol | None = None
        #: ``connection_made`` ran: from now on ``connection_lost`` releases the count.
        self.made = False
        self._hold_limit = hold_limit
        self._transport: asyncio.Transport | None = None
        self._holding = False
        self._held: list[bytes] = []
        self._held_bytes = 0
        #: The transport was paused by ``data_received`` while holding.
        self._paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.made = True
        if self._peer is None:
            peer = peer_host(transport)
            why = self._cap.admit(peer)
            if why is not None:
                cast(asyncio.Transport, transport).abort()
                self._refused(peer, why)
                return
            self._peer = peer
        if self._hold_limit:
            self._transport = cast(asyncio.Transport, transport)
            _HOLDABLE[transport] = self
        self._inner = cast(asyncio.Protocol, self._factory())
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._holding and self._transport is not None:
            self._held.append(data)
            self._held_bytes += len(data)
            if self._held_bytes > self._hold_limit:
                self._held, self._held_bytes = [], 0
                self._transport.abort()  # far more sent ahead than any client does
            elif self._transport.is_reading():
                self._transport.pause_reading()
                self._paused = True
            return
        if self._inner is not None:
            self._inner.data_received(data)

    def hold(self) -> None:
        """Keep what arrives from now on until ``release`` (see the class)."""
        self._holding = self._hold_limit > 0

    def release(self) -> None:
        """Give the real protocol what was held, and read on."""
        self._holding = False
        held, self._held, self._held_bytes = b"".join(self._held), [], 0
        if held and self._inner is not None:
            self._inner.data_received(held)
        if self._paused and self._transport is not None:
            self._paused = False
            if not self._transport.is_closing():
                self._transport.resume_reading()

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:
            _HOLDABLE.pop(self._transport, None)
            self._transport = None
            self._held, self._holding = [], False
        if self._inner is not None:
            self._inner.connection_lost(exc)
            self._inner = None
        if self._peer is not None:
            self._cap.release(self._peer)
            self._peer = None
