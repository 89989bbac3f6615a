"""The stdlib TLS session (tls/native_session.py) and its exporter (tls/exporter.py).

The bindings themselves are checked against a client in test_sasl_channel_binding.py
(every test there runs on both sessions); here: that production picks it, that it
is built like the pyOpenSSL context, and how it fails.
"""

from __future__ import annotations

import ctypes
import ssl

import pytest
from OpenSSL import SSL

from smtpgate.tls import exporter
from smtpgate.tls.bio import BioConnection, TlsError
from smtpgate.tls.certs import write_self_signed
from smtpgate.tls.memory_handshake import handshake, pyopenssl_step, session_step, sslobject_step
from smtpgate.tls.native_session import NativeServerSession
from smtpgate.tls.session import (
    ClientAuth,
    ServerTlsContext,
    TlsServerSession,
    make_server_context,
    open_server_session,
)

from .legacy_tls import legacy_client


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> ServerTlsContext:
    d = tmp_path_factory.mktemp("tls")
    write_self_signed(d / "cert.pem", d / "key.pem", "localhost", days=2)
    return make_server_context(d / "cert.pem", d / "key.pem",
                               client_auth={"ext": ClientAuth(ca=d / "cert.pem")})


def _client(max_version: int | None = None) -> SSL.Connection:
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    if max_version is not None:
        ctx.set_max_proto_version(max_version)
    conn = SSL.Connection(ctx, None)
    conn.set_connect_state()
    return conn




def test_the_self_test_passes_here_so_production_uses_the_stdlib(tls: ServerTlsContext) -> None:
    # CI runs on the same Python build as production: a failing self-test there
    # would silently cost the speed this module exists for.
    assert exporter.available()
    assert tls.native is not None
    assert isinstance(open_server_session(tls, "submission"), NativeServerSession)


def test_listeners_with_client_certificates_keep_pyopenssl(tls: ServerTlsContext) -> None:
    assert isinstance(open_server_session(tls, "ext"), TlsServerSession)


def test_the_stdlib_context_is_built_like_the_pyopenssl_one(tls: ServerTlsContext) -> None:
    ctx = tls.native
    assert ctx is not None
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.options & ssl.OP_NO_COMPRESSION and ctx.options & ssl.OP_NO_TICKET
    assert ctx.num_tickets == 0
    tls12 = {c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"}
    assert tls12 and all(name.startswith("ECDHE-") and ("GCM" in name or "CHACHA" in name)
                         for name in tls12)
    # Idle sessions hold no record buffers (workload D): SSL_CTX_get_mode through
    # SSL_CTX_ctrl(SSL_CTRL_MODE = 33, 0), on the SSL_CTX* after PyObject_HEAD.
    lib = exporter.libssl()
    assert lib is not None
    lib.SSL_CTX_ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
    lib.SSL_CTX_ctrl.restype = ctypes.c_long
    ssl_ctx = ctypes.c_void_p.from_address(id(ctx) + 2 * ctypes.sizeof(ctypes.c_void_p)).value
    release_buffers = 0x10
    assert lib.SSL_CTX_ctrl(ssl_ctx, 33, 0, None) & release_buffers
    # No session cache (docs/security.md): SSL_CTRL_GET_SESS_CACHE_MODE = 45 reads 0.
    assert lib.SSL_CTX_ctrl(ssl_ctx, 45, 0, None) == 0


def test_tls12_handshakes_leave_nothing_in_a_session_cache(tls: ServerTlsContext) -> None:
    """No cache a client could fill (up to 20,480 sessions a worker for two hours
    with OpenSSL's defaults), and so no resumption: tls-unique is always the
    client's Finished. With the cache on, each of these handshakes adds one."""
    assert tls.native is not None
    cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    cctx.check_hostname, cctx.verify_mode = False, ssl.CERT_NONE
    cctx.maximum_version = ssl.TLSVersion.TLSv1_2
    session = None
    for attempt in range(3):
        into, out = ssl.MemoryBIO(), ssl.MemoryBIO()
        client = cctx.wrap_bio(into, out, server_hostname="localhost", session=session)
        server = NativeServerSession(tls.native, tls.end_point_hash)
        handshake(sslobject_step(client, into, out), session_step(server))
        assert client.version() == "TLSv1.2"
        assert not client.session_reused, f"connection {attempt + 1} resumed"
        session = client.session
    assert tls.native.session_stats()["number"] == 0


def test_the_exporter_refuses_a_connection_without_a_handshake(tls: ServerTlsContext) -> None:
    assert tls.native is not None
    obj = tls.native.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_side=True)
    assert exporter.tls_exporter(obj) is None


def test_tls12_sessions_offer_tls_unique_and_no_exporter(tls: ServerTlsContext) -> None:
    assert tls.native is not None
    server = NativeServerSession(tls.native, tls.end_point_hash)
    client = _client(SSL.TLS1_2_VERSION)
    handshake(pyopenssl_step(client), session_step(server))
    assert server.version == "TLSv1.2"
    assert server.cipher.startswith("ECDHE-")
    assert set(server.channel_binding().data) == {"tls-unique", "tls-server-end-point"}


def test_records_both_ways_and_close_notify(tls: ServerTlsContext) -> None:
    assert tls.native is not None
    server = NativeServerSession(tls.native, tls.end_point_hash)
    client = _client()
    handshake(pyopenssl_step(client), session_step(server))
    client.bio_write(server.send(b"220 ready\r\n"))
    assert client.recv(100) == b"220 ready\r\n"
    client.send(b"EHLO x\r\n")
    plain, _ = server.receive(BioConnection(client).outgoing())
    assert plain == b"EHLO x\r\n"
    client.shutdown()
    with pytest.raises(EOFError):
        server.receive(BioConnection(client).outgoing())
    assert server.close()  # our close_notify


def test_a_client_speaking_plain_smtp_fails_the_handshake_with_a_reason(
    tls: ServerTlsContext,
) -> None:
    assert tls.native is not None
    server = NativeServerSession(tls.native, tls.end_point_hash)
    with pytest.raises(TlsError, match=r"^handshake failed: [a-z ]+$"):
        server.receive(b"EHLO client.example\r\n")


def test_a_tls10_only_client_is_refused(tls: ServerTlsContext) -> None:
    assert tls.native is not None
    server = NativeServerSession(tls.native, tls.end_point_hash)
    client = legacy_client(SSL.TLS1_VERSION)
    with pytest.raises(SSL.WantReadError):
        client.do_handshake()
    with pytest.raises(TlsError, match="handshake failed"):
        server.receive(BioConnection(client).outgoing())


def test_a_handshake_that_never_ends_is_an_error_not_a_hang() -> None:
    def silent_server(data: bytes) -> tuple[bool, bytes]:
        return False, b""  # takes the bytes, answers nothing

    with pytest.raises(TlsError, match="no TLS handshake after 3 exchanges"):
        handshake(pyopenssl_step(_client()), silent_server, rounds=3)
