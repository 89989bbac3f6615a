"""Client addresses as the guard sees them: one key per address, one per subnet.

An IPv4 client is one address (/32). An IPv6 client is its /64 by default: a
customer usually gets a whole /64 (RFC 6177 recommends at least that), so
counting single IPv6 addresses would let one attacker rotate through 2^64
"clients". An IPv4-mapped IPv6 address (``::ffff:192.0.2.1``, what a dual-stack
socket reports) is treated as the IPv4 address it carries.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@functools.lru_cache(maxsize=4096)
def parse_ip(text: str) -> IPAddress | None:
    """The address in ``text`` (a zone suffix such as ``%eth0`` dropped), or None.

    Cached: a session asks for its client's address several times (the guard's
    allowlist, XCLIENT trust, the guard's keys), 3-4 us each time otherwise; the
    answers are immutable."""
    try:
        ip = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def parse_networks(items: Iterable[str]) -> tuple[IPNetwork, ...]:
    """CIDR strings to networks (host bits allowed: ``10.1.2.3/8`` is ``10.0.0.0/8``).

    Raises:
        ValueError: an item is not a network.
    """
    return tuple(ipaddress.ip_network(item.strip(), strict=False) for item in items)


def in_networks(ip: IPAddress | None, networks: Iterable[IPNetwork]) -> bool:
    if ip is None:
        return False
    return any(ip.version == net.version and ip in net for net in networks)


def _prefix_key(ip: IPAddress, prefix: int) -> str:
    if prefix >= ip.max_prefixlen:
        return str(ip)
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


@dataclass(frozen=True, slots=True)
class ClientKeys:
    """The keys one client address is counted under."""

    #: The client as one unit: ``192.0.2.7`` or ``2001:db8:1:2::/64``.
    address: str
    #: Its wider net: ``192.0.2.0/24`` or ``2001:db8:1::/48``.
    subnet: str


#: Client addresses whose keys are remembered per process (`client_keys`): the
#: guard asks for one session's keys several times per login, and ``ipaddress``
#: takes ~9 us (IPv4) to ~33 us (IPv6) each time (issue 13 profile, workload C).
KEYS_CACHE_SIZE = 4096


@functools.lru_cache(maxsize=KEYS_CACHE_SIZE)
def client_keys(text: str, *, ipv6_prefix: int = 64, v4_subnet: int = 24, v6_subnet: int = 48) -> ClientKeys:
    """Keys of the client address ``text``; an unparsable one is its own key. A pure
    function of its arguments with an immutable answer, so remembered
    (`KEYS_CACHE_SIZE`)."""
    ip = parse_ip(text)
    if ip is None:
        return ClientKeys(text, text)
    if ip.version == 4:
        return ClientKeys(str(ip), _prefix_key(ip, v4_subnet))
    return ClientKeys(_prefix_key(ip, ipv6_prefix), _prefix_key(ip, v6_subnet))
