#!/usr/bin/env python3
"""The machine's bare TLS-handshake rate, for workload C's third reference (bench/README.md).

A minimal server that only completes a TLS handshake with the given certificate and
closes: no SMTP, no banner, no STARTTLS round trips. ``--procs N`` runs N processes on
one SO_REUSEPORT port (as smtpgate's ``workers``), each on uvloop when importable, with
the stdlib ``ssl`` module (OpenSSL's C handshake). Prints ``ready`` once listening.

Usage: tls_ref.py PORT CERT KEY [--procs N]
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


async def _serve(sock: socket.socket, ctx: ssl.SSLContext) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # The handshake is done when this runs (start_server with ssl=); close at once.
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError, ConnectionError):
            await writer.wait_closed()

    server = await asyncio.start_server(handle, sock=sock, ssl=ctx, backlog=1024)
    async with server:
        await server.serve_forever()


def _child(port: int, cert: str, key: str) -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(1024)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(sock, ctx))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("port", type=int)
    ap.add_argument("cert")
    ap.add_argument("key")
    ap.add_argument("--procs", type=int, default=1)
    a = ap.parse_args()
    pids = []
    for _ in range(max(1, a.procs)):
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            _child(a.port, a.cert, a.key)
            os._exit(0)
        pids.append(pid)
    print("ready", flush=True)

    def stop(signum: int, frame: object) -> None:
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


if __name__ == "__main__":
    sys.exit(main())
