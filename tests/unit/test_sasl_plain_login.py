"""PLAIN (RFC 4616) and LOGIN (draft-murchison-sasl-login, MS-XLOGIN), both sides."""

from __future__ import annotations

import base64

import pytest

from smtpgate.sasl.base import (
    Challenge,
    ChannelBinding,
    ClientAuthError,
    CramMd5Secret,
    Failure,
    MechanismUsageError,
    NeedCredentials,
    NotFound,
    Success,
    Verdict,
    VerifyPassword,
)
from smtpgate.sasl.login import LoginClient, LoginServer
from smtpgate.sasl.plain import (
    PlainClient,
    PlainMessage,
    PlainServer,
    PlainSyntaxError,
    decode_plain,
    encode_plain,
)
from smtpgate.sasl.registry import (
    create_client_mechanism,
    create_server_mechanism,
    server_mechanism_names,
)

# --- PLAIN vectors: base64 as on the wire, and what it decodes to ----------------

PLAIN_VECTORS = [
    # \0user\0pencil  (protocol digest §2.2)
    ("AHVzZXIAcGVuY2ls", PlainMessage(authcid="user", password="pencil")),
    # test\0test\01234  (RFC 4954 §4.1 example: authzid equal to authcid)
    ("dGVzdAB0ZXN0ADEyMzQ=", PlainMessage(authcid="test", password="1234", authzid="test")),
    # RFC 4616 §4 example 1: \0tim\0tanstaaftanstaaf
    (
        "AHRpbQB0YW5zdGFhZnRhbnN0YWFm",
        PlainMessage(authcid="tim", password="tanstaaftanstaaf"),
    ),
    # RFC 4616 §4 example 2 (authzid Ursel, authcid Kurt) is a proxy authorization,
    # which the auth service refuses: see test_rfc4616_authzid_goes_to_the_auth_service.
]

# Negative cases: (description, message, malformed?)
PLAIN_FAILURES = [
    ("no NUL", b"userpencil", True),
    ("one NUL", b"user\0pencil", True),
    ("three NULs", b"\0user\0pencil\0", True),
    ("four NULs", b"\0\0user\0pencil", True),
    ("empty authcid", b"\0\0pencil", True),
    ("empty password", b"\0user\0", True),
    ("only NULs", b"\0\0", True),
    ("empty response", b"", True),
    ("invalid UTF-8 in authcid", b"\0us\xffer\0pencil", True),
    ("invalid UTF-8 in password", b"\0user\0pen\xc3", True),
    ("invalid UTF-8 in authzid", b"\xc0\x80\0user\0pencil", True),
    ("overlong field", b"\0" + b"u" * 1025 + b"\0pencil", True),
    ("control character in authcid", b"\0us\ter\0pencil", True),
    ("LF in authcid", b"\0user\n\0pencil", True),
    ("line separator U+2028 in authcid", "\0user\u2028x\0pencil".encode(), True),
    ("paragraph separator U+2029 in authcid", "\0user\u2029x\0pencil".encode(), True),
    ("line separator U+2028 in authzid", "a\u2028b\0user\0pencil".encode(), True),
]


@pytest.mark.parametrize(("wire", "expected"), PLAIN_VECTORS)
def test_rfc4616_s2_vectors_decode(wire: str, expected: PlainMessage) -> None:
    assert decode_plain(base64.b64decode(wire)) == expected


@pytest.mark.parametrize(("wire", "expected"), PLAIN_VECTORS)
def test_rfc4616_s2_vectors_client_encodes(wire: str, expected: PlainMessage) -> None:
    client = PlainClient(expected.authcid, expected.password, expected.authzid)
    out = client.start()
    assert out is not None and base64.b64encode(out).decode() == wire
    assert client.done


@pytest.mark.parametrize(("wire", "expected"), PLAIN_VECTORS)
def test_rfc4616_s2_vectors_server(wire: str, expected: PlainMessage) -> None:
    mech = PlainServer()
    step = mech.start(base64.b64decode(wire))
    assert step == NeedCredentials(
        VerifyPassword(expected.authcid, expected.password, expected.authzid, "PLAIN")
    )
    assert mech.answer(Verdict(ok=True, identity=expected.authcid)) == Success(
        identity=expected.authcid, authzid=expected.authzid
    )


@pytest.mark.parametrize(("why", "message", "malformed"), PLAIN_FAILURES)
def test_rfc4616_s2_negative_cases_fail(why: str, message: bytes, malformed: bool) -> None:
    step = PlainServer().start(message)
    assert isinstance(step, Failure), why
    assert step.malformed is malformed
    assert not step.temporary


@pytest.mark.parametrize(("why", "message", "malformed"), PLAIN_FAILURES)
def test_rfc4616_s2_negative_cases_fail_as_response(
    why: str, message: bytes, malformed: bool
) -> None:
    mech = PlainServer()
    assert mech.start(None) == Challenge(b"")
    assert isinstance(mech.step(message), Failure), why


def test_rfc4616_authzid_goes_to_the_auth_service() -> None:
    """RFC 4616 §4 example 2, Kurt acting as Ursel: whether an authzid names the
    account is the auth service's to say (it knows every spelling of a name), so
    the mechanism passes it on rather than comparing strings."""
    step = PlainServer().start(b"Ursel\0Kurt\0xipj3plmq")
    assert step == NeedCredentials(VerifyPassword("Kurt", "xipj3plmq", "Ursel", "PLAIN"))


def test_rfc4616_control_character_in_authzid_is_malformed() -> None:
    step = PlainServer().start(b"Urs\xc2\x85el\0Kurt\0xipj3plmq")  # NEL, U+0085
    assert isinstance(step, Failure) and step.malformed


def test_rfc4422_absent_initial_response_gets_empty_challenge() -> None:
    mech = PlainServer()
    assert mech.start(None) == Challenge(b"")
    step = mech.step(b"\0user\0pencil")
    assert step == NeedCredentials(VerifyPassword("user", "pencil", "", "PLAIN"))


def test_rfc4422_empty_initial_response_is_a_real_response() -> None:
    step = PlainServer().start(b"")
    assert isinstance(step, Failure) and step.malformed


def test_plain_verdict_rejected_is_failure_with_username() -> None:
    mech = PlainServer()
    mech.start(b"\0user\0wrong")
    step = mech.answer(Verdict(ok=False, reason="bad password"))
    assert step == Failure(reason="bad password", username="user")


def test_rfc4954_s6_backend_fault_is_temporary() -> None:
    mech = PlainServer()
    mech.start(b"\0user\0pencil")
    step = mech.answer(Verdict(ok=False, reason="db down", temporary=True))
    assert isinstance(step, Failure) and step.temporary


def test_plain_not_found_is_failure() -> None:
    mech = PlainServer()
    mech.start(b"\0nobody\0pencil")
    step = mech.answer(NotFound())
    assert isinstance(step, Failure) and not step.temporary and step.username == "nobody"


def test_plain_wrong_answer_type_is_temporary_failure() -> None:
    mech = PlainServer()
    mech.start(b"\0user\0pencil")
    step = mech.answer(CramMd5Secret(inner=b"\0" * 16, outer=b"\0" * 16))
    assert isinstance(step, Failure) and step.temporary


def test_plain_success_uses_canonical_identity() -> None:
    mech = PlainServer()
    mech.start(b"\0User@Example.ORG\0pencil")
    assert mech.answer(Verdict(ok=True, identity="user@example.org")) == Success(
        identity="user@example.org"
    )


def test_plain_utf8_credentials_pass_through_unprepared() -> None:
    mech = PlainServer()
    step = mech.start("\0jürgen\0pa\u00adss".encode())
    assert step == NeedCredentials(VerifyPassword("jürgen", "pa\u00adss", "", "PLAIN"))


def test_plain_accepts_255_octet_fields() -> None:
    # RFC 4616 §2: the server MUST accept fields of up to 255 octets.
    long = "x" * 255
    step = PlainServer().start(encode_plain(long, long, long))
    assert isinstance(step, NeedCredentials)


def test_plain_call_order_is_enforced() -> None:
    mech = PlainServer()
    with pytest.raises(MechanismUsageError, match="expected start"):
        mech.step(b"")
    mech.start(b"\0user\0pencil")
    with pytest.raises(MechanismUsageError, match="expected answer"):
        mech.step(b"\0user\0pencil")
    mech.answer(Verdict(ok=True, identity="user"))
    with pytest.raises(MechanismUsageError, match="after the exchange ended"):
        mech.answer(Verdict(ok=True, identity="user"))


@pytest.mark.parametrize(
    ("message", "reason", "username"),
    [
        # A Latin-1 password from an old client: malformed, but the auth log names
        # the account, as LOGIN's does (until 2026-12 "field is not valid UTF-8", no name).
        (b"\0alice@example.org\0p\xe4ss", "PLAIN: password is not valid UTF-8",
         "alice@example.org"),
        (b"\xff\0alice@example.org\0pencil",
         "PLAIN: authorization identity is not valid UTF-8", "alice@example.org"),
        (b"\0al\xefce\0pencil", "PLAIN: user name is not valid UTF-8", ""),
        (b"\0al\x07ce\0p\xe4ss", "PLAIN: password is not valid UTF-8", ""),
    ],
)
def test_plain_non_utf8_field_says_which_and_for_whom(
    message: bytes, reason: str, username: str
) -> None:
    step = PlainServer().start(message)
    assert isinstance(step, Failure) and step.malformed
    assert (step.reason, step.username) == (reason, username)


def test_plain_flags() -> None:
    assert PlainServer.cleartext_credentials and not PlainServer.server_first
    assert PlainClient.cleartext_credentials


@pytest.mark.parametrize(
    ("authcid", "password", "authzid"),
    [("", "p", ""), ("u", "", ""), ("u\0", "p", ""), ("u", "p", "a\0")],
)
def test_encode_plain_refuses_unencodable(authcid: str, password: str, authzid: str) -> None:
    with pytest.raises(PlainSyntaxError):
        encode_plain(authcid, password, authzid)


def test_plain_client_without_initial_response_answers_empty_challenge() -> None:
    client = PlainClient("user", "pencil")
    assert client.step(b"") == b"\0user\0pencil"
    with pytest.raises(ClientAuthError):
        client.step(b"")


def test_plain_client_rejects_unexpected_challenge() -> None:
    client = PlainClient("user", "pencil")
    client.start()
    with pytest.raises(ClientAuthError):
        client.step(b"more?")


# --- LOGIN -----------------------------------------------------------------------


def test_login_prompts_username_then_password() -> None:
    mech = LoginServer()
    # 334 VXNlcm5hbWU6 = "Username:", 334 UGFzc3dvcmQ6 = "Password:"
    first = mech.start(None)
    assert first == Challenge(b"Username:")
    assert base64.b64encode(first.data) == b"VXNlcm5hbWU6"
    second = mech.step(base64.b64decode("dXNlcg=="))  # user
    assert second == Challenge(b"Password:")
    assert isinstance(second, Challenge) and base64.b64encode(second.data) == b"UGFzc3dvcmQ6"
    step = mech.step(base64.b64decode("cGVuY2ls"))  # pencil
    assert step == NeedCredentials(VerifyPassword("user", "pencil", "", "LOGIN"))
    assert mech.answer(Verdict(ok=True, identity="user")) == Success(identity="user")


def test_login_initial_response_is_the_username() -> None:
    # AUTH LOGIN dXNlcg== (Python smtplib, MS-XLOGIN): only the password prompt follows.
    mech = LoginServer()
    assert mech.start(b"user") == Challenge(b"Password:")
    assert mech.step(b"pencil") == NeedCredentials(VerifyPassword("user", "pencil", "", "LOGIN"))


LOGIN_FAILURES = [
    ("empty username", [b""]),
    ("invalid UTF-8 username", [b"\xffuser"]),
    ("control char in username", [b"us\0er"]),
    ("line separator U+2028 in username", ["user\u2028x@example.org".encode()]),
    ("paragraph separator U+2029 in username", ["user\u2029x@example.org".encode()]),
    ("overlong username", [b"u" * 1025]),
    ("empty password", [b"user", b""]),
    ("invalid UTF-8 password", [b"user", b"\xc3"]),
    ("overlong password", [b"user", b"p" * 1025]),
]


@pytest.mark.parametrize(("why", "responses"), LOGIN_FAILURES)
def test_login_negative_cases_fail_malformed(why: str, responses: list[bytes]) -> None:
    mech = LoginServer()
    step = mech.start(None)
    for r in responses:
        assert isinstance(step, Challenge), why
        step = mech.step(r)
    assert isinstance(step, Failure) and step.malformed, why


def test_login_empty_initial_response_fails() -> None:
    step = LoginServer().start(b"")
    assert isinstance(step, Failure) and step.malformed


def test_login_rejected_password() -> None:
    mech = LoginServer()
    mech.start(b"user")
    mech.step(b"wrong")
    assert mech.answer(Verdict(ok=False)) == Failure(reason="credentials rejected", username="user")


def test_login_flags() -> None:
    assert LoginServer.cleartext_credentials and LoginClient.cleartext_credentials


def test_login_client_ignores_prompt_text() -> None:
    client = LoginClient("user", "pencil")
    assert client.start() is None
    assert client.step(b"User Name") == b"user"
    assert not client.done
    assert client.step(b"Password") == b"pencil"
    assert client.done
    with pytest.raises(ClientAuthError):
        client.step(b"Password:")


def test_login_client_initial_response() -> None:
    client = LoginClient("user", "pencil", initial_response=True)
    assert client.start() == b"user"
    assert client.step(b"Password:") == b"pencil"
    assert client.done


@pytest.mark.parametrize("ir", [False, True])
def test_login_client_against_server(ir: bool) -> None:
    client = LoginClient("jürgen", "pencil", initial_response=ir)
    server = LoginServer()
    step = server.start(client.start())
    while isinstance(step, Challenge):
        step = server.step(client.step(step.data))
    assert step == NeedCredentials(VerifyPassword("jürgen", "pencil", "", "LOGIN"))


# --- registry --------------------------------------------------------------------


def test_registry_builds_plain_and_login_case_insensitively() -> None:
    assert isinstance(
        create_server_mechanism("plain", channel_binding=ChannelBinding()), PlainServer
    )
    assert isinstance(
        create_server_mechanism("LOGIN", channel_binding=ChannelBinding()), LoginServer
    )
    assert {"PLAIN", "LOGIN"} <= set(server_mechanism_names())


def test_registry_unknown_mechanism_is_keyerror() -> None:
    with pytest.raises(KeyError):
        create_server_mechanism("NTLM", channel_binding=ChannelBinding())
    with pytest.raises(KeyError):
        create_client_mechanism("NTLM", username="u")


def test_registry_fresh_instance_each_time() -> None:
    cb = ChannelBinding()
    assert create_server_mechanism("PLAIN", channel_binding=cb) is not create_server_mechanism(
        "PLAIN", channel_binding=cb
    )


@pytest.mark.parametrize("name", ["PLAIN", "LOGIN"])
def test_registry_client_against_server(name: str) -> None:
    client = create_client_mechanism(name, username="user", password="pencil")
    server = create_server_mechanism(name, channel_binding=ChannelBinding())
    step = server.start(client.start())
    while isinstance(step, Challenge):
        step = server.step(client.step(step.data))
    assert step == NeedCredentials(VerifyPassword("user", "pencil", "", name))
    assert server.answer(Verdict(ok=True, identity="user")) == Success(identity="user")
    assert client.done
