"""Write the checked-in seed corpora (fuzz/corpus/<target>/): RFC test vectors,
the dialog transcripts of tests/dialogs, and a config as `smtpgate init` writes it.

Run from the project root: ``.venv/bin/python fuzz/make_seeds.py``. The seeds are
files so libFuzzer can read them; this script says where each comes from.
"""

from __future__ import annotations

import base64
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "src"))
import _common as C

from smtpgate.sasl.registry import server_mechanism_names

MECHS = sorted(server_mechanism_names())
SEP = C.SEP


def mech(name: str) -> bytes:
    return bytes([MECHS.index(name)])


def scram_exchange(name: str, cb: dict[str, bytes]) -> list[bytes]:
    """A valid SCRAM exchange for the RFC account (RFC 5802 §5 / RFC 7677 §3 nonces)."""
    h = "sha256" if "256" in name else "sha1"
    salt, it, cnonce, snonce = C.RFC_SCRAM[h]
    flag = "p=tls-exporter" if name.endswith("-PLUS") else "n"
    gs2 = f"{flag},,"
    bare = f"n=user,r={cnonce}"
    server_first = f"r={cnonce}{snonce},s={base64.b64encode(salt).decode()},i={it}"
    cbind = gs2.encode() + (cb["tls-exporter"] if flag != "n" else b"")
    without_proof = f"c={base64.b64encode(cbind).decode()},r={cnonce}{snonce}"
    salted = C.salted_password(h, C.RFC_PASSWORD, salt, it)
    proof, sig = C.scram_proof_and_signature(h, salted, f"{bare},{server_first},{without_proof}"
                                             .encode())
    final = f"{without_proof},p={base64.b64encode(proof).decode()}"
    return [(gs2 + bare).encode(), server_first.encode(), final.encode(),
            b"v=" + base64.b64encode(sig)]


def sasl_server_seeds() -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for name in ("SCRAM-SHA-1", "SCRAM-SHA-256", "SCRAM-SHA-1-PLUS", "SCRAM-SHA-256-PLUS"):
        first, _, final, _ = scram_exchange(name, C.CB_DATA)
        flags = 1 if name.endswith("-PLUS") else 0
        out[name] = mech(name) + bytes([flags]) + SEP.join([first, final, b""])
        out[name + "-no-initial"] = mech(name) + bytes([flags | 0x20]) + SEP.join(
            [first, final, b""])
        out[name + "-unknown-user"] = mech(name) + bytes([flags]) + SEP.join(
            [first.replace(b"n=user", b"n=nobody"), final, b""])
    out["PLAIN"] = mech("PLAIN") + b"\x00" + b"\0user\0pencil"
    out["PLAIN-authzid"] = mech("PLAIN") + b"\x00" + b"user\0user\0pencil"
    out["PLAIN-no-initial"] = mech("PLAIN") + b"\x20" + b"\0user\0pencil"
    out["PLAIN-wrong"] = mech("PLAIN") + b"\x00" + b"\0user\0pencils"
    out["LOGIN"] = mech("LOGIN") + b"\x20" + SEP.join([b"user", b"pencil"])
    out["LOGIN-initial"] = mech("LOGIN") + b"\x00" + SEP.join([b"user", b"pencil"])
    # RFC 2195 §2's example exchange.
    out["CRAM-MD5"] = mech("CRAM-MD5") + b"\x00" + b"tim b913a602c7eda7a495b4e6e7334d3890"
    token = C.RFC_TOKEN.encode()
    out["OAUTHBEARER"] = mech("OAUTHBEARER") + b"\x00" + (
        b"n,a=user,\x01host=server.example.com\x01port=587\x01auth=Bearer " + token
        + b"\x01\x01")
    out["OAUTHBEARER-discovery"] = mech("OAUTHBEARER") + b"\x00" + SEP.join(
        [b"n,,\x01auth=\x01\x01", b"\x01"])
    out["XOAUTH2"] = mech("XOAUTH2") + b"\x00" + (
        b"user=user\x01auth=Bearer " + token + b"\x01\x01")
    if "EXTERNAL" in MECHS:
        out["EXTERNAL"] = mech("EXTERNAL") + b"\x40"
        out["EXTERNAL-authzid"] = mech("EXTERNAL") + b"\x40" + b"user"
        out["EXTERNAL-no-cert"] = mech("EXTERNAL") + b"\x00"
    return out


def sasl_client_seeds() -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for name in ("SCRAM-SHA-1", "SCRAM-SHA-256", "SCRAM-SHA-1-PLUS", "SCRAM-SHA-256-PLUS"):
        _, server_first, _, server_final = scram_exchange(name, C.CB_DATA)
        flags = 1 if name.endswith("-PLUS") else 0
        out[name] = mech(name) + bytes([flags]) + SEP.join([server_first, server_final])
        out[name + "-e"] = mech(name) + bytes([flags]) + SEP.join(
            [server_first, b"e=invalid-proof"])
        # The SMTP loop: 334 server-first, 334 v=, 235 (a first byte of 0 is 334, 3 is 235).
        out[name + "-smtp"] = mech(name) + bytes([flags | 2]) + SEP.join(
            [b"\x00" + server_first, b"\x00" + server_final, b"\x03" + b"2.7.0 ok"])
        out[name + "-smtp-long"] = mech(name) + bytes([flags | 6]) + SEP.join(
            [b"\x00", b"\x00" + server_first, b"\x00" + server_final, b"\x03" + b"2.7.0 ok"])
        out[name + "-smtp-235-early"] = mech(name) + bytes([flags | 2]) + SEP.join(
            [b"\x00" + server_first, b"\x03" + b"2.7.0 ok"])
    out["CRAM-MD5"] = mech("CRAM-MD5") + b"\x00" + b"<1896.697170952@postoffice.reston.mci.net>"
    out["LOGIN"] = mech("LOGIN") + b"\x00" + SEP.join([b"Username:", b"Password:"])
    out["PLAIN"] = mech("PLAIN") + b"\x00" + b""
    out["PLAIN-smtp"] = mech("PLAIN") + b"\x06" + SEP.join([b"\x00", b"\x03" + b"2.7.0 ok"])
    out["LOGIN-smtp"] = mech("LOGIN") + b"\x02" + SEP.join(
        [b"\x00Username:", b"\x00Password:", b"\x03" + b"2.7.0 ok"])
    out["OAUTHBEARER"] = mech("OAUTHBEARER") + b"\x00" + (
        b'{"status":"invalid_token","scope":"mail","openid-configuration":"https://x/"}')
    out["XOAUTH2"] = mech("XOAUTH2") + b"\x00" + b'{"status":"401","schemes":"bearer"}'
    return out


def reply_seeds() -> dict[str, bytes]:
    return {
        "greeting-ehlo": b"\x03220 mx.test ESMTP ready\r\n250-mx.test\r\n250-PIPELINING\r\n"
        b"250-SIZE 35000000\r\n250-AUTH PLAIN LOGIN SCRAM-SHA-256\r\n250-AUTH=LOGIN\r\n"
        b"250-8BITMIME\r\n250-SMTPUTF8\r\n250-ENHANCEDSTATUSCODES\r\n250 STARTTLS\r\n",
        "enhanced": b"\x05220 x\r\n250-mx\r\n250 SIZE\r\n550-5.7.1 no\r\n550 5.7.1 really\r\n",
        "bare-lf": b"\x01220 x\n250 ok\n334 \n334 dXNlcg==\r\n235 2.7.0 ok\r\n",
        "code-only": b"\x07220\r\n250\r\n421 4.3.2 bye\r\n",
        "garbage": b"\x02220 x\r\n25x oops\r\n",
    }


def b64(data: bytes) -> bytes:
    return base64.b64encode(data) or b"="


def dialog_streams() -> dict[str, bytes]:
    """The client side of each tests/dialogs transcript (its "C:" lines)."""
    out = {}
    for path in sorted((ROOT / "tests" / "dialogs").glob("*.smtp")):
        lines = [ln[3:] if ln.startswith("C: ") else "" for ln in path.read_text().splitlines()
                 if ln.startswith("C:")]
        out["dialog-" + path.stem] = "".join(ln + "\r\n" for ln in lines).encode()
    return out


def engine_seeds() -> dict[str, bytes]:
    """Byte 0: session flags (1 = TLS on); byte 1: the cut seed; then the client's bytes."""
    tls, clear = b"\x01\x07", b"\x00\x03"
    plain = b"AUTH PLAIN " + b64(b"\0user\0pencil") + b"\r\n"
    mail = b"MAIL FROM:<user@example.org> BODY=8BITMIME SIZE=100\r\nRCPT TO:<bob@example.net>\r\n"
    out = {k: tls + v for k, v in dialog_streams().items()}
    out["plain-message"] = tls + b"EHLO c\r\n" + plain + mail + (
        b"DATA\r\nSubject: x\r\n\r\n..dot\r\n.\r\nQUIT\r\n")
    out["pipelined"] = tls + b"EHLO c\r\n" + plain + mail + b"DATA\r\nhi\r\n.\r\n" + mail + (
        b"DATA\r\n.\r\nRSET\r\nNOOP\r\nQUIT\r\n")
    out["smuggling"] = tls + b"EHLO c\r\n" + plain + mail + (
        b"DATA\r\nx\n.\nMAIL FROM:<evil@x>\r\n\r.\r\n.\n\r\n.\r\nQUIT\r\n")
    out["bdat"] = tls + b"EHLO c\r\n" + plain + b"BDAT 3\r\nx\r\n" + mail + (
        b"BDAT 12\r\nx\r\n.\r\nMAIL F\r\nDATA\r\nBDAT 1 LAST\r\n\rRSET\r\nBDAT q\r\n")
    out["bare-lf-normalized"] = b"\x05\x09" + b"EHLO c\n" + plain + mail + (
        b"DATA\nline\nmore\r\n.\r\n")
    out["too-big"] = b"\x09\x02" + b"EHLO c\r\n" + plain + mail.replace(b" SIZE=100", b"") + (
        b"DATA\r\n" + b"A\xfe\xfe\x02" + b"\r\n.\r\nQUIT\r\n")
    out["long-line"] = tls + b"EHLO c\r\nNOOP x\xfe\xfe\x10\r\nAUTH PLAIN " + (
        b"A\xfe\xfe\xc0\r\nNOOP\r\n")
    out["starttls"] = clear + b"EHLO c\r\nMAIL FROM:<a@b>\r\nSTARTTLS\r\nEHLO injected\r\n"
    out["http"] = clear + b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    out["login"] = tls + b"EHLO c\r\nAUTH LOGIN\r\n" + b64(b"user") + b"\r\n" + (
        b64(b"pencil") + b"\r\n" + mail + b"QUIT\r\n")
    out["login-cancel"] = tls + b"EHLO c\r\nAUTH LOGIN " + b64(b"user") + b"\r\n*\r\nQUIT\r\n"
    out["cram-md5"] = tls + b"EHLO c\r\nAUTH CRAM-MD5\r\n" + b64(b"tim 0123456789abcdef0123456789abcdef") + (
        b"\r\nQUIT\r\n")
    for name in ("SCRAM-SHA-1", "SCRAM-SHA-256", "SCRAM-SHA-256-PLUS"):
        first, _, final, _ = scram_exchange(name, C.CB_DATA)
        out["scram-" + name] = tls + b"EHLO c\r\nAUTH " + name.encode() + b" " + b64(first) + (
            b"\r\n" + b64(final) + b"\r\n\r\n" + mail + b"DATA\r\nhi\r\n.\r\nQUIT\r\n")
    out["oauth"] = tls + b"EHLO c\r\nAUTH OAUTHBEARER " + b64(
        b"n,a=user,\x01auth=Bearer " + C.RFC_TOKEN.encode() + b"\x01\x01") + b"\r\n\x01\r\n"
    out["xoauth2"] = tls + b"EHLO c\r\nAUTH XOAUTH2 " + b64(
        b"user=user\x01auth=Bearer abc\x01\x01") + b"\r\n\r\n"
    out["external"] = b"\x41\x01" + b"EHLO c\r\nAUTH EXTERNAL =\r\n" + mail + b"DATA\r\n.\r\n"
    out["utf8"] = tls + b"EHLO c\r\n" + plain + (
        "MAIL FROM:<jos\u00e9@example.org> SMTPUTF8\r\nRCPT TO:<\u00fc@x.org>\r\n".encode()) + (
        b"MAIL FROM:<a@b> AUTH=user+2Bx SIZE=1\r\nVRFY x\r\nHELP\r\nHELO h\r\n")
    # Paths without angle brackets (printers, scanners), and the ambiguous ones refused.
    out["bare-path"] = tls + b"EHLO c\r\n" + plain + (
        b"MAIL FROM: user@example.org SIZE=100 AUTH=<>\r\nRCPT TO:bob@example.net\r\n"
        b"RCPT TO:Bob <c@d>\r\nRCPT TO:deny@x NOTIFY=NEVER\r\nDATA\r\nhi\r\n.\r\n"
        b"MAIL FROM:a@b c@d\r\nMAIL FROM:a@b,c@d\r\nMAIL FROM:deny@x\r\nQUIT\r\n")
    # Byte 1 bit 7: the listener trusts this peer with XCLIENT (Postfix's proxy).
    out["xclient"] = b"\x01\x80" + b"EHLO proxy\r\nXCLIENT NAME=[UNAVAILABLE] ADDR=192.0.2.1 " + (
        b"LOGIN=user PROTO=ESMTP HELO=c\r\nEHLO c\r\n" + mail + b"DATA\r\nx\r\n.\r\n")
    return out


def config_seeds() -> dict[str, bytes]:
    """The config `smtpgate init` writes, and every TOML example in docs/."""
    import re
    import subprocess
    import tempfile

    out = {}
    with tempfile.TemporaryDirectory() as d:
        subprocess.run([str(ROOT / ".venv" / "bin" / "smtpgate"), "init", "--dir", d],
                       check=True, capture_output=True)
        out["init"] = (Path(d) / "smtpgate.toml").read_bytes()
    for doc in sorted((ROOT / "docs").glob("*.md")):
        for i, block in enumerate(re.findall(r"```toml\n(.*?)```", doc.read_text(), re.DOTALL)):
            out[f"docs-{doc.stem}-{i}"] = block.encode()
    return out


def dovecot_seeds() -> dict[str, bytes]:
    """Byte 0: behaviour (mechanism set 0: SCRAM, PLAIN, LOGIN, CRAM-MD5); byte 1: the
    cut seed; then what Postfix or Exim sends (their transcripts, protocol digest §3.1)."""
    pf = b"service=smtp\tnologin\tlip=127.0.0.1\trip=127.0.0.1\tsecured"
    ex = b"service=smtp\trip=192.0.2.7\tlip=127.0.0.1\tsecured"
    postfix = b"VERSION\t1\t0\nCPID\t25356\n"
    exim = b"VERSION\t1\t0\nCPID\t4242\n"
    first, _, final, _ = scram_exchange("SCRAM-SHA-256", {})
    out = {
        "postfix-plain": postfix + b"AUTH\t1\tPLAIN\t" + pf + b"\tresp=" + b64(
            b"\0user\0pencil") + b"\n",
        "postfix-login": postfix + b"AUTH\t3\tLOGIN\t" + pf + b"\nCONT\t3\t" + b64(b"user")
        + b"\nCONT\t3\t" + b64(b"pencil") + b"\n",
        "postfix-scram": postfix + b"AUTH\t2\tSCRAM-SHA-256\t" + pf + b"\nCONT\t2\t" + b64(
            first) + b"\nCONT\t2\t" + b64(final) + b"\nCONT\t2\t\n",
        "exim-login": exim + b"AUTH\t1\tLOGIN\t" + ex + b"\tresp=\nCONT\t1\t" + b64(b"user")
        + b"\nCONT\t1\t" + b64(b"pencil") + b"\n",
        "cancel-and-reuse": postfix + b"AUTH\t1\tLOGIN\t" + pf + b"\nCANCEL\t1\nAUTH\t1\tPLAIN"
        b"\t" + pf + b"\tresp=" + b64(b"\0user\0wrong") + b"\nCONT\t9\tAAAA\n",
        "cram-md5": postfix + b"AUTH\t4\tCRAM-MD5\t" + pf + b"\nCONT\t4\t" + b64(
            b"tim b913a602c7eda7a495b4e6e7334d3890") + b"\n",
        "long-line": postfix + b"AUTH\t1\tPLAIN\t" + pf + b"\tresp=A\xfe\xfe\xff\n",
    }
    flags = {"exim-login": b"\x08", "cancel-and-reuse": b"\x08"}
    return {k: flags.get(k, b"\x00") + b"\x05" + v for k, v in out.items()}


def auth_http_seeds() -> dict[str, bytes]:
    """Byte 0: the cut seed; then nginx's request (its mail auth_http module)."""
    base = (b"GET /auth HTTP/1.0\r\nHost: localhost\r\nAuth-Method: {m}\r\nAuth-User: user\r\n"
            b"Auth-Pass: pencil\r\nAuth-Protocol: smtp\r\nAuth-Login-Attempt: {n}\r\n"
            b"Client-IP: 192.0.2.1\r\nClient-Host: [UNAVAILABLE]\r\n{extra}\r\n")
    smtp = (b"Auth-SMTP-Helo: client.example\r\nAuth-SMTP-From: MAIL FROM:<user@example.org>\r\n"
            b"Auth-SMTP-To: RCPT TO:<bob@example.net>\r\n")
    def req(m: bytes, n: bytes, extra: bytes) -> bytes:
        return base.replace(b"{m}", m).replace(b"{n}", n).replace(b"{extra}", extra)
    return {
        "plain": b"\x03" + req(b"plain", b"1", smtp),
        "plain-tls": b"\x05" + req(b"plain", b"2", b"Auth-SSL: on\r\nAuth-SSL-Protocol: TLSv1.3\r\n"),
        "cram-md5": b"\x07" + req(b"cram-md5", b"1", b"Auth-Salt: <4193.1@mx.test>\r\n"),
        "escaped": b"\x01" + req(b"plain", b"3", b"").replace(
            b"Auth-User: user", b"Auth-User: us%0D%0Aer%25").replace(b"1\r\n", b"1\r\n"),
        "none": b"\x02" + req(b"none", b"1", smtp),
    }


def policy_seeds() -> dict[str, bytes]:
    """Byte 0: the cut seed; then requests as Postfix's check_policy_service sends them."""
    req = (b"request=smtpd_access_policy\nprotocol_state=RCPT\nprotocol_name=ESMTP\n"
           b"client_address=192.0.2.1\nclient_name=client.example\nhelo_name=client.example\n"
           b"sender=user@example.org\nrecipient=bob@example.net\nrecipient_count=0\nqueue_id=\n"
           b"instance=1a2b.5f3c.1\nsize=12345\nsasl_method=plain\nsasl_username=user\n"
           b"sasl_sender=\nencryption_protocol=TLSv1.3\nserver_port=587\n\n")
    return {
        "rcpt": b"\x03" + req,
        "two": b"\x05" + req + req.replace(b"RCPT", b"DATA").replace(b"count=0", b"count=1"),
        "crlf": b"\x01" + req.replace(b"\n", b"\r\n"),
        "end-of-message": b"\x02" + req.replace(b"RCPT", b"END-OF-MESSAGE"),
    }


def from_header_seeds() -> dict[str, bytes]:
    """Messages as mail clients write them, and issue 16's From spoofs; the account
    owns alice@example.org."""
    tb = (b"Message-ID: <0f3e@example.org>\r\nDate: Tue, 1 Dec 2026 03:00:00 +0000\r\n"
          b"MIME-Version: 1.0\r\nUser-Agent: Mozilla Thunderbird\r\nContent-Language: en-US\r\n"
          b"To: Bob <bob@example.net>\r\nFrom: Alice Example <alice@example.org>\r\n"
          b"Subject: hi\r\nContent-Type: text/plain; charset=UTF-8; format=flowed\r\n"
          b"Content-Transfer-Encoding: 7bit\r\n\r\nhello\r\n")
    apple = (b"From: =?utf-8?Q?Alice_Ex=C3=A4mple?= <alice@example.org>\r\nContent-Type: text/plain;"
             b"\r\n\tcharset=us-ascii\r\nContent-Transfer-Encoding: 7bit\r\nMime-Version: 1.0 "
             b"(Mac OS X Mail 16.0 \\(3774.600.62\\))\r\nSubject: hi\r\nMessage-Id: <1@x>\r\n"
             b"Date: Tue, 1 Dec 2026 03:00:00 +0100\r\nTo: bob@example.net\r\n\r\nhello\r\n")
    outlook = (b"From: \"Example, Alice\" <alice@example.org>\r\nTo: \"bob@example.net\"\r\n"
               b"\t<bob@example.net>\r\nSubject: hi\r\nThread-Topic: hi\r\nThread-Index: AQHX\r\n"
               b"Date: Tue, 1 Dec 2026 03:00:00 +0000\r\nMessage-ID:\r\n <AM0P@eurprd.outlook.com>\r\n"
               b"Content-Language: en-US\r\nX-MS-Has-Attach:\r\nContent-Type: text/plain; "
               b"charset=\"us-ascii\"\r\nMIME-Version: 1.0\r\n\r\nhello\r\n")
    return {
        "thunderbird": tb,
        "apple-mail": apple,
        "outlook": outlook,
        "obs-from-space": b"From : ceo@bank.example\r\nTo: x@y.org\r\n\r\nx\r\n",
        "obs-from-tab": b"From\t: ceo@bank.example\r\n\r\n",
        "late-from": b"X-Pad: " + b"a\xfe\xfe\xff\r\n" * 4 + b"From: ceo@bank.example\r\n\r\n",
        "display-name": b"From: \"ceo@bank.example\" <alice@example.org>\r\n\r\n",
        "encoded-word": b"From: =?utf-8?b?Y2VvQGJhbmsuZXhhbXBsZQ==?= <alice@example.org>\r\n\r\n",
        "two-froms": b"From: alice@example.org\r\nFROM: ceo@bank.example\r\n\r\n",
        "folded": b"From: Alice\r\n <alice@example.org>,\r\n\tceo@bank.example\r\n\r\n",
        "group": b"From: team: alice@example.org, ceo@bank.example;\r\n\r\n",
        "sender": b"From: alice@example.org\r\nSender: ceo@bank.example\r\n\r\n",
        "no-from": b"Subject: x\r\n\r\nFrom: alice@example.org\r\n",
        "comment": b"From: alice@example.org (ceo@bank.example)\r\n\r\n",
        "route": b"From: <@relay.example:alice@example.org>\r\n\r\n",
    }


def proxy_header_seeds() -> dict[str, bytes]:
    """Byte 0: the cut seed; then what HAProxy sends (send-proxy, send-proxy-v2)."""
    import struct

    sys.path.insert(0, str(ROOT / "src"))
    from smtpgate.frontdoor.proxy_header import V2_SIGNATURE, crc32c

    def v2(ver_cmd: int, fam: int, body: bytes, tlvs: bytes = b"", crc: bool = False) -> bytes:
        if crc:
            tlvs += b"\x03\x00\x04\x00\x00\x00\x00"
        head = V2_SIGNATURE + bytes([ver_cmd, fam]) + struct.pack(">H", len(body + tlvs))
        out = head + body + tlvs
        if crc:
            out = out[:-4] + struct.pack(">I", crc32c(out))
        return out

    ip4 = bytes([192, 0, 2, 1, 198, 51, 100, 2]) + struct.pack(">HH", 56324, 465)
    ip6 = bytes(10) + b"\xff\xff" + bytes([192, 0, 2, 1]) + bytes(15) + b"\x01" + struct.pack(
        ">HH", 1, 587)
    ssl = b"\x20\x00\x0b\x07\x00\x00\x00\x00\x21\x00\x03TLS"
    return {
        "v1-tcp4": b"\x03PROXY TCP4 192.0.2.1 198.51.100.2 56324 587\r\nEHLO c\r\n",
        "v1-tcp6": b"\x05PROXY TCP6 2001:db8::1 2001:db8::2 4000 465\r\n\x16\x03\x01",
        "v1-unknown": b"\x01PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n",
        "v2-ipv4": b"\x03" + v2(0x21, 0x11, ip4) + b"\x16\x03\x01\x00",
        "v2-ipv6-mapped-tlvs-crc": b"\x07" + v2(0x21, 0x21, ip6, b"\x01\x00\x02h2" + ssl, crc=True),
        "v2-local": b"\x02" + v2(0x20, 0x00, b""),
        "v2-unix": b"\x04" + v2(0x21, 0x31, bytes(216)),
    }


def write(target: str, seeds: dict[str, bytes]) -> None:
    d = HERE / "corpus" / target
    d.mkdir(parents=True, exist_ok=True)
    for name, data in seeds.items():
        fname = "seed-" + "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
        (d / fname).write_bytes(data)


def main() -> None:
    write("sasl_server", sasl_server_seeds())
    write("sasl_client", sasl_client_seeds())
    write("client_replies", reply_seeds())
    write("smtp_engine", engine_seeds())
    write("config", config_seeds())
    write("dovecot_auth", dovecot_seeds())
    write("auth_http", auth_http_seeds())
    write("policy", policy_seeds())
    write("from_header", from_header_seeds())
    write("proxy_header", proxy_header_seeds())


if __name__ == "__main__":
    main()
