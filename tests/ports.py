"""Free TCP ports for the servers the tests start, outside the kernel's ephemeral range.

Why: a port found by binding port 0 comes from the ephemeral range, which every
outgoing connection also draws its source port from. Between the moment a test
picks a port and the moment its server binds it (or binds it again after a kill -9),
a client connection of another test, in this or another xdist worker, can take it
as its source port, and the server then fails with "Address already in use" (seen
in a clean-clone run: two such failures in 2,975 tests). Ports outside that range
are never handed out that way, and each xdist worker draws from its own slice, so
two workers never pick the same port either.
"""

from __future__ import annotations

import itertools
import os
import random
import socket
from collections.abc import Iterable

#: Below this, ports of services a developer's machine may run.
_LOWEST = 10_000


def _ephemeral_range() -> tuple[int, int]:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = (int(v) for v in f.read().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def _own_slice() -> range:
    """This process's ports: the larger block outside the ephemeral range, split
    between the xdist workers (empty if the ephemeral range leaves no room)."""
    low, high = _ephemeral_range()
    below, above = range(_LOWEST, max(low, _LOWEST)), range(max(high + 1, _LOWEST), 65536)
    block = below if len(below) >= len(above) else above
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1)
    index = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    size = len(block) // max(workers, 1)
    return range(block.start + index * size, block.start + (index + 1) * size)


_PORTS = _own_slice()
_NEXT = itertools.count(random.randrange(len(_PORTS)) if len(_PORTS) else 0)


def first_free(candidates: Iterable[int]) -> int | None:
    """The first of ``candidates`` that nothing on 127.0.0.1 is bound to now (TIME_WAIT
    included), or None."""
    for port in candidates:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    return None


def free_port() -> int:
    """A free port on 127.0.0.1 from this process's slice."""
    port = first_free(_PORTS[next(_NEXT) % len(_PORTS)] for _ in range(len(_PORTS)))
    if port is not None:
        return port
    with socket.socket() as s:  # no room outside the ephemeral range: the old way
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
