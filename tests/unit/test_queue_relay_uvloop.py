"""The relay client under uvloop, the event loop a default install runs.

uvloop's transports are not ``asyncio.Transport`` subclasses: a class check made
every relay delivery hang with the greeting unread. Here the transport handling is
tested directly, and then every relay scenario of ``test_queue_relay`` (those that
need no parameters) runs again on a uvloop loop.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
import uvloop

from smtpgate.client.engine import ClientEngine
from smtpgate.queue import smtp_io
from smtpgate.queue.delivery import TempFailure
from smtpgate.queue.smtp_io import SmtpClientConnection, UnusableTransport, missing_methods
from tests.unit import test_queue_relay as base

T = TypeVar("T")


def on_uvloop(coro: Coroutine[Any, Any, T]) -> T:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


async def _greeter(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"220 hop.test ESMTP\r\n")
    await reader.read(100)
    writer.close()


def test_uvloop_transport_has_what_the_client_needs_though_not_the_class() -> None:
    async def scenario() -> None:
        assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
        loop = asyncio.get_running_loop()
        server = await asyncio.start_server(_greeter, "127.0.0.1", 0)
        async with server:
            port = server.sockets[0].getsockname()[1]
            transport, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
            try:
                # Why a class check is wrong here:
                assert not isinstance(transport, asyncio.Transport)
                assert missing_methods(transport) == []
            finally:
                transport.close()

    on_uvloop(scenario())


def test_uvloop_connection_reads_the_greeting() -> None:
    """Before the fix: connection_made raised, nothing read the socket, and this
    timed out with the 220 sitting unread."""

    async def scenario() -> int:
        server = await asyncio.start_server(_greeter, "127.0.0.1", 0)
        async with server:
            port = server.sockets[0].getsockname()[1]
            conn = await SmtpClientConnection.open("127.0.0.1", port, timeout=10)
            try:
                return (await conn.read_reply(10)).code
            finally:
                await conn.close()

    assert on_uvloop(scenario()) == 220


async def test_a_transport_without_the_needed_methods_is_refused_without_raising() -> None:
    class HalfTransport:
        closed = False

        def close(self) -> None:
            self.closed = True

        def get_extra_info(self, name: str, default: object = None) -> object:
            return default

    protocol = smtp_io._Protocol(ClientEngine())
    half = HalfTransport()
    protocol.connection_made(half)  # type: ignore[arg-type]  # must not raise
    assert protocol.transport is None
    assert protocol.unusable is not None and "write" in protocol.unusable
    assert half.closed  # not left open with nothing reading it


async def test_an_unusable_transport_defers_the_message_instead_of_hanging(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(smtp_io, "_TRANSPORT_METHODS", (*smtp_io._TRANSPORT_METHODS, "warp"))
    server = await asyncio.start_server(_greeter, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        with pytest.raises(UnusableTransport, match="warp"):
            await SmtpClientConnection.open("127.0.0.1", port, timeout=10)
        results = await base.relay(port).deliver(base.message(), ("a@example.net",))
    result = results["a@example.net"]
    assert isinstance(result, TempFailure) and "warp" in result.reply


def _scenarios() -> list[Callable[..., Coroutine[Any, Any, None]]]:
    """The relay tests that take no parameters beyond these fixtures."""
    allowed = {"pki", "tmp_path"}
    return [
        fn for name, fn in sorted(vars(base).items())
        if name.startswith("test_") and inspect.iscoroutinefunction(fn)
        and set(inspect.signature(fn).parameters) <= allowed
        and not hasattr(fn, "pytestmark")
    ]


SCENARIOS = _scenarios()


def test_the_scenario_list_is_not_empty() -> None:
    assert len(SCENARIOS) >= 20  # the selection above must not silently shrink


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[fn.__name__ for fn in SCENARIOS])
def test_relay_scenario_on_uvloop(
    scenario: Callable[..., Coroutine[Any, Any, None]],
    tmp_path: Path,
) -> None:
    params = inspect.signature(scenario).parameters
    kwargs: dict[str, Any] = {}
    if "pki" in params:
        kwargs["pki"] = base.make_pki(tmp_path)
    if "tmp_path" in params:
        kwargs["tmp_path"] = tmp_path
    on_uvloop(scenario(**kwargs))
