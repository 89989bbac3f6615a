"""The auditor against servers that break off the dialogue: a target whose main
probe did not finish is not audited (grade "-"), never graded A for what could
not be seen; a server that hangs up only during the relay probe is still graded,
with a note."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from smtpgate.tools.audit import AuditOptions, AuditReport, Mode, Target, audit_target

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def _replying(greeting: bytes, reply: Callable[[bytes], bytes | None]) -> Handler:
    """A plain SMTP server that greets with ``greeting`` and answers each line with
    ``reply(line)``, closing the connection where that is None."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(greeting)
            while line := await reader.readline():
                answer = reply(line)
                if answer is None:
                    break
                writer.write(answer)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    return handle


def _server(hang_up_at: bytes) -> Handler:
    """A plain SMTP server (no STARTTLS) that closes the connection when it reads
    the command ``hang_up_at``."""

    def reply(line: bytes) -> bytes | None:
        verb = line[:4].upper()
        if verb == hang_up_at:
            return None
        return {
            b"EHLO": b"250-broken.test\r\n250 PIPELINING\r\n",
            b"MAIL": b"250 2.1.0 ok\r\n",
            b"RCPT": b"554 5.7.1 relay denied\r\n",
            b"QUIT": b"221 2.0.0 bye\r\n",
        }.get(verb, b"503 5.5.1 no\r\n")

    return _replying(b"220 broken.test ESMTP\r\n", reply)


async def _audit(handler: Handler, mode: Mode = "starttls") -> AuditReport:
    """The audit of one server that ``handler`` plays, on a port of its own."""
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = int(server.sockets[0].getsockname()[1])
    try:
        report = await audit_target(Target("127.0.0.1", port, mode),
                                    AuditOptions(timeout=5.0, ehlo_name="client.test"))
    finally:
        server.close()
    return AuditReport([report])


async def test_a_server_hanging_up_after_the_greeting_is_not_audited() -> None:
    # It was: grade A, "no findings" and exit 0 (a note said "connection probe:
    # server closed the connection"), for a server of which nothing but the
    # banner had been seen: not even whether it has TLS.
    report = await _audit(_server(hang_up_at=b"EHLO"))
    t = report.targets[0]
    assert not t.complete
    assert t.grade == "-" and report.grade == "-"
    assert t.error == "connection failed: server closed the connection (after the greeting)"
    assert t.findings == []


async def test_a_server_hanging_up_in_the_relay_probe_is_graded_with_a_note() -> None:
    report = await _audit(_server(hang_up_at=b"RCPT"))
    t = report.targets[0]
    assert t.complete
    assert "relay probe: server closed the connection" in t.notes
    assert [f.id for f in t.findings] == ["no-tls"]
    assert t.grade == "D"


async def test_an_implicit_tls_target_that_greets_in_clear_is_audited_in_clear() -> None:
    # It was "implicit TLS handshake failed: handshake failed: wrong version number",
    # then "no-tls" with a hint: the server was graded on the mode it does not speak.
    [t] = (await _audit(_server(hang_up_at=b"QUIT"), "implicit")).targets
    assert t.mode_used == "plain" and t.tls_error == ""
    assert t.mode_mismatch == (
        "expected implicit TLS (RFC 8314) as port "
        f"{t.target.port} conventionally does, found an SMTP greeting in clear, before "
        f"any TLS; audited as it speaks (smtp://127.0.0.1:{t.target.port})")
    assert [f.id for f in t.findings] == ["tls-mode-mismatch", "no-tls"]


async def test_a_server_accepting_the_dummy_identity_is_critical() -> None:
    # It was only auth-accepted-in-clear (high, grade D), its detail "a dummy
    # identity then got: 235": a server where anyone logs in (and so relays).
    handle = _replying(b"220 yes.test ESMTP\r\n", lambda line: {
        b"EHLO": b"250-yes.test\r\n250 AUTH PLAIN LOGIN\r\n",
        b"AUTH": b"334 \r\n",
        b"MAIL": b"250 2.1.0 ok\r\n",
        b"RCPT": b"554 5.7.1 relay denied\r\n",
        b"RSET": b"250 2.0.0 ok\r\n",
        b"QUIT": b"221 2.0.0 bye\r\n",
    }.get(line[:4].upper(), b"235 2.7.0 ok\r\n"))  # any credential line

    report = await _audit(handle)
    t = report.targets[0]
    assert t.auth_clear_detail.endswith("a dummy identity then got: 235 2.7.0 ok")
    assert [f.id for f in t.findings] == [
        "no-tls", "auth-offered-in-clear", "auth-accepted-in-clear", "auth-accepts-anything"]
    assert t.grade == "F"


async def test_a_stray_reply_stops_the_relay_probe_instead_of_shifting_its_replies() -> None:
    # A server that sends one reply more than asked (here a stray "250" after its
    # EHLO reply) made each RCPT read the reply to the one before: the control
    # address's 250 became the outside address's, and a closed relay an open one.
    def reply(line: bytes) -> bytes:
        verb, rcpt = line[:4].upper(), line[8:].strip()
        if verb == b"EHLO":
            return b"250-stray.test\r\n250 PIPELINING\r\n250 2.0.0 stray\r\n"
        if verb == b"RCPT":
            local = rcpt.endswith(b"@stray.test>") and b"example.net" not in rcpt
            return b"250 2.1.5 ok\r\n" if local else b"554 5.7.1 relay denied\r\n"
        return {b"MAIL": b"250 2.1.0 ok\r\n", b"QUIT": b"221 2.0.0 bye\r\n",
                b"RSET": b"250 2.0.0 ok\r\n"}.get(verb, b"503 5.5.1 no\r\n")

    handle = _replying(b"220 stray.test ESMTP\r\n", reply)

    report = await _audit(handle)
    t = report.targets[0]
    assert "open-relay" not in {f.id for f in t.findings}, t.relay
    assert t.relay == []
    assert any("relay probe: the server sent a reply nobody asked for" in n
               for n in t.notes), t.notes
