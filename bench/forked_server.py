"""The harness's small reference servers (tls_ref.py, probes/canned_smtp.py): one
asyncio server in ``--procs`` forked processes on one loopback port, as smtpgate's
``workers``, each on uvloop when importable, with the stdlib ``ssl`` module and
the given certificate. Prints ``ready`` once listening; SIGTERM stops them all.

Usage of a script built on it: ``SCRIPT PORT CERT KEY [--procs N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import ssl
import sys
from collections.abc import Callable, Coroutine
from typing import Any

#: What each process runs: the listening socket and the server context.
Serve = Callable[[socket.socket, ssl.SSLContext], Coroutine[Any, Any, None]]


def _listening(port: int, *, reuse_port: bool) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(1024)
    return sock


def _child(serve: Serve, sock: socket.socket | None, port: int, cert: str, key: str) -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    if sock is None:
        sock = _listening(port, reuse_port=True)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(sock, ctx))


def run_forked(serve: Serve, *, reuse_port: bool) -> int:
    """Parse the command line and run ``serve`` in each process. ``reuse_port``:
    every process binds its own SO_REUSEPORT socket (the kernel spreads new
    connections by hash); else they share one socket the parent binds."""
    ap = argparse.ArgumentParser()
    ap.add_argument("port", type=int)
    ap.add_argument("cert")
    ap.add_argument("key")
    ap.add_argument("--procs", type=int, default=1)
    a = ap.parse_args()
    shared = None if reuse_port else _listening(a.port, reuse_port=False)
    pids = []
    for _ in range(max(1, a.procs)):
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            _child(serve, shared, a.port, a.cert, a.key)
            os._exit(0)
        pids.append(pid)
    print("ready", flush=True)

    def stop(*_: object) -> None:
        for p in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGTERM)
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for p in pids:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(p, 0)
    return 0
