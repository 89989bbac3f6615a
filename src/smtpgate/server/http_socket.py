"""The listening socket of an HTTP endpoint (the web admin, /metrics).

Bound by the main process before anything forks, with a plain bind (no
SO_REUSEPORT): a second smtpgate on the same address fails at start-up instead
of sharing it, and the SMTP workers, which bind only their own listeners, never
race for it. A reload that moves an endpoint binds the new address the same way.
"""

from __future__ import annotations

import socket

from smtpgate.config import HttpListener
from smtpgate.errors import StartupError


def bind_tcp(host: str, port: int) -> socket.socket:
    """A non-blocking TCP socket listening on (host, port); OSError if it cannot."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(64)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def bind_endpoint(listener: HttpListener, key: str) -> socket.socket | None:
    """``listener``'s socket (None when it is off).

    Raises:
        StartupError: naming ``key``, when the address cannot be bound.
    """
    endpoint = listener.endpoint
    if endpoint is None:
        return None
    try:
        return bind_tcp(*endpoint)
    except OSError as e:
        raise StartupError(key, f"cannot listen on {listener.listen}: "
                                f"{e.strerror or e}") from None
