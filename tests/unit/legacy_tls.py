"""A pyOpenSSL client limited to an old TLS version, for tests of what the server
does with a client it must refuse (TLS 1.0/1.1, RFC 8996)."""

from __future__ import annotations

from OpenSSL import SSL


def legacy_client(max_version: int) -> SSL.Connection:
    """A client speaking at most ``max_version`` (``SSL.TLS1_VERSION`` ...), its
    ClientHello ready to be written after the first ``do_handshake``."""
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_VERSION)
    ctx.set_max_proto_version(max_version)
    ctx.set_cipher_list(b"DEFAULT:@SECLEVEL=0")
    conn = SSL.Connection(ctx, None)
    conn.set_connect_state()
    return conn
