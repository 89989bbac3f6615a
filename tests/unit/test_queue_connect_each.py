"""Each address of a host gets its own connect timeout (`queue/connect_each.py`).

The dead address is real: a listening socket whose accept queue is full drops
further SYNs (Linux), so a connect to it hangs as to a host that blackholes
packets, on loopback and without touching the machine's network settings.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import pytest

from smtpgate.queue import connect_each as ce
from smtpgate.queue.smtp_io import TransportStream
from smtpgate.tools.wire import Wire


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@pytest.fixture
def answering(blackhole: tuple[str, int]) -> Iterator[tuple[str, int]]:
    """127.0.0.3 on the blackhole's port, accepting (a second address of one host)."""
    listener = socket.socket()
    listener.bind(("127.0.0.3", blackhole[1]))
    listener.listen(8)
    try:
        yield "127.0.0.3", blackhole[1]
    finally:
        listener.close()


def _addresses(*hosts: tuple[str, int]) -> list[ce.Address]:
    return [(socket.AF_INET, host) for host in hosts]


async def test_a_dead_first_address_does_not_use_up_the_next_ones_time(
    blackhole: tuple[str, int], answering: tuple[str, int]
) -> None:
    """Before, one timeout covered every address: the dead one took it all and
    the address that answers was never tried."""
    loop = asyncio.get_running_loop()

    async def attempt(family: int, address: tuple[object, ...]) -> tuple[object, ...]:
        transport, _ = await loop.create_connection(asyncio.Protocol, str(address[0]),
                                                    int(str(address[1])), family=family)
        transport.close()
        return address

    reached = await ce.connect_addresses(_addresses(blackhole, answering), 0.5, attempt)
    assert reached == answering


async def test_every_address_failing_names_each(
    blackhole: tuple[str, int],
) -> None:
    refused = ("127.0.0.3", _free_port("127.0.0.3"))
    loop = asyncio.get_running_loop()

    async def attempt(family: int, address: tuple[object, ...]) -> None:
        await loop.create_connection(asyncio.Protocol, str(address[0]), int(str(address[1])))

    with pytest.raises(OSError) as caught:
        await ce.connect_addresses(_addresses(blackhole, refused), 0.3, attempt)
    assert caught.value.strerror == (f"127.0.0.2:{blackhole[1]} no answer within 0.3 s; "
                                     f"127.0.0.3:{refused[1]} Connection refused")


async def test_one_address_keeps_its_own_error(blackhole: tuple[str, int]) -> None:
    async def attempt(family: int, address: tuple[object, ...]) -> None:
        await asyncio.get_running_loop().create_connection(
            asyncio.Protocol, str(address[0]), int(str(address[1])))

    with pytest.raises(TimeoutError):
        await ce.connect_addresses(_addresses(blackhole), 0.2, attempt)


async def test_resolve_keeps_the_order_drops_repeats_and_caps(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    infos = [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (f"192.0.2.{i}", 25))
             for i in (1, 1, 2, 3, 4, 5, 6, 7)]

    async def getaddrinfo(*args: object, **kwargs: object) -> list[object]:
        return list(infos)

    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", getaddrinfo)
    got = await ce.resolve("relay.example", 25, 1)
    assert [a[1][0] for a in got] == [f"192.0.2.{i}" for i in (1, 2, 3, 4, 5)]


def test_addresses_are_shown_as_an_administrator_writes_them() -> None:
    assert ce.shown(("192.0.2.1", 25)) == "192.0.2.1:25"
    assert ce.shown(("2001:db8::1", 587, 0, 0)) == "[2001:db8::1]:587"


@pytest.mark.parametrize("kind", ["relay", "tester"])
async def test_the_relay_and_the_tester_go_on_to_the_next_address(
    kind: str, blackhole: tuple[str, int], answering: tuple[str, int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Both connects go through `connect_each`: a name whose first address is dead
    (here a resolver answering 127.0.0.2 then 127.0.0.3) still connects."""
    async def resolve(host: str, port: int, timeout: float) -> list[ce.Address]:
        assert host == "relay.example"
        return _addresses((blackhole[0], port), (answering[0], port))

    monkeypatch.setattr(ce, "resolve", resolve)
    if kind == "relay":
        stream = await TransportStream.connect("relay.example", blackhole[1], 0.5)
        try:
            assert stream._transport.get_extra_info("peername")[:2] == answering
        finally:
            stream._transport.abort()
    else:
        wire = await Wire.connect("relay.example", blackhole[1], 0.5)
        try:
            assert wire.peer == f"{answering[0]}:{answering[1]}"
        finally:
            wire._sock.close()
