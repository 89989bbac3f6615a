"""nginx's mail proxy in front of smtpgate (docs/integration.md, "nginx mail proxy"):
``auth_http`` pointing at smtpgate's auth listener, ``xclient on``, and the
upstream listener that trusts XCLIENT from nginx's address only.

One smtpgate and one nginx (``master_process off``, so its one process is ours
to stop) for the module. Clients connect to nginx from their own loopback
addresses (127.0.0.x), which nginx passes as ``Client-IP`` and ``XCLIENT ADDR``:
the guard and the Received header must see those, not nginx's 127.0.0.1.
"""

from __future__ import annotations

import base64
import json
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .conftest import LOGIN_IN_RECEIVED, Server, free_port, make_server, require_tool

PASSWORD = "Tangerine-Walrus-Cable-19"
ALICE, CAROL = "alice@example.org", "carol@example.org"
#: Names nginx cannot write into XCLIENT LOGIN= as typed (it copies them raw, and
#: XCLIENT's values are xtext): a "+" and a non-ASCII letter.
PLUS, UMLAUT = "ann+sales@example.org", "j\u00f6rg@example.org"
PENALTY_BASE = 2

GUARD = f"""
[guard]
allowlist = []
penalty_base = {PENALTY_BASE}
penalty_max = 8
"""
#: Concurrent connections from one address: small, so that nginx's sessions (all
#: from 127.0.0.1 to the upstream listener) pass it in a test.
PER_IP = 3
LIMITS = f"""
[limits]
max_connections_per_ip = {PER_IP}
"""

NGINX_CONF = """
load_module /usr/lib/nginx/modules/ngx_mail_module.so;
daemon off;
master_process off;
pid {root}/nginx.pid;
error_log {root}/error.log info;
events {{ worker_connections 64; }}
mail {{
    server_name mx.nginx.test;
    auth_http 127.0.0.1:{auth_http}/auth;
    auth_http_timeout 30s;
    xclient on;
    # external: a mechanism nginx offers and smtpgate does not serve (504).
    smtp_auth plain login cram-md5 external;
    server {{
        listen 127.0.0.1:{port};
        protocol smtp;
        starttls only;
        ssl_certificate {cert};
        ssl_certificate_key {key};
    }}
    server {{
        listen 127.0.0.1:{clear_port};
        protocol smtp;
    }}
    server {{
        # Behind a PROXY-protocol balancer, without set_real_ip_from.
        listen 127.0.0.1:{proxy_port} proxy_protocol;
        protocol smtp;
    }}
    server {{
        listen [::]:{dual_port} ipv6only=off;
        protocol smtp;
        starttls only;
        ssl_certificate {cert};
        ssl_certificate_key {key};
    }}
}}
"""


@dataclass
class Stack:
    smtpgate: Server
    nginx_port: int
    clear_port: int
    #: A dual-stack listener: IPv4 clients reach nginx as ::ffff:a.b.c.d.
    dual_port: int
    auth_http: int
    upstream: int
    nginx_root: Path
    #: nginx's listener that takes a PROXY header (no set_real_ip_from).
    proxy_port: int = 0

    def records(self) -> list[dict[str, Any]]:
        path = self.smtpgate.root / "auth.log"
        return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []

    def nginx_log(self) -> str:
        p = self.nginx_root / "error.log"
        return p.read_text(errors="replace")[-3000:] if p.exists() else ""


def _greets(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            return s.recv(100).startswith(b"220 ")
    except OSError:
        return False


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    nginx = require_tool("nginx")
    swaks_path = require_tool("swaks")
    assert swaks_path
    if not Path("/usr/lib/nginx/modules/ngx_mail_module.so").exists():
        pytest.fail("libnginx-mod-mail is not installed (make test installs it)")
    root = Path(tempfile.mkdtemp(prefix="sgnx-"))
    auth_http, upstream, nginx_port, clear_port = free_port(), free_port(), free_port(), free_port()
    dual_port, proxy_port = free_port(), free_port()
    doors = (
        f'\n[[listeners]]\nname = "from-nginx"\naddress = "127.0.0.1:{upstream}"\n'
        f'tls = "starttls"\nxclient_trusted = ["127.0.0.1/32"]\n'
        f'\n[[auth_listeners]]\nprotocol = "auth_http"\naddress = "127.0.0.1:{auth_http}"\n'
        f'upstream = "127.0.0.1:{upstream}"\n'
    )
    srv = make_server(root / "srv", doors + GUARD + LIMITS + LOGIN_IN_RECEIVED)
    text = srv.config.read_text()
    srv.config.write_text(text.replace(
        "\n[auth]\n", '\n[auth]\nmechanisms = ["SCRAM-SHA-256", "PLAIN", "LOGIN", "CRAM-MD5"]\n', 1))
    nginx_root = root / "nginx"
    nginx_root.mkdir()
    proc: subprocess.Popen[bytes] | None = None
    try:
        for name in (ALICE, CAROL, PLUS, UMLAUT):
            srv.add_user(name, PASSWORD)
        srv.cli("user", "cram-md5", ALICE, "--enable", "--password-stdin", stdin=PASSWORD + "\n")
        srv.start()
        (nginx_root / "nginx.conf").write_text(NGINX_CONF.format(
            root=nginx_root, auth_http=auth_http, port=nginx_port, clear_port=clear_port,
            dual_port=dual_port, proxy_port=proxy_port,
            cert=srv.ca, key=srv.root / "tls" / "key.pem"))
        with open(nginx_root / "stdout.log", "wb") as out:
            proc = subprocess.Popen(
                [nginx, "-p", str(nginx_root), "-e", str(nginx_root / "error.log"),
                 "-c", str(nginx_root / "nginx.conf")],
                stdout=out, stderr=out, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while not _greets(nginx_port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("nginx did not start:\n"
                                   + (nginx_root / "stdout.log").read_text(errors="replace")
                                   + (nginx_root / "error.log").read_text(errors="replace"))
            time.sleep(0.05)
        yield Stack(srv, nginx_port, clear_port, dual_port, auth_http, upstream, nginx_root,
                    proxy_port)
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGQUIT)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if srv.proc is not None:
            srv.stop()
        shutil.rmtree(root, ignore_errors=True)


def swaks(stack: Stack, source: str, mech: str, user: str, password: str,
          *extra: str, tls: bool = True, port: int | None = None) -> str:
    port = port or (stack.nginx_port if tls else stack.clear_port)
    proc = subprocess.run(
        [require_tool("swaks"), "-s", "127.0.0.1", "-p", str(port), *(["-tls"] if tls else []),
         "--local-interface", source, "-a", mech, "-au", user, "-ap", password,
         "--helo", "client.test", *extra],
        capture_output=True, text=True, timeout=60, check=False, stdin=subprocess.DEVNULL)
    return proc.stdout + proc.stderr


def auth_http_request(stack: Stack, headers: bytes) -> bytes:
    """What nginx would send, sent by hand: the answer's raw bytes."""
    with socket.create_connection(("127.0.0.1", stack.auth_http), timeout=30) as s:
        s.sendall(b"GET /auth HTTP/1.0\r\nHost: 127.0.0.1\r\n" + headers + b"\r\n")
        out = b""
        while chunk := s.recv(4096):
            out += chunk
    return out


def header_values(answer: bytes, name: bytes) -> list[bytes]:
    return [line.split(b":", 1)[1].strip() for line in answer.split(b"\r\n")
            if line.lower().startswith(name.lower() + b":")]


@pytest.mark.parametrize("mech, source", [
    ("PLAIN", "127.0.0.2"), ("LOGIN", "127.0.0.3"),
    # nginx issues the challenge and sends Auth-Salt; smtpgate checks the digest
    # against the account's stored CRAM-MD5 secret.
    ("CRAM-MD5", "127.0.0.8"),
])
def test_swaks_through_nginx_delivers_as_the_authenticated_sender(
    stack: Stack, mech: str, source: str
) -> None:
    before = len(stack.smtpgate.delivered())
    out = swaks(stack, source, mech, ALICE, PASSWORD, "-f", ALICE, "-t", "bob@example.net",
                "--header", f"Subject: through nginx {mech}")
    assert "250 2.0.0 OK queued" in out or "250 2.0.0" in out.split("DATA")[-1], \
        out + stack.nginx_log()
    files = stack.smtpgate.wait_for_mail(before + 1)
    msg = next(f.read_bytes() for f in files if f"through nginx {mech}".encode() in f.read_bytes())
    # The client nginx served, not nginx: XCLIENT ADDR, its HELO, and LOGIN as the sender.
    assert f"from client.test ([{source}])".encode() in msg
    assert f"(Authenticated sender: {ALICE})".encode() in msg
    assert b"with ESMTPA" in msg
    rec = [r for r in stack.records() if r["front_door"] == "auth_http"
           and r["client_ip"] == source]
    assert rec and rec[-1]["result"] == "success", stack.records()[-3:]
    # nginx reports SMTP AUTH LOGIN as "plain".
    assert rec[-1]["mechanism"] == ("CRAM-MD5" if mech == "CRAM-MD5" else "PLAIN")
    assert str(rec[-1]["tls"]).startswith("TLSv1.")  # nginx's Auth-SSL-Protocol


@pytest.mark.parametrize("typed, account, source", [
    (PLUS, PLUS, "127.0.0.21"),
    (UMLAUT, UMLAUT, "127.0.0.22"),
    ("ALICE@Example.ORG", ALICE, "127.0.0.23"),
])
def test_the_session_is_the_account_whatever_the_name_holds(
    stack: Stack, typed: str, account: str, source: str
) -> None:
    """nginx writes the login raw into ``XCLIENT LOGIN=``, whose value is xtext: a
    "+" was read as an xtext escape (``+sa`` is none) and UTF-8 is not xtext at
    all, so the upstream answered 501 and the client, its password accepted, got
    nginx's ``451 4.3.2 Internal server error``. smtpgate's OK now names the account
    in ``Auth-User``, xtext-encoded, which nginx sends instead of what was typed."""
    before = len(stack.smtpgate.delivered())
    if not account.isascii():
        # nginx offers no SMTPUTF8, so jörg's own address cannot be MAIL FROM here:
        # the session is his, so alice's address is not his to send as.
        out = swaks(stack, source, "PLAIN", typed, PASSWORD, "-f", ALICE, "-t", "bob@example.net")
        assert "235 " in out and "553 5.7.1" in out, out + stack.nginx_log()
        xclient = [ln for ln in stack.smtpgate.log_text().splitlines()
                   if "XCLIENT from" in ln and f"client {source}:" in ln]
        assert xclient and xclient[-1].endswith(f"login={account}"), xclient
        return
    out = swaks(stack, source, "PLAIN", typed, PASSWORD, "-f", account, "-t", "bob@example.net",
                "--header", f"Subject: login {source}")
    assert "235 " in out and "250 2.0.0" in out.split("DATA")[-1], out + stack.nginx_log()
    files = stack.smtpgate.wait_for_mail(before + 1)
    msg = next(f.read_bytes() for f in files if f"login {source}".encode() in f.read_bytes())
    assert f"(Authenticated sender: {account})".encode() in msg


def test_sender_ownership_applies_to_the_xclient_login(stack: Stack) -> None:
    out = swaks(stack, "127.0.0.10", "PLAIN", ALICE, PASSWORD, "-f", "mallory@elsewhere.test",
                "-t", "bob@example.net")
    assert "553 5.7.1 Sender address not owned by the authenticated user" in out, out


def test_wrong_password_gets_535_and_the_guards_auth_wait(stack: Stack) -> None:
    out = swaks(stack, "127.0.0.4", "PLAIN", CAROL, "wrong-password", "--quit-after", "AUTH")
    assert "535 5.7.8" in out, out + stack.nginx_log()
    # The next failure from a fresh address, asked as nginx asks: Auth-Wait is 1 s
    # (nginx's least for a retry); the guard's penalty is waited by smtpgate.
    answer = auth_http_request(stack, (
        b"Auth-Method: plain\r\nAuth-User: " + CAROL.encode() + b"\r\nAuth-Pass: nope\r\n"
        b"Auth-Protocol: smtp\r\nAuth-Login-Attempt: 1\r\nClient-IP: 127.0.0.5\r\n"
        b"Auth-SSL: on\r\nAuth-SSL-Protocol: TLSv1.3\r\n"))
    assert header_values(answer, b"Auth-Status") == [b"Authentication credentials invalid"]
    assert header_values(answer, b"Auth-Error-Code") == [b"535 5.7.8"]
    assert header_values(answer, b"Auth-Wait") == [b"1"]
    failures = [r for r in stack.records() if r.get("front_door") == "auth_http"
                and r.get("result") == "failure"]
    assert len(failures) >= 2


def test_the_penalty_is_waited_once_not_as_auth_wait_and_again_in_smtpgate(
    stack: Stack,
) -> None:
    """Auth-Wait was the guard's penalty: nginx waited it before the client's next
    try, and smtpgate waited the same penalty again before checking that try. Now
    Auth-Wait is 1 s and the penalty is waited once, by smtpgate."""

    def ask(attempt: int) -> tuple[bytes, float]:
        start = time.monotonic()
        answer = auth_http_request(stack, (
            b"Auth-Method: plain\r\nAuth-User: Waiter@Example.ORG\r\nAuth-Pass: nope\r\n"
            b"Auth-Protocol: smtp\r\nAuth-Login-Attempt: " + str(attempt).encode() +
            b"\r\nClient-IP: 127.0.0.21\r\nAuth-SSL: on\r\nAuth-SSL-Protocol: TLSv1.3\r\n"))
        assert header_values(answer, b"Auth-Error-Code") == [b"535 5.7.8"], answer
        return answer, time.monotonic() - start

    first, _ = ask(1)
    answered = time.monotonic()
    (wait,) = header_values(first, b"Auth-Wait")
    time.sleep(int(wait))  # what nginx does before the client's next try
    _, took = ask(2)
    between = time.monotonic() - answered
    assert took >= PENALTY_BASE - 0.1, took  # the penalty, waited by smtpgate
    assert between < 2 * PENALTY_BASE, between  # and not twice


def test_password_in_clear_to_nginx_is_refused_unchecked(stack: Stack) -> None:
    """nginx without TLS to its client (no Auth-SSL): the right password is refused
    with SMTP's 530, as smtpgate refuses AUTH before STARTTLS itself."""
    before = len(stack.records())
    out = swaks(stack, "127.0.0.9", "PLAIN", ALICE, PASSWORD, "--quit-after", "AUTH", tls=False)
    assert "530 5.7.0 Must issue a STARTTLS command first" in out, out + stack.nginx_log()
    # No password was checked; the refusal is in the auth log, as an AUTH in clear
    # on smtpgate's own port (found by the h27authlog review: nothing was written,
    # so fail2ban never saw it).
    [rec] = stack.records()[before:]
    assert (rec["client_ip"], rec["front_door"], rec["result"], rec["reason"],
            rec["username"]) == ("127.0.0.9", "auth_http", "refused", "AUTH before STARTTLS", ALICE)


def test_header_injection_in_auth_user_is_refused(stack: Stack) -> None:
    """A client's CR LF reaches us percent-encoded: it stays inside the name, which
    no account has, and nothing is echoed back into the answer."""
    answer = auth_http_request(stack, (
        b"Auth-Method: plain\r\nAuth-User: x%0D%0AAuth-Status:%20OK%0D%0AAuth-Server:%201.2.3.4"
        b"\r\nAuth-Pass: whatever\r\nAuth-Protocol: smtp\r\nAuth-Login-Attempt: 1\r\n"
        b"Client-IP: 127.0.0.6\r\nAuth-SSL: on\r\n"))
    assert header_values(answer, b"Auth-Status") == [b"Authentication credentials invalid"]
    assert header_values(answer, b"Auth-Server") == []
    # A raw CR in a header is not something nginx sends: 400, no Auth-Status at all.
    raw = auth_http_request(stack, (
        b"Auth-Method: plain\r\nAuth-User: x\rAuth-Status: OK\r\nAuth-Pass: p\r\n"
        b"Auth-Protocol: smtp\r\nClient-IP: 127.0.0.6\r\n"))
    assert raw.startswith(b"HTTP/1.0 400") and header_values(raw, b"Auth-Status") == []


@pytest.mark.parametrize("source, user, password, reason", [
    # A client that sends its login in Latin-1 (an old client, a legacy code page):
    # nginx passes the bytes on as typed (swaks sends the surrogate as the byte E4).
    ("127.0.0.41", "nobody-41@example.org", "p\udce4ss", "PLAIN: Auth-Pass is not UTF-8"),
    ("127.0.0.42", "n\udce4body@example.org", "whatever", "PLAIN: Auth-User is not UTF-8"),
    # nginx leaves DEL raw too: a password like any other, checked and wrong.
    ("127.0.0.43", "nobody-43@example.org", "bad\x7fpass", "unknown user"),
])
def test_a_login_nginx_passes_raw_is_535_in_the_auth_log_not_a_bad_request(
        stack: Stack, source: str, user: str, password: str, reason: str) -> None:
    """Each was an HTTP 400 ("bad request refused" in smtpgate's log, nothing in the
    auth log), which nginx 1.22 answers "451 4.3.2 Internal server error": the
    client retried the same login for ever and the guard counted nothing."""
    before, logged = len(stack.records()), len(stack.smtpgate.log_text())
    out = swaks(stack, source, "LOGIN", user, password, "--quit-after", "AUTH")
    assert "535 5.7.8" in out, out + stack.nginx_log()
    [rec] = [r for r in stack.records()[before:] if r.get("client_ip") == source]
    assert (rec["front_door"], rec["result"], rec["reason"]) == ("auth_http", "failure", reason)
    assert "bad request refused" not in stack.smtpgate.log_text()[logged:]


def test_a_tls_protocol_name_that_would_forge_auth_log_fields_is_refused(stack: Stack) -> None:
    """``Auth-SSL-Protocol`` went into the auth log's text line as sent (``tls=``,
    unquoted): any local process reaching the socket wrote ``tls=TLSv1.3
    mech=PLAIN user="root@example.org" ...`` before the real user's field. nginx
    sends OpenSSL's protocol name there (``TLSv1.3``), one token: anything else is
    a request nginx never sends."""
    logged = len(stack.smtpgate.log_text())
    answer = auth_http_request(stack, (
        b"Auth-Method: plain\r\nAuth-User: forged-tls@example.org\r\nAuth-Pass: x\r\n"
        b"Auth-Protocol: smtp\r\nAuth-Login-Attempt: 1\r\nClient-IP: 127.0.0.44\r\n"
        b'Auth-SSL: on\r\nAuth-SSL-Protocol: TLSv1.3 mech=PLAIN user="root@example.org"\r\n'))
    assert answer.startswith(b"HTTP/1.0 400"), answer
    assert 'user="root@example.org"' not in stack.smtpgate.log_text()[logged:]
    # What nginx sends is taken and logged as it is.
    answer = auth_http_request(stack, (
        b"Auth-Method: plain\r\nAuth-User: forged-tls@example.org\r\nAuth-Pass: x\r\n"
        b"Auth-Protocol: smtp\r\nAuth-Login-Attempt: 1\r\nClient-IP: 127.0.0.44\r\n"
        b"Auth-SSL: on\r\nAuth-SSL-Protocol: TLSv1.3\r\n"))
    assert header_values(answer, b"Auth-Error-Code") == [b"535 5.7.8"]
    [rec] = [r for r in stack.records() if r.get("client_ip") == "127.0.0.44"]
    assert rec["tls"] == "TLSv1.3"


def test_oversize_auth_http_request_is_refused(stack: Stack) -> None:
    answer = auth_http_request(stack, b"X-Filler: " + b"a" * 40000 + b"\r\n")
    assert answer.startswith(b"HTTP/1.0 400")


def test_xclient_from_an_untrusted_address_is_refused(stack: Stack) -> None:
    # The upstream listener trusts 127.0.0.1/32 only; this client comes from .7.
    with smtplib.SMTP("127.0.0.1", stack.upstream, source_address=("127.0.0.7", 0),
                      timeout=10) as s:
        code, caps = s.ehlo("attacker.test")
        assert code == 250 and b"XCLIENT" not in caps
        assert s.docmd(f"XCLIENT ADDR=192.0.2.1 LOGIN={ALICE}") == (
            550, b"5.7.0 Insufficient authorization for XCLIENT")
        assert s.docmd(f"MAIL FROM:<{ALICE}>")[0] == 530  # still not logged in
    # The regular submission listener trusts no one.
    with smtplib.SMTP("127.0.0.1", stack.smtpgate.submission, timeout=10) as s:
        s.ehlo("proxy.test")
        assert s.docmd(f"XCLIENT LOGIN={ALICE}")[0] == 550


def test_more_sessions_through_nginx_than_one_address_may_hold_all_go_on(
        stack: Stack) -> None:
    """nginx connects to the upstream listener from 127.0.0.1 for every client whose
    login it passed, and those connections counted against max_connections_per_ip
    like one client's: past it, a client whose login was a success in the auth log
    got nginx's '451 4.3.2 Internal server error' (the upstream's 421 at its
    greeting). Only the total counts them now; a direct client keeps its cap."""
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    with ExitStack() as held:
        sessions = []
        for n in range(PER_IP + 1):
            s = held.enter_context(smtplib.SMTP(
                "127.0.0.1", stack.nginx_port, source_address=(f"127.0.0.{60 + n}", 0),
                timeout=30))
            s.ehlo("client.test")
            s.starttls(context=ctx)
            s.ehlo("client.test")
            s.user, s.password = CAROL, PASSWORD
            try:
                code, text = s.auth("PLAIN", s.auth_plain)
            except smtplib.SMTPException as e:
                pytest.fail(f"session {n + 1} through nginx: {e}\n{stack.nginx_log()}")
            assert code == 235, (n, text)
            sessions.append(s)
        # Each is a session of the account on the upstream listener.
        assert [s.mail(CAROL)[0] for s in sessions] == [250] * (PER_IP + 1)
        # A direct client from one address keeps its cap.
        direct = [held.enter_context(smtplib.SMTP("127.0.0.1", stack.upstream,
                                                  source_address=("127.0.0.70", 0),
                                                  timeout=10))
                  for _ in range(PER_IP)]
        assert all(d.noop()[0] == 250 for d in direct)
        with pytest.raises(smtplib.SMTPConnectError) as refused:
            smtplib.SMTP("127.0.0.1", stack.upstream, source_address=("127.0.0.70", 0),
                         timeout=10)
        assert refused.value.smtp_code == 421


def test_after_a_mechanism_smtpgate_does_not_serve_the_client_may_choose_another(
        stack: Stack) -> None:
    """nginx advertises what its smtp_auth lists; smtpgate's 504 for one it does not
    serve came without Auth-Wait, so nginx closed the session, and a client that
    tries its preferred mechanism first (Python's smtplib: CRAM-MD5, with the docs'
    example and CRAM-MD5 not enabled) could not fall back (SMTPServerDisconnected).
    As on smtpgate's own port, the 504 leaves the session to the client."""
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    with smtplib.SMTP("127.0.0.1", stack.nginx_port, source_address=("127.0.0.71", 0),
                      timeout=30) as s:
        s.ehlo("client.test")
        s.starttls(context=ctx)
        _, caps = s.ehlo("client.test")
        assert b"EXTERNAL" in caps, caps
        code, text = s.docmd("AUTH", "EXTERNAL " + base64.b64encode(CAROL.encode()).decode())
        assert (code, text) == (504, b"5.5.4 Unrecognized authentication mechanism"), (
            code, text, stack.nginx_log())
        s.user, s.password = CAROL, PASSWORD
        assert s.auth("PLAIN", s.auth_plain)[0] == 235, stack.nginx_log()
        assert s.mail(CAROL)[0] == 250


def test_a_balancers_address_as_client_ip_is_said_in_the_log(stack: Stack) -> None:
    """nginx behind a PROXY-protocol balancer, without set_real_ip_from, sends the
    balancer's address as Client-IP (its client's only in Proxy-Protocol-Addr): the
    guard counted all its clients as one, the auth log named the balancer, and
    nothing said so. The log now says what to set in nginx."""
    with socket.create_connection(("127.0.0.1", stack.proxy_port), timeout=10) as s:
        s.sendall(f"PROXY TCP4 203.0.113.9 127.0.0.1 41111 {stack.proxy_port}\r\n".encode())
        f = s.makefile("rb")
        assert f.readline().startswith(b"220"), stack.nginx_log()
        s.sendall(b"EHLO client.test\r\n")
        while not f.readline().startswith(b"250 "):
            pass
        plain = base64.b64encode(f"\0{CAROL}\0{PASSWORD}".encode())
        s.sendall(b"AUTH PLAIN " + plain + b"\r\n")
        assert f.readline().startswith(b"530 5.7.0"), stack.nginx_log()  # no TLS to nginx
    deadline = time.monotonic() + 10
    while "set_real_ip_from 127.0.0.1;" not in stack.smtpgate.log_text():
        assert time.monotonic() < deadline, stack.smtpgate.log_text()[-3000:]
        time.sleep(0.1)
    assert "203.0.113.9" in stack.smtpgate.log_text()


BASE = (b"Auth-User: " + ALICE.encode() + b"\r\nAuth-Pass: " + PASSWORD.encode()
        + b"\r\nClient-IP: 127.0.0.11\r\nAuth-SSL: on\r\n")


@pytest.mark.parametrize("extra, status, code", [
    # smtp_auth none: submission needs a login, even for a good password.
    (b"Auth-Method: none\r\nAuth-Protocol: smtp\r\n", b"Authentication required", b"530 5.7.0"),
    # smtpgate serves SMTP only.
    (b"Auth-Method: plain\r\nAuth-Protocol: imap\r\n", b"Unrecognized authentication mechanism",
     b"504 5.5.4"),
    (b"Auth-Method: apop\r\nAuth-Protocol: smtp\r\n", b"Unrecognized authentication mechanism",
     b"504 5.5.4"),
])
def test_what_smtpgate_does_not_serve_is_refused(
    stack: Stack, extra: bytes, status: bytes, code: bytes
) -> None:
    answer = auth_http_request(stack, BASE + extra)
    assert header_values(answer, b"Auth-Status") == [status]
    assert header_values(answer, b"Auth-Error-Code") == [code]
    assert header_values(answer, b"Auth-Server") == []


def test_no_auth_wait_after_ten_attempts(stack: Stack) -> None:
    """nginx keeps memory per attempt: after 10, the failure ends the session."""
    answer = auth_http_request(stack, (
        b"Auth-Method: plain\r\nAuth-User: nobody@example.org\r\nAuth-Pass: x\r\n"
        b"Auth-Protocol: smtp\r\nAuth-Login-Attempt: 10\r\nClient-IP: 127.0.0.12\r\n"
        b"Auth-SSL: on\r\n"))
    assert header_values(answer, b"Auth-Error-Code") == [b"535 5.7.8"]
    assert header_values(answer, b"Auth-Wait") == []


def test_an_ipv4_client_of_a_dual_stack_nginx_is_logged_by_its_ipv4_address(stack: Stack) -> None:
    """nginx on [::] with ipv6only=off sends Client-IP ::ffff:127.0.0.13 for an IPv4
    client: the auth log names 127.0.0.13, the address the guard counts and fail2ban
    can ban, not '::ffff:7f00:d'."""
    before = len(stack.records())
    out = swaks(stack, "127.0.0.13", "PLAIN", CAROL, "wrong-again", "--quit-after", "AUTH",
                port=stack.dual_port)
    assert "535 5.7.8" in out, out + stack.nginx_log()
    [rec] = [r for r in stack.records()[before:] if r.get("front_door") == "auth_http"]
    assert (rec["client_ip"], rec["result"]) == ("127.0.0.13", "failure"), rec



def test_a_dual_stack_nginx_hands_over_an_ipv4_client_as_its_ipv4_address(stack: Stack) -> None:
    """nginx passes the same client as XCLIENT ADDR=IPV6:::ffff:127.0.0.14: the
    session behind it (its Received line, its log, the connection limits keyed by
    the client) is the IPv4 client, not '[IPv6:::ffff:7f00:e]'."""
    before = len(stack.smtpgate.delivered())
    out = swaks(stack, "127.0.0.14", "PLAIN", ALICE, PASSWORD, "-f", ALICE, "-t",
                "bob@example.net", "--header", "Subject: dual-stack", port=stack.dual_port)
    assert "250 2.0.0" in out.split("DATA")[-1], out + stack.nginx_log()
    files = stack.smtpgate.wait_for_mail(before + 1)
    msg = next(f.read_bytes() for f in files if b"Subject: dual-stack" in f.read_bytes())
    assert b"from client.test ([127.0.0.14])" in msg, msg[:300]
