"""A client that pipelines commands and never reads its replies makes the server
hold no more than a bounded amount of them.

Found by audit B on a default install: one plaintext connection to the
submission port sent 12.6 MB of ``EHLO x`` lines (each answered with about 200
octets) without reading a reply; the worker's memory grew by 240 MB, since
every reply went into the transport's buffer (20 such connections per address
were allowed). Now the engine stops reading commands while
``max_pending_output`` octets of replies wait (``OUTPUT_FULL``), and the
connection stops reading from the client while the transport says the client
is behind (``pause_writing``), and reads on once it catches up.

The same audit found that such a client, once its session was closed (the
command deadline passed), kept its connection slot for ever: the transport
stays open until its unread replies are written, which never happens. A closed
session is now reset when they are still unwritten after ``_CLOSE_LINGER``.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from smtpgate.auth.decoy import SECRET_BYTES
from smtpgate.config import LimitsConfig, parse_config
from smtpgate.server import connection
from smtpgate.server.app import engine_settings
from smtpgate.server.connection import ListenerRuntime, ServerRuntime, SmtpConnection
from smtpgate.server.limits import ConnectionLimiter
from smtpgate.smtp.engine import ServerEngine
from smtpgate.smtp.events import NEED_DATA, OUTPUT_FULL
from smtpgate.tls.certs import write_self_signed

EHLO = b"EHLO client.test\r\n"
#: 1 MiB of commands whose replies come to about 6 MiB.
FLOOD = EHLO * ((1 << 20) // len(EHLO))


def listener_settings(tmp_path: Path) -> ListenerRuntime:
    """The settings the server gives a STARTTLS listener of the default config."""
    write_self_signed(tmp_path / "cert.pem", tmp_path / "key.pem", "mx.test")
    cfg = parse_config(
        '[[listeners]]\nname = "submission"\naddress = "127.0.0.1:0"\ntls = "starttls"\n'
        '[tls]\ncert = "cert.pem"\nkey = "key.pem"\n'
        # Past the junk-command limit each EHLO of the flood is an error: out of reach.
        '[limits]\nmax_errors = 100000000\n', tmp_path)
    settings = engine_settings(cfg, cfg.listeners[0], b"k" * SECRET_BYTES)
    return ListenerRuntime("submission", False, settings)


def test_the_engine_reads_no_command_while_its_replies_pile_up(tmp_path: Path) -> None:
    engine = ServerEngine(listener_settings(tmp_path).settings)
    engine.greeting()
    engine.receive_data(FLOOD)
    limit = engine.settings.max_pending_output
    assert limit > 0
    answered = 0
    while (ev := engine.next_event()) is OUTPUT_FULL:
        out = engine.data_to_send()
        assert limit <= len(out) < limit + 1024  # one reply past the mark at most
        answered += out.count(b"\r\n250 ")
    assert ev is NEED_DATA
    answered += engine.data_to_send().count(b"\r\n250 ")
    assert answered == len(FLOOD) // len(EHLO)  # every command answered, in the end


#: A command deadline short enough for a test (the default is 60 s).
LIMITS = LimitsConfig(command_deadline=1.0, command_timeout=2.0)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[tuple[ServerRuntime, int]]:
    runtime = ServerRuntime(
        hostname="mx.test",
        auth=None,  # type: ignore[arg-type]  # never asked: no AUTH here
        spool=None,  # type: ignore[arg-type]
        tls=None,  # type: ignore[arg-type]  # no STARTTLS here
        limits=LIMITS,
        limiter=ConnectionLimiter(10, 1),
        on_stored=lambda: None,
        failure_floor=0.0,
    )
    listener = listener_settings(tmp_path)
    loop = asyncio.get_running_loop()
    srv = await loop.create_server(lambda: SmtpConnection(runtime, listener), "127.0.0.1", 0)
    yield runtime, srv.sockets[0].getsockname()[1]
    srv.close()
    for conn in list(runtime.connections):
        conn.shutdown(force=True)
    await srv.wait_closed()


async def flood_without_reading(port: int) -> tuple[socket.socket, int]:
    """A client that sends what the kernel takes and reads nothing; the octets sent."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", port))
    sent, stalled = 0, 0
    while sent < len(FLOOD) and stalled < 10:
        try:
            sent += sock.send(FLOOD[sent:sent + 65536])
            stalled = 0
        except BlockingIOError:
            stalled += 1
        await asyncio.sleep(0.05)
    return sock, sent


async def test_a_client_that_never_reads_its_replies_gets_no_more_buffered(
    server: tuple[ServerRuntime, int],
) -> None:
    runtime, port = server
    sock, sent = await flood_without_reading(port)
    await asyncio.sleep(0.2)
    (conn,) = runtime.connections
    assert conn.transport is not None
    held = conn.transport.get_write_buffer_size()
    assert held < 256 * 1024, f"{held} octets of replies held for a client that reads none"
    # The client reads again: every command it sent is answered.
    want = sent // len(EHLO)
    sock.setblocking(True)

    def read_all() -> int:
        replies, tail = 0, b""
        sock.settimeout(10)
        while replies < want:
            chunk = sock.recv(1 << 16)
            assert chunk, "closed"
            replies += (tail + chunk).count(b"\r\n250 ")
            tail = chunk[-4:]
        return replies

    assert want > 0 and await asyncio.to_thread(read_all) == want
    sock.close()


async def test_a_closed_session_whose_client_reads_nothing_gives_its_slot_back(
    server: tuple[ServerRuntime, int], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(connection, "_CLOSE_LINGER", 0.5, raising=False)
    runtime, port = server
    sock, _ = await flood_without_reading(port)
    # The command deadline closes the session; its replies stay unread.
    for _ in range(60):
        if not runtime.connections:
            break
        await asyncio.sleep(0.1)
    assert not runtime.connections, "the closed session still holds its slot"
    # The address's one slot (max_per_ip = 1) is free again.
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    await asyncio.sleep(0.1)
    assert len(runtime.connections) == 1
    writer.close()
    sock.close()
