"""SCRAM (RFC 5802, RFC 7677): RFC vectors, scramp interop, channel binding, attacks."""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass

import pytest
import scramp  # type: ignore[import-untyped]

from smtpgate.sasl.base import (
    Challenge,
    ChannelBinding,
    ClientAuthError,
    ConfirmIdentity,
    CramMd5Secret,
    Failure,
    LookupScram,
    MechanismUsageError,
    NeedCredentials,
    NotFound,
    ProofArrived,
    ScramCredentials,
    ServerMechanism,
    Step,
    Success,
    Verdict,
)
from smtpgate.sasl.oauth import OAuthSyntaxError, parse_oauthbearer
from smtpgate.sasl.registry import create_client_mechanism, create_server_mechanism
from smtpgate.sasl.scram import (
    ScramClient,
    ScramServer,
    ScramSha1PlusServer,
    ScramSha1Server,
    ScramSha256PlusServer,
    ScramSha256Server,
    escape_saslname,
    scram_credentials_from_password,
    unescape_saslname,
)

# --- RFC vectors -----------------------------------------------------------------


@dataclass(frozen=True)
class Vector:
    hash_name: str
    server_cls: type[ScramServer]
    salt_b64: str
    client_nonce: str
    server_nonce: str
    client_first: bytes
    server_first: bytes
    client_final: bytes
    server_final: bytes
    stored_key_hex: str
    server_key_hex: str


RFC_VECTORS = [
    # RFC 5802 §5: SCRAM-SHA-1, user "user", password "pencil".
    Vector(
        hash_name="sha1",
        server_cls=ScramSha1Server,
        salt_b64="QSXCR+Q6sek8bf92",
        client_nonce="fyko+d2lbbFgONRv9qkxdawL",
        server_nonce="3rfcNHYJY1ZVvWVs7j",
        client_first=b"n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL",
        server_first=b"r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096",
        client_final=(
            b"c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts="
        ),
        server_final=b"v=rmF9pqV8S7suAoZWja4dJRkFsKQ=",
        stored_key_hex="e9d94660c39d65c38fbad91c358f14da0eef2bd6",
        server_key_hex="0fe09258b3ac852ba502cc62ba903eaacdbf7d31",
    ),
    # RFC 7677 §3: SCRAM-SHA-256, user "user", password "pencil".
    Vector(
        hash_name="sha256",
        server_cls=ScramSha256Server,
        salt_b64="W22ZaJ0SNY7soEsUEjb6gQ==",
        client_nonce="rOprNGfwEbeRWgbNEkqO",
        server_nonce="%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
        client_first=b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO",
        server_first=(
            b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
            b"s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
        ),
        client_final=(
            b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
            b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        ),
        server_final=b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=",
        stored_key_hex="586e5df283e6dceb5c3e791d8b8528ec191e664045ce971792e2e6b5bb13e2a6",
        server_key_hex="c1f3cbc1c13a9d35a14c0990eed97629ea225863e566a4314ab99f3f00e5d9d5",
    ),
]
VECTOR_IDS = ["rfc5802_s5_sha1", "rfc7677_s3_sha256"]


def _creds(v: Vector) -> ScramCredentials:
    return scram_credentials_from_password(
        "pencil", v.hash_name, 4096, base64.b64decode(v.salt_b64)
    )


@pytest.mark.parametrize("v", RFC_VECTORS, ids=VECTOR_IDS)
def test_rfc_vector_stored_keys(v: Vector) -> None:
    creds = _creds(v)
    assert creds.stored_key.hex() == v.stored_key_hex
    assert creds.server_key.hex() == v.server_key_hex
    assert creds.iterations == 4096 and creds.salt == base64.b64decode(v.salt_b64)


@pytest.mark.parametrize("v", RFC_VECTORS, ids=VECTOR_IDS)
def test_rfc_vector_server(v: Vector) -> None:
    server = v.server_cls(nonce_factory=lambda: v.server_nonce)
    assert server.start(v.client_first) == NeedCredentials(
        LookupScram("user", v.hash_name, server.name)
    )
    assert server.answer(_creds(v)) == Challenge(v.server_first)
    assert server.step(v.client_final) == NeedCredentials(ProofArrived("user", server.name))
    assert server.answer(Verdict(ok=True)) == NeedCredentials(ConfirmIdentity("user", server.name))
    assert server.answer(Verdict(ok=True, identity="user")) == Success(
        identity="user", final_data=v.server_final
    )


@pytest.mark.parametrize("v", RFC_VECTORS, ids=VECTOR_IDS)
def test_rfc_vector_client(v: Vector) -> None:
    client = ScramClient(v.hash_name, "user", "pencil", None, False, None, v.client_nonce)
    assert client.name == v.server_cls.name
    assert client.start() == v.client_first
    assert client.step(v.server_first) == v.client_final
    assert not client.done
    assert client.step(v.server_final) == b""
    assert client.done


@pytest.mark.parametrize("v", RFC_VECTORS, ids=VECTOR_IDS)
def test_rfc_vector_server_without_initial_response(v: Vector) -> None:
    server = v.server_cls(nonce_factory=lambda: v.server_nonce)
    assert server.start(None) == Challenge(b"")
    assert isinstance(server.step(v.client_first), NeedCredentials)


def test_rfc7677_smtp_transcript_base64() -> None:
    # Protocol digest §2.5: the SCRAM-SHA-256 exchange as base64 SMTP lines.
    v = RFC_VECTORS[1]
    assert base64.b64encode(v.client_first) == b"biwsbj11c2VyLHI9ck9wck5HZndFYmVSV2diTkVrcU8="
    assert base64.b64encode(v.server_final) == (
        b"dj02cnJpVFJCaTIzV3BSUi93dHVwK21NaFVaVW4vZEI1bkxUSlJzamw5NUc0PQ=="
    )


# --- helpers for driving exchanges ------------------------------------------------


def judged(server: ServerMechanism, step: Step) -> Step:
    """``step``, or past it if it is the ``ProofArrived`` query (answered: go on)."""
    if isinstance(step, NeedCredentials) and isinstance(step.query, ProofArrived):
        return server.answer(Verdict(ok=True))
    return step


def run_exchange(
    server: ServerMechanism,
    client: ScramClient,
    creds: ScramCredentials | NotFound,
    verdict: Verdict | None = None,
    first: bytes | None = None,
) -> Step:
    """Drive our client against our server until the server ends; return the end step.

    ``first``: the client-first message if the test already called ``client.start()``.
    """
    step = server.start(first if first is not None else client.start())
    while True:
        if isinstance(step, NeedCredentials):
            if isinstance(step.query, LookupScram):
                step = server.answer(creds)
            elif isinstance(step.query, ProofArrived):
                step = server.answer(Verdict(ok=True))
            else:
                step = server.answer(verdict or Verdict(ok=True, identity=step.query.username))
        elif isinstance(step, Challenge):
            step = server.step(client.step(step.data))
        else:
            return step


CB_A = ChannelBinding(
    {
        "tls-unique": b"\x01" * 12,
        "tls-server-end-point": b"\x02" * 32,
        "tls-exporter": b"\x03" * 32,
    }
)
CB_B = ChannelBinding(
    {
        "tls-unique": b"\x11" * 12,
        "tls-server-end-point": b"\x12" * 32,
        "tls-exporter": b"\x13" * 32,
    }
)

ALL_SERVERS = [ScramSha1Server, ScramSha1PlusServer, ScramSha256Server, ScramSha256PlusServer]


@pytest.mark.parametrize("cls", ALL_SERVERS, ids=lambda c: c.name)
def test_own_client_against_own_server(cls: type[ScramServer]) -> None:
    creds = scram_credentials_from_password("pencil", cls.hash_name, 4096)
    server = cls(channel_binding=CB_A)
    client = ScramClient(
        cls.hash_name, "user", "pencil", CB_A if cls.plus else None, cls.plus, None
    )
    end = run_exchange(server, client, creds)
    assert isinstance(end, Success) and end.final_data is not None
    assert client.step(end.final_data) == b"" and client.done


@pytest.mark.parametrize("cb_type", ["tls-exporter", "tls-server-end-point", "tls-unique"])
def test_rfc5802_s6_plus_each_binding_type(cb_type: str) -> None:
    creds = scram_credentials_from_password("pencil", "sha256", 4096)
    server = ScramSha256PlusServer(channel_binding=CB_A)
    client = ScramClient("sha256", "user", "pencil", CB_A, True, cb_type)
    first = client.start()
    assert first is not None and first.startswith(f"p={cb_type},,".encode())
    end = run_exchange(server, client, creds, first=first)
    assert isinstance(end, Success)


def test_rfc9266_client_prefers_tls_exporter() -> None:
    client = ScramClient("sha256", "user", "pencil", CB_A, True, None)
    first = client.start()
    assert first is not None and first.startswith(b"p=tls-exporter,,")


def test_rfc5802_s6_client_sends_y_when_it_could_bind() -> None:
    client = ScramClient("sha256", "user", "pencil", CB_A, False, None)
    first = client.start()
    assert first is not None and first.startswith(b"y,,")


def test_rfc5802_s5_1_authzid_equal_to_user_is_accepted() -> None:
    creds = scram_credentials_from_password("pencil", "sha256", 4096)
    client = ScramClient("sha256", "user", "pencil", authzid="user")
    first = client.start()
    assert first is not None and first.startswith(b"n,a=user,")
    end = run_exchange(ScramSha256Server(), client, creds, first=first)
    assert isinstance(end, Success)


def test_rfc5802_s5_1_authzid_goes_to_the_auth_service() -> None:
    """Whether ``a=`` names the user is the auth service's to say at ConfirmIdentity
    (``Alice@Example.org`` is ``alice@example.org``); its refusal is other-error."""
    creds = scram_credentials_from_password("pencil", "sha256", 4096)
    server = ScramSha256Server()
    client = ScramClient("sha256", "user", "pencil", authzid="admin")
    step = server.start(client.start())
    assert step == NeedCredentials(LookupScram("user", "sha256", "SCRAM-SHA-256"))
    step = server.answer(creds)
    assert isinstance(step, Challenge)
    step = server.step(client.step(step.data))
    assert step == NeedCredentials(ProofArrived("user", "SCRAM-SHA-256"))
    step = server.answer(Verdict(ok=True))
    assert step == NeedCredentials(ConfirmIdentity("user", "SCRAM-SHA-256", "admin"))
    end = server.answer(Verdict(ok=False, reason="authorization identity differs from account"))
    assert isinstance(end, Failure) and end.error_data == b"e=other-error"


def test_rfc5802_s5_1_username_with_comma_and_equals_is_escaped() -> None:
    assert escape_saslname("a,b=c") == "a=2Cb=3Dc"
    assert unescape_saslname("a=2Cb=3Dc") == "a,b=c"
    assert unescape_saslname("a=2Db") is None
    assert unescape_saslname("=3D2C") == "=2C"
    assert unescape_saslname("=2C3D") == ",3D"


@pytest.mark.parametrize("text", ["==2C3D", "=3=2CD", "=2=3DC", "a=", "=", "=3d", "=2c"])
def test_rfc5802_s5_1_escape_hidden_inside_a_bad_one_is_refused(text: str) -> None:
    """An invalid "=" escape stays invalid when a valid one sits inside it: "==2C3D"
    is "=" then "=2C" then "3D", and "=3=2CD" starts with "=3=" (RFC 5802 §5.1:
    the server MUST fail the exchange)."""
    assert unescape_saslname(text) is None
    failure = _fail(ScramSha256Server().start(f"n,,n=w{text}x,r=abc".encode()))
    assert failure.error_data == b"e=invalid-username-encoding"
    failure = _fail(ScramSha256Server().start(f"n,a=w{text}x,n=user,r=abc".encode()))
    assert failure.error_data == b"e=invalid-encoding"
    # OAUTHBEARER's gs2 authzid (RFC 7628 §3.1) is read by the same function.
    with pytest.raises(OAuthSyntaxError):
        parse_oauthbearer(f"n,a=w{text}x,\x01auth=Bearer t\x01\x01".encode())
    creds = scram_credentials_from_password("pencil", "sha1", 4096)
    server = ScramSha1Server()
    client = ScramClient("sha1", "od,d=user", "pencil")
    step = server.start(client.start())
    assert step == NeedCredentials(LookupScram("od,d=user", "sha1", "SCRAM-SHA-1"))
    server.answer(creds)


def test_rfc5802_s2_2_password_is_saslprepped_on_both_sides() -> None:
    # I<SOFT HYPHEN>X and ROMAN NUMERAL NINE both prepare to "IX" (RFC 4013 §3).
    creds = scram_credentials_from_password("I\u00adX", "sha256", 4096)
    client = ScramClient("sha256", "user", "\u2168")
    assert isinstance(run_exchange(ScramSha256Server(), client, creds), Success)


# --- interop with scramp ------------------------------------------------------------

SCRAMP_CASES = [
    ("SCRAM-SHA-1", None),
    ("SCRAM-SHA-256", None),
    ("SCRAM-SHA-1-PLUS", "tls-unique"),
    ("SCRAM-SHA-256-PLUS", "tls-unique"),
    ("SCRAM-SHA-256-PLUS", "tls-server-end-point"),
]


@pytest.mark.parametrize(("mech", "cb_type"), SCRAMP_CASES)
def test_interop_our_client_against_scramp_server(mech: str, cb_type: str | None) -> None:
    m = scramp.ScramMechanism(mech)
    salt, stored_key, server_key, iterations = m.make_auth_info("pencil", iteration_count=4096)

    def auth_fn(username: str) -> tuple[bytes, bytes, bytes, int]:
        assert username == "user"
        return salt, stored_key, server_key, iterations

    cb_arg = (cb_type, CB_A.data[cb_type]) if cb_type else None
    server = m.make_server(auth_fn, channel_binding=cb_arg)
    hash_name = "sha1" if "SHA-1" in mech else "sha256"
    client = ScramClient(hash_name, "user", "pencil", CB_A, cb_type is not None, cb_type)
    assert client.name == mech
    first = client.start()
    assert first is not None
    server.set_client_first(first.decode())
    final = client.step(server.get_server_first().encode())
    server.set_client_final(final.decode())
    assert client.step(server.get_server_final().encode()) == b""
    assert client.done


@pytest.mark.parametrize(("mech", "cb_type"), SCRAMP_CASES)
def test_interop_scramp_client_against_our_server(mech: str, cb_type: str | None) -> None:
    hash_name = "sha1" if "SHA-1" in mech else "sha256"
    creds = scram_credentials_from_password("pencil", hash_name, 4096)
    cb_arg = (cb_type, CB_A.data[cb_type]) if cb_type else None
    client = scramp.ScramClient([mech], "user", "pencil", channel_binding=cb_arg)
    server = create_server_mechanism(mech, channel_binding=CB_A)
    step = server.start(client.get_client_first().encode())
    assert isinstance(step, NeedCredentials)
    step = server.answer(creds)
    assert isinstance(step, Challenge)
    client.set_server_first(step.data.decode())
    step = server.step(client.get_client_final().encode())
    assert step == NeedCredentials(ProofArrived("user", mech))
    step = server.answer(Verdict(ok=True))
    assert step == NeedCredentials(ConfirmIdentity("user", mech))
    step = server.answer(Verdict(ok=True, identity="user"))
    assert isinstance(step, Success) and step.final_data is not None
    client.set_server_final(step.final_data.decode())  # raises if v= is wrong


def test_interop_scramp_client_wrong_password_fails_at_proof() -> None:
    creds = scram_credentials_from_password("pencil", "sha256", 4096)
    client = scramp.ScramClient(["SCRAM-SHA-256"], "user", "wrong")
    server = ScramSha256Server()
    server.start(client.get_client_first().encode())
    step = server.answer(creds)
    assert isinstance(step, Challenge)
    client.set_server_first(step.data.decode())
    step = judged(server, server.step(client.get_client_final().encode()))
    assert isinstance(step, Failure) and step.error_data == b"e=invalid-proof"


# --- negative cases ----------------------------------------------------------------


def _fail(step: Step) -> Failure:
    assert isinstance(step, Failure), step
    return step


def test_rfc5802_s3_wrong_password_is_invalid_proof() -> None:
    creds = scram_credentials_from_password("pencil", "sha256", 4096)
    client = ScramClient("sha256", "user", "pencils")
    failure = _fail(run_exchange(ScramSha256Server(), client, creds))
    assert failure.error_data == b"e=invalid-proof"
    assert failure.username == "user" and not failure.temporary


def _to_client_final(server: ScramServer, client: ScramClient, creds: ScramCredentials) -> bytes:
    assert isinstance(server.start(client.start()), NeedCredentials)
    step = server.answer(creds)
    assert isinstance(step, Challenge)
    return client.step(step.data)


def test_rfc5802_s5_1_tampered_nonce_fails() -> None:
    creds = scram_credentials_from_password("pencil", "sha1", 4096)
    server = ScramSha1Server(nonce_factory=lambda: "servernonce")
    final = _to_client_final(server, ScramClient("sha1", "user", "pencil"), creds)
    tampered = final.replace(b"servernonce", b"servernoncf")
    failure = _fail(server.step(tampered))
    assert failure.error_data == b"e=other-error"


def test_rfc5802_s5_1_tampered_proof_fails() -> None:
    creds = scram_credentials_from_password("pencil", "sha1", 4096)
    server = ScramSha1Server()
    final = _to_client_final(server, ScramClient("sha1", "user", "pencil"), creds)
    head, proof = final.rsplit(b",p=", 1)
    raw = bytearray(base64.b64decode(proof))
    raw[0] ^= 1
    failure = _fail(judged(server, server.step(head + b",p=" + base64.b64encode(bytes(raw)))))
    assert failure.error_data == b"e=invalid-proof"


def test_rfc5802_s6_channel_binding_from_another_connection_fails() -> None:
    creds = scram_credentials_from_password("pencil", "sha256", 4096)
    server = ScramSha256PlusServer(channel_binding=CB_B)
    client = ScramClient("sha256", "user", "pencil", CB_A, True, "tls-exporter")
    failure = _fail(run_exchange(server, client, creds))
    assert failure.error_data == b"e=channel-bindings-dont-match"


def test_rfc5802_s6_y_flag_while_plus_advertised_is_downgrade() -> None:
    server = ScramSha256Server(channel_binding=CB_A, plus_advertised=True)
    failure = _fail(server.start(b"y,,n=user,r=abcdef"))
    assert failure.error_data == b"e=server-does-support-channel-binding"


def test_rfc5802_s6_y_flag_from_scramp_while_plus_advertised_is_downgrade() -> None:
    # scramp offered only the non-PLUS mechanism but able to bind sends "y".
    client = scramp.ScramClient(["SCRAM-SHA-256"], "user", "pencil", ("tls-unique", b"x" * 12))
    server = create_server_mechanism("SCRAM-SHA-256", channel_binding=CB_A, plus_advertised=True)
    failure = _fail(server.start(client.get_client_first().encode()))
    assert failure.error_data == b"e=server-does-support-channel-binding"


def test_rfc5802_s6_y_flag_without_plus_advertised_is_accepted() -> None:
    creds = scram_credentials_from_password("pencil", "sha256", 4096)
    server = ScramSha256Server(channel_binding=ChannelBinding(), plus_advertised=False)
    client = ScramClient("sha256", "user", "pencil", CB_A, False, None)
    assert isinstance(run_exchange(server, client, creds), Success)


def test_rfc5802_s6_plus_without_binding_data_fails() -> None:
    server = ScramSha256PlusServer(channel_binding=ChannelBinding())
    failure = _fail(server.start(b"p=tls-exporter,,n=user,r=abcdef"))
    assert failure.error_data == b"e=channel-binding-not-supported"


def test_rfc5802_s6_plus_with_unavailable_type_fails() -> None:
    server = ScramSha256PlusServer(channel_binding=ChannelBinding({"tls-exporter": b"x" * 32}))
    failure = _fail(server.start(b"p=tls-unique,,n=user,r=abcdef"))
    assert failure.error_data == b"e=unsupported-channel-binding-type"


@pytest.mark.parametrize("flag", [b"n", b"y"])
def test_rfc5802_s6_plus_mechanism_requires_p_flag(flag: bytes) -> None:
    server = ScramSha256PlusServer(channel_binding=CB_A)
    failure = _fail(server.start(flag + b",,n=user,r=abcdef"))
    assert failure.error_data is not None


def test_rfc5802_s6_p_flag_on_non_plus_mechanism_fails() -> None:
    server = ScramSha256Server(channel_binding=CB_A, plus_advertised=True)
    failure = _fail(server.start(b"p=tls-exporter,,n=user,r=abcdef"))
    assert failure.error_data == b"e=channel-binding-not-supported"


def test_rfc5802_s6_plus_client_final_without_binding_data_fails() -> None:
    # The client claims p=tls-exporter but puts only the gs2 header into c=.
    creds = scram_credentials_from_password("pencil", "sha256", 4096)
    server = ScramSha256PlusServer(channel_binding=CB_A, nonce_factory=lambda: "srv")
    assert isinstance(server.start(b"p=tls-exporter,,n=user,r=cli"), NeedCredentials)
    assert isinstance(server.answer(creds), Challenge)
    c = base64.b64encode(b"p=tls-exporter,,").decode()
    failure = _fail(server.step(f"c={c},r=clisrv,p={'A' * 43}=".encode()))
    assert failure.error_data == b"e=channel-bindings-dont-match"


# client-first messages that must fail: (description, message, expected e=)
CLIENT_FIRST_FAILURES = [
    ("m= extension", b"n,,m=ext,n=user,r=abc", b"e=extensions-not-supported"),
    ("bad = escape in name", b"n,,n=us=2Der,r=abc", b"e=invalid-username-encoding"),
    ("empty username", b"n,,n=,r=abc", b"e=invalid-username-encoding"),
    ("prohibited char in name", b"n,,n=us\x07er,r=abc", b"e=invalid-username-encoding"),
    ("no gs2 header", b"n=user,r=abc", b"e=invalid-encoding"),
    ("bad gs2 flag", b"x,,n=user,r=abc", b"e=invalid-encoding"),
    ("bad cb-name", b"p=tls_unique,,n=user,r=abc", b"e=invalid-encoding"),
    ("bad authzid attr", b"n,b=user,n=user,r=abc", b"e=invalid-encoding"),
    ("missing nonce", b"n,,n=user", b"e=invalid-encoding"),
    ("nonce before name", b"n,,r=abc,n=user", b"e=invalid-encoding"),
    ("comma-free empty nonce", b"n,,n=user,r=", b"e=invalid-encoding"),
    ("non-printable nonce", b"n,,n=user,r=a\x7fb", b"e=invalid-encoding"),
    ("bad extension", b"n,,n=user,r=abc,xx", b"e=invalid-encoding"),
    ("invalid UTF-8", b"n,,n=\xff,r=abc", b"e=invalid-encoding"),
    ("empty", b"", b"e=invalid-encoding"),
    ("too long", b"n,,n=" + b"u" * 5000 + b",r=abc", b"e=invalid-encoding"),
    ("control character in authzid", b"n,a=ad\x7fmin,n=user,r=abc", b"e=invalid-encoding"),
]


@pytest.mark.parametrize(("why", "message", "error"), CLIENT_FIRST_FAILURES)
def test_rfc5802_s7_client_first_negative_cases(why: str, message: bytes, error: bytes) -> None:
    failure = _fail(ScramSha256Server().start(message))
    assert failure.error_data == error, why


def test_rfc5802_s7_unknown_extension_is_ignored() -> None:
    step = ScramSha256Server().start(b"n,,n=user,r=abc,x=whatever")
    assert step == NeedCredentials(LookupScram("user", "sha256", "SCRAM-SHA-256"))


def test_rfc5802_s5_1_m_among_client_first_extensions_fails() -> None:
    # RFC 5802 §5.1 (m): its presence in a client message MUST make the
    # authentication fail, wherever it stands (until 2026-12 only a leading m= did).
    failure = _fail(ScramSha256Server().start(b"n,,n=user,r=abc,x=1,m=ext"))
    assert failure.error_data == b"e=extensions-not-supported"


def _final_with_extension(extension: str) -> tuple[ScramServer, bytes]:
    """A server past server-first, and a client-final carrying ``extension`` with
    the proof a client computes over it (right but for the extension)."""
    creds = scram_credentials_from_password("pencil", "sha256", 4096)
    server = ScramSha256Server(nonce_factory=lambda: "srv")
    client = ScramClient("sha256", "user", "pencil", nonce="abc")
    assert isinstance(server.start(client.start()), NeedCredentials)
    server_first = server.answer(creds)
    assert isinstance(server_first, Challenge)
    # Our client sends no extension: put one into the message before the proof and
    # prove over it as an extension-aware client would.
    c, r = client.step(server_first.data).decode().split(",p=")[0].split(",")
    without_proof = f"{c},{r},{extension}"
    auth_message = f"n=user,r=abc,{server_first.data.decode()},{without_proof}".encode()
    salted = hashlib.pbkdf2_hmac("sha256", b"pencil", creds.salt, 4096)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    signature = hmac.new(creds.stored_key, auth_message, "sha256").digest()
    proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
    return server, f"{without_proof},p={base64.b64encode(proof).decode()}".encode()


def test_rfc5802_s7_unknown_client_final_extension_is_ignored() -> None:
    server, final = _final_with_extension("x=whatever")
    step = judged(server, server.step(final))
    assert isinstance(step, NeedCredentials) and isinstance(step.query, ConfirmIdentity)


def test_rfc5802_s5_1_m_in_client_final_fails_even_with_a_good_proof() -> None:
    # Until 2026-12 an m= in the client-final was skipped as an unknown extension
    # and the login succeeded (seen over the wire: v= then 235).
    server, final = _final_with_extension("m=ext")
    failure = _fail(server.step(final))
    assert failure.error_data == b"e=extensions-not-supported"
    # The proof was never judged: a probe for the guard (the address), not a guess.
    assert failure.malformed


CLIENT_FINAL_FAILURES = [
    ("no proof", b"c=biws,r=abcsrv", b"e=invalid-encoding"),
    ("proof not base64", b"c=biws,r=abcsrv,p=!!!!", b"e=invalid-encoding"),
    ("c= not base64", b"c=b!ws,r=abcsrv,p=" + b"A" * 43 + b"=", b"e=invalid-encoding"),
    ("missing c=", b"r=abcsrv,p=" + b"A" * 43 + b"=", b"e=invalid-encoding"),
    (
        "wrong gs2 header in c=",
        b"c=eSws,r=abcsrv,p=" + b"A" * 43 + b"=",
        b"e=channel-bindings-dont-match",
    ),
    ("short proof", b"c=biws,r=abcsrv,p=AAAA", b"e=invalid-proof"),
    ("nonce without server part", b"c=biws,r=abc,p=" + b"A" * 43 + b"=", b"e=other-error"),
    ("invalid UTF-8", b"c=biws,r=\xff,p=AAAA", b"e=invalid-encoding"),
]


@pytest.mark.parametrize(("why", "message", "error"), CLIENT_FINAL_FAILURES)
def test_rfc5802_s7_client_final_negative_cases(why: str, message: bytes, error: bytes) -> None:
    server = ScramSha256Server(nonce_factory=lambda: "srv")
    server.start(b"n,,n=user,r=abc")
    server.answer(scram_credentials_from_password("pencil", "sha256", 4096))
    failure = _fail(server.step(message))
    assert failure.error_data == error, why


# --- unknown users, backend faults, policy ----------------------------------------


def _server_first_for(server: ScramServer, message: bytes, answer: NotFound) -> bytes:
    assert isinstance(server.start(message), NeedCredentials)
    step = server.answer(answer)
    assert isinstance(step, Challenge)
    return step.data


def test_digest_s4_4_unknown_user_gets_stable_decoy_salt() -> None:
    secret = b"k" * 32
    first = _server_first_for(
        ScramSha256Server(decoy_secret=secret, nonce_factory=lambda: "s"),
        b"n,,n=ghost,r=abc",
        NotFound(),
    )
    again = _server_first_for(
        ScramSha256Server(decoy_secret=secret, nonce_factory=lambda: "s"),
        b"n,,n=ghost,r=abc",
        NotFound(),
    )
    other = _server_first_for(
        ScramSha256Server(decoy_secret=secret, nonce_factory=lambda: "s"),
        b"n,,n=phantom,r=abc",
        NotFound(),
    )
    assert first == again
    assert first != other
    assert first.endswith(b",i=4096")


def test_digest_s4_4_unknown_user_fails_at_proof_like_wrong_password() -> None:
    client = ScramClient("sha256", "ghost", "pencil")
    failure = _fail(run_exchange(ScramSha256Server(), client, NotFound()))
    assert failure.error_data == b"e=invalid-proof"
    assert failure.username == "ghost"


def test_decoy_iterations_follow_configuration() -> None:
    server = create_server_mechanism(
        "SCRAM-SHA-1", channel_binding=ChannelBinding(), decoy_iterations=10000
    )
    assert isinstance(server, ScramServer)
    data = _server_first_for(server, b"n,,n=ghost,r=abc", NotFound())
    assert data.endswith(b",i=10000")


def test_rfc4954_s6_lookup_backend_fault_is_temporary() -> None:
    server = ScramSha256Server()
    server.start(b"n,,n=user,r=abc")
    failure = _fail(server.answer(NotFound(reason="db down", temporary=True)))
    assert failure.temporary


def test_corrupt_stored_credentials_are_temporary_failure() -> None:
    server = ScramSha256Server()
    server.start(b"n,,n=user,r=abc")
    bad = ScramCredentials(salt=b"s", iterations=4096, stored_key=b"short", server_key=b"x")
    assert _fail(server.answer(bad)).temporary


def test_wrong_answer_type_is_temporary_failure() -> None:
    server = ScramSha256Server()
    server.start(b"n,,n=user,r=abc")
    assert _fail(server.answer(CramMd5Secret(b"\0" * 16, b"\0" * 16))).temporary


def test_sha1_credentials_refused_by_sha256_server() -> None:
    server = ScramSha256Server()
    server.start(b"n,,n=user,r=abc")
    creds = scram_credentials_from_password("pencil", "sha1", 4096)
    assert _fail(server.answer(creds)).temporary


def test_confirm_identity_refused_sends_other_error() -> None:
    creds = scram_credentials_from_password("pencil", "sha1", 4096)
    client = ScramClient("sha1", "user", "pencil")
    failure = _fail(
        run_exchange(ScramSha1Server(), client, creds, Verdict(ok=False, reason="locked"))
    )
    assert failure.reason == "locked" and failure.error_data == b"e=other-error"


def test_server_call_order_is_enforced() -> None:
    server = ScramSha256Server()
    server.start(b"n,,n=user,r=abc")
    with pytest.raises(MechanismUsageError, match="expected answer"):
        server.step(b"c=biws")


def test_server_rejects_bad_nonce_factory() -> None:
    server = ScramSha256Server(nonce_factory=lambda: "has,comma")
    server.start(b"n,,n=user,r=abc")
    with pytest.raises(ValueError):
        server.answer(scram_credentials_from_password("pencil", "sha256", 4096))


# --- client-side checks ---------------------------------------------------------------


def test_rfc5802_s5_client_rejects_wrong_server_signature() -> None:
    v = RFC_VECTORS[0]
    client = ScramClient("sha1", "user", "pencil", nonce=v.client_nonce)
    client.start()
    client.step(v.server_first)
    with pytest.raises(ClientAuthError, match="signature"):
        client.step(b"v=" + base64.b64encode(b"\0" * 20))
    assert not client.done


def test_client_reports_server_error() -> None:
    client = ScramClient("sha1", "user", "pencil", nonce="abc")
    client.start()
    client.step(b"r=abcdef,s=QSXCR+Q6sek8bf92,i=4096")
    with pytest.raises(ClientAuthError, match="invalid-proof"):
        client.step(b"e=invalid-proof")


SERVER_FIRST_FAILURES = [
    ("nonce does not extend ours", b"r=xyzdef,s=QSXCR+Q6sek8bf92,i=4096"),
    ("nonce not extended at all", b"r=abc,s=QSXCR+Q6sek8bf92,i=4096"),
    ("bad salt", b"r=abcdef,s=!!,i=4096"),
    ("empty salt", b"r=abcdef,s=,i=4096"),
    ("bad iteration count", b"r=abcdef,s=QSXCR+Q6sek8bf92,i=x"),
    ("zero iteration count", b"r=abcdef,s=QSXCR+Q6sek8bf92,i=0"),
    ("huge iteration count", b"r=abcdef,s=QSXCR+Q6sek8bf92,i=99999999"),
    ("mandatory extension", b"m=x,r=abcdef,s=QSXCR+Q6sek8bf92,i=4096"),
    ("server error", b"e=other-error"),
    ("missing attributes", b"r=abcdef"),
    ("not UTF-8", b"\xff"),
]


@pytest.mark.parametrize(("why", "message"), SERVER_FIRST_FAILURES)
def test_client_rejects_bad_server_first(why: str, message: bytes) -> None:
    client = ScramClient("sha1", "user", "pencil", nonce="abc")
    client.start()
    with pytest.raises(ClientAuthError):
        client.step(message)


def test_client_refuses_plus_without_binding_data() -> None:
    with pytest.raises(ValueError):
        ScramClient("sha256", "user", "pencil", ChannelBinding(), True, None)
    with pytest.raises(ValueError):
        ScramClient("sha256", "user", "pencil", CB_A, True, "tls-bogus")


def test_client_refuses_unknown_hash_and_bad_password() -> None:
    with pytest.raises(ValueError):
        ScramClient("md5", "user", "pencil")
    with pytest.raises(ValueError):
        ScramClient("sha1", "user", "\u0007")
    with pytest.raises(ValueError):
        ScramClient("sha1", "user", "\u00ad")


def test_client_call_order() -> None:
    client = ScramClient("sha1", "user", "pencil")
    with pytest.raises(MechanismUsageError):
        client.step(b"r=x")
    client.start()
    with pytest.raises(MechanismUsageError):
        client.start()


def test_registry_builds_scram_clients() -> None:
    client = create_client_mechanism(
        "scram-sha-256-plus", username="user", password="pencil", channel_binding=CB_A
    )
    assert client.name == "SCRAM-SHA-256-PLUS"
    assert create_client_mechanism("SCRAM-SHA-1", username="u", password="p").name == "SCRAM-SHA-1"


# --- stored credentials -----------------------------------------------------------------


def test_scram_credentials_random_salt() -> None:
    a = scram_credentials_from_password("pencil", "sha256", 4096)
    b = scram_credentials_from_password("pencil", "sha256", 4096)
    assert len(a.salt) == 16 and a.salt != b.salt and a.stored_key != b.stored_key


@pytest.mark.parametrize(
    ("password", "hash_name", "iterations", "salt"),
    [
        ("pencil", "md5", 4096, None),
        ("pencil", "sha256", 0, None),
        ("pencil", "sha256", 4096, b""),
        ("\u0007", "sha256", 4096, None),
        ("\u00ad", "sha256", 4096, None),
    ],
)
def test_scram_credentials_refuse_bad_input(
    password: str, hash_name: str, iterations: int, salt: bytes | None
) -> None:
    with pytest.raises(ValueError):
        scram_credentials_from_password(password, hash_name, iterations, salt)


def test_line_and_paragraph_separators_in_a_name_are_refused() -> None:
    """U+2028 and U+2029 end a line for many log readers: refused in the user name
    (SASLprep prohibits them, RFC 3454 C.2.2) and in the authzid like controls."""
    for first in ("n,,n=a\u2028b,r=abc", "n,,n=a\u2029b,r=abc", "n,a=a\u2028b,n=user,r=abc"):
        failure = _fail(ScramSha256Server().start(first.encode()))
        assert failure.malformed, first


@pytest.mark.parametrize("password", ["pencil", "wrong"])
def test_a_proof_the_login_path_refuses_is_not_judged(password: str) -> None:
    """``ProofArrived`` answered with a temporary verdict (the guard's re-check found
    the account locked): the same e=other-error and temporary failure whether the
    proof was right or not, as a refused look-up ends."""
    creds = scram_credentials_from_password("pencil", "sha256", 4096)
    server = ScramSha256Server()
    client = ScramClient("sha256", "user", password)
    assert isinstance(server.start(client.start()), NeedCredentials)
    step = server.answer(creds)
    assert isinstance(step, Challenge)
    step = server.step(client.step(step.data))
    assert step == NeedCredentials(ProofArrived("user", "SCRAM-SHA-256"))
    end = server.answer(Verdict(ok=False, reason="account locked", temporary=True))
    assert end == Failure(reason="account locked", temporary=True, username="user",
                          error_data=b"e=other-error")
