"""An idle TLS session holds no OpenSSL record buffers (bench/README.md, workload D):
the server context releases them while they are empty, for the plain listeners and
for those that ask for a client certificate."""

from __future__ import annotations

from pathlib import Path

from OpenSSL import SSL

from smtpgate.tls.certs import write_self_signed
from smtpgate.tls.session import ClientAuth, make_server_context


def _mode(ctx: SSL.Context) -> int:
    # SSL_CTX_set_mode ORs the bits in and returns the mode: 0 reads it unchanged.
    return int(ctx.set_mode(0))


def test_server_contexts_release_idle_buffers(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    write_self_signed(cert, key, "localhost", days=2)
    tls = make_server_context(cert, key, client_auth={"ext": ClientAuth(ca=cert)})
    assert _mode(tls.context) & SSL.MODE_RELEASE_BUFFERS
    assert _mode(tls.listeners["ext"].context) & SSL.MODE_RELEASE_BUFFERS
