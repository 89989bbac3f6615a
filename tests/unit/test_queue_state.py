"""Envelope serialisation, per-recipient state and the retry schedule (pure code)."""

from __future__ import annotations

import json

import pytest

from smtpgate.queue.delivery import Delivered, PermFailure, TempFailure
from smtpgate.queue.envelope import Envelope, EnvelopeFormatError
from smtpgate.queue.state import (
    MessageState,
    RcptStatus,
    RecipientState,
    StateFormatError,
    apply_results,
    retry_delay,
)

ENV = Envelope(
    mail_from="alice@example.org",
    rcpt_to=("bob@example.net", "carol@example.net"),
    auth_identity="alice",
    client_ip="192.0.2.7",
    helo="laptop.example.org",
    listener="submission",
    smtputf8=False,
    body_8bit=True,
    received_at=1_700_000_000.25,
)


@pytest.mark.parametrize(
    "env",
    [
        ENV,
        Envelope("", ("postmaster@example.net",), None, "::1", "h", "submissions"),
        Envelope("jöran@exämple.se", ("åsa@example.se",), "jöran", "192.0.2.1", "h", "l",
                 smtputf8=True),
        # Undecodable bytes an engine kept with surrogateescape survive too.
        Envelope("a\udcff@example.org", ("b@example.net",), None, "192.0.2.1", "h", "l"),
        Envelope("a@example.org", ("b@example.net",), None, "192.0.2.1", "h", "l",
                 body_8bit=True, body_binary=True),
    ],
)
def test_envelope_round_trip(env: Envelope) -> None:
    raw = env.to_json()
    assert raw.isascii()
    assert Envelope.from_json(raw) == env


def _mutated(**changes: object) -> bytes:
    obj = json.loads(ENV.to_json())
    obj.update(changes)
    return json.dumps(obj).encode()


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"[]",
        _mutated(v=2),
        _mutated(to="bob@example.net"),  # a string, not a list
        _mutated(to=[1]),
        _mutated(at=True),  # bool is an int in Python, not a time here
        _mutated(auth=7),
        _mutated(binary="yes"),
        b'{"v": 1, "from": "a"}',
    ],
)
def test_envelope_rejects_malformed_json(raw: bytes) -> None:
    with pytest.raises(EnvelopeFormatError):
        Envelope.from_json(raw)


def test_initial_state_collapses_duplicate_recipients() -> None:
    state = MessageState.initial(["a@x", "b@x", "a@x"])
    assert state.pending == ("a@x", "b@x")
    assert state.next_attempt == 0.0
    assert not state.finished


def test_state_round_trip() -> None:
    state = MessageState((
        RecipientState("a@x", RcptStatus.DELIVERED, 1, 0.0, "ok"),
        RecipientState("b@x", RcptStatus.PENDING, 3, 1234.5, "451 4.3.0 busy"),
        RecipientState("c@x", RcptStatus.FAILED, 1, 0.0, "550 5.1.1 no"),
    ))
    assert MessageState.from_json(state.to_json()) == state
    assert state.pending == ("b@x",)
    assert state.next_attempt == 1234.5


@pytest.mark.parametrize("raw", [b"{}", b'{"v":1,"rcpts":[["a","weird",0,0,""]]}', b"\xff"])
def test_state_rejects_malformed_json(raw: bytes) -> None:
    with pytest.raises(StateFormatError):
        MessageState.from_json(raw)


def test_retry_delay_doubles_up_to_the_maximum() -> None:
    delays = [retry_delay(n, 60.0, 3600.0) for n in range(1, 10)]
    assert delays == [60, 120, 240, 480, 960, 1920, 3600, 3600, 3600]
    assert retry_delay(10_000, 60.0, 3600.0) == 3600.0  # no overflow
    assert retry_delay(0, 60.0, 3600.0) == 0.0


KW = {"retry_initial": 60.0, "retry_max": 3600.0, "max_age": 86400.0, "received_at": 1000.0}


def test_apply_results_per_recipient() -> None:
    state = MessageState.initial(["ok@x", "temp@x", "perm@x"])
    results = {
        "ok@x": Delivered("250 queued"),
        "temp@x": TempFailure("451 4.3.0 later"),
        "perm@x": PermFailure("550 5.1.1 unknown"),
    }
    new, outcomes = apply_results(state, results, now=2000.0, **KW)
    by = {r.address: r for r in new.recipients}
    assert by["ok@x"].status is RcptStatus.DELIVERED
    assert by["perm@x"].status is RcptStatus.FAILED
    assert by["perm@x"].last_result == "550 5.1.1 unknown"
    assert by["temp@x"].status is RcptStatus.PENDING
    assert by["temp@x"].attempts == 1
    assert by["temp@x"].next_attempt == 2060.0
    assert [o.kind for o in outcomes] == ["delivered", "deferred", "bounced"]
    assert new.pending == ("temp@x",)

    # The next attempt only concerns the pending recipient.
    again, outcomes = apply_results(new, {"temp@x": Delivered()}, now=2060.0, **KW)
    assert again.finished
    assert [o.address for o in outcomes] == ["temp@x"]


def test_missing_result_counts_as_temporary() -> None:
    new, outcomes = apply_results(MessageState.initial(["a@x"]), {}, now=2000.0, **KW)
    assert new.pending == ("a@x",)
    assert outcomes[0].kind == "deferred"


def test_temporary_failure_after_max_age_gives_up() -> None:
    state = MessageState.initial(["a@x"])
    deadline = KW["received_at"] + KW["max_age"]
    new, outcomes = apply_results(state, {"a@x": TempFailure("451 busy")}, now=deadline, **KW)
    assert new.finished
    assert new.recipients[0].status is RcptStatus.FAILED
    assert outcomes[0].kind == "expired"
    assert "gave up" in outcomes[0].detail


def test_last_retry_is_at_the_deadline_not_after_it() -> None:
    state = MessageState((RecipientState("a@x", attempts=20),))
    deadline = KW["received_at"] + KW["max_age"]
    new, _ = apply_results(state, {"a@x": TempFailure("451")}, now=deadline - 10, **KW)
    assert new.next_attempt == deadline


def test_envelope_without_binary_reads_as_not_binary_and_writes_no_key() -> None:
    assert b'"binary"' not in ENV.to_json() and not Envelope.from_json(ENV.to_json()).body_binary


@pytest.mark.parametrize(("earlier", "said"), [(0, "gave up after 1 attempt: 451 busy"),
                                                (2, "gave up after 3 attempts: 451 busy")])
def test_given_up_detail_counts_attempts_in_words(earlier: int, said: str) -> None:
    # The detail is the bounce's Diagnostic text the sender reads: a message whose
    # first attempt came after max_age (a long outage, a lowered max_age) said
    # "after 1 attempts".
    state = MessageState((RecipientState("a@x", attempts=earlier),))
    deadline = KW["received_at"] + KW["max_age"]
    _, outcomes = apply_results(state, {"a@x": TempFailure("451 busy")}, now=deadline, **KW)
    assert outcomes[0].detail == said
