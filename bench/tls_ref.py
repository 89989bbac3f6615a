#!/usr/bin/env python3
"""The machine's bare TLS-handshake rate, for workload C's third reference (bench/README.md).

A minimal server that only completes a TLS handshake with the given certificate and
closes: no SMTP, no banner, no STARTTLS round trips. ``--procs N`` runs N processes on
one SO_REUSEPORT port (as smtpgate's ``workers``), each on uvloop when importable, with
the stdlib ``ssl`` module (OpenSSL's C handshake). Prints ``ready`` once listening.

Usage: tls_ref.py PORT CERT KEY [--procs N]
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.forked_server import run_forked


async def _serve(sock: socket.socket, ctx: ssl.SSLContext) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # The handshake is done when this runs (start_server with ssl=); close at once.
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError, ConnectionError):
            await writer.wait_closed()

    server = await asyncio.start_server(handle, sock=sock, ssl=ctx, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    sys.exit(run_forked(_serve, reuse_port=True))
