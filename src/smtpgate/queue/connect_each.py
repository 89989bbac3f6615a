"""Connect to a host's addresses one at a time, each with a timeout of its own.

Why: one timeout around the whole connect (asyncio's ``create_connection`` tries
a name's addresses in turn) let the first address use it all up when it drops
packets rather than refusing: a relay host whose AAAA record points where this
machine has no working IPv6 route, or a dead member of a round robin. The next
address was never tried, so every delivery through that host deferred until the
messages bounced, and `smtpgate test` said the server did not answer. Postfix
gives each address its own ``smtp_connect_timeout`` and tries at most
``smtp_mx_address_limit`` (5) of them; so does this.

Written here and not taken from the event loop: uvloop's ``create_connection``
has no per-address timeout nor ``happy_eyeballs_delay``, and both the relay (a
transport) and the tester (a plain socket) need the same rule.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

#: Addresses of one name tried per connect, as Postfix's smtp_mx_address_limit.
MAX_ADDRESSES = 5

#: (family, socket address) as getaddrinfo gives them.
Address = tuple[int, tuple[object, ...]]


def shown(address: tuple[object, ...]) -> str:
    """``192.0.2.1:25`` or ``[2001:db8::1]:25``."""
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


async def resolve(host: str, port: int, timeout: float) -> list[Address]:
    """The addresses of ``host`` in the resolver's order, each once, at most
    `MAX_ADDRESSES`.

    Raises:
        OSError: the name does not resolve (socket.gaierror).
        TimeoutError: no answer within ``timeout``.
    """
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout):
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    seen: list[Address] = []
    for family, _, _, _, sockaddr in infos:
        entry = (int(family), tuple(sockaddr))
        if entry not in seen:
            seen.append(entry)
    return seen[:MAX_ADDRESSES]


async def connect_addresses(
    addresses: list[Address], timeout: float,
    attempt: Callable[[int, tuple[object, ...]], Awaitable[T]],
) -> T:
    """The first of ``attempt(family, address)`` to succeed, each given ``timeout``.

    Raises:
        TimeoutError: the only address did not answer in time.
        OSError: every address failed; with one address its own error, with more a
            message naming each address and what it did.
    """
    failures: list[tuple[tuple[object, ...], OSError | None]] = []
    for family, address in addresses:
        try:
            async with asyncio.timeout(timeout):
                return await attempt(family, address)
        except TimeoutError:
            failures.append((address, None))
        except OSError as e:
            failures.append((address, e))
    if not failures:
        raise OSError("no address to connect to")
    if len(failures) == 1:
        error = failures[0][1]
        if error is None:
            raise TimeoutError(f"no connection within {timeout:g} s")
        raise _plain(error)
    said = "; ".join(f"{shown(address)} {_what(e, timeout)}" for address, e in failures)
    last = next((e for _, e in reversed(failures) if e is not None), None)
    code = last.errno if last is not None and last.errno else errno.ETIMEDOUT
    raise OSError(code, said)


def _what(error: OSError | None, timeout: float) -> str:
    return f"no answer within {timeout:g} s" if error is None else str(_plain(error).strerror)


def _plain(error: OSError) -> OSError:
    """asyncio words a refusal "Connect call failed ('127.0.0.1', 25)" in strerror;
    an administrator wants "Connection refused"."""
    if error.errno:
        return OSError(error.errno, os.strerror(error.errno))
    return error


async def connect_each(
    host: str, port: int, timeout: float,
    attempt: Callable[[int, tuple[object, ...]], Awaitable[T]],
) -> T:
    """`resolve` ``host``, then `connect_addresses` (see there for what is raised)."""
    addresses = await resolve(host, port, timeout)
    if not addresses:
        raise OSError(f"cannot resolve {host}")
    return await connect_addresses(addresses, timeout, attempt)
