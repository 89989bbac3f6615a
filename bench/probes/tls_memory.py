"""RSS per handshaken server-side TLS connection kept over memory BIOs: the stdlib
``ssl`` module (the system's OpenSSL) against pyOpenSSL (cryptography's bundled
OpenSSL, with ``MODE_RELEASE_BUFFERS`` as tls/session.py sets it), for workload D
(bench/README.md). Client and server run in this one process; only the server
sides are kept. Usage: ``python bench/probes/tls_memory.py stdlib|pyopenssl N``.
"""

from __future__ import annotations

import gc
import ssl
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from OpenSSL import SSL

from smtpgate.tls.certs import write_self_signed


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith("VmRSS"))


def main(kind: str, n: int) -> None:
    d = Path(tempfile.mkdtemp())
    write_self_signed(d / "c.pem", d / "k.pem", "localhost")
    client_ctx = ssl.create_default_context(cafile=str(d / "c.pem"))
    std = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    std.load_cert_chain(d / "c.pem", d / "k.pem")
    pyo = SSL.Context(SSL.TLS_SERVER_METHOD)
    pyo.use_certificate_file(str(d / "c.pem"))
    pyo.use_privatekey_file(str(d / "k.pem"))
    pyo.set_mode(SSL.MODE_RELEASE_BUFFERS)
    kept: list[Any] = []

    def std_server() -> tuple[Any, Callable[[bytes], tuple[bool, bytes]]]:
        sin, sout = ssl.MemoryBIO(), ssl.MemoryBIO()
        conn = std.wrap_bio(sin, sout, server_side=True)

        def step(data: bytes) -> tuple[bool, bytes]:
            sin.write(data)
            try:
                conn.do_handshake()
                done = True
            except ssl.SSLWantReadError:
                done = False
            return done, sout.read()

        return conn, step

    def pyo_server() -> tuple[Any, Callable[[bytes], tuple[bool, bytes]]]:
        conn = SSL.Connection(pyo, None)
        conn.set_accept_state()

        def step(data: bytes) -> tuple[bool, bytes]:
            if data:
                conn.bio_write(data)
            try:
                conn.do_handshake()
                done = True
            except SSL.WantReadError:
                done = False
            try:
                return done, conn.bio_read(65536)
            except SSL.WantReadError:
                return done, b""

        return conn, step

    def one() -> None:
        cin, cout = ssl.MemoryBIO(), ssl.MemoryBIO()
        client = client_ctx.wrap_bio(cin, cout, server_hostname="localhost")
        server, step = std_server() if kind == "stdlib" else pyo_server()
        for _ in range(10):
            try:
                client.do_handshake()
                client_done = True
            except ssl.SSLWantReadError:
                client_done = False
            server_done, back = step(cout.read())
            if back:
                cin.write(back)
            if client_done and server_done:
                break
        kept.append(server)

    for _ in range(200):  # warm the allocator and OpenSSL's caches
        one()
    kept.clear()
    gc.collect()
    base = rss_kib()
    for _ in range(n):
        one()
    gc.collect()
    print(f"{kind}: {n} connections, {(rss_kib() - base) / n:.1f} KiB RSS each; "
          f"stdlib {ssl.OPENSSL_VERSION}, pyOpenSSL "
          f"{SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode()}")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
