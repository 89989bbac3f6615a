"""The replies to one pipelined group go out in one write (RFC 2920 §3, docs/rfc-status.md).

Found on a default install (smtp15): ``RSET``, ``MAIL``, two ``RCPT`` and ``DATA``
sent in one write over TLS came back as two TLS records, ``250 Reset state`` and
then the other four. The connection flushed the replies gathered so far before
each decision it runs as a task (MAIL's sender look-up, the spool write at the
end of a message, an AUTH look-up), so any group with such a command after its
first was answered in pieces. RFC 2920 §3.2 asks the server to send the replies
to a group as a unit; nothing is gained by sending the first ones early, since
the client reads them only once it has the whole group's. Replies are now
written when the engine needs more input (and the ``354``, which the client waits
for), not before a decision.

These run the real connection on the real event loop, with a transport that
records each write, and fakes for the account directory and the spool.
"""

from __future__ import annotations

import asyncio
import base64
from typing import Any

from smtpgate.server.connection import ListenerRuntime, SmtpConnection

from .engine_driver import settings
from .test_server_decision_faults import USER, FakeAuth, FakeSpool, fake_runtime


class RecordingTransport:
    """The transport surface the connection uses; each ``write`` is kept apart."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("192.0.2.7", 40000) if name == "peername" else default

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


async def _settle(conn: SmtpConnection) -> None:
    """Let the connection's decision tasks run until it waits for the client."""
    for _ in range(200):
        await asyncio.sleep(0)
        if conn._task is None:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("a decision never finished")


def _connected(auth: FakeAuth) -> tuple[SmtpConnection, RecordingTransport]:
    listener = ListenerRuntime("test", False, settings(auth_in_clear=True, starttls=False))
    conn = SmtpConnection(fake_runtime(auth, FakeSpool()), listener)
    transport = RecordingTransport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    return conn, transport


_PLAIN = b"AUTH PLAIN " + base64.b64encode(f"\0{USER}\0secret".encode()) + b"\r\n"


async def _logged_in() -> tuple[SmtpConnection, RecordingTransport]:
    conn, transport = _connected(FakeAuth())
    conn.data_received(b"EHLO client.test\r\n" + _PLAIN)
    await _settle(conn)
    assert b"235 2.7.0" in b"".join(transport.writes), transport.writes
    transport.writes.clear()
    return conn, transport


async def test_a_pipelined_group_is_answered_in_one_write() -> None:
    conn, transport = await _logged_in()
    conn.data_received(b"RSET\r\nMAIL FROM:<alice@example.org>\r\n"
                       b"RCPT TO:<bob@example.net>\r\nRCPT TO:<carol@example.net>\r\nDATA\r\n")
    await _settle(conn)
    group = (b"250 2.0.0 Reset state\r\n250 2.1.0 Sender OK\r\n250 2.1.5 Recipient OK\r\n"
             b"250 2.1.5 Recipient OK\r\n354 End data with <CR><LF>.<CR><LF>\r\n")
    assert transport.writes == [group]
    conn.shutdown(force=True)



class StalledAuth(FakeAuth):
    """A login look-up that never ends by itself: a guess behind the guard's penalty
    or the attempt gate, as a password flood keeps them."""

    def __init__(self) -> None:
        super().__init__()
        self.cancelled = asyncio.Event()

    async def resolve_detailed(self, query: Any, ctx: Any) -> Any:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise


async def test_a_forced_shutdown_drops_a_waiting_login_look_up_with_421() -> None:
    """Before: shutdown(force=True) at the end of shutdown_grace only asked the
    engine to hang up after the decision under way; a login waiting behind the
    guard's penalty or the attempt gate kept its session, and a password flood held
    `serve`'s stop for minutes (bench's E flood: SIGTERM ignored for 15 s)."""
    auth = StalledAuth()
    conn, transport = _connected(auth)
    conn.data_received(b"EHLO client.test\r\n" + _PLAIN)
    for _ in range(20):
        await asyncio.sleep(0)
    assert conn._task is not None
    conn.shutdown()  # the stop begins: the look-up may still finish
    assert not transport.closed
    conn.shutdown(force=True)  # the grace is over
    await asyncio.wait_for(auth.cancelled.wait(), 5)
    assert transport.closed
    assert transport.writes[-1].endswith(b"421 4.3.2 Service shutting down, try again later\r\n")
