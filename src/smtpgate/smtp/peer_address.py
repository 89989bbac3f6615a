"""A client's address as another server reports it (nginx's ``Client-IP``,
Dovecot's ``rip=``, XCLIENT's ``ADDR=``), in the one spelling the guard counts,
the auth log names and a firewall can ban.

Two spellings are folded: an IPv4 client that a dual-stack socket reports as
``::ffff:a.b.c.d`` is its IPv4 address, and an IPv6 zone (``fe80::1%eth0``) is
dropped. The zone names an interface of the host that saw the client, nothing a
log reader or a ban can use, and ``ipaddress`` takes any text after the ``%``:
``Client-IP: fe80::1%x user="root@example.org" reason=""`` reached the session
log line, the auth log and the web admin's pages as sent, forging fields.
"""

from __future__ import annotations

import ipaddress


def reported_address(text: str) -> str | None:
    """``text``'s address in its one spelling; None when it is no address (an
    IPv4 address with a zone is none either)."""
    address, percent, _zone = text.partition("%")
    if percent and ":" not in address:
        return None
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def host_port(address: str, port: int) -> str:
    """``address:port``, an IPv6 address in brackets (RFC 3986 §3.2.2): written bare,
    ``2001:db8::7:8080`` is itself an IPv6 address, and a reader (or a filter on
    the journal) could not tell the client's address from its port."""
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
