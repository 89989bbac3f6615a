"""The token verifier's HTTP exchange keeps its one deadline through the name
look-up and every address of the name (`auth/oauth_http.py`).

The dead address is real: a listening socket whose accept queue is full drops
further SYNs (Linux), so a connect to it hangs as to a host that blackholes
packets. The name's addresses come from a replaced ``socket.getaddrinfo``: no
resolver of the machine is touched.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from smtpgate.auth import oauth_http


@pytest.fixture
def answering(blackhole: tuple[str, int]) -> Iterator[tuple[str, int]]:
    """127.0.0.3 on the blackhole's port: an HTTP server that answers ``{}``."""
    listener = socket.socket()
    listener.bind(("127.0.0.3", blackhole[1]))
    listener.listen(8)

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n{}")

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield "127.0.0.3", blackhole[1]
    finally:
        listener.close()


def _resolving_to(monkeypatch: pytest.MonkeyPatch, *hosts: str) -> None:
    def getaddrinfo(host: str, port: int, *args: Any, **kwargs: Any) -> list[Any]:
        assert host == "localhost"
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (h, port)) for h in hosts]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


def test_a_dead_first_address_leaves_time_for_the_next(
    monkeypatch: pytest.MonkeyPatch, blackhole: tuple[str, int], answering: tuple[str, int],
) -> None:
    """Each address got the whole timeout again (create_connection's rule): the
    dead one used it all and the exchange had none left for the answer."""
    _resolving_to(monkeypatch, blackhole[0], answering[0])
    started = time.monotonic()
    body = oauth_http.request(f"http://localhost:{answering[1]}/keys", timeout=4, limit=100)
    assert body == b"{}"
    assert time.monotonic() - started < 4  # within the exchange's one deadline


def test_dead_addresses_end_within_the_deadline(
    monkeypatch: pytest.MonkeyPatch, blackhole: tuple[str, int],
) -> None:
    _resolving_to(monkeypatch, blackhole[0], blackhole[0], blackhole[0])
    started = time.monotonic()
    with pytest.raises(oauth_http.NoAnswerInTime):
        oauth_http.request(f"http://localhost:{blackhole[1]}/keys", timeout=1.5, limit=100)
    assert time.monotonic() - started < 3  # not 1.5 s for each of the three


def test_a_resolver_that_does_not_answer_ends_within_the_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``getaddrinfo`` has no timeout: a resolver that does not answer held the
    exchange for the resolver's own timeouts."""
    release = threading.Event()

    def hanging(*args: Any, **kwargs: Any) -> list[Any]:
        release.wait(30)
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", hanging)
    started = time.monotonic()
    try:
        with pytest.raises(oauth_http.NoAnswerInTime, match="not resolved in time"):
            oauth_http.request("https://issuer.example/keys", timeout=1, limit=100)
        assert time.monotonic() - started < 3
    finally:
        release.set()


def test_a_name_that_does_not_exist_is_said_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    def unknown(*args: Any, **kwargs: Any) -> list[Any]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", unknown)
    with pytest.raises(OSError, match="not known"):
        oauth_http.request("https://nowhere.example/keys", timeout=5, limit=100)
