"""The sans-IO SMTP client engine: replies in, commands out (STYLE.md §1, §7a).

Every parsing test feeds its input whole and one byte at a time.
"""

from __future__ import annotations

import ast
import base64
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import smtpgate.client
from smtpgate.client import (
    CLOSED,
    NEED_DATA,
    ClientEngine,
    Extensions,
    LocalProtocolError,
    RemoteProtocolError,
    ServerReply,
    dot_stuff,
    xtext,
)

CLIENT_DIR = Path(smtpgate.client.__file__).parent


def _drain(engine: ClientEngine) -> list[ServerReply]:
    out = []
    while True:
        ev = engine.next_event()
        if ev is NEED_DATA or ev is CLOSED:
            return out
        assert isinstance(ev, ServerReply)
        out.append(ev)


def feed(data: bytes, *, bytewise: bool, engine: ClientEngine | None = None) -> list[ServerReply]:
    """Replies parsed from ``data`` fed whole or one byte at a time."""
    engine = engine or ClientEngine(expect_greeting=False)
    if not bytewise:
        engine.receive_data(data)
        return _drain(engine)
    out: list[ServerReply] = []
    for i in range(len(data)):
        engine.receive_data(data[i : i + 1])
        out += _drain(engine)
    return out


both = pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])


# --- reply parsing ------------------------------------------------------------------


@both
def test_rfc5321_s4_2_single_line_reply(bytewise: bool) -> None:
    assert feed(b"220 mx.example.org ESMTP ready\r\n", bytewise=bytewise) == [
        ServerReply(220, None, ("mx.example.org ESMTP ready",))
    ]


@both
def test_rfc5321_s4_2_multiline_reply_is_one_event(bytewise: bool) -> None:
    data = b"250-mx.example.org\r\n250-PIPELINING\r\n250 SIZE 1000\r\n"
    assert feed(data, bytewise=bytewise) == [
        ServerReply(250, None, ("mx.example.org", "PIPELINING", "SIZE 1000"))
    ]


@both
def test_rfc2034_enhanced_code_is_split_off_every_line(bytewise: bool) -> None:
    data = b"550-5.1.1 No such user\r\n550 5.1.1 Really not\r\n"
    (reply,) = feed(data, bytewise=bytewise)
    assert reply.enhanced == "5.1.1"
    assert reply.lines == ("No such user", "Really not")
    assert str(reply) == "550 5.1.1 No such user Really not"


@pytest.mark.parametrize(
    ("line", "enhanced"),
    [
        (b"250 2.0.0 OK\r\n", "2.0.0"),
        (b"451 4.3.0\r\n", "4.3.0"),  # the code alone, no text after it
        (b"250 5.0.0 wrong class is text\r\n", None),  # class must match the reply
        (b"354 Go ahead\r\n", None),
        (b"250 2.0 not a code\r\n", None),
    ],
)
def test_rfc3463_enhanced_code_only_when_well_formed(line: bytes, enhanced: str | None) -> None:
    (reply,) = feed(line, bytewise=False)
    assert reply.enhanced == enhanced


@both
def test_bare_lf_from_a_server_is_tolerated(bytewise: bool) -> None:
    data = b"250-a\n250 b\n221 bye\r\n"
    assert feed(data, bytewise=bytewise) == [
        ServerReply(250, None, ("a", "b")),
        ServerReply(221, None, ("bye",)),
    ]


@both
def test_rfc5321_s4_2_code_without_text(bytewise: bool) -> None:
    assert feed(b"250\r\n", bytewise=bytewise) == [ServerReply(250, None, ("",))]


@both
def test_several_pipelined_replies_come_out_in_order(bytewise: bool) -> None:
    data = b"250 2.1.0 ok\r\n550 5.1.1 no\r\n250 2.1.5 ok\r\n"
    assert [r.code for r in feed(data, bytewise=bytewise)] == [250, 550, 250]


@pytest.mark.parametrize(
    "data",
    [
        b"hello\r\n",
        b"2x0 nope\r\n",
        b"150 not smtp\r\n",
        b"250_oops\r\n",
        b"250-a\r\n251 b\r\n",  # RFC 5321 §4.2.1: the same code on every line
        b"25\r\n",
    ],
)
def test_malformed_replies_are_remote_errors(data: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        feed(data, bytewise=False)


def test_overlong_line_is_refused_before_it_ends() -> None:
    engine = ClientEngine(expect_greeting=False)
    engine.receive_data(b"250 " + b"x" * 5000)
    with pytest.raises(RemoteProtocolError, match="too long"):
        engine.next_event()


def test_reply_with_too_many_lines_is_refused() -> None:
    with pytest.raises(RemoteProtocolError, match="too many lines"):
        feed(b"250-x\r\n" * 300 + b"250 x\r\n", bytewise=False)


def test_eof_between_replies_is_closed() -> None:
    engine = ClientEngine(expect_greeting=False)
    engine.receive_data(b"221 bye\r\n")
    engine.receive_data(b"")
    assert isinstance(engine.next_event(), ServerReply)
    assert engine.next_event() is CLOSED


def test_eof_inside_a_reply_is_an_error() -> None:
    engine = ClientEngine(expect_greeting=False)
    engine.receive_data(b"250-first\r\n250 sec")
    assert engine.next_event() is NEED_DATA
    engine.receive_data(b"")
    with pytest.raises(RemoteProtocolError, match="closed"):
        engine.next_event()


replies_st = st.lists(
    st.tuples(
        st.sampled_from([220, 250, 354, 421, 451, 550]),
        st.lists(st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=20),
                 min_size=1, max_size=4),
    ),
    max_size=5,
)


@given(replies_st, st.lists(st.integers(1, 7), max_size=40))
def test_property_any_split_of_the_input_gives_the_same_replies(
    replies: list[tuple[int, list[str]]], cuts: list[int]
) -> None:
    """Invariant: splitting a byte stream anywhere never changes the replies parsed."""
    data = b"".join(
        b"".join(
            f"{code}{'-' if i < len(lines) - 1 else ' '}{t}\r\n".encode()
            for i, t in enumerate(lines)
        )
        for code, lines in replies
    )
    whole = feed(data, bytewise=False)
    engine = ClientEngine(expect_greeting=False)
    got: list[ServerReply] = []
    pos = 0
    for c in [*cuts, len(data)]:
        chunk = data[pos : pos + c]
        pos += c
        if chunk:  # b"" would mean end of stream
            engine.receive_data(chunk)
            got += _drain(engine)
    assert got == whole
    assert [r.code for r in whole] == [code for code, _ in replies]


@given(st.binary(max_size=200))
def test_property_arbitrary_bytes_give_replies_or_remote_error(data: bytes) -> None:
    """Invariant: any input yields replies or RemoteProtocolError, nothing else."""
    engine = ClientEngine(expect_greeting=False)
    engine.receive_data(data)
    engine.receive_data(b"")
    try:
        while engine.next_event() is not CLOSED:
            pass
    except RemoteProtocolError:
        pass


# --- EHLO extensions ----------------------------------------------------------------

EHLO_REPLY = (
    b"250-mx.example.org greets you\r\n"
    b"250-PIPELINING\r\n"
    b"250-SIZE 35882577\r\n"
    b"250-8BITMIME\r\n"
    b"250-STARTTLS\r\n"
    b"250-AUTH PLAIN login\r\n"
    b"250-AUTH=CRAM-MD5\r\n"
    b"250-ENHANCEDSTATUSCODES\r\n"
    b"250 SMTPUTF8\r\n"
)


@both
def test_ehlo_reply_updates_extensions(bytewise: bool) -> None:
    engine = ClientEngine()
    assert engine.ehlo("client.example") == b"EHLO client.example\r\n"
    [greeting, ehlo] = feed(b"220 hi\r\n" + EHLO_REPLY, bytewise=bytewise, engine=engine)
    assert greeting.code == 220 and ehlo.code == 250
    ext = engine.extensions
    assert engine.esmtp
    assert ext.pipelining and ext.eightbitmime and ext.starttls and ext.smtputf8
    assert ext.size == 35882577
    # RFC 4954 §3 list plus the pre-standard "AUTH=" line, case-insensitive.
    assert ext.auth_mechanisms == {"PLAIN", "LOGIN", "CRAM-MD5"}
    assert ext.has("enhancedstatuscodes")


def test_greeting_is_not_taken_for_the_ehlo_reply() -> None:
    engine = ClientEngine()
    engine.ehlo("c.example")  # pipelined behind the greeting
    engine.receive_data(b"250 not-really-a-greeting\r\n")
    engine.next_event()
    assert not engine.esmtp  # that 250 answered the greeting slot, not EHLO


def test_failed_ehlo_leaves_no_extensions() -> None:
    engine = ClientEngine(expect_greeting=False)
    engine.ehlo("c.example")
    feed(b"502 5.5.1 no EHLO here\r\n", bytewise=False, engine=engine)
    assert not engine.esmtp
    assert engine.extensions == Extensions()


@pytest.mark.parametrize(("line", "size"), [("SIZE", 0), ("SIZE 0", 0), ("SIZE x", 0)])
def test_rfc1870_size_without_a_number_means_no_fixed_limit(line: str, size: int) -> None:
    assert Extensions.from_ehlo_lines([line]).size == size
    assert Extensions.from_ehlo_lines([]).size is None


def test_rfc3207_s4_2_tls_forgets_extensions_and_discards_clear_bytes() -> None:
    engine = ClientEngine(expect_greeting=False)
    engine.ehlo("c.example")
    feed(EHLO_REPLY, bytewise=False, engine=engine)
    engine.starttls()
    # A man in the middle appends a fake reply behind the 220 (the 2011 bugs).
    engine.receive_data(b"220 2.0.0 go ahead\r\n250 injected\r\n")
    reply = engine.next_event()
    assert isinstance(reply, ServerReply) and reply.code == 220
    assert engine.tls_established() == len(b"250 injected\r\n")
    assert not engine.esmtp
    assert engine.next_event() is NEED_DATA


# --- commands ----------------------------------------------------------------------


def test_commands_are_formatted_with_crlf() -> None:
    e = ClientEngine(expect_greeting=False)
    assert e.helo("c.example") == b"HELO c.example\r\n"
    assert e.starttls() == b"STARTTLS\r\n"
    assert e.mail("a@example.org", ["SIZE=10", "BODY=8BITMIME"]) == (
        b"MAIL FROM:<a@example.org> SIZE=10 BODY=8BITMIME\r\n"
    )
    assert e.rcpt("b@example.net") == b"RCPT TO:<b@example.net>\r\n"
    assert e.data() == b"DATA\r\n"
    assert e.rset() == b"RSET\r\n"
    assert e.noop() == b"NOOP\r\n"
    assert e.quit() == b"QUIT\r\n"
    assert e.replies_due == 8


def test_rfc5321_s4_1_1_2_null_reverse_path() -> None:
    assert ClientEngine().mail("") == b"MAIL FROM:<>\r\n"


@pytest.mark.parametrize(
    "call",
    [
        lambda e: e.mail("a@example.org\r\nRCPT TO:<x@evil>"),
        lambda e: e.rcpt("b@example.net>\r\nDATA"),
        lambda e: e.rcpt("b@exa>mple.net"),
        lambda e: e.rcpt(""),
        lambda e: e.mail("a@example.org", ["SIZE=1\r\nRSET"]),
        lambda e: e.mail("a@example.org", ["SIZE =1"]),
        lambda e: e.ehlo("two words"),
        lambda e: e.ehlo(""),
        lambda e: e.auth("PLAIN\r\nQUIT", None),
        lambda e: e.auth("plain", None),  # RFC 4422 §3.1: upper case only
    ],
)
def test_injection_and_syntax_errors_are_refused_locally(call) -> None:  # type: ignore[no-untyped-def]
    engine = ClientEngine(expect_greeting=False)
    with pytest.raises(LocalProtocolError):
        call(engine)
    assert engine.replies_due == 0  # nothing counted as sent


def test_rfc6531_s3_4_non_ascii_address_needs_smtputf8() -> None:
    e = ClientEngine(expect_greeting=False)
    with pytest.raises(LocalProtocolError, match="SMTPUTF8"):
        e.mail("jöran@example.org")
    assert e.mail("jöran@example.org", ["SMTPUTF8"]) == (
        "MAIL FROM:<jöran@example.org> SMTPUTF8\r\n".encode()
    )
    assert e.rcpt("åsa@example.se") == "RCPT TO:<åsa@example.se>\r\n".encode()
    e.mail("a@example.org")
    with pytest.raises(LocalProtocolError):
        e.rcpt("åsa@example.se")  # a new transaction without SMTPUTF8


def test_rfc4954_s4_auth_initial_response_forms() -> None:
    e = ClientEngine(expect_greeting=False)
    # \0user\0pass, as in RFC 4616 §4
    assert e.auth("PLAIN", b"\0tim\0tanstaaftanstaaf") == (
        b"AUTH PLAIN AHRpbQB0YW5zdGFhZnRhbnN0YWFm\r\n"
    )
    assert e.auth("PLAIN", b"") == b"AUTH PLAIN =\r\n"  # empty initial response
    assert e.auth("LOGIN", None) == b"AUTH LOGIN\r\n"
    assert e.auth_response(b"tim") == b"dGlt\r\n"
    assert e.auth_response(b"") == b"\r\n"
    assert e.auth_cancel() == b"*\r\n"


def test_rfc4954_s4_challenge_decoding() -> None:
    ok = ServerReply(334, None, (base64.b64encode(b"<1896.697170952@postoffice>").decode(),))
    assert ClientEngine.challenge(ok) == b"<1896.697170952@postoffice>"
    assert ClientEngine.challenge(ServerReply(334, None, ("",))) == b""
    with pytest.raises(RemoteProtocolError):
        ClientEngine.challenge(ServerReply(334, None, ("not base64!",)))
    with pytest.raises(RemoteProtocolError):
        ClientEngine.challenge(ServerReply(235, "2.7.0", ("ok",)))


# --- DATA transparency ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "wire"),
    [
        (b"a\r\nb\r\n", b"a\r\nb\r\n.\r\n"),
        (b"a\r\nb", b"a\r\nb\r\n.\r\n"),  # a missing final line end is added
        (b"", b".\r\n"),
        (b".starts\r\n", b"..starts\r\n.\r\n"),  # RFC 5321 §4.5.2
        (b"x\r\n.\r\ny\r\n", b"x\r\n..\r\ny\r\n.\r\n"),
        (b"x\r\n..two\r\n", b"x\r\n...two\r\n.\r\n"),
        # Bare LF / CR become CRLF before stuffing: no "<LF>.<LF>" smuggling.
        (b"x\n.\ny\r\n", b"x\r\n..\r\ny\r\n.\r\n"),
        (b"x\r.\rz", b"x\r\n..\r\nz\r\n.\r\n"),
    ],
)
def test_rfc5321_s4_5_2_dot_stuffing(content: bytes, wire: bytes) -> None:
    assert dot_stuff(content) == wire
    engine = ClientEngine(expect_greeting=False)
    assert engine.message(content) == wire
    assert engine.replies_due == 1


@given(st.binary(max_size=300))
def test_property_stuffed_data_ends_only_at_its_end(content: bytes) -> None:
    """Invariant: the only CRLF.CRLF (or leading .CRLF) is the terminator, and
    un-stuffing gives back the content with normalised line ends."""
    wire = dot_stuff(content)
    assert wire.endswith(b".\r\n")
    body = wire[: -len(b".\r\n")]
    assert b"\r\n.\r\n" not in b"\r\n" + body
    lines = body.split(b"\r\n")
    assert all(b"\r" not in ln and b"\n" not in ln for ln in lines)
    unstuffed = b"\r\n".join(ln[1:] if ln.startswith(b".") else ln for ln in lines)
    normalised = content.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
    if normalised and not normalised.endswith(b"\r\n"):
        normalised += b"\r\n"
    assert unstuffed == normalised


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        ("alice@example.org", "alice@example.org"),
        ("e=mc2@example.com", "e+3Dmc2@example.com"),  # RFC 4954 §5 example
        ("a+b c", "a+2Bb+20c"),
        ("ø", "+C3+B8"),
    ],
)
def test_rfc3461_s4_xtext(value: str, encoded: str) -> None:
    assert xtext(value) == encoded


# --- architecture ---------------------------------------------------------------------


def test_client_package_imports_no_io() -> None:
    """STYLE.md §1: no asyncio, socket, ssl or time in client/."""
    forbidden = {"asyncio", "socket", "ssl", "time", "selectors", "threading", "subprocess"}
    for path in CLIENT_DIR.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            bad = {n.split(".")[0] for n in names} & forbidden
            assert not bad, f"{path.name} imports {bad}"


def test_lines_over_998_octets_are_broken_before_they_are_sent() -> None:
    """Before: a line the server had accepted (as Postfix does) went to the next hop
    whole, and a strict relay refuses a line over RFC 5321 §4.5.3.1.6's 1,000 octets
    with its CRLF. Now each piece after the first starts with a space (a folded header
    line; a body line keeps all its text), and lines up to 998 octets are untouched."""
    long_header = b"X-Long: " + b"h" * 1500
    content = (long_header + b"\r\n\r\n" + b"a" * 2500 + b"\r\n" + b"." + b"b" * 1200
               + b"\r\n" + b"c" * 998 + b"\r\n")
    lines = dot_stuff(content).split(b"\r\n")
    # The limit does not count the dot doubled for transparency (§4.5.3.1.6).
    assert max(len(line.removeprefix(b".")) for line in lines) == 998
    assert lines[0] == long_header[:998] and lines[1] == b" " + long_header[998:]
    assert lines[3:6] == [b"a" * 998, b" " + b"a" * 997, b" " + b"a" * 505]
    assert lines[6] == b".." + b"b" * 997  # dot-stuffed after the break
    assert lines[7] == b" " + b"b" * 203 and lines[8] == b"c" * 998
    assert lines[9:] == [b".", b""]
    # The text is all there, in order.
    body = b"".join(line.removeprefix(b" ") for line in lines[3:6])
    assert body == b"a" * 2500


@pytest.mark.timeout(20)
def test_long_line_check_is_linear_in_the_message() -> None:
    """Before: the long-line search was unanchored, so on each line of up to 998
    octets it failed and started again one octet further (quadratic): a 12 MB
    message of 998-octet lines held the delivery process's event loop for 20 s
    (relayed to Exim 4.96 on loopback: 20 s from queued to its 250), and any
    authenticated user could send one. The bound is a hang guard: these 24 MB took
    46 s before the fix, 0.3 s after."""
    content = (b"x" * 998 + b"\r\n") * 24_000
    wire = dot_stuff(content)
    assert wire == content + b".\r\n"


@given(st.lists(st.tuples(st.integers(min_value=0, max_value=2100),
                          st.sampled_from([b"\r\n", b"\n"])), max_size=6))
def test_property_only_lines_over_998_octets_are_folded(lines: list[tuple[int, bytes]]
                                                          ) -> None:
    """Lines of up to 998 octets are sent as they are, longer ones as pieces of at
    most 998 that give the line back, wherever the line sits and whichever line end it had."""
    content = b"".join(b"z" * n + eol for n, eol in lines)
    sent = dot_stuff(content)[: -len(b".\r\n")].split(b"\r\n")[:-1] if content else []
    out = iter(sent)
    for n, _eol in lines:
        first = next(out)
        assert first == b"z" * min(n, 998)
        rest = n - len(first)
        while rest > 0:
            piece = next(out)
            assert piece.startswith(b" ") and len(piece) <= 998
            rest -= len(piece) - 1
        assert rest == 0
    assert next(out, None) is None
