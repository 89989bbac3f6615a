"""Property tests for the SASL mechanisms.

Invariant (every server mechanism): any sequence of client bytes and any sequence
of auth-service answers, fed through start/step/answer in the order the returned
steps ask for, ends within a few calls in Success or Failure; no call raises; and
Success only ever follows an ok Verdict from the auth service.

Invariant (PLAIN): decode_plain(encode_plain(u, p, a)) == (u, p, a) for every
encodable triple, and the honest client/server exchange asks for exactly it.

Invariant (SASLprep): saslprep is idempotent where it succeeds.

Invariant (SCRAM): our client and server agree for every password SASLprep accepts.
"""

from __future__ import annotations

import base64
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smtpgate.sasl.base import (
    Challenge,
    ChannelBinding,
    ClientAuthError,
    ClientMechanism,
    CramMd5Secret,
    CredentialAnswer,
    Failure,
    LookupCramMd5,
    LookupScram,
    NeedCredentials,
    NotFound,
    ScramCredentials,
    Step,
    Success,
    Verdict,
    VerifyPassword,
)
from smtpgate.sasl.cram_md5 import cram_md5_secret_from_password
from smtpgate.sasl.plain import PlainMessage, PlainServer, decode_plain, encode_plain
from smtpgate.sasl.registry import (
    create_client_mechanism,
    create_server_mechanism,
    server_mechanism_names,
)
from smtpgate.sasl.saslprep import SaslprepError, saslprep
from smtpgate.sasl.scram import ScramClient, ScramSha256Server, scram_credentials_from_password

MAX_CALLS = 12

CB_FULL = ChannelBinding(
    {"tls-exporter": b"e" * 32, "tls-server-end-point": b"s" * 32, "tls-unique": b"u" * 12}
)

channel_bindings = st.sampled_from([ChannelBinding(), CB_FULL])

# The right secrets for the honest clients' password, so fuzzed exchanges get
# past the proof and reach ConfirmIdentity.
GOOD_SECRETS: list[CredentialAnswer] = [
    scram_credentials_from_password("pencil", "sha1", 16),
    scram_credentials_from_password("pencil", "sha256", 16),
    cram_md5_secret_from_password("pencil"),
]

answers: st.SearchStrategy[CredentialAnswer] = st.one_of(
    st.sampled_from(GOOD_SECRETS),
    st.sampled_from([Verdict(ok=True, identity="user"), NotFound()]),
    st.builds(
        Verdict,
        ok=st.booleans(),
        identity=st.text(max_size=20),
        reason=st.text(max_size=20),
        temporary=st.booleans(),
    ),
    st.builds(NotFound, reason=st.text(max_size=10), temporary=st.booleans()),
    st.builds(
        ScramCredentials,
        salt=st.binary(max_size=24),
        iterations=st.integers(min_value=-1, max_value=64),
        stored_key=st.binary(min_size=0, max_size=40),
        server_key=st.binary(min_size=0, max_size=40),
    ),
    st.builds(CramMd5Secret, inner=st.binary(max_size=20), outer=st.binary(max_size=20)),
)

# Bytes that look like the mechanisms' grammar, so the fuzzer gets past the
# first syntax check more often than uniform bytes would.
TOKENS = [
    b"\0", b"\x01", b",", b"=", b"n,,", b"y,,", b"p=tls-exporter,,", b"p=tls-unique,,",
    b"n=", b"r=", b"c=", b"p=", b"m=", b"a=", b"=2C", b"=3D", b"biws", b"user", b"auth=",
    b"Bearer ", b"user=", b"host=", b" ", b"0123456789abcdef0123456789abcdef", b"\xff",
]  # fmt: skip
grammarish = st.lists(st.one_of(st.sampled_from(TOKENS), st.binary(max_size=8)), max_size=12).map(
    b"".join
)
responses = st.one_of(st.binary(max_size=200), grammarish)


def drive(mech_name: str, data: st.DataObject, cb: ChannelBinding, plus: bool) -> None:
    mech = create_server_mechanism(
        mech_name, channel_binding=cb, plus_advertised=plus, hostname="mx.example"
    )
    initial = data.draw(st.one_of(st.none(), responses), label="initial")
    step: Step = mech.start(initial)
    last_answer: CredentialAnswer | None = None
    for _ in range(MAX_CALLS):
        if isinstance(step, Challenge):
            step = mech.step(data.draw(responses, label="response"))
        elif isinstance(step, NeedCredentials):
            last_answer = data.draw(answers, label="answer")
            step = mech.answer(last_answer)
        else:
            break
    assert isinstance(step, (Success, Failure)), f"{mech_name} did not end: {step}"
    if isinstance(step, Success):
        assert isinstance(last_answer, Verdict) and last_answer.ok


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(server_mechanism_names()),
    cb=channel_bindings,
    plus=st.booleans(),
    data=st.data(),
)
def test_property_arbitrary_input_always_ends_in_defined_step(
    name: str, cb: ChannelBinding, plus: bool, data: st.DataObject
) -> None:
    drive(name, data, cb, plus)


@st.composite
def mutated(draw: st.DrawFn, message: bytes) -> bytes:
    """``message`` truncated, spliced with grammar-ish bytes, or with one ``k=v``
    attribute's value replaced by random base64 (wrong-length proofs, foreign
    channel bindings, other nonces)."""
    kind = draw(st.sampled_from(["attribute", "truncate", "splice"]))
    attrs = message.split(b",")
    if kind == "attribute" and len(attrs) > 1:
        i = draw(st.integers(0, len(attrs) - 1))
        key = attrs[i].split(b"=", 1)[0]
        attrs[i] = key + b"=" + base64.b64encode(draw(st.binary(max_size=40)))
        return b",".join(attrs)
    i = draw(st.integers(0, len(message)))
    if kind == "truncate":
        return message[:i]
    j = draw(st.integers(i, len(message)))
    return message[:i] + draw(grammarish) + message[j:]


def good_answer(query: object) -> CredentialAnswer:
    """What an auth service that knows user/pencil would answer."""
    if isinstance(query, LookupScram):
        return GOOD_SECRETS[0] if query.hash_name == "sha1" else GOOD_SECRETS[1]
    if isinstance(query, LookupCramMd5):
        return GOOD_SECRETS[2]
    return Verdict(ok=True, identity="user")


def _honest_client(name: str) -> ClientMechanism:
    return create_client_mechanism(
        name, username="user", password="pencil", token="abc.def", channel_binding=CB_FULL
    )


@settings(max_examples=1000, deadline=None)
@given(name=st.sampled_from(server_mechanism_names()), data=st.data())
def test_property_honest_exchange_with_one_mutation_ends_in_defined_step(
    name: str, data: st.DataObject
) -> None:
    """Reach the deep states (after the lookup, after the proof) with a real client
    whose messages are all honest but one, and answers right or arbitrary."""
    mech = create_server_mechanism(name, channel_binding=CB_FULL, hostname="mx.example")
    client = _honest_client(name)
    victim = data.draw(st.integers(0, 3), label="message to mutate")
    sent = 0

    def send(message: bytes) -> bytes:
        nonlocal sent
        sent += 1
        return data.draw(mutated(message), label="mutated") if sent - 1 == victim else message

    first = client.start()
    step: Step = mech.start(None if mech.server_first else send(first or b""))
    last_answer: CredentialAnswer | None = None
    for _ in range(MAX_CALLS):
        if isinstance(step, Challenge):
            try:
                reply = client.step(step.data)
            except ClientAuthError:  # the client refuses what it got (after a mutation)
                reply = data.draw(responses, label="random reply")
            step = mech.step(send(reply))
        elif isinstance(step, NeedCredentials):
            last_answer = data.draw(
                st.one_of(st.just(good_answer(step.query)), answers), label="answer"
            )
            step = mech.answer(last_answer)
        else:
            break
    assert isinstance(step, (Success, Failure))
    if isinstance(step, Success):
        assert isinstance(last_answer, Verdict) and last_answer.ok


# --- PLAIN ----------------------------------------------------------------------------

field_text = st.text(
    alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\0"),
    min_size=1,
    max_size=60,
)


@given(authcid=field_text, password=field_text, with_authzid=st.booleans(), other=field_text)
def test_property_plain_decode_encode_round_trip(
    authcid: str, password: str, with_authzid: bool, other: str
) -> None:
    authzid = other if with_authzid else ""
    assert decode_plain(encode_plain(authcid, password, authzid)) == PlainMessage(
        authcid=authcid, password=password, authzid=authzid
    )


# The names is_safe_name takes: no control character, no line or paragraph separator.
safe_name = st.text(
    alphabet=st.characters(exclude_categories=["Cs", "Cc", "Zl", "Zp"],
                           exclude_characters="\0\x7f"),
    min_size=1,
    max_size=40,
)


@given(authcid=safe_name, password=field_text, same_authzid=st.booleans())
def test_property_plain_server_asks_exactly_what_the_client_sent(
    authcid: str, password: str, same_authzid: bool
) -> None:
    authzid = authcid if same_authzid else ""
    step = PlainServer().start(encode_plain(authcid, password, authzid))
    assert step == NeedCredentials(VerifyPassword(authcid, password, authzid, "PLAIN"))


# --- SASLprep -------------------------------------------------------------------------


@given(text=st.text(max_size=30))
def test_property_saslprep_is_idempotent(text: str) -> None:
    try:
        once = saslprep(text)
    except SaslprepError:
        return
    assert saslprep(once) == once


# --- SCRAM ----------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(password=st.text(min_size=1, max_size=20), user=safe_name)
def test_property_scram_client_and_server_agree(password: str, user: str) -> None:
    try:
        creds = scram_credentials_from_password(password, "sha256", 16)
        client = ScramClient("sha256", user, password)
    except ValueError:
        return  # SASLprep refuses this password or name; both sides refuse alike
    server = ScramSha256Server()
    step: Any = server.start(client.start())
    assert isinstance(step, NeedCredentials), step
    step = server.answer(creds)
    step = server.step(client.step(step.data))
    assert isinstance(step, NeedCredentials)  # ProofArrived
    step = server.answer(Verdict(ok=True))
    assert isinstance(step, NeedCredentials)  # ConfirmIdentity
    step = server.answer(Verdict(ok=True, identity=user))
    assert isinstance(step, Success) and step.final_data is not None
    client.step(step.final_data)
    assert client.done
