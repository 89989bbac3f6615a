"""A node's PROXY-protocol port reached past the balancer: each connection from
outside trusted_proxies wrote a WARNING, with no bound, so a scanner (or a
flood of SYNs) filled the server log. The first ``REFUSALS_LOGGED`` of each
``REFUSAL_WINDOW`` are logged one by one, the rest as one count."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from typing import Any

import pytest

from smtpgate.server import proxied


class _Transport:
    def __init__(self, peer: tuple[str, int]) -> None:
        self.peer = peer
        self.aborted = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.peer if name == "peername" else default

    def abort(self) -> None:
        self.aborted = True


def _refusals(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "smtpgate" and r.levelno == logging.WARNING]


async def test_refusals_of_untrusted_peers_are_logged_at_most_ten_a_window(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(proxied, "REFUSAL_WINDOW", 0.3, raising=False)
    networks = [ipaddress.ip_network("10.0.0.0/8")]
    factory = proxied.wrap(lambda: asyncio.Protocol(), networks, "submission")
    transports = [_Transport(("203.0.113.5", 40000 + i)) for i in range(25)]
    with caplog.at_level(logging.INFO, logger="smtpgate"):
        for t in transports:
            factory().connection_made(t)  # type: ignore[arg-type]
        assert all(t.aborted for t in transports)  # every one closed, logged or not
        lines = _refusals(caplog)
        assert len(lines) == 10
        assert lines[0] == ("listener submission: PROXY header expected from a trusted "
                            "proxy; 203.0.113.5:40000 is not one (trusted_proxies): closed")
        await asyncio.sleep(0.5)  # the window ends: one line counts the rest
        assert _refusals(caplog)[10:] == [
            ("listener submission: 15 more connections from outside trusted_proxies "
             "closed (more than 10 in 0.3 s are not logged one by one)")]
        # A new window logs again.
        factory().connection_made(_Transport(("198.51.100.1", 1)))  # type: ignore[arg-type]
        assert len(_refusals(caplog)) == 12
