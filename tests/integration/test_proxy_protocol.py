"""``proxy_protocol = true`` on the real server: the client a PROXY header names is
the one the guard, the auth log and the Received line see; a header from an
untrusted address, a malformed one or none at all closes the connection before
any SMTP byte."""

from __future__ import annotations

import json
import smtplib
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from smtpgate.frontdoor.proxy_header import V2_SIGNATURE

from .conftest import PASSWORD, USER, Server, make_server, require_tool
from .test_attacks import plain


def _proxied(config: str) -> str:
    """The init-written listeners with a PROXY header required, trusting 127.0.0.1 only."""
    return config.replace(
        'tls = "starttls"',
        'tls = "starttls"\nproxy_protocol = true\ntrusted_proxies = ["127.0.0.1/32"]',
    ).replace(
        'tls = "implicit"',
        'tls = "implicit"\nproxy_protocol = true\ntrusted_proxies = ["127.0.0.1/32"]',
    )


@pytest.fixture(scope="module")
def proxied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = make_server(tmp_path_factory.mktemp("proxied") / "srv")
    srv.add_user(USER, PASSWORD)
    srv.config.write_text(_proxied(srv.config.read_text()))
    # Server.start's readiness probe speaks SMTP without a header: start by hand.
    import subprocess
    import time

    from .conftest import SMTPGATE

    with open(srv.log_path, "ab") as log:
        srv.proc = subprocess.Popen([SMTPGATE, "serve", "--config", str(srv.config)],
                                    stdout=log, stderr=log, env=srv.env)
    deadline = time.monotonic() + 30
    while "listening on" not in srv.log_text() or srv.log_text().count("listening on") < 2:
        assert srv.proc.poll() is None, srv.log_text()
        assert time.monotonic() < deadline, srv.log_text()
        time.sleep(0.05)
    yield srv
    srv.stop()


def v1(client: str, port: int = 50123) -> bytes:
    return f"PROXY TCP4 {client} 127.0.0.1 {port} 587\r\n".encode()


def v1_6(client: str, port: int = 50123) -> bytes:
    return f"PROXY TCP6 {client} ::1 {port} 587\r\n".encode()


def v2(client: str, port: int = 50123) -> bytes:
    body = socket.inet_aton(client) + socket.inet_aton("127.0.0.1") + struct.pack("!HH", port, 465)
    return V2_SIGNATURE + b"\x21\x11" + struct.pack("!H", len(body)) + body


def auth_records(srv: Server) -> list[dict[str, object]]:
    path = srv.root / "auth.log"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_v1_client_is_what_the_server_sees(proxied: Server) -> None:
    sock = socket.create_connection(("127.0.0.1", proxied.submission), timeout=10)
    sock.sendall(v1("198.51.100.7"))
    smtp = smtplib.SMTP()
    smtp.sock, smtp.file, smtp._host = sock, None, "localhost"
    code, _ = smtp.getreply()
    assert code == 220
    smtp.ehlo("client.example")
    smtp.starttls(context=proxied.client_context())
    smtp.ehlo("client.example")
    smtp.login(USER, PASSWORD)
    smtp.sendmail(USER, [USER], b"From: alice@example.org\r\nSubject: via proxy\r\n\r\nhi\r\n")
    smtp.quit()
    (msg,) = proxied.wait_for_mail(1)
    assert "198.51.100.7" in msg.read_text().split("\n\n", 1)[0]
    assert any(r["client_ip"] == "198.51.100.7" and r["result"] == "success"
               for r in auth_records(proxied))


def test_v2_header_then_tls_on_the_implicit_port(proxied: Server) -> None:
    raw = socket.create_connection(("127.0.0.1", proxied.submissions), timeout=10)
    raw.sendall(v2("203.0.113.9", 40000))
    tls = proxied.client_context().wrap_socket(raw, server_hostname="localhost")
    assert tls.recv(100).startswith(b"220 ")
    tls.sendall(b"EHLO c\r\n")
    while not tls.recv(4096).endswith(b"\r\n"):
        pass
    tls.sendall(f"AUTH PLAIN {plain(USER, 'wrong password')}\r\n".encode())
    assert tls.recv(200).startswith(b"535 ")
    tls.close()
    assert any(r["client_ip"] == "203.0.113.9" and r["client_port"] == 40000
               and r["result"] == "failure" for r in auth_records(proxied))


@pytest.mark.parametrize("first", [
    b"EHLO no-header\r\n",                       # a client that bypassed the balancer
    b"PROXY TCP4 198.51.100.7 127.0.0.1 1\r\n",  # malformed
    V2_SIGNATURE + b"\x21\x11\x00\x04abcd",      # address block too short
])
def test_no_valid_header_closes_before_any_smtp_byte(proxied: Server, first: bytes) -> None:
    with socket.create_connection(("127.0.0.1", proxied.submission), timeout=10) as s:
        s.sendall(first)
        assert s.recv(100) == b""


def test_header_from_an_untrusted_address_is_refused(proxied: Server) -> None:
    with socket.create_connection(("127.0.0.1", proxied.submission), timeout=10,
                                  source_address=("127.0.0.2", 0)) as s:
        try:
            s.sendall(v1("198.51.100.7"))
            assert s.recv(100) == b""
        except ConnectionResetError:
            pass  # closed before reading: as good
    assert "127.0.0.2" in proxied.log_text() and "not one (trusted_proxies)" in proxied.log_text()


def _greeting_from(srv: Server, header: bytes) -> tuple[socket.socket, bytes]:
    sock = socket.create_connection(("127.0.0.1", srv.submission), timeout=10)
    sock.sendall(header)
    return sock, sock.recv(200)


def test_an_ipv6_clients_concurrent_connections_are_counted_by_its_64(proxied: Server) -> None:
    """``limits.max_connections_per_ip`` (20) counted an IPv6 client by its exact
    address, where the guard and the connection rate count its /64: one host with a
    /64 (what every IPv6 customer gets) opened as many sessions as
    ``max_connections`` allows, each from another address of it, and left none for
    anyone else. Twenty from one /64 now fill it; the 21st gets the 421, whichever
    worker accepts it, and another /64 is not held up."""
    held: list[socket.socket] = []
    try:
        for n in range(1, 21):
            sock, greeting = _greeting_from(proxied, v1_6(f"2001:db8:1:2::{n:x}"))
            held.append(sock)
            assert greeting.startswith(b"220 "), (n, greeting)
        sock, greeting = _greeting_from(proxied, v1_6("2001:db8:1:2:ffff::21"))
        sock.close()
        assert greeting == b"421 4.7.0 Too many connections from your address, try again later\r\n"
        sock, greeting = _greeting_from(proxied, v1_6("2001:db8:1:3::1"))
        sock.close()
        assert greeting.startswith(b"220 ")
    finally:
        for s in held:
            s.close()
    assert "refused [2001:db8:1:2:ffff::21]:" in proxied.log_text()  # bracketed, as the auth log
    assert "Traceback" not in proxied.log_text()


def test_an_ipv4_client_of_a_dual_stack_haproxy_with_send_proxy_is_its_ipv4_address(
        proxied: Server, tmp_path: Path) -> None:
    """HAProxy 2.6 with ``send-proxy`` (version 1) on ``bind :::PORT v4v6`` names an
    IPv4 client ``TCP6 ::ffff:127.0.0.23``: the auth log said '::ffff:7f00:17' and the
    Received line '[IPv6:::ffff:7f00:17]', neither the address fail2ban or a
    firewall can ban, where version 2 already gave the IPv4 address."""
    from tests.peers.haproxy import HAProxy

    if not Path("/usr/sbin/haproxy").exists():
        require_tool("haproxy")
    proxy = HAProxy(tmp_path / "haproxy", [("a", proxied.submission, proxied.submissions)],
                    server_options="send-proxy", dual_stack=True)
    proxy.start()
    try:
        sock = socket.create_connection(("127.0.0.1", proxy.submission), timeout=10,
                                        source_address=("127.0.0.23", 0))
        smtp = smtplib.SMTP()
        smtp.sock, smtp.file, smtp._host = sock, None, "localhost"
        assert smtp.getreply()[0] == 220
        smtp.ehlo("client.example")
        smtp.starttls(context=proxied.client_context())
        smtp.ehlo("client.example")
        before = len(proxied.delivered())
        smtp.login(USER, PASSWORD)
        smtp.sendmail(USER, [USER], b"From: alice@example.org\r\nSubject: dual-stack v1\r\n"
                      b"\r\nhi\r\n")
        smtp.quit()
    finally:
        proxy.stop()
    files = proxied.wait_for_mail(before + 1)
    msg = next(f.read_text() for f in files if "Subject: dual-stack v1" in f.read_text())
    assert "[127.0.0.23]" in msg.split("\n\n", 1)[0], msg[:400]
    assert any(r["client_ip"] == "127.0.0.23" and r["result"] == "success"
               for r in auth_records(proxied)), auth_records(proxied)[-3:]
    assert "7f00:17" not in proxied.log_text()


def test_config_names_the_missing_trusted_proxies(tmp_path: Path) -> None:
    srv = make_server(tmp_path / "srv")
    srv.config.write_text(srv.config.read_text().replace(
        'tls = "starttls"', 'tls = "starttls"\nproxy_protocol = true'))
    out = srv.cli("config", "check", check=False)
    assert out.returncode == 1
    assert "listeners.0.trusted_proxies" in out.stdout + out.stderr


def test_a_tcp_front_door_takes_the_header_too(tmp_path: Path) -> None:
    """A Dovecot-protocol auth listener behind a TCP balancer: its handshake comes
    after a valid header only."""
    import subprocess
    import time

    from .conftest import SMTPGATE, free_port

    port = free_port()
    srv = make_server(tmp_path / "srv", (
        "\n[[auth_listeners]]\nprotocol = \"dovecot\"\n"
        f"address = \"127.0.0.1:{port}\"\nproxy_protocol = true\n"
        "trusted_proxies = [\"127.0.0.1/32\"]\n"))
    with open(srv.log_path, "ab") as log:
        srv.proc = subprocess.Popen([SMTPGATE, "serve", "--config", str(srv.config)],
                                    stdout=log, stderr=log, env=srv.env)
    try:
        deadline = time.monotonic() + 30
        while "front door" not in srv.log_text():
            assert srv.proc.poll() is None and time.monotonic() < deadline, srv.log_text()
            time.sleep(0.05)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(v1("192.0.2.44"))
            assert s.recv(4096).startswith(b"VERSION\t1\t")
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"VERSION\t1\t2\n")
            assert s.recv(4096) == b""
    finally:
        srv.stop()


@pytest.mark.parametrize("mode", ["--starttls", "--tls"])
def test_smtpgate_test_straight_to_a_node_says_it_wants_a_proxy_header(
        proxied: Server, mode: str) -> None:
    """An administrator testing one node of a cluster directly (``smtpgate test -s
    node:587``) waited 10 s and read "connection lost: server closed the
    connection" (or a bare TLS failure on 465): nothing said that the listener
    waits for HAProxy's header. The node closes as before; the tester says why
    it may have."""
    import subprocess

    from .conftest import SMTPGATE

    port = proxied.submission if mode == "--starttls" else proxied.submissions
    out = subprocess.run(
        [SMTPGATE, "test", "-s", f"127.0.0.1:{port}", mode, "--ca", str(proxied.ca),
         "--tls-name", "localhost", "--quit-after", "ehlo", "--greeting-wait", "0",
         "--timeout", "30"],
        capture_output=True, text=True, timeout=60, check=False)
    text = out.stdout + out.stderr
    assert out.returncode in (3, 4), text
    assert "expects a PROXY protocol header first" in text, text
    assert "test it through the balancer" in text, text
