"""Channel bindings from real TLS sessions (tls/session.py), checked against the
client side of the same handshake, and spliced between two connections.

Both ends run in memory. The server is each of the two sessions production uses,
every test running once with each: ``NativeServerSession`` (the stdlib ``ssl``
object, tls-exporter through tls/exporter.py) and ``TlsServerSession`` (pyOpenSSL,
for listeners with client certificates). The client is a pyOpenSSL connection on
memory BIOs. What the client computes for each binding type is what an honest
SCRAM-PLUS client sends, so the server's value must equal it byte for byte
(RFC 5929, RFC 9266).
"""

from __future__ import annotations

import datetime
import hashlib
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL

from smtpgate.sasl.base import ChannelBinding, Failure, NeedCredentials, Success, Verdict
from smtpgate.sasl.registry import create_server_mechanism
from smtpgate.sasl.scram import ScramClient, scram_credentials_from_password
from smtpgate.tls import memory_handshake
from smtpgate.tls.certs import write_self_signed
from smtpgate.tls.memory_handshake import pyopenssl_step, session_step
from smtpgate.tls.native_session import NativeServerSession
from smtpgate.tls.session import ServerTlsContext, TlsServerSession, make_server_context

PASSWORD = "pencil"
Session = TlsServerSession | NativeServerSession
_IMPLEMENTATION = {"name": "native"}


@pytest.fixture(autouse=True, params=["native", "pyopenssl"])
def implementation(request: pytest.FixtureRequest) -> str:
    """Which server session ``handshake`` builds (both are in production use)."""
    _IMPLEMENTATION["name"] = request.param
    return str(request.param)


def _server(ctx: ServerTlsContext) -> Session:
    if _IMPLEMENTATION["name"] == "pyopenssl":
        return TlsServerSession(ctx)
    assert ctx.native is not None, "the stdlib context must be available on this machine"
    return NativeServerSession(ctx.native, ctx.end_point_hash)


@pytest.fixture(scope="module")
def tls_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("tls")
    write_self_signed(d / "cert.pem", d / "key.pem", "localhost")
    return d


@pytest.fixture(scope="module")
def server_ctx(tls_dir: Path) -> ServerTlsContext:
    return make_server_context(tls_dir / "cert.pem", tls_dir / "key.pem")


def _client(version: str) -> SSL.Connection:
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.set_verify(SSL.VERIFY_NONE, lambda *a: True)
    if version == "1.2":
        ctx.set_max_proto_version(SSL.TLS1_2_VERSION)
    else:
        ctx.set_min_proto_version(SSL.TLS1_3_VERSION)
    conn = SSL.Connection(ctx, None)
    conn.set_connect_state()
    return conn




def handshake(server_ctx: ServerTlsContext, version: str) -> tuple[Session, SSL.Connection]:
    server = _server(server_ctx)
    client = _client(version)
    memory_handshake.handshake(pyopenssl_step(client), session_step(server))
    assert server.handshake_done
    # TLS 1.3: the server's NewSessionTicket-free flight may still be pending.
    client.bio_write(server.send(b"220 ready\r\n"))
    assert client.recv(100) == b"220 ready\r\n"
    return server, client


def client_binding(client: SSL.Connection) -> ChannelBinding:
    """What an honest client computes, independently of tls/session.py."""
    peer = client.get_peer_certificate()
    assert peer is not None
    cert = peer.to_cryptography()
    algo = cert.signature_hash_algorithm
    assert algo is not None
    name = "sha256" if isinstance(algo, (hashes.MD5, hashes.SHA1)) else algo.name
    data = {
        "tls-server-end-point": hashlib.new(
            name, cert.public_bytes(serialization.Encoding.DER)
        ).digest()
    }
    if client.get_protocol_version_name() == "TLSv1.3":
        data["tls-exporter"] = client.export_keying_material(b"EXPORTER-Channel-Binding", 32, b"")
    else:
        finished = client.get_finished()
        assert finished
        data["tls-unique"] = finished
    return ChannelBinding(data)


def test_tls13_bindings_match_the_client(server_ctx: ServerTlsContext) -> None:
    server, client = handshake(server_ctx, "1.3")
    assert server.version == "TLSv1.3"
    cb = server.channel_binding()
    assert set(cb.data) == {"tls-exporter", "tls-server-end-point"}  # no tls-unique on 1.3
    assert cb.data == client_binding(client).data
    assert len(cb.data["tls-exporter"]) == 32  # RFC 9266 §2


def test_tls12_bindings_match_the_client(server_ctx: ServerTlsContext) -> None:
    server, client = handshake(server_ctx, "1.2")
    assert server.version == "TLSv1.2"
    cb = server.channel_binding()
    # RFC 9266 defines tls-exporter for TLS 1.3; on 1.2 the server offers tls-unique.
    assert set(cb.data) == {"tls-unique", "tls-server-end-point"}
    assert cb.data == client_binding(client).data


def test_end_point_hash_follows_the_certificate_signature(tmp_path: Path) -> None:
    """RFC 5929 §4.1: the certificate's own signature hash (here SHA-384), not SHA-256."""
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .sign(key, hashes.SHA384())
    )
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    ctx = make_server_context(tmp_path / "cert.pem", tmp_path / "key.pem")
    server, client = handshake(ctx, "1.3")
    der = cert.public_bytes(serialization.Encoding.DER)
    assert server.channel_binding().data["tls-server-end-point"] == hashlib.sha384(der).digest()
    assert client_binding(client).data["tls-server-end-point"] == hashlib.sha384(der).digest()


def _scram_plus(server_cb: ChannelBinding, client_cb: ChannelBinding, cb_type: str) -> object:
    """One SCRAM-SHA-256-PLUS exchange; returns the server's last step."""
    server = create_server_mechanism(
        "SCRAM-SHA-256-PLUS", channel_binding=server_cb, plus_advertised=True
    )
    client = ScramClient("sha256", "user", PASSWORD, client_cb, True, cb_type)
    step = server.start(client.start())
    assert isinstance(step, NeedCredentials)
    challenge = server.answer(scram_credentials_from_password(PASSWORD, "sha256", 4096))
    step = server.step(client.step(challenge.data))  # type: ignore[union-attr]
    if isinstance(step, NeedCredentials):  # ProofArrived: go on
        step = server.answer(Verdict(ok=True))
    if isinstance(step, NeedCredentials):
        step = server.answer(Verdict(ok=True, identity="user"))
        assert isinstance(step, Success) and step.final_data is not None
        client.step(step.final_data)
        assert client.done
    return step


@pytest.mark.parametrize(("version", "cb_type"), [("1.3", "tls-exporter"), ("1.2", "tls-unique")])
def test_binding_from_another_connection_is_refused(
    server_ctx: ServerTlsContext, version: str, cb_type: str
) -> None:
    server_a, client_a = handshake(server_ctx, version)
    server_b, client_b = handshake(server_ctx, version)
    a, b = client_binding(client_a), client_binding(client_b)
    assert a.data[cb_type] != b.data[cb_type]
    # Each connection with its own data: success.
    assert isinstance(_scram_plus(server_a.channel_binding(), a, cb_type), Success)
    assert isinstance(_scram_plus(server_b.channel_binding(), b, cb_type), Success)
    # Connection b's server, connection a's binding data (a relayed exchange).
    step = _scram_plus(server_b.channel_binding(), a, cb_type)
    assert isinstance(step, Failure)
    assert step.error_data == b"e=channel-bindings-dont-match"


def test_end_point_binding_is_the_same_on_every_connection(server_ctx: ServerTlsContext) -> None:
    """Why tls-server-end-point is the weakest type: it binds to the certificate,
    not the connection, so splicing it cannot be detected (RFC 5929 §4)."""
    server_a, client_a = handshake(server_ctx, "1.3")
    _server_b, client_b = handshake(server_ctx, "1.3")
    a, b = client_binding(client_a), client_binding(client_b)
    assert a.data["tls-server-end-point"] == b.data["tls-server-end-point"]
    assert isinstance(_scram_plus(server_a.channel_binding(), b, "tls-server-end-point"), Success)
