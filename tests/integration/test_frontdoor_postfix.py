"""Postfix 3.7 with ``smtpd_sasl_type = dovecot`` pointing at smtpgate's auth
listener (docs/integration.md), over a unix socket and over TCP.

One smtpgate and one private Postfix for the module. The clients talk SMTP to
Postfix; Postfix relays their SASL exchange to smtpgate, which decides with the
client address Postfix passes (``rip``): distinct attackers are distinct loopback
source addresses (127.0.0.x), and each test uses its own accounts and addresses,
so the guard's state of one test does not reach another.
"""

from __future__ import annotations

import base64
import grp
import json
import shutil
import smtplib
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.peers.postfix_dovecot import GOOD, PostfixDovecot, running

from .conftest import Server, free_port, make_server, require_mta, require_tool
from .oauth_issuer import SCOPE, LocalIssuer

PASSWORD = "Lantern-Quartz-Harbor-58"
ALICE, BOB, DAVE = "alice@example.org", "bob@example.org", "dave@example.org"
LOCKOUT = 4

GUARD = f"""
[guard]
allowlist = []
penalty_base = 0.1
penalty_max = 0.4
lockout_threshold = {LOCKOUT}
known_lockout_threshold = 8
spray_accounts = 3
subnet_spray_accounts = 50
distributed_addresses = 5
throttle_interval = 60
"""

BROKEN_ISSUER = "https://broken.example.test/realms/mail"


@dataclass
class Stack:
    smtpgate: Server
    postfix: PostfixDovecot
    issuer: LocalIssuer
    broken: LocalIssuer
    #: smtpgate's TCP auth listener (the one Postfix's "tcp" service uses).
    door: int
    #: smtpgate's unix-socket auth listener (mode 0660, group postfix).
    door_socket: Path

    def port(self, service: str) -> int:
        return self.postfix.ports[service]

    def records(self) -> list[dict[str, Any]]:
        path = self.smtpgate.root / "auth.log"
        return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []

    def wait_record(self, before: int, **match: object) -> dict[str, Any]:
        deadline = time.monotonic() + 10
        while True:
            for rec in self.records()[before:]:
                if all(rec.get(k) == v for k, v in match.items()):
                    return rec
            if time.monotonic() > deadline:
                raise AssertionError(f"no auth-log record {match}: {self.records()[before:]}")
            time.sleep(0.05)


def _smtpgate(root: Path, sock: Path, tcp: int) -> tuple[Server, LocalIssuer, LocalIssuer]:
    issuer, broken = LocalIssuer(), LocalIssuer(issuer=BROKEN_ISSUER)
    doors = (
        f'\n[[auth_listeners]]\nprotocol = "dovecot"\nname = "postfix-unix"\n'
        f'address = "unix:{sock}"\nmode = "0660"\ngroup = "postfix"\n'
        f'\n[[auth_listeners]]\nprotocol = "dovecot"\nname = "postfix-tcp"\n'
        f'address = "127.0.0.1:{tcp}"\n'
    )
    srv = make_server(root, doors + GUARD + issuer.config("oauth/jwks.json")
                      + broken.config("oauth/broken.json"))
    text = srv.config.read_text()
    mechs = '"SCRAM-SHA-256", "SCRAM-SHA-1", "OAUTHBEARER", "XOAUTH2", "PLAIN", "LOGIN"'
    srv.config.write_text(text.replace(
        "\n[auth]\n", f'\n[auth]\nmechanisms = [{mechs}]\noauth_scope = "{SCOPE}"\n', 1))
    issuer.write_jwks(root / "oauth" / "jwks.json")
    broken.write_jwks(root / "oauth" / "broken.json")
    for name in (ALICE, BOB, DAVE):
        srv.add_user(name, PASSWORD)
    srv.start()
    # Checked at start-up, read at first use: gone now, the broken issuer's
    # tokens meet a key set that cannot be read (a backend fault).
    (root / "oauth" / "broken.json").unlink()
    return srv, issuer, broken


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    require_mta()
    sockdir = Path(tempfile.mkdtemp(prefix="sgdv-", dir="/tmp"))
    sockdir.chmod(0o755)
    sock = sockdir / "auth"
    tcp = free_port()
    root = Path(tempfile.mkdtemp(prefix="sgdv-srv-"))
    services = {
        "unix": {**GOOD, "smtpd_sasl_path": str(sock)},
        "tcp": {**GOOD, "smtpd_sasl_path": f"inet:127.0.0.1:{tcp}"},
    }
    srv: Server | None = None
    try:
        # smtpgate first: each smtpd reads the mechanism list once, at its first AUTH.
        srv, issuer, broken = _smtpgate(root / "srv", sock, tcp)
        with running(services) as pd:
            yield Stack(srv, pd, issuer, broken, tcp, sock)
    finally:
        if srv is not None and srv.proc is not None:
            srv.stop()
        shutil.rmtree(sockdir, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)


def run(cmd: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False,
                          input=stdin, stdin=None if stdin is not None else subprocess.DEVNULL)


def swaks(stack: Stack, service: str, mech: str, user: str, password: str) -> str:
    proc = run([require_tool("swaks"), "-s", "127.0.0.1", "-p", str(stack.port(service)), "-tls",
                "--tls-verify", "--tls-ca-path", str(stack.postfix.ca), "-a", mech, "-au", user,
                "-ap", password, "--quit-after", "AUTH", "--helo", "client.test"])
    return proc.stdout + proc.stderr


def gsasl(stack: Stack, service: str, mech: str) -> subprocess.CompletedProcess[str]:
    return run([require_tool("gsasl"), "--smtp", f"--connect=127.0.0.1:{stack.port(service)}",
                "--starttls", f"--x509-ca-file={stack.postfix.ca}", "--hostname=localhost",
                "-d", "--quiet", "--no-cb", "-m", mech, "-a", ALICE, "-p", PASSWORD])


def msmtp(stack: Stack, service: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    secret = tmp / "secret"
    secret.write_text(PASSWORD)
    return run([require_tool("msmtp"), "-v", "--host=127.0.0.1", f"--port={stack.port(service)}",
                "--tls=on", "--tls-starttls=on", f"--tls-trust-file={stack.postfix.ca}",
                "--auth=scram-sha-256", f"--user={ALICE}", f"--passwordeval=cat {secret}",
                f"--from={ALICE}", "bob@example.net"],
               stdin=f"From: {ALICE}\nTo: bob@example.net\nSubject: msmtp\n\nhello\n")


def curl(stack: Stack, service: str, token: str) -> subprocess.CompletedProcess[str]:
    return run([require_tool("curl"), "-sS", "-v", "--max-time", "30", "--url",
                f"smtp://127.0.0.1:{stack.port(service)}/client.test", "--ssl-reqd",
                "--cacert", str(stack.postfix.ca), "--user", ALICE, "--oauth2-bearer", token,
                "--mail-from", ALICE, "--mail-rcpt", "bob@example.net", "-T", "-"],
               stdin=f"From: {ALICE}\nTo: bob@example.net\nSubject: curl\n\nhello\n")


def auth_from(stack: Stack, source: str, mech: str, response: bytes,
              service: str = "unix") -> tuple[int, str]:
    """One AUTH with an initial response through Postfix, from loopback ``source``."""
    ctx = ssl.create_default_context(cafile=str(stack.postfix.ca))
    ctx.check_hostname = False
    with smtplib.SMTP("127.0.0.1", stack.port(service), timeout=30,
                      source_address=(source, 0)) as s:
        s.starttls(context=ctx)
        s.ehlo("client.test")
        code, text = s.docmd("AUTH", f"{mech} {base64.b64encode(response).decode()}")
        return code, text.decode()


def plain(source: str, user: str, password: str, stack: Stack) -> int:
    return auth_from(stack, source, "PLAIN", f"\0{user}\0{password}".encode())[0]


# --- the clients ------------------------------------------------------------------------


@pytest.mark.parametrize("service", ["unix", "tcp"])
@pytest.mark.parametrize("mech", ["PLAIN", "LOGIN"])
def test_swaks_through_postfix(stack: Stack, service: str, mech: str) -> None:
    before = len(stack.records())
    out = swaks(stack, service, mech, ALICE, PASSWORD)
    assert "235 2.7.0 Authentication successful" in out, out
    rec = stack.wait_record(before, mechanism=mech, result="success")
    assert (rec["front_door"], rec["listener"], rec["client_ip"], rec["tls"]) == (
        "dovecot", f"postfix-{service}", "127.0.0.1", "TLS")


@pytest.mark.parametrize(("service", "mech"), [
    ("unix", "SCRAM-SHA-1"), ("unix", "SCRAM-SHA-256"), ("tcp", "SCRAM-SHA-256")])
def test_gsasl_scram_through_postfix(stack: Stack, service: str, mech: str) -> None:
    before = len(stack.records())
    proc = gsasl(stack, service, mech)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rec = stack.wait_record(before, mechanism=mech, result="success")
    assert rec["username"] == ALICE and rec["listener"] == f"postfix-{service}"


def test_msmtp_scram_and_curl_oauthbearer_through_postfix(stack: Stack, tmp_path: Path) -> None:
    before = len(stack.records())
    proc = msmtp(stack, "unix", tmp_path)
    assert proc.returncode == 0 and "<-- 235 2.7.0" in proc.stdout, proc.stdout + proc.stderr
    stack.wait_record(before, mechanism="SCRAM-SHA-256", result="success")
    proc = curl(stack, "tcp", stack.issuer.token(ALICE))
    assert proc.returncode == 0, proc.stderr
    assert "> AUTH OAUTHBEARER" in proc.stderr and "< 235 2.7.0" in proc.stderr
    stack.wait_record(before, mechanism="OAUTHBEARER", result="success", username=ALICE)


def test_wrong_password_fails_through_postfix(stack: Stack) -> None:
    before = len(stack.records())
    out = swaks(stack, "unix", "PLAIN", BOB, "not the password")
    assert "535 5.7.8" in out and "235 " not in out, out
    rec = stack.wait_record(before, result="failure", username=BOB)
    assert rec["reason"] == "bad password" and rec["front_door"] == "dovecot"


# --- the guard, on the address Postfix passes ---------------------------------------------


def test_lockout_through_postfix_spares_the_known_address(stack: Stack) -> None:
    assert plain("127.0.0.2", DAVE, PASSWORD, stack) == 235  # 127.0.0.2 is known
    codes = [plain("127.0.0.3", DAVE, f"guess{i}", stack) for i in range(LOCKOUT)]
    assert codes == [535] * LOCKOUT
    # Locked for new addresses: the right password is refused as a temporary
    # failure (smtpgate closes the request; Postfix says 454), never 235.
    code, text = auth_from(stack, "127.0.0.3", "PLAIN", f"\0{DAVE}\0{PASSWORD}".encode())
    assert (code, text[:5]) == (454, "4.7.0"), text
    assert plain("127.0.0.4", DAVE, PASSWORD, stack) == 454
    assert plain("127.0.0.2", DAVE, PASSWORD, stack) == 235
    mine = [r for r in stack.records() if r["username"] == DAVE]
    assert {r["client_ip"] for r in mine if r["result"] == "failure"} == {"127.0.0.3"}
    blocked = [r for r in mine if r["result"] == "tempfail"]
    assert [r["client_ip"] for r in blocked] == ["127.0.0.3", "127.0.0.4"]
    assert all(r["reason"].startswith("blocked: account locked") for r in blocked), blocked


def test_spraying_through_postfix_blocks_the_address_only(stack: Stack) -> None:
    targets = [f"nobody{i}@example.org" for i in range(5)]
    codes = [plain("127.0.0.5", name, "Summer2024!", stack) for name in targets]
    assert codes == [535, 535, 535, 454, 454], codes
    assert plain("127.0.0.5", BOB, PASSWORD, stack) == 454  # the address is blocked
    assert plain("127.0.0.6", BOB, PASSWORD, stack) == 235  # nobody else is


def test_backend_fault_is_454_through_postfix_and_the_next_login_works(stack: Stack) -> None:
    """The broken issuer's key set cannot be read: a backend fault, never a 535."""
    token = stack.broken.token(ALICE)
    response = f"n,a={ALICE},\x01auth=Bearer {token}\x01\x01".encode()
    before = len(stack.records())
    code, text = auth_from(stack, "127.0.0.7", "OAUTHBEARER", response)
    assert (code, text[:5]) == (454, "4.7.0"), text
    rec = stack.wait_record(before, result="tempfail", mechanism="OAUTHBEARER")
    assert rec["client_ip"] == "127.0.0.7" and rec["front_door"] == "dovecot"
    # Postfix reconnects for the next AUTH: the door is open again.
    assert plain("127.0.0.7", ALICE, PASSWORD, stack) == 235


# --- straight on the auth listener: what Postfix never sends --------------------------


def door_session(stack: Stack) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", stack.door), timeout=10)
    sock.sendall(b"VERSION\t1\t0\nCPID\t4242\n")
    buf = b""
    while not buf.endswith(b"DONE\n"):
        chunk = sock.recv(4096)
        assert chunk, buf
        buf += chunk
    assert b"MECH\tSCRAM-SHA-256\tmutual-auth\n" in buf and b"-PLUS" not in buf
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    out = b""
    while chunk := sock.recv(4096):
        out += chunk
    return out


def test_a_peer_that_hangs_up_mid_exchange_leaves_one_cancelled_record(stack: Stack) -> None:
    before = len(stack.records())
    sock = door_session(stack)
    sock.sendall(b"AUTH\t1\tLOGIN\tservice=smtp\trip=127.0.0.8\tsecured\n")
    assert sock.recv(4096) == b"CONT\t1\tVXNlcm5hbWU6\n"
    sock.close()
    rec = stack.wait_record(before, client_ip="127.0.0.8")
    assert (rec["result"], rec["mechanism"], rec["front_door"]) == ("cancelled", "LOGIN", "dovecot")
    assert rec["reason"] == "connection closed"


def test_a_fail_echoes_the_name_with_a_bidi_override_replaced(stack: Stack) -> None:
    """FAIL's user= carried the client's name with its U+202E to Postfix's log; the
    real server now sends a '?' in its place, and the name as sent in the auth log
    (JSON writes the U+202E as \\u202e there, auth/authlog.py)."""
    before = len(stack.records())
    sock = door_session(stack)
    name = "\u202egro.elpmaxe@bob"
    resp = base64.b64encode(f"\0{name}\0wrong".encode()).decode()
    sock.sendall(f"AUTH\t7\tPLAIN\tservice=smtp\trip=127.0.0.9\tsecured\tresp={resp}\n".encode())
    answer = b""
    while not answer.endswith(b"\n"):
        chunk = sock.recv(4096)
        assert chunk, answer
        answer += chunk
    sock.close()
    assert answer == b"FAIL\t7\tuser=?gro.elpmaxe@bob\n"
    rec = stack.wait_record(before, client_ip="127.0.0.9")
    assert rec["username"] == name


@pytest.mark.parametrize("garbage", [
    b"HELLO\tthere\n",                                   # unknown command
    b"AUTH\t1\tLOGIN\tservice=smtp\trip=127.0.0.8\tsecured\nCONT\t1\t" + b"A" * 20000,  # overlong
    b"AUTH\tone\tPLAIN\tservice=smtp\n",               # malformed id
], ids=["unknown-command", "overlong-line", "malformed-id"])
def test_protocol_errors_close_the_connection_and_the_listener_keeps_serving(
    stack: Stack, garbage: bytes
) -> None:
    sock = door_session(stack)
    sock.sendall(garbage)
    rest = read_until_closed(sock)  # closed by smtpgate: recv returns b""
    assert b"OK" not in rest
    sock.close()
    assert "closing:" in stack.smtpgate.log_text()
    again = door_session(stack)
    resp = base64.b64encode(f"\0{ALICE}\0{PASSWORD}".encode())
    again.sendall(b"AUTH\t1\tPLAIN\tservice=smtp\trip=127.0.0.1\tsecured\tresp=" + resp + b"\n")
    assert again.recv(4096) == f"OK\t1\tuser={ALICE}\n".encode()
    again.close()


def test_a_local_user_outside_the_group_cannot_reach_the_unix_listener(stack: Stack) -> None:
    """mode 0660, group postfix: Postfix's smtpd gets in (the tests above); "nobody"
    gets nothing, not even the handshake."""
    probe = ("import socket, sys\n"
             "s = socket.socket(socket.AF_UNIX)\n"
             "try:\n    s.connect(sys.argv[1])\nexcept PermissionError:\n    print('refused')\n"
             "else:\n    print('connected', s.recv(100))\n")
    proc = run([require_tool("setpriv"), "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                sys.executable, "-c", probe, str(stack.door_socket)])
    assert proc.stdout.strip() == "refused", proc.stdout + proc.stderr
    st = stack.door_socket.stat()
    assert (oct(st.st_mode & 0o777), st.st_gid) == ("0o660", grp.getgrnam("postfix").gr_gid)


def test_a_peer_that_never_reads_is_not_read_from_either(stack: Stack) -> None:
    """A CONT for an unknown id is answered with a FAIL line seven times its size.
    A peer that sends them and reads nothing must stop being read once its answers
    back up, not grow smtpgate's write buffer (and log) without end."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(stack.door_socket))
        sock.sendall(b"VERSION\t1\t0\nCPID\t4243\n")
        sock.settimeout(3)
        chunk = b"CONT\t7\tx\n" * 8192
        sent = 0
        try:
            while sent < 4_000_000:
                sock.sendall(chunk)
                sent += len(chunk)
        except TimeoutError:
            pass
        assert sent < 1_000_000, f"{sent} bytes read from a peer that reads nothing"
    # The listener still serves.
    again = door_session(stack)
    resp = base64.b64encode(f"\0{ALICE}\0{PASSWORD}".encode())
    again.sendall(b"AUTH\t1\tPLAIN\tservice=smtp\trip=127.0.0.1\tsecured\tresp=" + resp + b"\n")
    assert again.recv(4096) == f"OK\t1\tuser={ALICE}\n".encode()
    again.close()
