"""The auditor against a tarpit, a server that answers every command, but slowly,
each reply just inside ``--timeout``: no step times out, so without a bound on the
whole target an audit took (commands x timeout), about ten minutes per port at the
default 15 s. ``--max-time`` bounds each target; what did not run is said in a note.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable

from smtpgate.tools.audit import AuditOptions, AuditReport, Target, audit_target

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def _tarpit(delay: float, slow: frozenset[bytes] | None = None) -> Handler:
    """A plain SMTP server (no STARTTLS, AUTH in clear) whose replies (to the verbs
    in ``slow``; to all when None) come ``delay`` seconds late."""
    return functools.partial(_serve, delay, slow)


async def _serve(delay: float, slow: frozenset[bytes] | None,
                 reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    replies = {
        b"EHLO": b"250-tarpit.test\r\n250 AUTH PLAIN\r\n",
        b"MAIL": b"250 2.1.0 ok\r\n",
        b"RCPT": b"550 5.7.1 relay denied\r\n",
        b"RSET": b"250 2.0.0 ok\r\n",
        b"AUTH": b"535 5.7.8 no\r\n",
        b"QUIT": b"221 2.0.0 bye\r\n",
    }
    try:
        if slow is None:
            await asyncio.sleep(delay)
        writer.write(b"220 tarpit.test ESMTP\r\n")
        while line := await reader.readline():
            if slow is None or line[:4].upper() in slow:
                await asyncio.sleep(delay)
            writer.write(replies.get(line[:4].upper(), b"500 5.5.2 what?\r\n"))
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def _audit(handler: Handler, max_time: float) -> tuple[AuditReport, float]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = int(server.sockets[0].getsockname()[1])
    start = time.monotonic()
    try:
        report = await audit_target(
            Target("127.0.0.1", port, "starttls"),
            AuditOptions(timeout=2.0, ehlo_name="client.test", max_time=max_time))
    finally:
        server.close()
    return AuditReport([report]), time.monotonic() - start


async def test_a_tarpit_is_not_audited_past_max_time() -> None:
    report, elapsed = await _audit(_tarpit(0.25), max_time=1.0)
    t = report.targets[0]
    # Greeting, EHLO, MAIL, eight RCPT, RSET: 3 s at 0.25 s a reply; it was cut at 1 s.
    assert elapsed < 1.0 + 1.5, elapsed
    assert not t.complete and t.grade == "-"
    assert "--max-time" in t.error and "1 s" in t.error


async def test_a_tarpit_whose_main_probe_finished_is_graded_with_a_note() -> None:
    # Only AUTH is slow: the main probe is done at once, the AUTH-in-clear probe cut.
    report, elapsed = await _audit(_tarpit(1.8, frozenset({b"AUTH"})), max_time=1.0)
    t = report.targets[0]
    assert elapsed < 1.0 + 1.5, elapsed
    assert t.complete, t.error
    # The main probe saw AUTH advertised in clear and no STARTTLS.
    assert {f.id for f in t.findings} >= {"no-tls", "auth-offered-in-clear"}
    assert any("--max-time" in n for n in t.notes), t.notes
