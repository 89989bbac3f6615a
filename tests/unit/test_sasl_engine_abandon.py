"""A connection that ends in the middle of AUTH still ends the attempt in one record.

Found with gsasl: after ``334 e=invalid-proof`` it hangs up without answering, so
the server never reached its 535 and logged nothing. A client that reads a
verdict and disconnects has failed (and must count as a failure), not vanished.
"""

from __future__ import annotations

import base64

from smtpgate.sasl.base import ChannelBinding
from smtpgate.sasl.scram import ScramClient
from smtpgate.smtp.events import AuthFinished

from .engine_driver import Driver


def _b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def _session(**kw: object) -> Driver:
    d = Driver.new(tls=True, **kw)
    assert d.feed(b"EHLO client.test\r\n").startswith(b"250")
    return d


def _scram_to_error(d: Driver) -> bytes:
    client = ScramClient("sha256", "alice@example.org", "wrong password", ChannelBinding())
    first = client.start()
    assert first is not None
    out = d.feed(b"AUTH SCRAM-SHA-256 " + _b64(first) + b"\r\n")
    assert out.startswith(b"334 ")
    final = client.step(base64.b64decode(out[4:].strip()))
    return d.feed(_b64(final) + b"\r\n")


def test_drop_after_scram_error_is_a_failure() -> None:
    d = _session(mechanisms=("SCRAM-SHA-256",))
    out = _scram_to_error(d)
    assert base64.b64decode(out[4:].strip()) == b"e=invalid-proof"
    ev = d.engine.abandon_auth("connection closed during AUTH")
    assert isinstance(ev, AuthFinished)
    assert (ev.mechanism, ev.result, ev.username) == (
        "SCRAM-SHA-256",
        "failure",
        "alice@example.org",
    )
    assert "connection closed during AUTH" in ev.reason
    assert d.engine.abandon_auth("again") is None  # exactly one record


def test_drop_mid_exchange_is_cancelled() -> None:
    d = _session(mechanisms=("SCRAM-SHA-256",))
    client = ScramClient("sha256", "alice@example.org", "pw", ChannelBinding())
    first = client.start()
    assert first is not None
    out = d.feed(b"AUTH SCRAM-SHA-256 " + _b64(first) + b"\r\n")
    assert out.startswith(b"334 ")  # server-first sent, client gone
    ev = d.engine.abandon_auth("connection closed during AUTH")
    assert isinstance(ev, AuthFinished) and ev.result == "cancelled"


def test_no_record_without_an_open_exchange() -> None:
    d = _session()
    assert d.engine.abandon_auth("x") is None
    d.feed(b"AUTH PLAIN " + _b64(b"\0alice@example.org\0correct horse") + b"\r\n")
    assert any(isinstance(e, AuthFinished) and e.result == "success" for e in d.events)
    assert d.engine.abandon_auth("x") is None  # already logged through AuthFinished


def test_no_second_record_when_finished_event_is_pending() -> None:
    d = _session(mechanisms=("SCRAM-SHA-256",))
    _scram_to_error(d)
    # The client answers the e= challenge: AuthFinished is emitted (and logged by
    # the server) while its reply waits for the failure floor; then the drop.
    d.engine.receive_data(b"\r\n")
    ev = d.engine.next_event()
    assert isinstance(ev, AuthFinished) and ev.result == "failure"
    assert d.engine.abandon_auth("x") is None
