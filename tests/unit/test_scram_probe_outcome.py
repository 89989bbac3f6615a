"""The exchange says when its last message could not be parsed (``Outcome.malformed``):
the login path counts such an end after SCRAM's salt against the address only
(issue 16, docs/protection.md "What counts as a failure")."""

from __future__ import annotations

import base64

import pytest

from smtpgate.sasl.base import NeedCredentials, ScramCredentials, Verdict
from smtpgate.sasl.exchange import AuthResult, Challenge, Outcome, ServerExchange
from smtpgate.sasl.scram import ScramSha256Server, scram_credentials_from_password

CREDS: ScramCredentials = scram_credentials_from_password("pencil", "sha256", 4096)


def after_salt() -> tuple[ServerExchange, str]:
    """An exchange that has just sent server-first (the salt), and its nonce."""
    ex = ServerExchange("SCRAM-SHA-256", ScramSha256Server())
    step = ex.start(b"n,,n=alice@example.org,r=probe")
    assert isinstance(step, NeedCredentials)
    first = ex.answer(CREDS)
    assert isinstance(first, Challenge)
    return ex, first.data.decode().split(",")[0][2:]


def test_bad_base64_from_the_framing_is_malformed() -> None:
    out = after_salt()[0].malformed("invalid base64")
    assert (out.result, out.malformed) == (AuthResult.FAILURE, True)


@pytest.mark.parametrize("answer", [b"", b"garbage", base64.b64decode("QUIT")])
def test_a_client_final_without_a_proof_is_malformed_however_it_ends(answer: bytes) -> None:
    one, _ = after_salt()
    two, _ = after_salt()
    for ex in (one, two):
        step = ex.respond(answer)
        assert isinstance(step, Challenge) and step.data == b"e=invalid-encoding"
    # After the announced e=, a cancel and a hang-up both end as that failure.
    ends: list[Outcome | None] = [one.cancel(), two.abandon("connection closed")]
    for out in ends:
        assert out is not None and (out.result, out.malformed) == (AuthResult.FAILURE, True)


def test_a_wrong_proof_and_a_plain_cancel_are_not_malformed() -> None:
    ex, nonce = after_salt()
    proof = base64.b64encode(b"\0" * 32).decode()
    step = ex.respond(f"c=biws,r={nonce},p={proof}".encode())
    assert isinstance(step, NeedCredentials)  # ProofArrived
    step = ex.answer(Verdict(ok=True))
    assert isinstance(step, Challenge) and step.data == b"e=invalid-proof"
    out = ex.cancel()
    assert (out.result, out.malformed) == (AuthResult.FAILURE, False)  # a guess
    cancelled = after_salt()[0].cancel()
    assert (cancelled.result, cancelled.malformed) == (AuthResult.CANCELLED, False)
