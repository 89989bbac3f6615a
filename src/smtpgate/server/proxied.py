"""Listeners behind a load balancer that speaks the PROXY protocol
(``proxy_protocol = true``; docs/scale-out.md).

``ProxyHeaderProtocol`` stands in front of any protocol (an SMTP session, a
front door) until the header has arrived: it refuses a connection from an
address outside ``trusted_proxies`` before reading a byte, reads the header
(`frontdoor.proxy_header` parses it), and only then creates the real protocol,
handing it a transport whose ``peername`` is the client the balancer accepted.
So the guard, the connection limits, conditional access, the logs and the
Received line see the client, and nothing downstream knows about proxies. A
malformed header, a header that does not arrive within ``HEADER_TIMEOUT``, or a
header from anyone else closes the connection before any SMTP byte is sent.

A connection from outside ``trusted_proxies`` is anyone's to make (the node's
port reached past the balancer, a scanner): the first ``REFUSALS_LOGGED`` of
each ``REFUSAL_WINDOW`` per listener and process are logged one by one, the
rest as one count when the window ends (`web/log_budget.py`).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable, Sequence
from typing import Any, cast

from smtpgate.frontdoor.proxy_header import ProxyHeaderError, ProxyHeaderParser
from smtpgate.smtp.peer_address import host_port
from smtpgate.web.log_budget import LogBudget

log = logging.getLogger("smtpgate")

#: Seconds a balancer gets to send the header; HAProxy sends it with the
#: connection's first packet, so this only bounds a stuck or hostile peer.
HEADER_TIMEOUT = 10.0

#: Refusals of untrusted peers logged one by one per listener (and process) in
#: each window of this many seconds; the rest are counted (the Dovecot door's
#: numbers for its refused requests).
REFUSALS_LOGGED = 10
REFUSAL_WINDOW = 60.0

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        addr = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def trusted(peer: str, networks: Sequence[Network]) -> bool:
    addr = _address(peer)
    return addr is not None and any(addr in net for net in networks)


class _ClientTransport:
    """The real transport, but ``peername`` is the client the header named."""

    def __init__(self, transport: asyncio.Transport, peer: tuple[str, int]) -> None:
        self._transport = transport
        self._peer = peer

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            return self._peer
        if name == "proxy_peername":
            return self._transport.get_extra_info("peername", default)
        return self._transport.get_extra_info(name, default)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class ProxyHeaderProtocol(asyncio.Protocol):
    """See the module docstring. ``label`` names the listener in log lines."""

    def __init__(self, inner: Callable[[], asyncio.BaseProtocol], networks: Sequence[Network],
                 label: str, refusals: LogBudget | None = None) -> None:
        self._make_inner = inner
        self._networks = networks
        self._label = label
        self._refusals = refusals or _refusal_budget(label)
        self._parser = ProxyHeaderParser()
        self._inner: asyncio.Protocol | None = None
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._peer = ("", 0)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses; trust the duck.
        self._transport = tr = cast(asyncio.Transport, transport)
        peer = tr.get_extra_info("peername")
        if not peer:
            # The peer reset the connection before it was looked at: HAProxy's
            # ``check`` does exactly that (connect, then RST), every few seconds
            # per listener. Nobody is there to refuse or to name in a warning.
            log.debug("listener %s: a connection closed before it could be read: closed",
                      self._label)
            tr.abort()
            return
        self._peer = (str(peer[0]), int(peer[1]))
        if not trusted(self._peer[0], self._networks):
            if self._refusals.take():
                log.warning("listener %s: PROXY header expected from a trusted proxy; "
                            "%s is not one (trusted_proxies): closed",
                            self._label, host_port(*self._peer))
            tr.abort()
            return
        self._timer = asyncio.get_running_loop().call_later(HEADER_TIMEOUT, self._too_slow)

    def _too_slow(self) -> None:
        log.warning("listener %s: no PROXY header from %s within %.0f s: closed",
                    self._label, host_port(*self._peer), HEADER_TIMEOUT)
        if self._transport is not None:
            self._transport.abort()

    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.data_received(data)
            return
        assert self._transport is not None
        try:
            info = self._parser.feed(data)
        except ProxyHeaderError as e:
            log.warning("listener %s: %s from %s: closed", self._label, e, host_port(*self._peer))
            self._cancel_timer()
            self._transport.abort()
            return
        if info is None:
            return
        self._cancel_timer()
        client = info.source or self._peer
        inner = self._make_inner()
        assert isinstance(inner, asyncio.Protocol)
        self._inner = inner
        inner.connection_made(_ClientTransport(self._transport, client))  # type: ignore[arg-type]
        if self._parser.rest and not self._transport.is_closing():
            inner.data_received(self._parser.rest)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        if self._inner is not None:
            self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def _refusal_budget(label: str) -> LogBudget:
    def report(count: int) -> None:
        log.warning("listener %s: %d more connections from outside trusted_proxies closed "
                    "(more than %d in %g s are not logged one by one)",
                    label, count, REFUSALS_LOGGED, REFUSAL_WINDOW)

    return LogBudget(REFUSALS_LOGGED, REFUSAL_WINDOW, report)


def wrap(factory: Callable[[], asyncio.BaseProtocol], networks: Sequence[Network],
         label: str) -> Callable[[], asyncio.BaseProtocol]:
    """``factory`` behind a PROXY header from one of ``networks``; the listener's
    connections share one budget of refusal lines."""
    refusals = _refusal_budget(label)
    return lambda: ProxyHeaderProtocol(factory, networks, label, refusals)
