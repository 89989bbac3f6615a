"""CRAM-MD5 (RFC 2195) from stored HMAC-MD5 states."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from smtpgate.sasl.base import (
    Challenge,
    ChannelBinding,
    ClientAuthError,
    ConfirmIdentity,
    CramMd5Secret,
    Failure,
    LookupCramMd5,
    NeedCredentials,
    NotFound,
    ScramCredentials,
    Success,
    Verdict,
)
from smtpgate.sasl.cram_md5 import (
    _IV,
    CramMd5Client,
    CramMd5Server,
    _compress,
    _md5_finish,
    cram_md5_secret_from_password,
    hmac_md5_from_secret,
)
from smtpgate.sasl.registry import create_client_mechanism, create_server_mechanism

# RFC 2195 §2 example.
RFC2195_CHALLENGE = b"<1896.697170952@postoffice.reston.mci.net>"
# base64 as on the wire: PDE4OTYuNjk3MTcwOTUyQHBvc3RvZmZpY2UucmVzdG9uLm1jaS5uZXQ+
RFC2195_RESPONSE = b"tim b913a602c7eda7a495b4e6e7334d3890"
# dGltIGI5MTNhNjAyYzdlZGE3YTQ5NWI0ZTZlNzMzNGQzODkw = "tim b913a6...3890"
RFC2195_PASSWORD = "tanstaaftanstaaf"


def _server() -> CramMd5Server:
    return CramMd5Server(
        hostname="postoffice.reston.mci.net", nonce_factory=lambda: "1896.697170952"
    )


def test_rfc2195_s2_example_server() -> None:
    server = _server()
    step = server.start(None)
    assert step == Challenge(RFC2195_CHALLENGE)
    assert base64.b64encode(RFC2195_CHALLENGE) == (
        b"PDE4OTYuNjk3MTcwOTUyQHBvc3RvZmZpY2UucmVzdG9uLm1jaS5uZXQ+"
    )
    response = base64.b64decode("dGltIGI5MTNhNjAyYzdlZGE3YTQ5NWI0ZTZlNzMzNGQzODkw")
    assert response == RFC2195_RESPONSE
    assert server.step(response) == NeedCredentials(LookupCramMd5("tim", "CRAM-MD5"))
    step = server.answer(cram_md5_secret_from_password(RFC2195_PASSWORD))
    assert step == NeedCredentials(ConfirmIdentity("tim", "CRAM-MD5"))
    assert server.answer(Verdict(ok=True, identity="tim")) == Success(identity="tim")


def test_rfc2195_s2_example_client() -> None:
    client = CramMd5Client("tim", RFC2195_PASSWORD)
    assert client.start() is None
    assert client.step(RFC2195_CHALLENGE) == RFC2195_RESPONSE
    assert client.done
    with pytest.raises(ClientAuthError):
        client.step(RFC2195_CHALLENGE)


@pytest.mark.parametrize(
    "password",
    ["tanstaaftanstaaf", "", "pencil", "ü" * 10, "x" * 64, "y" * 65, "z" * 200],
)
@pytest.mark.parametrize("message", [RFC2195_CHALLENGE, b"", b"a" * 55, b"b" * 56, b"c" * 200])
def test_rfc2104_hmac_from_states_equals_hmac_module(password: str, message: bytes) -> None:
    secret = cram_md5_secret_from_password(password)
    assert len(secret.inner) == 16 and len(secret.outer) == 16
    assert (
        hmac_md5_from_secret(secret, message)
        == hmac.new(password.encode(), message, "md5").digest()
    )


@pytest.mark.parametrize("length", [0, 1, 55, 56, 63, 64, 65, 119, 120, 1000])
def test_rfc1321_md5_matches_hashlib(length: int) -> None:
    data = bytes(range(256)) * 4
    assert _md5_finish(_IV, data[:length], 0) == hashlib.md5(data[:length]).digest()


def test_rfc1321_md5_continues_from_state() -> None:
    prefix, rest = b"p" * 64, b"the rest"
    state = _compress(_IV, prefix)
    assert _md5_finish(state, rest, 64) == hashlib.md5(prefix + rest).digest()


def test_rfc1321_test_suite_vectors() -> None:
    # RFC 1321 Appendix A.5.
    assert _md5_finish(_IV, b"", 0).hex() == "d41d8cd98f00b204e9800998ecf8427e"
    assert _md5_finish(_IV, b"abc", 0).hex() == "900150983cd24fb0d6963f7d28e17f72"
    assert _md5_finish(_IV, b"message digest", 0).hex() == "f96b697d7cb7938d525a2f31aaf161d0"


def test_rfc2195_wrong_password_fails() -> None:
    server = _server()
    server.start(None)
    server.step(RFC2195_RESPONSE)
    step = server.answer(cram_md5_secret_from_password("wrong"))
    assert isinstance(step, Failure) and step.username == "tim" and not step.temporary


def test_rfc2195_unknown_user_fails_like_wrong_password() -> None:
    server = _server()
    server.start(None)
    server.step(RFC2195_RESPONSE)
    step = server.answer(NotFound())
    assert isinstance(step, Failure) and not step.temporary and step.username == "tim"


def test_rfc4954_s6_lookup_backend_fault_is_temporary() -> None:
    server = _server()
    server.start(None)
    server.step(RFC2195_RESPONSE)
    step = server.answer(NotFound(reason="ldap down", temporary=True))
    assert isinstance(step, Failure) and step.temporary


def test_corrupt_secret_is_temporary() -> None:
    server = _server()
    server.start(None)
    server.step(RFC2195_RESPONSE)
    step = server.answer(CramMd5Secret(inner=b"x", outer=b"y"))
    assert isinstance(step, Failure) and step.temporary


def test_wrong_answer_type_is_temporary() -> None:
    server = _server()
    server.start(None)
    server.step(RFC2195_RESPONSE)
    step = server.answer(ScramCredentials(b"s", 1, b"k", b"k"))
    assert isinstance(step, Failure) and step.temporary


def test_confirm_identity_refused() -> None:
    server = _server()
    server.start(None)
    server.step(RFC2195_RESPONSE)
    server.answer(cram_md5_secret_from_password(RFC2195_PASSWORD))
    step = server.answer(Verdict(ok=False, reason="mechanism not allowed"))
    assert step == Failure(reason="mechanism not allowed", username="tim")


def test_rfc4954_s4_initial_response_on_server_first_mechanism_fails() -> None:
    assert CramMd5Server.server_first
    step = CramMd5Server().start(b"tim b913a602c7eda7a495b4e6e7334d3890")
    assert isinstance(step, Failure) and step.malformed


def test_uppercase_hex_digest_is_accepted() -> None:
    server = _server()
    server.start(None)
    assert isinstance(
        server.step(RFC2195_RESPONSE.upper().replace(b"TIM", b"tim")), NeedCredentials
    )


CRAM_FAILURES = [
    ("no space", b"timb913a602c7eda7a495b4e6e7334d3890"),
    ("short digest", b"tim b913a602c7eda7a495b4e6e7334d389"),
    ("long digest", b"tim b913a602c7eda7a495b4e6e7334d38900"),
    ("non-hex digest", b"tim g913a602c7eda7a495b4e6e7334d3890"),
    ("empty user", b" b913a602c7eda7a495b4e6e7334d3890"),
    ("control char in user", b"t\tim b913a602c7eda7a495b4e6e7334d3890"),
    ("invalid UTF-8", b"t\xffim b913a602c7eda7a495b4e6e7334d3890"),
    ("empty", b""),
    ("too long", b"u" * 2000 + b" b913a602c7eda7a495b4e6e7334d3890"),
]


@pytest.mark.parametrize(("why", "response"), CRAM_FAILURES)
def test_rfc2195_s2_malformed_responses(why: str, response: bytes) -> None:
    server = _server()
    server.start(None)
    step = server.step(response)
    assert isinstance(step, Failure) and step.malformed, why


def test_user_name_with_space_is_split_at_last_space() -> None:
    server = _server()
    server.start(None)
    digest = hmac.new(b"pw", RFC2195_CHALLENGE, "md5").hexdigest()
    assert server.step(f"tim smith {digest}".encode()) == NeedCredentials(
        LookupCramMd5("tim smith")
    )


def test_default_challenge_is_unique_and_uses_hostname() -> None:
    a = CramMd5Server(hostname="mx.example.org").start(None)
    b = CramMd5Server(hostname="mx.example.org").start(None)
    assert isinstance(a, Challenge) and isinstance(b, Challenge)
    assert a.data != b.data
    assert a.data.startswith(b"<") and a.data.endswith(b"@mx.example.org>")


def test_default_challenge_is_ten_digits_dot_ten_digits() -> None:
    """docs/mechanisms.md: R1 and R2 are ten random digits each. randbelow(10**10)
    unpadded gave fewer one time in ten (``<651984468.7179875765@localhost>``, seen
    on the wire), so a challenge's length said something of its numbers."""
    shapes = set()
    for _ in range(300):
        step = CramMd5Server(hostname="h").start(None)
        assert isinstance(step, Challenge)
        shapes.add(tuple(len(part) for part in step.data[1:-3].split(b".")))
    assert shapes == {(10, 10)}


def test_bad_nonce_factory_is_refused() -> None:
    with pytest.raises(ValueError):
        CramMd5Server(nonce_factory=lambda: "a>b").start(None)


def test_registry_cram_md5_round_trip() -> None:
    server = create_server_mechanism(
        "cram-md5",
        channel_binding=ChannelBinding(),
        hostname="h.example",
        nonce_factory=lambda: "1.2",
    )
    client = create_client_mechanism("CRAM-MD5", username="tim", password=RFC2195_PASSWORD)
    assert client.start() is None
    step = server.start(None)
    assert step == Challenge(b"<1.2@h.example>")
    step = server.step(client.step(step.data))
    assert step == NeedCredentials(LookupCramMd5("tim"))
    step = server.answer(cram_md5_secret_from_password(RFC2195_PASSWORD))
    assert isinstance(step, NeedCredentials)
    assert server.answer(Verdict(ok=True, identity="tim")) == Success(identity="tim")


def test_client_refuses_empty_challenge() -> None:
    with pytest.raises(ClientAuthError):
        CramMd5Client("tim", "pw").step(b"")
