"""The Dovecot auth protocol engine (frontdoor/dovecot.py), sans-IO.

Transcripts are the ones captured from Postfix 3.7 and Exim 4.96 in front of
Dovecot (shared peers-detail §4.3/§4.4), with our answers; every input is fed
whole and one byte at a time.
"""

from __future__ import annotations

import base64
from collections.abc import Callable

import pytest

from smtpgate.frontdoor.dovecot import (
    MAX_LINE,
    NEED_DATA,
    CredentialsNeeded,
    Disconnect,
    DovecotServer,
    DovecotSettings,
    Event,
    ExchangeEnded,
    RequestRefused,
)
from smtpgate.sasl import base as sasl
from smtpgate.sasl._common import NO_CHANNEL_BINDING
from smtpgate.sasl.exchange import AuthResult
from smtpgate.sasl.registry import create_server_mechanism, server_mechanism_names

USER, PASSWORD = "alice@test.local", "Alice-Pass-123"

# RFC 7677 §3: user "user", password "pencil", with the server nonce fixed.
V_NONCE = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
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
    salt=base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ=="),
    iterations=4096,
    stored_key=bytes.fromhex("586e5df283e6dceb5c3e791d8b8528ec191e664045ce971792e2e6b5bb13e2a6"),
    server_key=bytes.fromhex("c1f3cbc1c13a9d35a14c0990eed97629ea225863e566a4314ab99f3f00e5d9d5"),
)


def b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def engine(max_pending: int = 32, mechanisms: tuple[str, ...] | None = None) -> DovecotServer:
    def factory(name: str) -> sasl.ServerMechanism:
        return create_server_mechanism(name, channel_binding=NO_CHANNEL_BINDING,
                                       nonce_factory=lambda: V_NONCE)

    names = mechanisms or ("SCRAM-SHA-256", "SCRAM-SHA-1", "OAUTHBEARER", "PLAIN", "LOGIN",
                           "CRAM-MD5")
    return DovecotServer(DovecotSettings(names, factory, "100", "7", "0" * 32,
                                         max_pending=max_pending))


def resolve(query: sasl.CredentialQuery) -> sasl.CredentialAnswer:
    if isinstance(query, sasl.VerifyPassword):
        ok = (query.username, query.password) == (USER, PASSWORD)
        return sasl.Verdict(ok=ok, identity=query.username if ok else "",
                            reason="" if ok else "bad password")
    if isinstance(query, sasl.LookupScram):
        return V_CREDS if query.username == "user" else sasl.NotFound()
    if isinstance(query, sasl.ConfirmIdentity):
        return sasl.Verdict(ok=True, identity=query.username)
    if isinstance(query, sasl.ProofArrived):
        return sasl.Verdict(ok=True)
    if isinstance(query, sasl.VerifyToken):
        return sasl.Verdict(ok=False, reason="bad token")
    raise AssertionError(query)


def plain(user: str, password: str) -> str:
    return b64(f"\0{user}\0{password}")


GOOD = plain(USER, PASSWORD)
Events = list[Event]


def feed(
    eng: DovecotServer, data: bytes, *, bytewise: bool = False,
    answer: Callable[[sasl.CredentialQuery], sasl.CredentialAnswer | None] = resolve,
    result: Callable[[ExchangeEnded], AuthResult] = lambda ev: ev.outcome.result,
) -> tuple[str, Events]:
    """Feed ``data``; answer queries with ``answer`` (None: leave it pending) and
    finish each ended exchange with ``result``. The lines written, and the events."""
    chunks = [data[i : i + 1] for i in range(len(data))] if bytewise else [data]
    out, events = b"", []
    for chunk in chunks:
        eng.receive_data(chunk)
        while (ev := eng.next_event()) is not NEED_DATA:
            events.append(ev)
            if isinstance(ev, CredentialsNeeded):
                a = answer(ev.query)
                if a is not None:
                    eng.answer(ev.request.id, a)
            elif isinstance(ev, ExchangeEnded) and ev.answered:
                o = ev.outcome
                eng.finish(ev.request.id, result(ev), o.identity or o.username)
        out += eng.data_to_send()
    return out.decode(), events


def lines(*items: str) -> str:
    return "".join(f"{x}\n" for x in items).replace("<TAB>", "\t")


HELLO_POSTFIX = lines("VERSION<TAB>1<TAB>0", "CPID<TAB>25356")
PF = "service=smtp<TAB>nologin<TAB>lip=127.0.0.1<TAB>rip=127.0.0.1<TAB>secured"


def test_handshake_lists_mechanisms_before_spid_with_dovecot_flags_and_no_plus() -> None:
    all_names = tuple(server_mechanism_names())
    assert engine(mechanisms=all_names).handshake().decode() == lines(
        "VERSION<TAB>1<TAB>2",
        "MECH<TAB>SCRAM-SHA-256<TAB>mutual-auth",
        "MECH<TAB>SCRAM-SHA-1<TAB>mutual-auth",
        "MECH<TAB>OAUTHBEARER<TAB>plaintext",
        "MECH<TAB>XOAUTH2<TAB>plaintext",
        "MECH<TAB>PLAIN<TAB>plaintext",
        "MECH<TAB>LOGIN<TAB>plaintext",
        "MECH<TAB>CRAM-MD5<TAB>dictionary<TAB>active",
        "SPID<TAB>100", "CUID<TAB>7", f"COOKIE<TAB>{'0' * 32}", "DONE",
    )


@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])
def test_postfix_transcript_multiplexed_on_one_connection(bytewise: bool) -> None:
    eng = engine()
    client = HELLO_POSTFIX + lines(
        # swaks AUTH PLAIN (success)
        f"AUTH<TAB>1<TAB>PLAIN<TAB>{PF}<TAB>resp={GOOD}",
        # SCRAM-SHA-256 (RFC 7677 vector): first challenge empty, v= as a CONT,
        # the client's empty CONT, then OK.
        f"AUTH<TAB>2<TAB>SCRAM-SHA-256<TAB>{PF}",
        f"CONT<TAB>2<TAB>{b64(V_CLIENT_FIRST)}",
        f"CONT<TAB>2<TAB>{b64(V_CLIENT_FINAL)}",
        "CONT<TAB>2<TAB>",
        # swaks AUTH LOGIN (success)
        f"AUTH<TAB>3<TAB>LOGIN<TAB>{PF}",
        f"CONT<TAB>3<TAB>{b64(USER)}",
        f"CONT<TAB>3<TAB>{b64(PASSWORD)}",
        # swaks AUTH PLAIN (wrong password)
        f"AUTH<TAB>5<TAB>PLAIN<TAB>{PF}<TAB>resp={plain(USER, 'Wrong')}",
    )
    out, events = feed(eng, client.encode(), bytewise=bytewise)
    assert out == lines(
        f"OK<TAB>1<TAB>user={USER}",
        "CONT<TAB>2<TAB>",
        f"CONT<TAB>2<TAB>{b64(V_SERVER_FIRST)}",
        f"CONT<TAB>2<TAB>{b64(V_SERVER_FINAL)}",
        "OK<TAB>2<TAB>user=user",
        "CONT<TAB>3<TAB>VXNlcm5hbWU6",
        "CONT<TAB>3<TAB>UGFzc3dvcmQ6",
        f"OK<TAB>3<TAB>user={USER}",
        f"FAIL<TAB>5<TAB>user={USER}",
    )
    ended = [e for e in events if isinstance(e, ExchangeEnded)]
    assert [(e.request.id, e.outcome.result) for e in ended] == [
        (1, AuthResult.SUCCESS), (2, AuthResult.SUCCESS), (3, AuthResult.SUCCESS),
        (5, AuthResult.FAILURE)]
    req = ended[0].request
    assert (req.service, req.secured, req.remote_ip, req.local_ip) == (
        "smtp", True, "127.0.0.1", "127.0.0.1")
    assert eng.pending == 0


@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])
def test_crlf_line_ends_are_taken_as_dovecot_takes_them(bytewise: bool) -> None:
    """Dovecot's line reader (i_stream_next_line) drops a CR before the LF; the
    door closed the connection at the first such line ("malformed VERSION
    line"), so a client that writes CRLF could not log in. The answers keep LF."""
    eng = engine()
    client = (HELLO_POSTFIX + lines(
        f"AUTH<TAB>1<TAB>LOGIN<TAB>{PF}", f"CONT<TAB>1<TAB>{b64(USER)}",
        f"CONT<TAB>1<TAB>{b64(PASSWORD)}")).replace("\n", "\r\n")
    out, events = feed(eng, client.encode(), bytewise=bytewise)
    assert out == lines("CONT<TAB>1<TAB>VXNlcm5hbWU6", "CONT<TAB>1<TAB>UGFzc3dvcmQ6",
                        f"OK<TAB>1<TAB>user={USER}")
    assert not [e for e in events if isinstance(e, Disconnect)]


@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])
def test_exim_transcript_empty_resp_is_no_initial_response(bytewise: bool) -> None:
    """Exim waits for DONE, then sends VERSION, CPID and AUTH at once, always with
    ``resp=`` (empty: its client gave no initial response); id 1 every time."""
    eng = engine()
    assert eng.handshake().endswith(b"DONE\n")
    ex = "service=smtp<TAB>secured<TAB>rip=127.0.0.1<TAB>lip=127.0.0.1<TAB>nologin"
    out, _ = feed(eng, (lines("VERSION<TAB>1<TAB>0", "CPID<TAB>28972") + lines(
        f"AUTH<TAB>1<TAB>LOGIN<TAB>{ex}<TAB>resp=",
        f"CONT<TAB>1<TAB>{b64(USER)}",
        f"CONT<TAB>1<TAB>{b64(PASSWORD)}",
    )).encode(), bytewise=bytewise)
    assert out == lines("CONT<TAB>1<TAB>VXNlcm5hbWU6", "CONT<TAB>1<TAB>UGFzc3dvcmQ6",
                        f"OK<TAB>1<TAB>user={USER}")
    # The next connection, the same id again: PLAIN with an initial response.
    eng2 = engine()
    out, _ = feed(eng2, (lines("VERSION<TAB>1<TAB>0", "CPID<TAB>28972") + lines(
        f"AUTH<TAB>1<TAB>PLAIN<TAB>{ex}<TAB>resp={plain(USER, 'bad')}")).encode(),
        bytewise=bytewise)
    assert out == lines(f"FAIL<TAB>1<TAB>user={USER}")


#: Lines after which nothing sensible can follow: the connection is closed.
PROTOCOL_ERRORS = {
    "unknown command": HELLO_POSTFIX + lines("HELLO<TAB>1"),
    "AUTH before the handshake": lines(f"AUTH<TAB>1<TAB>PLAIN<TAB>{PF}"),
    "id not a number": HELLO_POSTFIX + lines(f"AUTH<TAB>x1<TAB>PLAIN<TAB>{PF}"),
    "id zero": HELLO_POSTFIX + lines(f"AUTH<TAB>0<TAB>PLAIN<TAB>{PF}"),
    "id over 32 bits": HELLO_POSTFIX + lines(f"AUTH<TAB>4294967296<TAB>PLAIN<TAB>{PF}"),
    "duplicate id": HELLO_POSTFIX + lines(f"AUTH<TAB>1<TAB>LOGIN<TAB>{PF}",
                                          f"AUTH<TAB>1<TAB>LOGIN<TAB>{PF}"),
    "major version 2": lines("VERSION<TAB>2<TAB>0"),
    "AUTH without a mechanism": HELLO_POSTFIX + lines("AUTH<TAB>1"),
    "CONT without an id": HELLO_POSTFIX + lines("CONT"),
}


@pytest.mark.parametrize("data", list(PROTOCOL_ERRORS.values()), ids=list(PROTOCOL_ERRORS))
def test_malformed_lines_close_the_connection(data: str) -> None:
    eng = engine()
    _out, events = feed(eng, data.encode())
    assert isinstance(events[-1], Disconnect) and events[-1].protocol_error
    # Nothing after the close is read.
    eng.receive_data(HELLO_POSTFIX.encode() + lines(f"AUTH<TAB>2<TAB>LOGIN<TAB>{PF}").encode())
    assert eng.next_event() is NEED_DATA and eng.data_to_send() == b""


def test_non_utf8_line_closes_the_connection() -> None:
    _, events = feed(engine(), HELLO_POSTFIX.encode() + b"AUTH\t1\tPLAIN\tservice=\xff\n")
    assert isinstance(events[-1], Disconnect)


@pytest.mark.parametrize("newline", [False, True], ids=["unterminated", "terminated"])
def test_overlong_line_closes_the_connection_before_it_is_buffered_whole(newline: bool) -> None:
    eng = engine()
    feed(eng, HELLO_POSTFIX.encode())
    big = f"AUTH\t1\tPLAIN\t{PF.replace('<TAB>', chr(9))}\tresp=".encode() + b"A" * MAX_LINE
    _, events = feed(eng, big + (b"\n" if newline else b""))
    assert events == [Disconnect(f"line longer than {MAX_LINE} bytes")]
    # A long line within the limit (RFC 4954's 12288) is fine.
    eng = engine()
    resp = b64(f"\0{USER}\0{PASSWORD}").ljust(12288, "=")
    out, _ = feed(eng, (HELLO_POSTFIX + lines(f"AUTH<TAB>1<TAB>PLAIN<TAB>{PF}<TAB>resp={resp}"))
                  .encode())
    assert out.startswith("FAIL\t1\treason=Invalid base64")


def test_cont_with_unknown_id_is_failed_and_the_connection_stays() -> None:
    eng = engine()
    out, events = feed(eng, (HELLO_POSTFIX + lines(
        "CONT<TAB>9<TAB>YWJj",
        f"AUTH<TAB>1<TAB>PLAIN<TAB>{PF}<TAB>resp={GOOD}",
    )).encode())
    assert out == lines("FAIL<TAB>9<TAB>reason=Unknown or expired authentication request",
                        f"OK<TAB>1<TAB>user={USER}")
    assert isinstance(events[0], RequestRefused)


def test_cont_while_the_server_is_deciding_closes_the_connection() -> None:
    eng = engine()
    _, events = feed(eng, (HELLO_POSTFIX + lines(
        f"AUTH<TAB>1<TAB>PLAIN<TAB>{PF}<TAB>resp={GOOD}",
        "CONT<TAB>1<TAB>YWJj",
    )).encode(), answer=lambda q: None)
    assert isinstance(events[0], CredentialsNeeded) and isinstance(events[1], Disconnect)


REFUSED = {
    "invalid base64 initial response": (f"PLAIN<TAB>{PF}<TAB>resp=AG!!", "Invalid base64"),
    "parameter after resp": (f"PLAIN<TAB>{PF}<TAB>resp=AGFi<TAB>user=x", "Parameter after resp"),
    "no service": ("PLAIN<TAB>rip=127.0.0.1<TAB>secured", "Missing service"),
    "no rip": ("PLAIN<TAB>service=smtp<TAB>secured", "Missing or invalid client address"),
    "bad rip": ("PLAIN<TAB>service=smtp<TAB>rip=x<TAB>secured", "Missing or invalid client"),
    "IPv4 rip with a zone": ("PLAIN<TAB>service=smtp<TAB>rip=192.0.2.8%eth0<TAB>secured",
                             "Missing or invalid client"),
    "mechanism not enabled": (f"DIGEST-MD5<TAB>{PF}", "Unsupported"),
    "-PLUS never offered": (f"SCRAM-SHA-256-PLUS<TAB>{PF}", "Unsupported"),
    # Dovecot's disable_plaintext_auth: PLAIN/LOGIN only on a protected session.
    "plaintext without secured": ("PLAIN<TAB>service=smtp<TAB>rip=127.0.0.1", "Plaintext"),
    "LOGIN without secured": ("LOGIN<TAB>service=smtp<TAB>rip=127.0.0.1", "Plaintext"),
}


@pytest.mark.parametrize(("rest", "reason"), list(REFUSED.values()), ids=list(REFUSED))
def test_bad_requests_are_failed_before_any_exchange(rest: str, reason: str) -> None:
    eng = engine()
    out, events = feed(eng, (HELLO_POSTFIX + lines(f"AUTH<TAB>4<TAB>{rest}")).encode())
    assert out.startswith(f"FAIL\t4\treason={reason}") and out.count("\n") == 1
    assert [type(e) for e in events] == [RequestRefused]
    assert eng.pending == 0


def test_scram_needs_no_secured_session() -> None:
    out, _ = feed(engine(), (HELLO_POSTFIX + lines(
        "AUTH<TAB>1<TAB>SCRAM-SHA-256<TAB>service=smtp<TAB>rip=127.0.0.1")).encode())
    assert out == lines("CONT<TAB>1<TAB>")


def test_invalid_base64_in_cont_fails_the_request_and_the_connection_stays() -> None:
    eng = engine()
    out, events = feed(eng, (HELLO_POSTFIX + lines(
        f"AUTH<TAB>1<TAB>LOGIN<TAB>{PF}", "CONT<TAB>1<TAB>not base64!",
        f"AUTH<TAB>2<TAB>PLAIN<TAB>{PF}<TAB>resp={GOOD}")).encode())
    assert out == lines("CONT<TAB>1<TAB>VXNlcm5hbWU6", "FAIL<TAB>1",
                        f"OK<TAB>2<TAB>user={USER}")
    failed = next(e for e in events if isinstance(e, ExchangeEnded))
    assert failed.outcome.result is AuthResult.FAILURE


def test_flood_evicts_abandoned_requests_then_closes_when_all_wait_on_the_server() -> None:
    """Postfix never cancels a request its client gave up (``*``): those wait on the
    client and make room. Requests all waiting on the server are a flood."""
    eng = engine(max_pending=4)
    out, events = feed(eng, (HELLO_POSTFIX + "".join(
        lines(f"AUTH<TAB>{i}<TAB>LOGIN<TAB>{PF}") for i in range(1, 6))).encode())
    assert out.count("CONT\t") == 5 and eng.pending == 4
    evicted = [e for e in events if isinstance(e, ExchangeEnded)]
    assert [(e.request.id, e.answered, e.outcome.result) for e in evicted] == [
        (1, False, AuthResult.CANCELLED)]
    # Four requests waiting on the server (credentials never answered here) ...
    eng = engine(max_pending=4)
    flood = HELLO_POSTFIX + "".join(
        lines(f"AUTH<TAB>{i}<TAB>PLAIN<TAB>{PF}<TAB>resp={plain(USER, 'x')}")
        for i in range(1, 7))
    _, events = feed(eng, flood.encode(), answer=lambda q: None)
    assert [type(e).__name__ for e in events] == ["CredentialsNeeded"] * 4 + ["Disconnect"]
    last = events[-1]
    assert isinstance(last, Disconnect) and "more than 4 requests" in last.reason


def test_temporary_failure_closes_the_connection_without_a_fail_line() -> None:
    """Postfix and Exim read every FAIL as a 535; a lost connection is their 454/435."""
    eng = engine()
    out, events = feed(eng, (HELLO_POSTFIX + lines(
        f"AUTH<TAB>1<TAB>PLAIN<TAB>{PF}<TAB>resp={GOOD}",
        f"AUTH<TAB>2<TAB>LOGIN<TAB>{PF}")).encode(),
        answer=lambda q: sasl.Verdict(ok=False, reason="directory down", temporary=True))
    assert out == ""
    assert events[-1] == Disconnect("temporary failure of request 1", protocol_error=False)
    assert eng.next_event() is NEED_DATA


def test_hang_up_concludes_every_exchange_under_way() -> None:
    eng = engine()
    feed(eng, (HELLO_POSTFIX + lines(
        f"AUTH<TAB>1<TAB>LOGIN<TAB>{PF}",  # waits on the client
        f"AUTH<TAB>2<TAB>PLAIN<TAB>{PF}<TAB>resp={GOOD}",  # on the server
    )).encode(), answer=lambda q: None)
    ended = eng.connection_lost()
    assert sorted((e.request.id, e.answered, e.outcome.result) for e in ended) == [
        (1, False, AuthResult.CANCELLED), (2, False, AuthResult.CANCELLED)]
    assert eng.pending == 0
    eng.answer(2, sasl.Verdict(ok=True, identity=USER))  # a late answer goes nowhere
    assert eng.data_to_send() == b""


@pytest.mark.parametrize(("name", "echoed"), [
    # PLAIN refuses a name with a C0 or C1 control before the look-up: none to echo.
    ("x\tuser=root", None),
    ("x\x1b[2J", None),
    ("\u202egro.elpmaxe@toor", "?gro.elpmaxe@toor"),  # a bidi override
    ("a\u200bb\u2066c", "a?b?c"),  # a zero-width space, a bidi isolate
    ("a\u2028b", None),  # a line separator: PLAIN refuses it too
    ("jürgen@example.org", "jürgen@example.org"),  # letters stay as they are
    ("a" * 513, None),  # longer than any name: not sent back at all
])
def test_a_user_name_is_echoed_with_its_unprintable_characters_replaced(
        name: str, echoed: str | None) -> None:
    """FAIL's user= went out as the client typed it unless it had a C0 or DEL, so a
    U+202E reached Postfix's own log; each Cc/Cf/Zl/Zp character is now a '?', as in
    what the door logs of a mechanism."""
    eng = engine()
    out, _ = feed(eng, (HELLO_POSTFIX + lines(
        f"AUTH<TAB>1<TAB>PLAIN<TAB>{PF}<TAB>resp={plain(name, 'p')}")).encode())
    assert out == (lines("FAIL<TAB>1") if echoed is None else f"FAIL\t1\tuser={echoed}\n")


def test_an_empty_resp_is_an_empty_initial_response_from_minor_2_on() -> None:
    """docs/integration.md: below 1.2 (Exim, Postfix) an empty ``resp=`` is no
    initial response (PLAIN sends its empty challenge); from 1.2 on it is an empty
    one (``AUTH PLAIN =``), which is no PLAIN message, as Dovecot reads it."""
    for minor, answer in ((0, "CONT\t1\t\n"), (2, "FAIL\t1\n")):
        out, _ = feed(engine(), lines(f"VERSION<TAB>1<TAB>{minor}", "CPID<TAB>1",
                                      f"AUTH<TAB>1<TAB>PLAIN<TAB>{PF}<TAB>resp=").encode())
        assert out == answer, minor


def test_cancel_answers_cancelled_to_minor_4_clients_only() -> None:
    for minor, expected in ((4, "CANCELLED\t1\n"), (0, "")):
        eng = engine()
        out, events = feed(eng, lines(f"VERSION<TAB>1<TAB>{minor}", "CPID<TAB>1",
                                      f"AUTH<TAB>1<TAB>LOGIN<TAB>{PF}", "CANCEL<TAB>1").encode())
        assert out == "CONT\t1\tVXNlcm5hbWU6\n" + expected
        assert isinstance(events[-1], ExchangeEnded) and not events[-1].answered


# The RFC 7677 client with its proof's last byte flipped: a wrong password.
_proof = bytearray(base64.b64decode(V_CLIENT_FINAL.rsplit(b"p=", 1)[1]))
_proof[-1] ^= 1
V_CLIENT_FINAL_BAD = V_CLIENT_FINAL.rsplit(b"p=", 1)[0] + b"p=" + base64.b64encode(bytes(_proof))
BEARER = b64(b"n,a=user,\x01auth=Bearer not-a-token\x01\x01")


@pytest.mark.parametrize("exchange", [
    [f"AUTH<TAB>1<TAB>SCRAM-SHA-256<TAB>{PF}", f"CONT<TAB>1<TAB>{b64(V_CLIENT_FIRST)}",
     f"CONT<TAB>1<TAB>{b64(V_CLIENT_FINAL_BAD)}"],
    [f"AUTH<TAB>1<TAB>OAUTHBEARER<TAB>{PF}<TAB>resp={BEARER}"],
], ids=["scram-e=", "oauth-error-json"])
def test_an_announced_failure_is_fail_at_once_not_relayed(exchange: list[str]) -> None:
    """SCRAM e= and the OAuth error JSON are not relayed (Dovecot answers FAIL): Postfix
    would never report a client that read them and gave up, and the guess would be
    counted only when the request is dropped."""
    eng = engine()
    out, events = feed(eng, (HELLO_POSTFIX + lines(*exchange)).encode())
    assert out.splitlines()[-1] == "FAIL\t1\tuser=user"
    assert not any(base64.b64decode(x.split("\t")[2]).startswith((b"e=", b"{"))
                   for x in out.splitlines() if x.startswith("CONT") and x.split("\t")[2])
    ended = [e for e in events if isinstance(e, ExchangeEnded)]
    assert [(e.answered, e.outcome.result) for e in ended] == [(True, AuthResult.FAILURE)]
    assert eng.pending == 0


def test_a_request_left_waiting_on_the_client_expires_only_at_the_same_challenge() -> None:
    eng = engine()
    feed(eng, (HELLO_POSTFIX + lines(f"AUTH<TAB>1<TAB>LOGIN<TAB>{PF}")).encode())
    assert eng.waiting_on_client() == [(1, 1)]
    feed(eng, lines(f"CONT<TAB>1<TAB>{b64(USER)}").encode())  # the client moved on
    eng.expire(1, 1)  # the timer of the first challenge: too late, nothing happens
    assert eng.next_event() is NEED_DATA and eng.waiting_on_client() == [(1, 2)]
    eng.expire(1, 2)
    ev = eng.next_event()
    assert isinstance(ev, ExchangeEnded) and not ev.answered
    assert (ev.outcome.result, ev.outcome.reason) == (
        AuthResult.CANCELLED, "no answer from the peer in time")
    assert eng.pending == 0 and eng.data_to_send() == b""


@pytest.mark.parametrize(("rip", "seen"), [
    ("::ffff:192.0.2.7", "192.0.2.7"),   # a dual-stack socket's IPv4 client
    ("2001:DB8::1", "2001:db8::1"),
    ("192.0.2.8", "192.0.2.8"),
    ('fe80::1%x"user="root', "fe80::1"),  # a zone: any text, dropped (not logged)
])
def test_the_client_address_is_the_one_the_guard_counts(rip: str, seen: str) -> None:
    """An IPv4 client in IPv6 form is its IPv4 address, as the guard counts it: the
    auth log (and fail2ban reading it) must name the address a firewall can ban."""
    _, events = feed(engine(), (HELLO_POSTFIX + lines(
        f"AUTH<TAB>1<TAB>SCRAM-SHA-256<TAB>service=smtp<TAB>rip={rip}<TAB>lip=::ffff:10.0.0.1",
        "CONT<TAB>1<TAB>" + b64(V_CLIENT_FIRST))).encode())
    needed = next(e for e in events if isinstance(e, CredentialsNeeded))
    assert (needed.request.remote_ip, needed.request.local_ip) == (seen, "10.0.0.1")


@pytest.mark.parametrize("char", ["\u202e", "\u2066", "\u200b", "\u2028", "\x85", "\x1b"])
def test_a_refused_mechanism_name_carries_no_control_or_bidi_character(char: str) -> None:
    """The refusal event's mechanism and service go to the auth log and the server
    log: a bidi override, zero-width, line-separator or C1 character the client put
    in them is replaced, as account names refuse them."""
    _, events = feed(engine(), (HELLO_POSTFIX + lines(
        f"AUTH<TAB>1<TAB>PL{char}AIN<TAB>rip=127.0.0.1")).encode())
    (ev,) = events
    assert isinstance(ev, RequestRefused)
    assert ev.mechanism == "PL?AIN"
