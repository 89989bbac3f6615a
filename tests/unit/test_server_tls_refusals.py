"""What a TLS client is told when the server refuses it.

A TLS handshake the server refuses ends with the library's alert, not a bare close.

Found with `openssl s_client -tls1_1` against the submission listener: the client
reported "unexpected eof while reading" instead of "tlsv1 alert protocol version",
because the session dropped the alert OpenSSL had queued for the client. An old
mail client (TLS 1.0/1.1 only) then shows a connection error that says nothing of
the TLS version. These run the real connection on a loopback socket.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from OpenSSL import SSL

from smtpgate.config import LimitsConfig
from smtpgate.server.connection import ListenerRuntime, ServerRuntime, SmtpConnection
from smtpgate.server.limits import ConnectionLimiter
from smtpgate.tls.bio import BioConnection
from smtpgate.tls.certs import write_self_signed
from smtpgate.tls.session import make_server_context

from .engine_driver import settings
from .legacy_tls import legacy_client

NO_REPLY = 10.0


def _runtime(tmp_path: Path, limiter: ConnectionLimiter) -> ServerRuntime:
    """A server that never gets as far as a login or a message: the refusal comes
    first (so no auth service and no spool)."""
    write_self_signed(tmp_path / "cert.pem", tmp_path / "key.pem", "localhost", days=2)
    return ServerRuntime(
        hostname="mx.test",
        auth=None,  # type: ignore[arg-type]
        spool=None,  # type: ignore[arg-type]
        tls=make_server_context(tmp_path / "cert.pem", tmp_path / "key.pem"),
        limits=LimitsConfig(),
        limiter=limiter,
        on_stored=lambda: None,
        failure_floor=0.0,
    )



async def _server_answer(client: SSL.Connection, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter, server: asyncio.Server) -> bytes:
    """Send ``client``'s first flight and read the server's answer up to its close;
    the connection and the server are closed."""
    with pytest.raises(SSL.WantReadError):
        client.do_handshake()
    writer.write(BioConnection(client).outgoing())
    answer = await asyncio.wait_for(reader.read(), NO_REPLY)
    writer.close()
    server.close()
    await server.wait_closed()
    return answer

async def test_a_refused_handshake_sends_the_alert_before_closing(tmp_path: Path) -> None:
    runtime = _runtime(tmp_path, ConnectionLimiter(10, 10))
    listener = ListenerRuntime("submissions", True, settings(starttls=False))
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SmtpConnection(runtime, listener), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    client = legacy_client(SSL.TLS1_1_VERSION)
    answer = await _server_answer(client, reader, writer, server)
    assert answer[:1] == b"\x15", answer  # a TLS alert record, not nothing
    client.bio_write(answer)
    with pytest.raises(SSL.Error, match="protocol version"):
        client.do_handshake()


async def test_over_the_connection_limit_an_implicit_tls_port_sends_nothing_in_clear(
    tmp_path: Path,
) -> None:
    """Found with 20 idle connections to the 465 listener, then curl smtps:// and
    msmtp --tls=on: they reported "wrong version number" / "An unexpected TLS
    packet was received", because the 421 went out in clear (RFC 8314 §3.3: TLS
    from the first byte). A STARTTLS port still says 421 before its greeting."""
    runtime = _runtime(tmp_path, ConnectionLimiter(10, 0))  # every one over the limit
    loop = asyncio.get_running_loop()
    got = {}
    for implicit in (True, False):
        listener = ListenerRuntime("l", implicit, settings(starttls=not implicit))
        server = await loop.create_server(lambda l=listener: SmtpConnection(runtime, l),
                                          "127.0.0.1", 0)
        reader, writer = await asyncio.open_connection("127.0.0.1",
                                                       server.sockets[0].getsockname()[1])
        got[implicit] = await asyncio.wait_for(reader.read(), NO_REPLY)  # up to the close
        writer.close()
        server.close()
        await server.wait_closed()
    assert got[True] == b""
    assert got[False].startswith(b"421 4.7.0 Too many connections from your address")


async def test_a_server_name_that_is_not_ascii_is_logged_as_such_within_a_budget(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Before: each such ClientHello (raw bytes: no TLS library sends one) was
    logged 'handshake failed: callback failed', once per connection anyone may
    open. The line now says what the client sent, the first ten a minute one by
    one, the rest as a count."""
    from smtpgate.server import connection
    from smtpgate.web.log_budget import LogBudget

    from .raw_client_hello import client_hello

    budget = LogBudget(connection.REFUSALS_LOGGED, connection.REFUSAL_WINDOW,
                       connection._report_server_names)
    monkeypatch.setattr(connection, "_server_name_log", budget)
    runtime = _runtime(tmp_path, ConnectionLimiter(100, 100))
    assert runtime.tls.native is not None  # the stdlib session, with its SNI callback
    listener = ListenerRuntime("submissions", True, settings(starttls=False))
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SmtpConnection(runtime, listener), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    caplog.set_level("INFO", logger="smtpgate.session")
    for _ in range(12):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(client_hello("é.test".encode()))
        answer = await asyncio.wait_for(reader.read(), NO_REPLY)
        writer.close()
        assert answer[:1] == b"\x15", answer  # the alert, then the close
    server.close()
    await server.wait_closed()
    budget.flush()
    lines = [r.getMessage() for r in caplog.records if r.name == "smtpgate.session"]
    named = [x for x in lines if "server name (SNI) that is not ASCII, '\\xc3\\xa9.test'" in x]
    assert len(named) == 10, lines
    assert not any("callback failed" in x for x in lines), lines
    assert ("2 more TLS handshakes failed on a server name (SNI) that is not ASCII "
            "(more than 10 in 60 s are not logged one by one)") in lines


async def test_failed_handshakes_are_logged_within_a_budget_and_all_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Before: every failed handshake on a listener was one INFO line, so one
    address (loopback has no connection rate) could write lines without end: a
    TLS 1.0-only client, a scanner's garbage on the implicit-TLS port. The first
    ten a minute keep their detail, the rest are a count; the metrics see all."""
    from smtpgate import metrics
    from smtpgate.server import connection
    from smtpgate.web.log_budget import LogBudget

    budget = LogBudget(connection.REFUSALS_LOGGED, connection.REFUSAL_WINDOW,
                       connection._report_handshakes)
    monkeypatch.setattr(connection, "_handshake_log", budget)
    runtime = _runtime(tmp_path, ConnectionLimiter(100, 100))
    listener = ListenerRuntime("hs-budget", True, settings(starttls=False))
    ended = metrics._m.sessions.labels("hs-budget", "none")
    before = ended._value.get()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SmtpConnection(runtime, listener), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    caplog.set_level("INFO", logger="smtpgate.session")
    for i in range(14):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        if i % 2:
            writer.write(b"GET / HTTP/1.0\r\n\r\n" + bytes(range(256)))  # not TLS at all
        else:
            client = legacy_client(SSL.TLS1_VERSION)
            with pytest.raises(SSL.WantReadError):
                client.do_handshake()
            writer.write(BioConnection(client).outgoing())
        await asyncio.wait_for(reader.read(), NO_REPLY)  # up to the close
        writer.close()
    server.close()
    await server.wait_closed()
    await asyncio.sleep(0)
    budget.flush()
    lines = [r.getMessage() for r in caplog.records if r.name == "smtpgate.session"]
    detailed = [x for x in lines if "handshake failed: " in x]
    assert len(detailed) == 10, lines
    assert any(x.endswith("unsupported protocol") for x in detailed), detailed  # the detail
    assert any(x.endswith("http request") for x in detailed), detailed
    assert ("4 more TLS handshakes failed (more than 10 in 60 s are not logged one "
            "by one)") in lines, lines
    assert len(lines) == 11, lines
    assert ended._value.get() - before == 14


async def _handshake_then(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                          after: bytes) -> None:
    """A full TLS handshake as a client (pyOpenSSL, no verification), then ``after``
    in raw bytes once the server's first records after it (its greeting) came."""
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    client = BioConnection(SSL.Connection(ctx, None))
    client._conn.set_connect_state()
    while True:
        try:
            client._conn.do_handshake()
            break
        except SSL.WantReadError:
            writer.write(client.outgoing())
            client._conn.bio_write(await asyncio.wait_for(reader.read(65536), NO_REPLY))
    writer.write(client.outgoing())
    assert await asyncio.wait_for(reader.read(65536), NO_REPLY)  # the greeting, sealed
    writer.write(after)


async def test_bad_records_and_handshake_timeouts_are_logged_within_a_budget(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Before: a record that failed after the handshake (a client that completes it,
    then sends garbage) and a handshake that timed out were one INFO line each,
    whatever the rate, as failed handshakes were before their budget. Each now has
    the same budget, its own count; the metrics still count every session."""
    from smtpgate import metrics
    from smtpgate.server import connection
    from smtpgate.web.log_budget import LogBudget

    records = LogBudget(connection.REFUSALS_LOGGED, connection.REFUSAL_WINDOW,
                        connection._report_records)
    timeouts = LogBudget(connection.REFUSALS_LOGGED, connection.REFUSAL_WINDOW,
                         connection._report_handshake_timeouts)
    monkeypatch.setattr(connection, "_record_log", records)
    monkeypatch.setattr(connection, "_handshake_timeout_log", timeouts)
    runtime = _runtime(tmp_path, ConnectionLimiter(100, 100))
    runtime.handshake_timeout = 0.3
    listener = ListenerRuntime("rec-budget", True, settings(starttls=False))
    plain = metrics._m.sessions.labels("rec-budget", "none")
    tls13 = metrics._m.sessions.labels("rec-budget", "TLSv1.3")
    before = plain._value.get(), tls13._value.get()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SmtpConnection(runtime, listener), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    caplog.set_level("INFO", logger="smtpgate.session")
    garbage = b"\x17\x03\x03\x00\x40" + bytes(range(64))  # an application record, forged
    for _ in range(13):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await _handshake_then(reader, writer, garbage)
        await asyncio.wait_for(reader.read(), NO_REPLY)  # up to the close
        writer.close()
    silent = [await asyncio.open_connection("127.0.0.1", port) for _ in range(12)]
    for reader, writer in silent:  # sending nothing: closed after handshake_timeout
        assert await asyncio.wait_for(reader.read(), NO_REPLY) == b""
        writer.close()
    server.close()
    await server.wait_closed()
    await asyncio.sleep(0)
    records.flush()
    timeouts.flush()
    lines = [r.getMessage() for r in caplog.records if r.name == "smtpgate.session"]
    bad = [x for x in lines if " TLS error: " in x]
    assert len(bad) == 10, lines
    assert ("3 more TLS sessions ended by a record that failed after the handshake "
            "(more than 10 in 60 s are not logged one by one)") in lines, lines
    slow = [x for x in lines if x.endswith("TLS handshake timed out "
                                           "(tls.handshake_timeout, 0.3 s)")]
    assert len(slow) == 10, lines
    assert ("2 more TLS handshakes timed out (more than 10 in 60 s are not logged "
            "one by one)") in lines, lines
    assert len(lines) == 22, lines
    assert tls13._value.get() - before[1] == 13
    assert plain._value.get() - before[0] == 12


@pytest.mark.parametrize("implicit", [True, False], ids=["implicit", "starttls"])
async def test_a_client_offering_alpn_without_smtp_is_refused_on_both_listeners(
    tmp_path: Path, implicit: bool, caplog: pytest.LogCaptureFixture,
) -> None:
    """Found with `openssl s_client -alpn http/1.1` on both listeners of a server
    from `smtpgate init`: the handshakes completed (the ALPACA attack's way in).
    Now the client gets the no_application_protocol alert, the log says why."""
    runtime = _runtime(tmp_path, ConnectionLimiter(10, 10))
    listener = ListenerRuntime("l", implicit, settings(starttls=not implicit))
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SmtpConnection(runtime, listener), "127.0.0.1", 0)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
    caplog.set_level("INFO", logger="smtpgate.session")
    if not implicit:
        await asyncio.wait_for(reader.readline(), NO_REPLY)  # the greeting
        writer.write(b"STARTTLS\r\n")
        assert (await asyncio.wait_for(reader.readline(), NO_REPLY)).startswith(b"220 ")
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.set_alpn_protos([b"http/1.1"])
    client = SSL.Connection(ctx, None)
    client.set_connect_state()
    answer = await _server_answer(client, reader, writer, server)
    client.bio_write(answer)
    with pytest.raises(SSL.Error, match="no application protocol"):
        client.do_handshake()
    assert any("the client offered ALPN 'http/1.1', not 'smtp'" in r.getMessage()
               for r in caplog.records), [r.getMessage() for r in caplog.records]
