"""OAUTHBEARER (RFC 7628) and XOAUTH2 mechanisms, both sides."""

from __future__ import annotations

import base64
import json

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
    VerifyToken,
)
from smtpgate.sasl.oauth import (
    OAuthBearerClient,
    OAuthBearerServer,
    OAuthSyntaxError,
    XOAuth2Client,
    XOAuth2Server,
    encode_oauthbearer,
    encode_xoauth2,
    parse_oauthbearer,
    parse_xoauth2,
)
from smtpgate.sasl.registry import create_client_mechanism, create_server_mechanism

RFC7628_TOKEN = "vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg=="

# RFC 7628 §4.1 (SMTP flavour, port 587), base64 as on the wire; decodes to
# n,a=user@example.com,^Ahost=server.example.com^Aport=587^Aauth=Bearer vF9...==^A^A
RFC7628_SMTP_IR = (
    "bixhPXVzZXJAZXhhbXBsZS5jb20sAWhvc3Q9c2VydmVyLmV4YW1wbGUuY29tAXBvcnQ9NTg3AWF1dGg9QmVhcmVy"
    "IHZGOWRmdDRxbVRjMk52YjNSbGNrQmhiSFJoZG1semRHRXVZMjl0Q2c9PQEB"
)
# RFC 7628 §4.1 (IMAP flavour, port 143).
RFC7628_IMAP_IR = (
    "bixhPXVzZXJAZXhhbXBsZS5jb20sAWhvc3Q9c2VydmVyLmV4YW1wbGUuY29tAXBvcnQ9MTQzAWF1dGg9QmVhcmVy"
    "IHZGOWRmdDRxbVRjMk52YjNSbGNrQmhiSFJoZG1semRHRXVZMjl0Q2c9PQEB"
)
# Google's XOAUTH2 example: user=someuser@example.com^Aauth=Bearer ya29.vF9...Cg^A^A
XOAUTH2_GOOGLE_IR = (
    "dXNlcj1zb21ldXNlckBleGFtcGxlLmNvbQFhdXRoPUJlYXJlciB5YTI5LnZGOWRmdDRxbVRjMk52YjNSbGNrQmhk"
    "SFJoZG1semRHRXVZMjl0Q2cBAQ=="
)
XOAUTH2_GOOGLE_TOKEN = "ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg"


@pytest.mark.parametrize(("wire", "port"), [(RFC7628_SMTP_IR, 587), (RFC7628_IMAP_IR, 143)])
def test_rfc7628_s4_1_example_server(wire: str, port: int) -> None:
    server = OAuthBearerServer()
    step = server.start(base64.b64decode(wire))
    assert step == NeedCredentials(
        VerifyToken("user@example.com", RFC7628_TOKEN, mechanism="OAUTHBEARER")
    )
    assert server.answer(Verdict(ok=True, identity="user@example.com")) == Success(
        identity="user@example.com"
    )


@pytest.mark.parametrize(("wire", "port"), [(RFC7628_SMTP_IR, 587), (RFC7628_IMAP_IR, 143)])
def test_rfc7628_s4_1_example_client(wire: str, port: int) -> None:
    client = OAuthBearerClient(
        "user@example.com", RFC7628_TOKEN, host="server.example.com", port=port
    )
    out = client.start()
    assert out is not None and base64.b64encode(out).decode() == wire
    assert client.done


def test_rfc7628_parse_keeps_host_and_port() -> None:
    req = parse_oauthbearer(base64.b64decode(RFC7628_SMTP_IR))
    assert req.fields["host"] == "server.example.com" and req.fields["port"] == "587"


def test_rfc7628_s3_2_2_failure_flow_error_json_then_kvsep() -> None:
    server = OAuthBearerServer(scope="mail", openid_configuration="https://id.example/.well-known")
    server.start(base64.b64decode(RFC7628_SMTP_IR))
    step = server.answer(Verdict(ok=False, reason="expired"))
    # The failure is decided here; the JSON goes out in a 334, and the client's
    # 0x01 (RFC 7628 §3.2.3) only releases the 535 (the SMTP engine's part).
    assert isinstance(step, Failure)
    assert (step.reason, step.username, step.temporary) == ("expired", "user@example.com", False)
    assert step.error_data is not None
    assert json.loads(step.error_data) == {
        "status": "invalid_token",
        "schemes": "bearer",
        "scope": "mail",
        "openid-configuration": "https://id.example/.well-known",
    }
    assert server.finished  # no step() is owed the dummy answer


def test_rfc7628_s3_2_3_no_step_after_the_error_failure() -> None:
    server = OAuthBearerServer()
    server.start(base64.b64decode(RFC7628_SMTP_IR))
    assert isinstance(server.answer(Verdict(ok=False)), Failure)
    with pytest.raises(MechanismUsageError):
        server.step(b"\x01")


def test_rfc7628_error_json_without_scope() -> None:
    server = OAuthBearerServer()
    server.start(base64.b64decode(RFC7628_SMTP_IR))
    step = server.answer(NotFound())
    assert isinstance(step, Failure) and step.error_data is not None
    assert json.loads(step.error_data) == {"status": "invalid_token", "schemes": "bearer"}


def test_rfc4954_s6_token_backend_fault_is_temporary_without_round_trip() -> None:
    server = OAuthBearerServer()
    server.start(base64.b64decode(RFC7628_SMTP_IR))
    step = server.answer(Verdict(ok=False, reason="jwks fetch failed", temporary=True))
    assert isinstance(step, Failure) and step.temporary


def test_wrong_answer_type_is_temporary() -> None:
    server = OAuthBearerServer()
    server.start(base64.b64decode(RFC7628_SMTP_IR))
    step = server.answer(CramMd5Secret(b"\0" * 16, b"\0" * 16))
    assert isinstance(step, Failure) and step.temporary


def test_rfc7628_discovery_request_gets_error_json() -> None:
    server = OAuthBearerServer()
    step = server.start(b"n,,\x01auth=\x01\x01")
    assert isinstance(step, Failure) and step.error_data is not None
    assert json.loads(step.error_data)["status"] == "invalid_token"
    assert step.reason == "discovery request"


def test_rfc7628_without_authzid_username_is_empty() -> None:
    step = OAuthBearerServer().start(b"n,,\x01auth=Bearer abc\x01\x01")
    assert step == NeedCredentials(VerifyToken("", "abc", mechanism="OAUTHBEARER"))


def test_rfc7628_bearer_scheme_is_case_insensitive() -> None:
    step = OAuthBearerServer().start(b"n,,\x01auth=bEaReR abc\x01\x01")
    assert step == NeedCredentials(VerifyToken("", "abc", mechanism="OAUTHBEARER"))


def test_rfc7628_s3_1_unknown_keys_are_ignored() -> None:
    step = OAuthBearerServer().start(b"n,a=u,\x01foo=bar\x01auth=Bearer abc\x01\x01")
    assert step == NeedCredentials(VerifyToken("u", "abc", mechanism="OAUTHBEARER"))


def test_rfc7628_authzid_escapes_are_decoded() -> None:
    step = OAuthBearerServer().start(b"n,a=a=2Cb=3Dc,\x01auth=Bearer abc\x01\x01")
    assert step == NeedCredentials(VerifyToken("a,b=c", "abc", mechanism="OAUTHBEARER"))


def test_rfc4422_no_initial_response_gets_empty_challenge() -> None:
    server = OAuthBearerServer()
    assert server.start(None) == Challenge(b"")
    assert isinstance(server.step(base64.b64decode(RFC7628_SMTP_IR)), NeedCredentials)


OAUTHBEARER_FAILURES = [
    ("channel binding requested", b"p=tls-unique,,\x01auth=Bearer abc\x01\x01"),
    ("bad gs2 flag", b"x,,\x01auth=Bearer abc\x01\x01"),
    ("no gs2 header", b"\x01auth=Bearer abc\x01\x01"),
    ("bare kvsep as first message", b"\x01"),
    ("missing final kvsep", b"n,,\x01auth=Bearer abc\x01"),
    ("missing kvsep after header", b"n,,auth=Bearer abc\x01\x01"),
    ("trailing data", b"n,,\x01auth=Bearer abc\x01\x01x"),
    ("no auth", b"n,,\x01host=x\x01\x01"),
    ("duplicate auth", b"n,,\x01auth=Bearer abc\x01auth=Bearer def\x01\x01"),
    ("not bearer", b"n,,\x01auth=Basic abc\x01\x01"),
    ("token with bad chars", b"n,,\x01auth=Bearer a$c\x01\x01"),
    ("bad key", b"n,,\x01au th=Bearer abc\x01\x01"),
    ("empty kvpair in the middle", b"n,,\x01\x01auth=Bearer abc\x01\x01"),
    ("control char in value", b"n,,\x01host=a\x00b\x01auth=Bearer abc\x01\x01"),
    ("bad authzid escape", b"n,a=a=2Db,\x01auth=Bearer abc\x01\x01"),
    ("authzid without a=", b"n,user,\x01auth=Bearer abc\x01\x01"),
    ("invalid UTF-8", b"n,a=\xff,\x01auth=Bearer abc\x01\x01"),
    ("empty", b""),
    ("too long", b"n,,\x01auth=Bearer " + b"a" * 20000 + b"\x01\x01"),
]


@pytest.mark.parametrize(("why", "message"), OAUTHBEARER_FAILURES)
def test_rfc7628_s3_1_negative_cases(why: str, message: bytes) -> None:
    step = OAuthBearerServer(scope="mail").start(message)
    assert isinstance(step, Failure) and step.malformed, why
    # RFC 7628 §3.2.2: announced by the error JSON, as the request's fault.
    assert step.error_data is not None, why
    assert json.loads(step.error_data) == {
        "status": "invalid_request", "schemes": "bearer", "scope": "mail"}, why


@pytest.mark.parametrize(("token_error", "status", "xoauth2"), [
    ("insufficient_scope", "insufficient_scope", "403"),
    ("", "invalid_token", "401"),
    ("something new", "invalid_token", "401"),
])
def test_rfc7628_s3_2_2_status_says_why_the_token_is_refused(
    token_error: str, status: str, xoauth2: str
) -> None:
    refused = Verdict(ok=False, reason="token rejected", token_error=token_error)
    server = OAuthBearerServer(scope="mail", openid_configuration="https://id.example/.wk")
    server.start(base64.b64decode(RFC7628_SMTP_IR))
    step = server.answer(refused)
    assert isinstance(step, Failure) and step.error_data is not None and not step.malformed
    assert json.loads(step.error_data) == {"status": status, "schemes": "bearer",
                                           "scope": "mail",
                                           "openid-configuration": "https://id.example/.wk"}
    x = XOAuth2Server(scope="mail")
    x.start(b"user=a@example.org\x01auth=Bearer abc\x01\x01")
    step = x.answer(refused)
    assert isinstance(step, Failure) and step.error_data is not None
    assert json.loads(step.error_data) == {"status": xoauth2, "schemes": "bearer", "scope": "mail"}


# --- XOAUTH2 ------------------------------------------------------------------------


def test_xoauth2_google_example_server() -> None:
    server = XOAuth2Server()
    step = server.start(base64.b64decode(XOAUTH2_GOOGLE_IR))
    assert step == NeedCredentials(
        VerifyToken("someuser@example.com", XOAUTH2_GOOGLE_TOKEN, mechanism="XOAUTH2")
    )
    assert server.answer(Verdict(ok=True, identity="someuser@example.com")) == Success(
        identity="someuser@example.com"
    )


def test_xoauth2_google_example_client() -> None:
    client = XOAuth2Client("someuser@example.com", XOAUTH2_GOOGLE_TOKEN)
    out = client.start()
    assert out is not None and base64.b64encode(out).decode() == XOAUTH2_GOOGLE_IR


def test_xoauth2_failure_flow_error_json_then_empty_response() -> None:
    server = XOAuth2Server(scope="https://mail.example/")
    server.start(base64.b64decode(XOAUTH2_GOOGLE_IR))
    step = server.answer(Verdict(ok=False, reason="bad signature"))
    assert isinstance(step, Failure) and step.error_data is not None
    assert json.loads(step.error_data) == {
        "status": "401",
        "schemes": "bearer",
        "scope": "https://mail.example/",
    }
    assert (step.reason, step.username) == ("bad signature", "someuser@example.com")


XOAUTH2_FAILURES = [
    ("no user", b"auth=Bearer abc\x01\x01"),
    ("no auth", b"user=u\x01\x01"),
    ("empty token", b"user=u\x01auth=\x01\x01"),
    ("single terminator", b"user=u\x01auth=Bearer abc\x01"),
    ("no terminator", b"user=u\x01auth=Bearer abc"),
    ("empty user", b"user=\x01auth=Bearer abc\x01\x01"),
    ("not bearer", b"user=u\x01auth=Basic abc\x01\x01"),
    ("duplicate user", b"user=u\x01user=v\x01auth=Bearer abc\x01\x01"),
    ("empty", b""),
]


@pytest.mark.parametrize(("why", "message"), XOAUTH2_FAILURES)
def test_xoauth2_negative_cases(why: str, message: bytes) -> None:
    step = XOAuth2Server().start(message)
    assert isinstance(step, Failure) and step.malformed, why
    assert step.error_data is not None, why
    assert json.loads(step.error_data) == {"status": "400", "schemes": "bearer"}, why


def test_xoauth2_unknown_fields_ignored() -> None:
    req = parse_xoauth2(b"user=u\x01foo=bar\x01auth=Bearer abc\x01\x01")
    assert (req.username, req.token) == ("u", "abc")


def test_xoauth2_user_may_be_an_internationalised_address() -> None:
    """An SMTPUTF8 account (RFC 6531) logs in with XOAUTH2 as with OAUTHBEARER,
    whose authzid is UTF-8 already; controls in it stay refused."""
    req = parse_xoauth2("user=jos\u00e9@b\u00fccher.example\x01auth=Bearer abc\x01\x01".encode())
    assert (req.username, req.token) == ("jos\u00e9@b\u00fccher.example", "abc")
    step = XOAuth2Server().start(encode_xoauth2("jos\u00e9@example.org", "abc"))
    assert isinstance(step, NeedCredentials)
    assert step.query == VerifyToken("jos\u00e9@example.org", "abc", mechanism="XOAUTH2")
    for bad in ("a\u0085b@example.org", "a\tb@example.org", "a\u2028b@example.org", ""):
        with pytest.raises(OAuthSyntaxError):
            parse_xoauth2(f"user={bad}\x01auth=Bearer abc\x01\x01".encode())
    with pytest.raises(OAuthSyntaxError):  # other values stay printable ASCII
        parse_xoauth2("user=u@example.org\x01auth=Bearer abc\x01x=\u00e9\x01\x01".encode())


# --- clients --------------------------------------------------------------------------


def test_rfc7628_s3_2_3_client_answers_error_with_kvsep() -> None:
    client = OAuthBearerClient("u", "abc")
    client.start()
    assert client.step(b'{"status":"invalid_token"}') == b"\x01"
    assert client.error == {"status": "invalid_token"}
    assert client.done
    with pytest.raises(ClientAuthError):
        client.step(b"{}")


def test_xoauth2_client_answers_error_with_empty_response() -> None:
    client = XOAuth2Client("u", "abc")
    client.start()
    # Google's example error, base64-decoded (with its trailing LF).
    google = base64.b64decode(
        "eyJzdGF0dXMiOiI0MDEiLCJzY2hlbWVzIjoiYmVhcmVyIG1hYyIsInNjb3BlIjoiaHR0cHM6Ly9tYWlsLmdvb2dsZS5jb20vIn0K"
    )
    assert client.step(google) == b""
    assert client.error is not None and client.error["status"] == "401"


def test_client_refuses_non_json_challenge() -> None:
    client = OAuthBearerClient("u", "abc")
    client.start()
    with pytest.raises(ClientAuthError):
        client.step(b"not json")
    client2 = XOAuth2Client("u", "abc")
    client2.start()
    with pytest.raises(ClientAuthError):
        client2.step(b"[1]")


def test_client_without_initial_response_answers_empty_challenge() -> None:
    client = OAuthBearerClient("u", "abc")
    assert client.step(b"") == b"n,a=u,\x01auth=Bearer abc\x01\x01"


@pytest.mark.parametrize("token", ["", "a b", "a\x01b", "tok$"])
def test_client_refuses_bad_tokens(token: str) -> None:
    with pytest.raises(OAuthSyntaxError):
        encode_oauthbearer("u", token)
    with pytest.raises(OAuthSyntaxError):
        XOAuth2Client("u", token)


def test_client_refuses_kvsep_in_user() -> None:
    with pytest.raises(OAuthSyntaxError):
        OAuthBearerClient("u\x01", "abc")
    with pytest.raises(OAuthSyntaxError):
        XOAuth2Client("u\x01", "abc")


@pytest.mark.parametrize("name", ["OAUTHBEARER", "XOAUTH2"])
def test_registry_round_trip(name: str) -> None:
    server = create_server_mechanism(name, channel_binding=ChannelBinding(), oauth_scope="mail")
    client = create_client_mechanism(name, username="user@example.com", token="abc.def")
    step = server.start(client.start())
    assert step == NeedCredentials(VerifyToken("user@example.com", "abc.def", mechanism=name))
    step = server.answer(Verdict(ok=False))
    assert isinstance(step, Failure) and step.error_data is not None and not step.malformed
    assert json.loads(step.error_data)["scope"] == "mail"
    # The client answers the JSON with its dummy response (0x01 or empty).
    assert client.step(step.error_data) in (b"\x01", b"")
