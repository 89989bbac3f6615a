"""Strict ALPN (tls/alpn.py): a client that offers protocols must offer "smtp".

Found with `openssl s_client -alpn http/1.1 -starttls smtp` and `-alpn http/1.1`
on the implicit-TLS listener of a server from `smtpgate init`: both handshakes
completed, so a browser redirected to the mail port by an attacker (the ALPACA
attack) got a TLS session the certificate vouched for. Each case runs on both
server sessions (pyOpenSSL and the stdlib's) against a pyOpenSSL client.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from OpenSSL import SSL

from smtpgate.tls.alpn import AlpnRefused, parse
from smtpgate.tls.bio import BioConnection
from smtpgate.tls.certs import write_self_signed
from smtpgate.tls.memory_handshake import handshake, pyopenssl_step, session_step
from smtpgate.tls.native_session import NativeServerSession
from smtpgate.tls.session import ServerTlsContext, TlsServerSession, make_server_context

Session = TlsServerSession | NativeServerSession


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> ServerTlsContext:
    d = tmp_path_factory.mktemp("tls")
    write_self_signed(d / "cert.pem", d / "key.pem", "localhost", days=2)
    return make_server_context(d / "cert.pem", d / "key.pem")


def _pyopenssl(tls: ServerTlsContext) -> Session:
    return TlsServerSession(tls)


def _native(tls: ServerTlsContext) -> Session:
    assert tls.native is not None
    return NativeServerSession(tls.native, tls.end_point_hash)


SESSIONS = [pytest.param(_pyopenssl, id="pyopenssl"), pytest.param(_native, id="stdlib")]


def _client(offer: list[bytes] | None, version: int = SSL.TLS1_3_VERSION) -> SSL.Connection:
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.set_max_proto_version(version)
    if offer is not None:
        ctx.set_alpn_protos(offer)
    conn = SSL.Connection(ctx, None)
    conn.set_connect_state()
    return conn


@pytest.mark.parametrize("make", SESSIONS)
@pytest.mark.parametrize("offer", [[b"http/1.1"], [b"h2", b"http/1.1"], [b"imap"], [b"smtps"]])
@pytest.mark.parametrize("version", [SSL.TLS1_3_VERSION, SSL.TLS1_2_VERSION])
def test_a_client_offering_alpn_without_smtp_gets_no_application_protocol(
    tls: ServerTlsContext, make: Callable[[ServerTlsContext], Session], offer: list[bytes],
    version: int,
) -> None:
    client = _client(offer, version)
    server = make(tls)
    with pytest.raises(AlpnRefused, match=repr(offer[0].decode())) as refused:
        handshake(pyopenssl_step(client), session_step(server))
    assert refused.value.offered == offer
    # The alert OpenSSL queued is what the connection sends before closing.
    client.bio_write(server.outgoing())
    with pytest.raises(SSL.Error, match="no application protocol"):
        client.do_handshake()


@pytest.mark.parametrize("make", SESSIONS)
@pytest.mark.parametrize("offer", [None, [b"smtp"], [b"h2", b"smtp"]])
@pytest.mark.parametrize("version", [SSL.TLS1_3_VERSION, SSL.TLS1_2_VERSION])
def test_no_alpn_or_smtp_among_the_offers_is_accepted_and_binds(
    tls: ServerTlsContext, make: Callable[[ServerTlsContext], Session],
    offer: list[bytes] | None, version: int,
) -> None:
    client = _client(offer, version)
    server = make(tls)
    handshake(pyopenssl_step(client), session_step(server))
    assert client.get_alpn_proto_negotiated() == (b"" if offer is None else b"smtp")
    binding = server.channel_binding().data
    assert binding["tls-server-end-point"] == tls.end_point_hash
    if version == SSL.TLS1_3_VERSION:
        assert binding["tls-exporter"] == client.export_keying_material(
            b"EXPORTER-Channel-Binding", 32, b"")
    else:
        assert binding["tls-unique"] == client.get_finished()
    # Application data flows both ways after the selection.
    assert server.receive(BioConnection(client).send(b"EHLO x\r\n"))[0] == b"EHLO x\r\n"


def test_the_wire_list_is_read_as_length_prefixed_ids() -> None:
    assert parse(b"\x08http/1.1\x02h2") == [b"http/1.1", b"h2"]
    assert parse(b"") == []
    assert parse(b"\x05ab") == [b"ab"]  # truncated: kept as it is
