"""``limits.connection_rate_per_ip`` on a running server with two workers.

The attack: a client that connects, makes the server do a TLS handshake, hangs
up and connects again never holds more than a few connections at once, so the
concurrent limit never sees it. The rate is counted for the server as a whole
(the kernel spreads the connections over both workers), per address, and a
connection over it is refused before any handshake: 421 in clear on the
STARTTLS port, closed unanswered on the implicit-TLS port.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import Server, free_port, make_server
from tests.integration.test_metrics import sample, scrape

RATE = 6


def _config(metrics_port: int, exceptions: str) -> str:
    return (f"\n[server]\nworkers = 2\n\n[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n"
            f"\n[limits]\nconnection_rate_per_ip = {RATE}\n{exceptions}")


@pytest.fixture
def rated(tmp_path: Path) -> Iterator[tuple[Server, int]]:
    port = free_port()
    srv = make_server(tmp_path / "srv", _config(port, "connection_rate_exceptions = []\n"))
    srv.start()
    yield srv, port
    srv.stop()


def _away_from_a_minute_turn() -> None:
    """The window slides with the minute of CLOCK_MONOTONIC (one clock for every
    process): a burst that straddles a turn may get one more connection in, by
    design. Start the burst well inside a minute so the count below is exact."""
    if time.monotonic() % 60 > 45:
        time.sleep(61 - time.monotonic() % 60)


def _greeting(port: int, source: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10,
                                  source_address=(source, 0)) as sock:
        return sock.recv(200)


def test_new_connections_over_the_rate_get_421_across_workers(rated: tuple[Server, int]) -> None:
    srv, metrics_port = rated
    _away_from_a_minute_turn()
    greetings = [_greeting(srv.submission, "127.0.0.2") for _ in range(RATE + 4)]
    served = [g for g in greetings if g.startswith(b"220 ")]
    refused = [g for g in greetings if g.startswith(b"421 4.7.0 ")]
    assert len(served) == RATE, greetings
    assert len(refused) == 4 and greetings[RATE:] == refused, greetings
    assert b"new connections from your address" in refused[0]
    # Another address is its own client.
    assert _greeting(srv.submission, "127.0.0.3").startswith(b"220 ")
    # On the implicit-TLS port the refusal is a close without a handshake: a
    # cleartext 421 would be a broken TLS record, and a handshake is what the
    # limit saves.
    raw = socket.create_connection(("127.0.0.1", srv.submissions), timeout=10,
                                   source_address=("127.0.0.2", 0))
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        ctx.wrap_socket(raw, server_hostname="localhost").close()
    raw.close()
    text = scrape(metrics_port)
    assert sample(text, "smtpgate_connections_refused_total", reason="rate") == 5
    assert sample(text, "smtpgate_connections_refused_total", listener="submission",
                  reason="rate") == 4
    log = srv.log_path.read_text()
    assert "refused 127.0.0.2:" in log and "limits.connection_rate_per_ip exceeded" in log


def test_a_proxy_trusted_for_xclient_is_not_rated(tmp_path: Path) -> None:
    """nginx's mail proxy connects for all its clients: its connections are not one
    client's rate (XCLIENT names each client afterwards)."""
    port = free_port()
    srv = make_server(tmp_path / "srv", _config(port, "connection_rate_exceptions = []\n"))
    text = srv.config.read_text()
    srv.config.write_text(text.replace('tls = "starttls"\n',
                                       'tls = "starttls"\nxclient_trusted = ["127.0.0.4/32"]\n', 1))
    srv.start()
    try:
        _away_from_a_minute_turn()
        greetings = [_greeting(srv.submission, "127.0.0.4") for _ in range(RATE + 4)]
        assert all(g.startswith(b"220 ") for g in greetings), greetings
        # Anyone else on the same listener is rated as before.
        others = [_greeting(srv.submission, "127.0.0.5") for _ in range(RATE + 1)]
        assert others[-1].startswith(b"421 4.7.0 "), others
    finally:
        srv.stop()


def test_loopback_is_exempt_by_default(tmp_path: Path) -> None:
    """The default exceptions are the loopback networks (local applications and
    monitoring), as Postfix exempts $mynetworks."""
    port = free_port()
    srv = make_server(tmp_path / "srv", _config(port, ""))
    srv.start()
    try:
        greetings = [_greeting(srv.submission, "127.0.0.2") for _ in range(RATE + 4)]
        assert all(g.startswith(b"220 ") for g in greetings), greetings
        assert sample(scrape(port), "smtpgate_connections_refused_total", reason="rate") == 0
    finally:
        srv.stop()
