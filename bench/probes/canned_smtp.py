#!/usr/bin/env python3
"""The ceiling of workloads A, B and C on this machine: a server that does no work.

It speaks just enough SMTP for ``loadgen.py`` (banner, EHLO, STARTTLS, AUTH PLAIN, MAIL,
RCPT, DATA, the final dot, QUIT) and answers every command at once with a canned
reply: no parsing beyond the verb, no password check, no disk, no log. TLS is the
stdlib ``ssl`` module through uvloop's own ``start_tls`` (C code end to end), with the
certificate given. ``--procs N`` runs N processes on one SO_REUSEPORT port, as
smtpgate's ``workers``.

What a real server's figure is worth is its share of this one, measured in the same
run: the client's own round trips, the kernel's loopback and the TLS records are all
that is left here, so a ratio to a peer that this server itself cannot reach is a
target no server can meet with this client on these cores (bench/README.md).

Usage: canned_smtp.py PORT CERT KEY [--procs N]
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.forked_server import run_forked

_EHLO = (b"250-localhost\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-STARTTLS\r\n"
         b"250 AUTH PLAIN\r\n")
_REPLIES = {
    b"EHLO": _EHLO, b"HELO": b"250 localhost\r\n", b"MAIL": b"250 2.1.0 Ok\r\n",
    b"RCPT": b"250 2.1.5 Ok\r\n", b"RSET": b"250 2.0.0 Ok\r\n", b"NOOP": b"250 2.0.0 Ok\r\n",
    b"AUTH": b"235 2.7.0 Authentication successful\r\n", b"DATA": b"354 Go ahead\r\n",
    b"QUIT": b"221 2.0.0 Bye\r\n", b"STARTTLS": b"220 2.0.0 Ready to start TLS\r\n",
}


class Canned(asyncio.Protocol):
    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.ctx = ctx
        self.buf = b""
        self.in_data = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(b"220 localhost ESMTP canned\r\n")  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        out = []
        while True:
            if self.in_data:
                end = self.buf.find(b"\r\n.\r\n")
                if end < 0:
                    self.buf = self.buf[-4:]
                    break
                self.buf = self.buf[end + 5:]
                self.in_data = False
                out.append(b"250 2.0.0 Ok: queued\r\n")
                continue
            nl = self.buf.find(b"\r\n")
            if nl < 0:
                break
            line, self.buf = self.buf[:nl], self.buf[nl + 2:]
            verb = line.split(b" ", 1)[0].upper()
            out.append(_REPLIES.get(verb, b"502 5.5.1 Unknown\r\n"))
            if verb == b"DATA":
                self.in_data = True
            elif verb == b"STARTTLS":
                assert self.transport is not None
                self.transport.write(b"".join(out))
                asyncio.ensure_future(self._tls())
                return
            elif verb == b"QUIT":
                assert self.transport is not None
                self.transport.write(b"".join(out))
                self.transport.close()
                return
        if out and self.transport is not None:
            self.transport.write(b"".join(out))

    async def _tls(self) -> None:
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        with contextlib.suppress(OSError, ssl.SSLError, ConnectionError):
            self.transport = await loop.start_tls(self.transport, self, self.ctx,
                                                  server_side=True)


async def _serve(sock: socket.socket, ctx: ssl.SSLContext) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Canned(ctx), sock=sock, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    raise SystemExit(run_forked(_serve, reuse_port=False))
