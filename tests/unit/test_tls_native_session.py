"""The stdlib TLS session (tls/native_session.py) and its exporter (tls/exporter.py).

The bindings themselves are checked against a client in test_sasl_channel_binding.py
(every test there runs on both sessions); here: that production picks it, that it
is built like the pyOpenSSL context, and how it fails.
"""

from __future__ import annotations

import ctypes
import ssl
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner
from OpenSSL import SSL

from smtpgate.cli.main import cli
from smtpgate.config import load_config
from smtpgate.server.reload import build_tls
from smtpgate.tls import exporter, tickets
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
    assert ctx.options & ssl.OP_NO_COMPRESSION
    # Stateless TLS 1.3 tickets, one a handshake (tls/tickets.py).
    assert not ctx.options & ssl.OP_NO_TICKET
    assert ctx.num_tickets == 1
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


def _connect(
    tls: ServerTlsContext, cctx: ssl.SSLContext, session: ssl.SSLSession | None = None,
    server_hostname: str | None = "localhost",
) -> tuple[ssl.SSLObject, NativeServerSession]:
    """A handshake, then one record each way, so that the client has read the
    server's session ticket (TLS 1.3 sends it after the handshake)."""
    assert tls.native is not None
    into, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = cctx.wrap_bio(into, out, server_hostname=server_hostname, session=session)
    server = NativeServerSession(tls.native, tls.end_point_hash)
    handshake(sslobject_step(client, into, out), session_step(server))
    client.write(b"EHLO x\r\n")
    got, reply = server.receive(out.read())
    assert got == b"EHLO x\r\n"
    into.write(reply + server.send(b"250 ok\r\n"))
    assert client.read(100) == b"250 ok\r\n"
    return client, server


def _client_context(max_version: ssl.TLSVersion) -> ssl.SSLContext:
    cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    cctx.check_hostname, cctx.verify_mode = False, ssl.CERT_NONE
    cctx.maximum_version = max_version
    return cctx


def test_tls13_sessions_resume_from_a_ticket_and_keep_the_exporter(
    tls: ServerTlsContext,
) -> None:
    cctx = _client_context(ssl.TLSVersion.TLSv1_3)
    first, _ = _connect(tls, cctx)
    assert first.version() == "TLSv1.3" and first.session is not None
    assert first.session.has_ticket
    again, server = _connect(tls, cctx, first.session)
    assert again.session_reused
    assert set(server.channel_binding().data) == {"tls-exporter", "tls-server-end-point"}


def test_tickets_leave_nothing_in_a_session_cache(tls: ServerTlsContext) -> None:
    """No cache a client could fill (up to 20,480 sessions a worker for two hours
    with OpenSSL's defaults): tickets are stateless, so resumption holds no memory
    in the server. With the cache on, each of these handshakes adds one."""
    assert tls.native is not None
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        cctx, session = _client_context(version), None
        for _ in range(3):
            client, _ = _connect(tls, cctx, session)
            session = client.session
    assert tls.native.session_stats()["number"] == 0


@pytest.mark.parametrize("sni", ["localhost", None])
def test_tls12_gets_no_ticket_and_never_resumes(tls: ServerTlsContext, sni: str | None) -> None:
    """A TLS 1.2 ticket would hold the master secret (forward secrecy lost to
    whoever reads the ticket key) and a resumed TLS 1.2 session makes tls-unique
    unsafe without the extended master secret: tickets are for TLS 1.3 only, with
    or without SNI (the callback that decides runs for every ClientHello)."""
    cctx = _client_context(ssl.TLSVersion.TLSv1_2)
    first, full = _connect(tls, cctx, server_hostname=sni)
    assert first.version() == "TLSv1.2" and first.session is not None
    assert not first.session.has_ticket
    assert set(full.channel_binding().data) == {"tls-unique", "tls-server-end-point"}
    again, _ = _connect(tls, cctx, first.session, server_hostname=sni)
    assert not again.session_reused


def test_every_worker_takes_the_tickets_of_the_others_after_a_reload(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Each worker builds its own context on a reload: with the same certificate
    they seal tickets alike, so a client resumes on whichever worker it reaches.
    A new certificate ends the old tickets: a full handshake, not an error."""
    d = tmp_path_factory.mktemp("reload")
    write_self_signed(d / "cert.pem", d / "key.pem", "localhost", days=2)
    worker_1 = make_server_context(d / "cert.pem", d / "key.pem")
    worker_2 = make_server_context(d / "cert.pem", d / "key.pem")
    cctx = _client_context(ssl.TLSVersion.TLSv1_3)
    first, _ = _connect(worker_1, cctx)
    again, server = _connect(worker_2, cctx, first.session)
    assert again.session_reused
    assert "tls-exporter" in server.channel_binding().data
    write_self_signed(d / "cert.pem", d / "key.pem", "localhost", days=2)
    renewed = make_server_context(d / "cert.pem", d / "key.pem")
    after, server = _connect(renewed, cctx, again.session)
    assert not after.session_reused
    assert "tls-exporter" in server.channel_binding().data


def test_the_ticket_key_turns_every_hour_alike_in_every_worker(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Found reading tls/tickets.py: one ticket key from a server's start to its
    stop, so a key read once from a worker's memory opened every ticket it ever
    sealed, and sealed. Now the key turns with the hour of the wall clock, the
    same in every worker (one started within the new hour too); a ticket of the
    hour before gets a full handshake, never an error."""
    clock = [tickets.ROTATE_EVERY * 500_000 + 10.0]
    monkeypatch.setattr(tickets, "time", SimpleNamespace(time=lambda: clock[0]))
    monkeypatch.setattr(tickets._Chain, "period", tickets._hour(clock[0]))
    monkeypatch.setattr(tickets._Chain, "secret", b"\1" * 32)
    d = tmp_path_factory.mktemp("rotate")
    write_self_signed(d / "cert.pem", d / "key.pem", "localhost", days=2)
    worker_1 = make_server_context(d / "cert.pem", d / "key.pem")
    cctx = _client_context(ssl.TLSVersion.TLSv1_3)
    first, _ = _connect(worker_1, cctx)
    clock[0] += tickets.ROTATE_EVERY - 20.0  # the same hour, ten seconds before its end
    open_server_session(worker_1, "submission")
    assert _connect(worker_1, cctx, first.session)[0].session_reused
    hour_1 = tickets.ticket_keys(worker_1.end_point_hash)
    clock[0] += 20.0  # the next hour
    open_server_session(worker_1, "submission")  # what each new connection does
    worker_2 = make_server_context(d / "cert.pem", d / "key.pem")
    assert tickets.ticket_keys(worker_1.end_point_hash) != hour_1
    stale, _ = _connect(worker_1, cctx, first.session)
    assert not stale.session_reused
    again, server = _connect(worker_2, cctx, stale.session)
    assert again.session_reused
    assert "tls-exporter" in server.channel_binding().data
    clock[0] -= 3 * tickets.ROTATE_EVERY  # a clock set back brings no old key back
    open_server_session(worker_1, "submission")
    assert tickets.ticket_keys(worker_1.end_point_hash) != hour_1
    assert _connect(worker_1, cctx, again.session)[0].session_reused


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


def test_a_resumed_tls13_session_exports_what_the_client_exports(
    tls: ServerTlsContext,
) -> None:
    """SCRAM-PLUS after resumption: both ends of the resumed connection compute
    the same tls-exporter binding (RFC 9266 holds for PSK handshakes), and it is
    not the first connection's."""
    cctx = _client_context(ssl.TLSVersion.TLSv1_3)
    first, full = _connect(tls, cctx)
    again, resumed = _connect(tls, cctx, first.session)
    assert again.session_reused
    theirs = exporter.tls_exporter(again)
    assert theirs is not None
    assert resumed.channel_binding().data["tls-exporter"] == theirs
    assert full.channel_binding().data["tls-exporter"] != theirs


def test_tls_session_tickets_false_issues_none(tmp_path: Path) -> None:
    """`[tls] session_tickets = false` in the config init wrote: the context start-up
    and reload build (`build_tls`) gives no ticket, so nothing resumes."""
    root = tmp_path / "gate"
    assert CliRunner().invoke(cli, ["init", "--dir", str(root), "--no-demo"]).exit_code == 0
    path = root / "smtpgate.toml"
    text = path.read_text()
    assert "\n[tls]\n" in text
    cctx = _client_context(ssl.TLSVersion.TLSv1_3)
    for setting, resumes in (("", True), ("session_tickets = false\n", False)):
        path.write_text(text.replace("\n[tls]\n", "\n[tls]\n" + setting))
        tls = build_tls(load_config(path))
        first, _ = _connect(tls, cctx)
        assert first.session is not None and first.session.has_ticket == resumes
        again, _ = _connect(tls, cctx, first.session)
        assert again.session_reused == resumes


def test_a_server_name_that_is_not_ascii_leaves_no_traceback_on_stderr(
    tls: ServerTlsContext, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Found by fuzzing a running server: a ClientHello whose SNI held the bytes of
    'é.test' made CPython's servername callback fail to decode it as ASCII before
    calling ours, and it wrote the UnicodeDecodeError with a traceback to stderr
    (the journal), once per connection anyone may open. The handshake still fails
    (RFC 6066 names hosts in ASCII; the session logs it); stderr stays quiet."""
    from smtpgate.tls import tickets

    seen: list[object] = []
    monkeypatch.setattr("sys.unraisablehook", seen.append)
    tickets.quiet_server_name_errors()  # what enable() does in each serving process
    assert tls.native is not None
    client = _client()
    client.set_tlsext_host_name("é.test".encode())
    server = NativeServerSession(tls.native, tls.end_point_hash)
    with pytest.raises(TlsError):
        handshake(pyopenssl_step(client), session_step(server))
    assert seen == []
    # Any other unraisable exception still reaches the hook that was there.
    import sys
    from types import SimpleNamespace

    other = SimpleNamespace(exc_type=ValueError, exc_value=ValueError("x"), exc_traceback=None,
                            err_msg=None, object=b"x")
    sys.unraisablehook(other)  # type: ignore[arg-type]
    assert seen == [other]


def test_a_raw_client_hello_whose_server_name_is_not_ascii_says_so(
    tls: ServerTlsContext,
) -> None:
    """Before: the handshake failed as 'handshake failed: callback failed', which
    reads like a bug of ours; the failure now names what the client sent. The same
    ClientHello with an ASCII name gets a ServerHello."""
    from smtpgate.tls import tickets
    from smtpgate.tls.native_session import ServerNameNotAscii

    from .raw_client_hello import client_hello

    tickets.quiet_server_name_errors()  # what enable() does in each serving process
    assert tls.native is not None
    out = NativeServerSession(tls.native, tls.end_point_hash).receive(
        client_hello(b"mail.example.org"))[1]
    assert out[:1] == b"\x16"  # a handshake record: the ServerHello
    session = NativeServerSession(tls.native, tls.end_point_hash)
    with pytest.raises(ServerNameNotAscii) as e:
        session.receive(client_hello("é.test\n".encode()))
    assert str(e.value) == ("handshake failed: the client sent a server name (SNI) that is "
                            "not ASCII, '\\xc3\\xa9.test\\x0a' (RFC 6066 §3 allows only "
                            "A-labels)")
    assert tickets.take_undecodable_server_name() is None  # taken once, by the session
    # Any other failure is not taken for it.
    with pytest.raises(TlsError, match="wrong version number|record layer failure"):
        NativeServerSession(tls.native, tls.end_point_hash).receive(b"EHLO x\r\n" * 4)
