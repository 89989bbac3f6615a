"""RSS per handshaken server-side TLS connection kept over memory BIOs: the stdlib
``ssl`` module (the system's OpenSSL) against pyOpenSSL (cryptography's bundled
OpenSSL, with ``MODE_RELEASE_BUFFERS`` as tls/session.py sets it), for workload D
(bench/README.md). The server sides are smtpgate's own sessions on the contexts
``make_server_context`` builds; client and server run in this one process, and only
the server sides are kept. Usage: ``python bench/probes/tls_memory.py stdlib|pyopenssl N``.
"""

from __future__ import annotations

import gc
import shutil
import ssl
import sys
import tempfile
from pathlib import Path
from typing import Any

from OpenSSL import SSL

from smtpgate.tls.certs import write_self_signed
from smtpgate.tls.memory_handshake import handshake, session_step, sslobject_step
from smtpgate.tls.native_session import NativeServerSession
from smtpgate.tls.session import TlsServerSession, make_server_context


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith("VmRSS"))


def kib_per_connection(kind: str, n: int) -> float:
    """RSS KiB each of ``n`` handshaken server sessions of ``kind`` holds."""
    d = Path(tempfile.mkdtemp())
    write_self_signed(d / "c.pem", d / "k.pem", "localhost")
    client_ctx = ssl.create_default_context(cafile=str(d / "c.pem"))
    # The server sessions production uses, on the contexts it builds.
    tls = make_server_context(d / "c.pem", d / "k.pem")
    shutil.rmtree(d)  # loaded: the files are not needed any more
    native = tls.native
    if kind == "stdlib" and native is None:
        raise SystemExit("the stdlib session is not available here (exporter self-test)")
    kept: list[Any] = []

    def one() -> None:
        cin, cout = ssl.MemoryBIO(), ssl.MemoryBIO()
        client = client_ctx.wrap_bio(cin, cout, server_hostname="localhost")
        server = (NativeServerSession(native, tls.end_point_hash) if native is not None
                  and kind == "stdlib" else TlsServerSession(tls))
        handshake(sslobject_step(client, cin, cout), session_step(server))
        kept.append(server)

    for _ in range(200):  # warm the allocator and OpenSSL's caches
        one()
    kept.clear()
    gc.collect()
    base = rss_kib()
    for _ in range(n):
        one()
    gc.collect()
    return (rss_kib() - base) / n


def main(kind: str, n: int) -> None:
    each = kib_per_connection(kind, n)
    print(f"{kind}: {n} connections, {each:.1f} KiB RSS each; "
          f"stdlib {ssl.OPENSSL_VERSION}, pyOpenSSL "
          f"{SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode()}")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
