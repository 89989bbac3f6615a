"""An IPv6 client is written ``[address]:port`` in the session log, as in the auth log.

Bare, ``::1:41234`` is itself an IPv6 address: a reader or a filter (fail2ban,
grep) cannot tell where the address ends. The server listens on ``[::1]`` beside
its IPv4 listeners, and a client that speaks plain text to the implicit-TLS port
gets the session log's handshake failure line.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import Server, free_port, serving


@pytest.fixture
def v6(tmp_path: Path) -> Iterator[tuple[Server, int]]:
    port = free_port()
    yield from ((srv, port) for srv in serving(
        tmp_path, f'\n[[listeners]]\nname = "v6"\naddress = "[::1]:{port}"\ntls = "implicit"\n'))


def test_a_failed_handshake_names_the_ipv6_client_in_brackets(v6: tuple[Server, int]) -> None:
    srv, port = v6
    with socket.create_connection(("::1", port), timeout=10) as s:
        client_port = s.getsockname()[1]
        s.sendall(b"EHLO plain.example\r\n")  # plain text where a ClientHello belongs
        s.settimeout(10)
        try:
            while s.recv(4096):
                pass
        except OSError:
            pass
    deadline = time.monotonic() + 30
    while f"[::1]:{client_port}" not in srv.log_text():
        assert time.monotonic() < deadline, srv.log_text()[-2000:]
        time.sleep(0.1)
    lines = [line for line in srv.log_text().splitlines() if f":{client_port}" in line]
    assert lines and all(f"[::1]:{client_port}" in line for line in lines), lines
    assert not any(f" ::1:{client_port}" in line for line in lines), lines
