"""A TLS handshake between two ends in one process, over memory BIOs.

The exporter's start-up self-test (``exporter.py``) needs one, and so do the
tests and probes that check a server session against an independent client:
each end is a *step* (bytes from the peer in; whether its handshake is done and
the bytes for the peer out), and `handshake` passes the bytes back and forth.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from typing import Protocol

from OpenSSL import SSL

from smtpgate.tls.bio import BioConnection, TlsError

#: Bytes from the peer in; (handshake done, bytes for the peer) out.
Step = Callable[[bytes], tuple[bool, bytes]]


class _Session(Protocol):
    handshake_done: bool

    def receive(self, data: bytes) -> tuple[bytes, bytes]: ...


def _step(feed: Callable[[bytes], object], shake: Callable[[], object],
          want_read: type[Exception], drain: Callable[[], bytes]) -> Step:
    def step(data: bytes) -> tuple[bool, bytes]:
        if data:
            feed(data)
        try:
            shake()
            done = True
        except want_read:
            done = False
        return done, drain()

    return step


def sslobject_step(obj: ssl.SSLObject, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO) -> Step:
    """A stdlib ``SSLObject`` on its two memory BIOs (either side)."""
    return _step(incoming.write, obj.do_handshake, ssl.SSLWantReadError, outgoing.read)


def pyopenssl_step(conn: SSL.Connection) -> Step:
    """A pyOpenSSL connection made with ``SSL.Connection(ctx, None)`` (memory BIOs)."""
    return _step(conn.bio_write, conn.do_handshake, SSL.WantReadError,
                 BioConnection(conn).outgoing)


def session_step(session: _Session) -> Step:
    """One of smtpgate's server sessions (``TlsServerSession``, ``NativeServerSession``)."""

    def step(data: bytes) -> tuple[bool, bytes]:
        out = session.receive(data)[1] if data else b""
        return session.handshake_done, out

    return step


def handshake(client: Step, server: Step, rounds: int = 10) -> None:
    """Run both ends until both are done; what a failing end raises propagates.

    Raises:
        TlsError: not done after ``rounds`` exchanges.
    """
    to_client = b""
    for _ in range(rounds):
        client_done, to_server = client(to_client)
        server_done, to_client = server(to_server)
        if client_done and server_done:
            if to_client:
                client(to_client)
            return
    raise TlsError(f"no TLS handshake after {rounds} exchanges")
