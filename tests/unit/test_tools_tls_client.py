"""The client-side TLS session against the server-side one, in memory (no sockets).

Both ends compute channel bindings independently; SCRAM-*-PLUS only works if they
agree, so the test that matters is equality: RFC 9266 tls-exporter on TLS 1.3,
RFC 5929 tls-unique on TLS 1.2, and tls-server-end-point on both.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509

from smtpgate.tls.certs import write_self_signed
from smtpgate.tls.client import (
    CertificateInfo,
    TlsClientSession,
    hostname_matches,
    make_client_context,
)
from smtpgate.tls.session import TlsError, TlsServerSession, make_server_context


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("tls")
    write_self_signed(d / "cert.pem", d / "key.pem", "mail.example.org")
    return d / "cert.pem", d / "key.pem"


def _handshake(client: TlsClientSession, server: TlsServerSession) -> None:
    to_server = client.start()
    for _ in range(10):
        _, to_client = server.receive(to_server)
        _, to_server = client.receive(to_client)
        if client.handshake_done and server.handshake_done and not to_server:
            return
    raise AssertionError("handshake did not finish")


def _pair(cert: tuple[Path, Path], *, version: str | None, ca: bool, name: str,
          server_min: str = "1.2") -> tuple[TlsClientSession, TlsServerSession]:
    server = TlsServerSession(make_server_context(cert[0], cert[1], server_min))
    client = TlsClientSession(make_client_context(cert[0] if ca else None, version=version), name)
    _handshake(client, server)
    return client, server


@pytest.mark.parametrize(
    ("version", "expected", "cb_type"),
    [("1.3", "TLSv1.3", "tls-exporter"), ("1.2", "TLSv1.2", "tls-unique")],
)
def test_channel_bindings_match_the_server(
    cert: tuple[Path, Path], version: str, expected: str, cb_type: str
) -> None:
    client, server = _pair(cert, version=version, ca=True, name="mail.example.org")
    assert client.version == expected
    ours, theirs = client.channel_binding().data, server.channel_binding().data
    assert ours[cb_type] == theirs[cb_type]
    assert ours["tls-server-end-point"] == theirs["tls-server-end-point"]
    # RFC 9266 §2 / RFC 5929 §3: never offer the binding that does not fit the version.
    other = "tls-unique" if cb_type == "tls-exporter" else "tls-exporter"
    assert other not in ours


def test_plaintext_flows_both_ways(cert: tuple[Path, Path]) -> None:
    client, server = _pair(cert, version=None, ca=True, name="mail.example.org")
    plain, out = server.receive(client.send(b"EHLO x\r\n"))
    assert plain == b"EHLO x\r\n"
    got, _ = client.receive(server.send(b"250 ok\r\n") + out)
    assert got == b"250 ok\r\n"


def test_verification_is_recorded_not_enforced(cert: tuple[Path, Path]) -> None:
    trusted, _ = _pair(cert, version=None, ca=True, name="mail.example.org")
    assert trusted.verification().ok
    untrusted, _ = _pair(cert, version=None, ca=False, name="mail.example.org")
    v = untrusted.verification()
    assert not v.chain_ok and "self-signed" in v.chain_error
    assert v.hostname_ok  # the name is checked independently of the chain
    wrong, _ = _pair(cert, version=None, ca=True, name="other.example.org")
    v = wrong.verification()
    assert v.chain_ok and not v.hostname_ok
    assert any("does not match" in p for p in v.problems())


def test_peer_chain_reports_the_certificate(cert: tuple[Path, Path]) -> None:
    client, _ = _pair(cert, version=None, ca=True, name="127.0.0.1")
    chain = client.peer_chain()
    assert chain and chain[0].subject.rfc4514_string() == "CN=mail.example.org"
    assert client.verification().hostname_ok  # the IP SAN


def test_version_mismatch_fails_the_handshake(cert: tuple[Path, Path]) -> None:
    server = TlsServerSession(make_server_context(cert[0], cert[1], "1.3"))
    client = TlsClientSession(make_client_context(cert[0], version="1.2"), "mail.example.org")
    with pytest.raises(TlsError):
        _handshake(client, server)


def test_unknown_version_is_refused() -> None:
    with pytest.raises(TlsError):
        make_client_context(None, version="1.1")


def _info(dns: tuple[str, ...] = (), ips: tuple[str, ...] = ()) -> CertificateInfo:
    now = dt.datetime.now(dt.UTC)
    return CertificateInfo("CN=x", "CN=x", now, now, dns, ips, "00")


@pytest.mark.parametrize(
    ("names", "host", "ok"),
    [
        (("mail.example.org",), "mail.example.org", True),
        (("mail.example.org",), "MAIL.Example.ORG.", True),
        (("*.example.org",), "mail.example.org", True),
        # RFC 6125 §6.4.3: the wildcard is one whole label, never more, never a suffix.
        (("*.example.org",), "a.b.example.org", False),
        (("*.example.org",), "example.org", False),
        (("*.org",), "example.org", False),
        (("m*.example.org",), "mail.example.org", False),
        (("other.example.org",), "mail.example.org", False),
        ((), "mail.example.org", False),
    ],
)
def test_rfc6125_dns_matching(names: tuple[str, ...], host: str, ok: bool) -> None:
    assert hostname_matches(_info(dns=names), host) is ok


def test_ip_addresses_match_ip_sans_only() -> None:
    info = _info(dns=("127.0.0.1",), ips=("::1",))
    assert not hostname_matches(info, "127.0.0.1")  # a DNS-ID is not an IP SAN
    assert hostname_matches(info, "::1")
    assert hostname_matches(info, "[::1]")


def test_certificate_info_days_left(cert: tuple[Path, Path]) -> None:
    from smtpgate.tls.client import certificate_info

    info = certificate_info(x509.load_pem_x509_certificate(cert[0].read_bytes()))
    assert info.self_signed
    assert 800 < info.days_left(dt.datetime.now(dt.UTC)) <= 825
    assert info.to_json(dt.datetime.now(dt.UTC))["dns_names"] == [
        "mail.example.org", "localhost"]
