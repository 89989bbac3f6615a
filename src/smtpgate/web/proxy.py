"""Who the web admin's client is when a reverse proxy stands in front of it
(``[admin] trusted_proxies``).

A proxy on the same host (nginx with a public certificate, passing requests on to
``127.0.0.1:9480``) makes every request come from 127.0.0.1. The guard would then
count every stranger's login guesses under 127.0.0.1, and block it for SMTP too
(local programs that submit mail), and one admin's login through the proxy would
make every address "known". So, for a connection from a listed proxy only:

- the client is the rightmost ``X-Forwarded-For`` address outside the trusted
  networks: each proxy appends the address it saw, so entries to the left of it
  were written by the client and prove nothing;
- ``X-Forwarded-Proto: https`` (the last value, the nearest proxy's) says the
  browser spoke HTTPS, so the session cookie gets ``Secure`` though this hop is
  plain HTTP.

From any other peer both headers are ignored: anyone can write them. A header
that names no address (malformed, or only proxies) leaves the proxy's own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from smtpgate.auth.networks import IPNetwork, in_networks, parse_ip, parse_networks

if TYPE_CHECKING:
    from aiohttp import web


@dataclass(frozen=True, slots=True)
class Client:
    address: str
    #: The browser spoke HTTPS to a trusted proxy.
    https_via_proxy: bool


def trusted_networks(items: list[str]) -> tuple[IPNetwork, ...]:
    """The networks of ``[admin] trusted_proxies`` (validated by the config)."""
    return parse_networks(items)


def client_of(request: web.Request, trusted: tuple[IPNetwork, ...]) -> Client:
    peer = request.remote or ""
    if not trusted or not in_networks(parse_ip(peer), trusted):
        return Client(peer, False)
    address = peer
    hops = [h.strip() for v in request.headers.getall("X-Forwarded-For", [])
            for h in v.split(",")]
    for hop in reversed(hops):
        ip = parse_ip(hop)
        if ip is None:
            break  # garbage: believe nothing further left
        if not in_networks(ip, trusted):
            address = str(ip)
            break
    protos = [p.strip().lower() for v in request.headers.getall("X-Forwarded-Proto", [])
              for p in v.split(",")]
    return Client(address, bool(protos) and protos[-1] == "https")
