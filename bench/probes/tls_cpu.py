#!/usr/bin/env python3
"""CPU of the server side of TLS, per handshake and per SMTP exchange, for both
server sessions smtpgate has: pyOpenSSL over memory BIOs (``TlsServerSession``)
and the stdlib ``ssl`` object (``NativeServerSession``).

Both ends run in this process on memory BIOs; only the server's calls are timed
(``time.thread_time`` around each), so the client's work and the machine's other
load do not enter the figure. One "exchange" is what a message costs the session
in workload B: four command lines in (MAIL, RCPT, DATA, then a 1 KiB body) and four
replies out, each as its own record, as a non-pipelining client sends them.

Usage: tls_cpu.py [--handshakes N] [--exchanges N] [--rounds K]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from OpenSSL import SSL

from smtpgate.tls.bio import BioConnection
from smtpgate.tls.certs import write_self_signed
from smtpgate.tls.memory_handshake import handshake, pyopenssl_step, session_step
from smtpgate.tls.native_session import NativeServerSession
from smtpgate.tls.session import ServerTlsContext, TlsServerSession, make_server_context

Session = TlsServerSession | NativeServerSession
_BODY = b"Subject: x\r\n\r\n" + (b"x" * 76 + b"\r\n") * 12 + b".\r\n"
_LINES = [b"MAIL FROM:<a@test.local>\r\n", b"RCPT TO:<b@example.com>\r\n", b"DATA\r\n", _BODY]
_REPLY = b"250 2.1.0 Ok\r\n"




def _connect(make: Callable[[], Session]) -> tuple[Session, SSL.Connection, float]:
    """A handshake; the server's CPU in it (only its own calls are timed)."""
    server = make()
    client = SSL.Connection(SSL.Context(SSL.TLS_CLIENT_METHOD), None)
    client.set_connect_state()
    spent = [0.0]
    server_step = session_step(server)

    def timed(data: bytes) -> tuple[bool, bytes]:
        t = time.thread_time()
        try:
            return server_step(data)
        finally:
            spent[0] += time.thread_time() - t

    handshake(pyopenssl_step(client), timed)
    return server, client, spent[0]


def measure(make: Callable[[], Session], handshakes: int, exchanges: int) -> tuple[float, float]:
    """(µs per handshake, µs per exchange) of server CPU."""
    spent = 0.0
    for _ in range(handshakes):
        spent += _connect(make)[2]
    per_handshake = spent / handshakes * 1e6
    server, client, _ = _connect(make)
    spent = 0.0
    for _ in range(exchanges):
        for line in _LINES:
            client.send(line)
            data = BioConnection(client).outgoing()
            t = time.thread_time()
            server.receive(data)
            reply = server.send(_REPLY)
            spent += time.thread_time() - t
            client.bio_write(reply)
            client.recv(65536)
    return per_handshake, spent / exchanges * 1e6


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--handshakes", type=int, default=300)
    ap.add_argument("--exchanges", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cert, key = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
        write_self_signed(cert, key, "localhost")
        tls: ServerTlsContext = make_server_context(cert, key)
    native = tls.native
    if native is None:
        print("the stdlib session is not available here (exporter self-test failed)")
        return 1
    makers: dict[str, Callable[[], Session]] = {
        "pyOpenSSL": lambda: TlsServerSession(tls),
        "stdlib": lambda: NativeServerSession(native, tls.end_point_hash),
    }
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in makers}
    for _ in range(a.rounds):  # interleaved
        for name, make in makers.items():
            results[name].append(measure(make, a.handshakes, a.exchanges))
    for name, runs in results.items():
        hs = statistics.median(r[0] for r in runs)
        ex = statistics.median(r[1] for r in runs)
        print(f"{name:10} handshake {hs:8.1f} µs   exchange (4 records in, 4 out) {ex:6.1f} µs"
              f"   [{', '.join(f'{r[0]:.0f}/{r[1]:.0f}' for r in runs)}]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
