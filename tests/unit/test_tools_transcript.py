"""What a transcript shows of each mechanism's payloads: decoded, secrets masked."""

from __future__ import annotations

import pytest

from smtpgate.sasl.oauth import encode_oauthbearer, encode_xoauth2
from smtpgate.tools.transcript import MASK, Entry, Masker, Transcript, printable

PASSWORD = "s3cret-pass"
TOKEN = "eyJhbGciOi.token.sig"
M = Masker((PASSWORD, TOKEN))


@pytest.mark.parametrize(
    ("mech", "step", "data", "shown"),
    [
        # RFC 4616: authzid NUL authcid NUL passwd -> the password goes.
        ("PLAIN", 0, f"\0alice\0{PASSWORD}".encode(), f"\\0alice\\0{MASK}"),
        ("PLAIN", 0, f"bob\0alice\0{PASSWORD}".encode(), f"bob\\0alice\\0{MASK}"),
        # LOGIN: the user name is shown, the password is not.
        ("LOGIN", 0, b"alice", "alice"),
        ("LOGIN", 1, PASSWORD.encode(), MASK),
        # CRAM-MD5 (RFC 2195): the digest allows an offline guess; the name stays.
        ("CRAM-MD5", 0, b"tim b913a602c7eda7a495b4e6e7334d3890", f"tim {MASK}"),
        # SCRAM (RFC 5802): the proof allows an offline guess; nonces and c= stay.
        ("SCRAM-SHA-256", 0, b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO",
         "n,,n=user,r=rOprNGfwEbeRWgbNEkqO"),
        ("SCRAM-SHA-256", 1, b"c=biws,r=abc,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
         f"c=biws,r=abc,p={MASK}"),
        ("OAUTHBEARER", 0, encode_oauthbearer("alice", TOKEN),
         f"n,a=alice,^Aauth=Bearer {MASK}^A^A"),
        ("XOAUTH2", 0, encode_xoauth2("alice", TOKEN), f"user=alice^Aauth=Bearer {MASK}^A^A"),
    ],
)
def test_client_payloads_are_masked(mech: str, step: int, data: bytes, shown: str) -> None:
    text, masked = M.client_sasl(mech, step, data)
    assert text == shown
    assert masked == (MASK in shown)
    assert PASSWORD not in text and TOKEN not in text


def test_a_secret_never_shows_whatever_the_mechanism() -> None:
    # An unexpected place (a LOGIN password sent as the first answer).
    text, masked = M.client_sasl("LOGIN", 0, PASSWORD.encode())
    assert text == MASK and masked
    assert M.text(f"AUTH X {PASSWORD}") == f"AUTH X {MASK}"


def test_short_secrets_are_not_used_for_substring_masking() -> None:
    # A two-letter password would mask every occurrence of those letters.
    assert Masker(("ab",)).text("abc") == "abc"


def test_printable_escapes_controls() -> None:
    assert printable(b"a\0b\x01c\x02\xff") == "a\\0b^Ac\\x02\\xff"


def test_transcript_renders_and_serialises() -> None:
    seen: list[Entry] = []
    t = Transcript(listener=seen.append)
    t.add("send", "EHLO x")
    t.add("recv", "250 ok", tls=True)
    t.add("sasl-send", "n,,n=a,r=b")
    assert t.lines() == ["-> EHLO x", "<- 250 ok", "  > n,,n=a,r=b"]
    assert t.to_json()[1] == {"dir": "<-", "kind": "recv", "text": "250 ok", "tls": True}
    assert seen == t.entries


def test_scram_server_signature_is_masked() -> None:
    # RFC 5802: v= is HMAC(ServerKey, AuthMessage); with the salt, the iteration
    # count and the nonces shown, it tests a guessed password as well as p= does.
    text, masked = M.server_sasl("SCRAM-SHA-256", b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
    assert (text, masked) == (f"v={MASK}", True)
    first = b"r=abc,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
    assert M.server_sasl("SCRAM-SHA-256", first) == (first.decode(), False)
    assert M.server_sasl("SCRAM-SHA-1", b"e=invalid-proof") == ("e=invalid-proof", False)
    assert M.server_sasl("LOGIN", b"Password:") == ("Password:", False)


def test_observer_masks_the_334_line_that_carries_the_server_signature() -> None:
    import base64

    from smtpgate.client.auth import AuthSend
    from smtpgate.tools.session import TranscriptObserver

    t = Transcript()
    obs = TranscriptObserver(t, M)
    final = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
    line = b"334 " + base64.b64encode(final) + b"\r\n"
    obs.auth_step("SCRAM-SHA-256", AuthSend(b"Yz1iaXdz\r\n", b"c=biws,r=a,p=x", 1), False)
    obs.received(line, False)
    obs.auth_step("SCRAM-SHA-256", AuthSend(b"\r\n", b"", 2, challenge=final), False)
    shown = "\n".join(t.lines())
    assert "<- 334 " + MASK in shown
    assert "  < v=" + MASK in shown
    assert base64.b64encode(final).decode() not in shown
    assert "6rriTRBi23WpRR" not in shown


def test_an_auth_result_quoting_the_secret_is_masked() -> None:
    """What the audit's credentials probe and the tester keep of a refused login:
    a server that echoes the password into its reply must not put it in a report."""
    from smtpgate.client.auth import ClientAuthResult
    from smtpgate.client.replies import ServerReply

    result = ClientAuthResult("LOGIN", "failure",
                              ServerReply(535, "5.7.8", ("bad password 's3cret-pw'",)),
                              detail="535 5.7.8 bad password 's3cret-pw'")
    masked = Masker(("s3cret-pw",)).auth_result(result)
    assert "s3cret-pw" not in str(masked.to_json())
    assert masked.detail == "535 5.7.8 bad password '********'"
    assert masked.reply is not None and masked.reply.lines == ("bad password '********'",)


def test_printable_escapes_what_reverses_or_drives_a_terminal() -> None:
    """Only C0 and DEL were escaped: a server's reply with U+202E, a C1 CSI (0x9b,
    an escape sequence on 8-bit terminals) or U+2028 reached the tester's terminal."""
    reply = "250 ok \u202egnp.exe \x9b2J \u2028 grüße".encode()
    assert printable(reply) == "250 ok \\u202egnp.exe \\x9b2J \\u2028 grüße"


def test_the_audits_table_escapes_a_banner() -> None:
    import io

    from rich.console import Console

    from smtpgate.tools.audit import Target, TargetReport
    from smtpgate.tools.report import observations

    report = TargetReport(Target("mx.example.org", 587, "starttls"), reachable=True,
                          mode_used="plain", banner="220 mx \u202e[red]gnp.exe\x1b[2J")
    out = io.StringIO()
    Console(file=out, width=200, color_system=None).print(observations(report))
    assert "220 mx \\u202e[red]gnp.exe\\x1b[2J" in out.getvalue()


def test_every_transcript_line_is_escaped_not_only_what_was_received() -> None:
    """The tester's error lines quote the server ("** STARTTLS refused: 454 ...",
    "** MAIL refused: ..."): they reached the terminal raw, an OSC sequence, a C1 CSI
    or a U+202E with them, though the "<-" line above was escaped."""
    from smtpgate.tools.transcript import Transcript

    t = Transcript()
    t.add("error", "STARTTLS refused: 454 4.7.0 \x1b]0;pwned\x07 \u202egnp.exe \x9b2J")
    shown = "** STARTTLS refused: 454 4.7.0 \\x1b]0;pwned\\x07 \\u202egnp.exe \\x9b2J"
    assert t.lines() == [shown]
    assert t.to_json()[0]["text"] == t.lines()[0][3:]
    t.add("recv", "250 ok \\x1b")  # already escaped (printable): not escaped twice
    assert t.lines()[-1] == "<- 250 ok \\x1b"
    t.add("send", "Subject: a\tfolded header")  # a message line sent: its tab stays
    assert t.lines()[-1] == "-> Subject: a\tfolded header"


def test_the_audits_notes_and_error_are_escaped() -> None:
    """A note ("TLS 1.0 probe: STARTTLS refused: <reply>", the mechanisms a server
    offered) and a target's error ("server refused the session: <reply>") were
    printed raw, while the banner and the findings were escaped."""
    import io

    from rich.console import Console

    from smtpgate.tools.audit import Target, TargetReport
    from smtpgate.tools.report import target_block

    audited = TargetReport(Target("mx.example.org", 587, "starttls"), reachable=True,
                           mode_used="plain", banner="mx",
                           notes=["TLS 1.0 probe: STARTTLS refused: 454 \x1b]0;x\x07\u202eab"])
    refused = TargetReport(Target("mx.example.org", 465, "implicit"), reachable=True,
                           error="server refused the session: 554 \x9b2J\u202eab")
    for report, shown in ((audited, "454 \\x1b]0;x\\x07\\u202eab"),
                          (refused, "554 \\x9b2J\\u202eab")):
        out = io.StringIO()
        Console(file=out, width=200, color_system=None).print(target_block(report))
        assert shown in out.getvalue()
        assert not any(c in out.getvalue() for c in "\x1b\x07\x9b\u202e")
