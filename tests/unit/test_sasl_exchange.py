"""The server-side SASL exchange on its own: decoded bytes in, typed steps out.

No SMTP here: what the SMTP engine frames as 334 lines (and a Dovecot-auth
front door will frame as CONT/OK/FAIL) is a ``Challenge``; the end is one
``Outcome``. Vectors: RFC 4616 (PLAIN), RFC 7677 §3 (SCRAM-SHA-256), RFC 7628
§3.2.2-§3.2.3 (the OAUTHBEARER error flow).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable

import pytest

from smtpgate.sasl import base as sasl
from smtpgate.sasl.exchange import AuthResult, Outcome, ServerExchange
from smtpgate.sasl.oauth import OAuthBearerServer
from smtpgate.sasl.plain import PlainServer
from smtpgate.sasl.registry import create_server_mechanism
from smtpgate.sasl.scram import ScramClient, ScramSha256PlusServer, ScramSha256Server

CB = sasl.ChannelBinding({"tls-exporter": b"x" * 32})

# RFC 7677 §3 (protocol digest §2.5): user "user", password "pencil".
V_SALT = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
V_SERVER_NONCE = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
V_CLIENT_FIRST = b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
V_SERVER_FIRST = (
    b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
)
V_CLIENT_FINAL = (
    b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
    b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
)
V_SERVER_FINAL = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
V_CREDS = sasl.ScramCredentials(
    salt=V_SALT,
    iterations=4096,
    stored_key=bytes.fromhex("586e5df283e6dceb5c3e791d8b8528ec191e664045ce971792e2e6b5bb13e2a6"),
    server_key=bytes.fromhex("c1f3cbc1c13a9d35a14c0990eed97629ea225863e566a4314ab99f3f00e5d9d5"),
)
# The same client with a wrong proof (the last proof byte flipped).
_proof = bytearray(base64.b64decode(V_CLIENT_FINAL.rsplit(b"p=", 1)[1]))
_proof[-1] ^= 1
V_CLIENT_FINAL_BAD = V_CLIENT_FINAL.rsplit(b"p=", 1)[0] + b"p=" + base64.b64encode(bytes(_proof))


def scram(*, plus_withheld: bool = False) -> ServerExchange:
    mech = ScramSha256Server(nonce_factory=lambda: V_SERVER_NONCE)
    return ServerExchange("SCRAM-SHA-256", mech, plus_withheld=plus_withheld)


def scram_to_final(final: bytes) -> tuple[ServerExchange, sasl.Challenge]:
    """Run the RFC 7677 exchange up to the server's final message."""
    ex = scram()
    assert ex.start(V_CLIENT_FIRST) == sasl.NeedCredentials(
        sasl.LookupScram("user", "sha256", "SCRAM-SHA-256")
    )
    assert ex.answer(V_CREDS) == sasl.Challenge(V_SERVER_FIRST)
    step = ex.respond(final)
    if isinstance(step, sasl.NeedCredentials):  # the proof may be judged
        assert step.query == sasl.ProofArrived("user", "SCRAM-SHA-256")
        step = ex.answer(sasl.Verdict(ok=True))
    if isinstance(step, sasl.NeedCredentials):  # the proof held: policy check
        assert step.query == sasl.ConfirmIdentity("user", "SCRAM-SHA-256")
        step = ex.answer(sasl.Verdict(ok=True, identity="user"))
    assert isinstance(step, sasl.Challenge)
    assert ex.verdict_announced
    return ex, step


# --- PLAIN (RFC 4616) -----------------------------------------------------------------


def plain() -> ServerExchange:
    return ServerExchange("PLAIN", PlainServer())


def test_rfc4616_plain_with_initial_response_succeeds() -> None:
    ex = plain()
    # \0tim\0tanstaaftanstaaf: the RFC 4616 §4 example, no authzid.
    step = ex.start(b"\x00tim\x00tanstaaftanstaaf")
    assert step == sasl.NeedCredentials(sasl.VerifyPassword("tim", "tanstaaftanstaaf", "", "PLAIN"))
    outcome = ex.answer(sasl.Verdict(ok=True, identity="tim"))
    assert outcome == Outcome("PLAIN", AuthResult.SUCCESS, "tim", "tim", "")
    assert ex.finished and not ex.verdict_announced
    assert ex.abandon("connection closed") is None  # one outcome per exchange


def test_plain_without_initial_response_is_an_empty_challenge_first() -> None:
    ex = plain()
    assert ex.start(None) == sasl.Challenge(b"")
    step = ex.respond(b"\x00tim\x00wrong")
    assert isinstance(step, sasl.NeedCredentials)
    outcome = ex.answer(sasl.Verdict(ok=False, reason="bad password"))
    assert outcome == Outcome("PLAIN", AuthResult.FAILURE, "tim", "", "bad password")


def test_backend_fault_is_tempfail_never_failure() -> None:
    ex = plain()
    ex.start(b"\x00tim\x00tanstaaftanstaaf")
    outcome = ex.answer(sasl.Verdict(ok=False, temporary=True, reason="store down"))
    assert isinstance(outcome, Outcome)
    assert (outcome.result, outcome.reason) == (AuthResult.TEMPFAIL, "store down")


def test_result_values_are_the_auth_log_words() -> None:
    assert [r.value for r in AuthResult] == ["success", "failure", "tempfail", "cancelled"]
    # A str: the auth log, string comparisons and f-strings keep working.
    result: str = AuthResult.FAILURE
    assert result == "failure" and f"{result}" == "failure"
    assert json.dumps({"result": AuthResult.TEMPFAIL}) == '{"result": "tempfail"}'


# --- SCRAM-SHA-256 (RFC 7677 §3) --------------------------------------------------------


def test_rfc7677_s3_scram_sha256_vector_through_the_exchange() -> None:
    ex, final = scram_to_final(V_CLIENT_FINAL)
    assert final == sasl.Challenge(V_SERVER_FINAL)
    assert not ex.finished  # announced, not over: the client must accept v=
    outcome = ex.respond(b"")
    assert outcome == Outcome("SCRAM-SHA-256", AuthResult.SUCCESS, "user", "user", "")
    assert ex.abandon("gone") is None


def test_scram_success_then_cancel_is_a_cancel_not_a_success() -> None:
    ex, _ = scram_to_final(V_CLIENT_FINAL)
    outcome = ex.cancel()
    assert (outcome.result, outcome.identity) == (AuthResult.CANCELLED, "")
    assert outcome.reason == "client cancelled after the server signature"


@pytest.mark.parametrize("how", ["respond", "malformed"])
def test_scram_success_then_anything_but_empty_is_a_failure(how: str) -> None:
    ex, _ = scram_to_final(V_CLIENT_FINAL)
    outcome = ex.respond(b"\x01") if how == "respond" else ex.malformed("invalid base64")
    assert isinstance(outcome, Outcome)
    assert (outcome.result, outcome.identity) == (AuthResult.FAILURE, "")
    assert outcome.reason == "non-empty response after success data"


# --- a failure the server announced stays that failure ----------------------------------

#: Whatever a client may do after reading SCRAM's e= or the OAuth error JSON.
THEN: list[tuple[str, Callable[[ServerExchange], object]]] = [
    ("empty", lambda ex: ex.respond(b"")),
    ("dummy-0x01", lambda ex: ex.respond(b"\x01")),
    ("another-client-final", lambda ex: ex.respond(V_CLIENT_FINAL)),
    ("cancel", lambda ex: ex.cancel()),
    ("malformed", lambda ex: ex.malformed("authentication line too long")),
    ("abandon", lambda ex: ex.abandon("connection closed during AUTH")),
]


@pytest.mark.parametrize(("what", "then"), THEN, ids=[t[0] for t in THEN])
def test_decided_scram_failure_then_anything_is_that_failure(
    what: str, then: Callable[[ServerExchange], object]
) -> None:
    ex, final = scram_to_final(V_CLIENT_FINAL_BAD)
    assert final == sasl.Challenge(b"e=invalid-proof")
    outcome = then(ex)
    assert isinstance(outcome, Outcome)
    assert (outcome.result, outcome.username, outcome.identity) == (AuthResult.FAILURE, "user", "")
    suffix = " (connection closed during AUTH)" if what == "abandon" else ""
    assert outcome.reason == "SCRAM-SHA-256: invalid proof" + suffix
    assert ex.finished and ex.abandon("again") is None


@pytest.mark.parametrize(("what", "then"), THEN, ids=[t[0] for t in THEN])
def test_decided_temporary_failure_then_anything_stays_tempfail(
    what: str, then: Callable[[ServerExchange], object]
) -> None:
    ex = scram()
    ex.start(V_CLIENT_FIRST)
    ex.answer(V_CREDS)
    ex.respond(V_CLIENT_FINAL)
    # The proof held, the account check had a backend fault: e=other-error.
    step = ex.answer(sasl.Verdict(ok=False, temporary=True, reason="store down"))
    assert step == sasl.Challenge(b"e=other-error") and ex.verdict_announced
    outcome = then(ex)
    assert isinstance(outcome, Outcome) and outcome.result is AuthResult.TEMPFAIL
    assert outcome.reason.startswith("store down")


def test_rfc7628_s3_2_oauthbearer_error_flow() -> None:
    ex = ServerExchange("OAUTHBEARER", OAuthBearerServer(scope="mail"))
    # RFC 7628 §3.1: gs2 header with authzid, auth=Bearer, the empty kvpair.
    step = ex.start(b"n,a=user@example.com,\x01auth=Bearer bad-token\x01\x01")
    assert step == sasl.NeedCredentials(
        sasl.VerifyToken("user@example.com", "bad-token", "OAUTHBEARER")
    )
    step = ex.answer(sasl.Verdict(ok=False, reason="token rejected"))
    # §3.2.2: the failure is a challenge holding the JSON status, not an outcome...
    assert isinstance(step, sasl.Challenge) and ex.verdict_announced and not ex.finished
    error = json.loads(step.data)
    assert (error["status"], error["scope"]) == ("invalid_token", "mail")
    # ...and §3.2.3: the client's 0x01 ends it as that failure.
    outcome = ex.respond(b"\x01")
    assert outcome == Outcome(
        "OAUTHBEARER", AuthResult.FAILURE, "user@example.com", "", "token rejected"
    )


# --- cancel and abandon before any verdict ----------------------------------------------


def test_cancel_before_any_verdict_is_cancelled() -> None:
    ex = scram()
    ex.start(V_CLIENT_FIRST)
    ex.answer(V_CREDS)
    outcome = ex.cancel()
    assert outcome == Outcome("SCRAM-SHA-256", AuthResult.CANCELLED, "user", "", "client cancelled")


def test_malformed_response_before_any_verdict_is_a_failure_with_that_reason() -> None:
    ex = plain()
    ex.start(None)
    outcome = ex.malformed("invalid base64")
    assert (outcome.result, outcome.reason) == (AuthResult.FAILURE, "invalid base64")


def test_abandon_while_credentials_are_looked_up_is_cancelled() -> None:
    ex = plain()
    ex.start(b"\x00tim\x00tanstaaftanstaaf")
    outcome = ex.abandon("connection closed during AUTH")
    assert outcome is not None
    assert (outcome.result, outcome.username) == (AuthResult.CANCELLED, "tim")
    with pytest.raises(sasl.MechanismUsageError):
        ex.answer(sasl.Verdict(ok=True, identity="tim"))  # too late: the exchange is over


# --- channel-binding evidence -----------------------------------------------------------


def test_plus_given_up_before_the_first_message_shows_cannot_bind() -> None:
    ex = ServerExchange("SCRAM-SHA-256-PLUS", ScramSha256PlusServer(channel_binding=CB))
    assert ex.start(None) == sasl.Challenge(b"")
    assert ex.cancel().binding == "cannot-bind"


def test_plain_scram_given_up_where_plus_is_withheld_shows_can_bind() -> None:
    ex = scram(plus_withheld=True)
    ex.start(None)
    outcome = ex.abandon("connection closed during AUTH")
    assert outcome is not None and outcome.binding == "can-bind"
    ex = scram(plus_withheld=False)
    ex.start(None)
    assert ex.cancel().binding == ""


def test_plus_success_shows_can_bind() -> None:
    mech = create_server_mechanism(
        "SCRAM-SHA-256-PLUS", channel_binding=CB, plus_advertised=True
    )
    ex = ServerExchange("SCRAM-SHA-256-PLUS", mech)
    client = ScramClient("sha256", "user", "pencil", CB, plus=True)
    first = client.start()
    assert first is not None
    assert isinstance(ex.start(first), sasl.NeedCredentials)
    server_first = ex.answer(V_CREDS)
    assert isinstance(server_first, sasl.Challenge)
    assert isinstance(ex.respond(client.step(server_first.data)), sasl.NeedCredentials)
    assert isinstance(ex.answer(sasl.Verdict(ok=True)), sasl.NeedCredentials)  # ProofArrived
    final = ex.answer(sasl.Verdict(ok=True, identity="user"))
    assert isinstance(final, sasl.Challenge)
    client.step(final.data)  # raises if the server signature were wrong
    outcome = ex.respond(b"")
    assert isinstance(outcome, Outcome)
    assert (outcome.result, outcome.binding) == (AuthResult.SUCCESS, "can-bind")


# --- the boundary: mechanism bugs and call order ----------------------------------------


class _Broken(sasl.ServerMechanism):
    name = "BROKEN"

    def start(self, initial: bytes | None) -> sasl.Step:
        return sasl.Challenge(b"go on")

    def step(self, response: bytes) -> sasl.Step:
        raise ZeroDivisionError


def test_a_mechanism_that_raises_ends_in_tempfail_not_a_traceback() -> None:
    ex = ServerExchange("BROKEN", _Broken())
    ex.start(None)
    outcome = ex.respond(b"x")
    assert isinstance(outcome, Outcome)
    assert (outcome.result, outcome.reason) == (
        AuthResult.TEMPFAIL,
        "internal mechanism error: ZeroDivisionError",
    )


def test_calls_out_of_order_name_the_expected_call() -> None:
    ex = plain()
    with pytest.raises(sasl.MechanismUsageError, match=r"respond\(\).*expects start\(\)"):
        ex.respond(b"")
    ex.start(b"\x00tim\x00tanstaaftanstaaf")
    with pytest.raises(sasl.MechanismUsageError, match=r"cancel\(\).*expects answer\(\)"):
        ex.cancel()
    with pytest.raises(sasl.MechanismUsageError, match=r"start\(\)"):
        ex.start(None)
    ex.answer(sasl.Verdict(ok=True, identity="tim"))
    with pytest.raises(sasl.MechanismUsageError, match="over"):
        ex.respond(b"")
