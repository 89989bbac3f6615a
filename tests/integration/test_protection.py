"""Account protection and sending policy (issue 4) against the running server.

Distinct clients are distinct loopback source addresses (127.0.0.2, ...).
Thresholds are small so the tests are quick; timings are only checked as
coarse lower bounds (the machine is shared).

The whole suite runs once per account backend (the ``backend`` fixture,
parametrised over ``backends.BACKENDS``): every server here is made with
``make_guarded`` or ``make_backend_server``, which point it at that backend and
create its accounts there. A new backend registers its set-up in
``tests/integration/backends.py``; nothing here changes.
"""

from __future__ import annotations

import json
import os
import signal
import smtplib
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from smtpgate.smtp import replies as R

from .backends import BACKENDS, BackendSetup
from .conftest import PASSWORD, USER, Server, make_server
from .test_attacks import Raw, plain

BOB = "bob@example.org"
BOB_PASSWORD = "staple battery horse correct"
CAROL = "carol@example.org"
CAROL_PASSWORD = "violet-anchor-meadow-91"

PENALTY_BASE = 0.2
PENALTY_MAX = 0.8
LOCKOUT = 4

GUARDED = """
[guard]
allowlist = {allowlist}
penalty_base = {penalty_base}
penalty_max = {penalty_max}
lockout_threshold = {lockout}
known_lockout_threshold = 8
spray_accounts = 3
subnet_spray_accounts = 50
distributed_addresses = 3
throttle_interval = 60

[limits]
messages_per_hour = 3
recipients_per_hour = 6
"""


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest) -> BackendSetup:
    """The account backend this run of the suite keeps its accounts in."""
    return BACKENDS[request.param]


def make_backend_server(
    root: Path, backend: BackendSetup, extra: str, users: list[tuple[str, str]]
) -> Server:
    """A started server on ``backend`` with ``users`` (name, password)."""
    srv = make_server(root, extra)
    backend.configure(srv)
    for name, pw in users:
        backend.add_user(srv, name, pw)
    srv.start()
    return srv


def make_guarded(
    root: Path, extra: str = "", allowlist: str = "[]", backend: BackendSetup = BACKENDS["sqlite"],
    penalties: tuple[float, float] = (PENALTY_BASE, PENALTY_MAX),
) -> Server:
    """A started server with the protection suite's guard (`GUARDED`) and the accounts
    alice, bob and carol; ``penalties`` (penalty_base, penalty_max) for a test whose
    subject is not the penalty's length."""
    config = GUARDED.format(
        allowlist=allowlist, penalty_base=penalties[0], penalty_max=penalties[1], lockout=LOCKOUT
    )
    users = [(USER, PASSWORD), (BOB, BOB_PASSWORD), (CAROL, CAROL_PASSWORD)]
    return make_backend_server(root, backend, config + extra, users)


@pytest.fixture
def guarded(tmp_path: Path, backend: BackendSetup) -> Iterator[Server]:
    srv = make_guarded(tmp_path / "srv", backend=backend)
    yield srv
    if srv.proc is not None:
        srv.stop()


def connect(server: Server, source: str, *, implicit: bool = True) -> Raw:
    """An EHLO'd TLS session from loopback address ``source``."""
    ctx = server.client_context()
    port = server.submissions if implicit else server.submission
    sock = socket.create_connection(("127.0.0.1", port), timeout=20, source_address=(source, 0))
    r = Raw.__new__(Raw)
    r.ctx, r.buf = ctx, b""
    r.sock = ctx.wrap_socket(sock, server_hostname="localhost") if implicit else sock
    r.banner = r.reply()
    if not implicit:
        r.cmd("EHLO client.test")
        r.starttls()
    r.cmd("EHLO client.test")
    return r


def login(server: Server, source: str, user: str, password: str, mech: str = "PLAIN",
          *, implicit: bool = True) -> str:
    """One AUTH on a fresh connection; the reply line."""
    r = connect(server, source, implicit=implicit)
    try:
        if mech == "PLAIN":
            return r.cmd(f"AUTH PLAIN {plain(user, password)}")
        import base64

        assert r.cmd("AUTH LOGIN").startswith("334")
        assert r.cmd(base64.b64encode(user.encode()).decode()).startswith("334")
        return r.cmd(base64.b64encode(password.encode()).decode())
    finally:
        r.close()


def auth_log(server: Server) -> list[dict[str, object]]:
    return [json.loads(x) for x in (server.root / "auth.log").read_text().splitlines()]


def guard_blocks(server: Server) -> list[dict[str, object]]:
    out = server.cli("guard", "list", "--json").stdout
    return [json.loads(x) for x in out.splitlines()]


def send(r: Raw, sender: str, rcpts: list[str], from_header: str | None = None) -> list[str]:
    """MAIL, RCPTs, DATA on an authenticated session; every reply, stopping at the first refusal."""
    out = [r.cmd(f"MAIL FROM:<{sender}>")]
    if not out[-1].startswith("250"):
        return out
    for rcpt in rcpts:
        out.append(r.cmd(f"RCPT TO:<{rcpt}>"))
        if not out[-1].startswith("250"):
            r.cmd("RSET")
            return out
    out.append(r.cmd("DATA"))
    hdr = f"From: {from_header or sender}\r\n"
    out.append(r.cmd(f"{hdr}To: x@example.net\r\nSubject: t\r\n\r\nbody\r\n."))
    return out


def authed(server: Server, source: str, user: str, password: str) -> Raw:
    r = connect(server, source)
    assert r.cmd(f"AUTH PLAIN {plain(user, password)}").startswith("235")
    return r


# --- guessing ------------------------------------------------------------------------


def test_brute_force_penalties_grow_lockout_spares_known_address_and_unlock_restores(
    guarded: Server,
) -> None:
    # The owner has logged in from 127.0.0.2 before: that address is known.
    assert login(guarded, "127.0.0.2", USER, PASSWORD).startswith("235")

    # The attacker on 127.0.0.3, one connection: the penalty delays grow.
    r = connect(guarded, "127.0.0.3")
    took = []
    for i in range(LOCKOUT):
        t0 = time.monotonic()
        reply = r.cmd(f"AUTH PLAIN {plain(USER, f'guess{i}')}")
        took.append(time.monotonic() - t0)
        assert reply == str(R.AUTH_FAILED)
    for i, t in enumerate(took):
        expected = min(PENALTY_MAX, PENALTY_BASE * 2 ** (i - 1)) if i else 0.0
        assert t >= expected + 0.1, (i, took)  # penalty + failure floor, lower bounds only
    # Only lower bounds: the growth shows in them (the last wait is at least
    # PENALTY_MAX); comparing with the first attempt's time would depend on load.
    assert took[-1] >= PENALTY_MAX + 0.1
    # At the threshold the account is locked for new addresses: even the right
    # password from the attacker's address gets a clear temporary reply, not 535.
    assert r.cmd(f"AUTH PLAIN {plain(USER, PASSWORD)}") == str(R.AUTH_ACCOUNT_LOCKED)
    r.close()
    assert login(guarded, "127.0.0.4", USER, PASSWORD) == str(R.AUTH_ACCOUNT_LOCKED)  # new address
    # The documented policy: the owner's known address still logs in.
    assert login(guarded, "127.0.0.2", USER, PASSWORD).startswith("235")
    # Other accounts are not affected.
    assert login(guarded, "127.0.0.4", BOB, BOB_PASSWORD).startswith("235")

    blocks = guard_blocks(guarded)
    assert [(b["kind"], b["key"]) for b in blocks] == [("account-new", USER)]
    records = auth_log(guarded)
    blocked = [x for x in records if x["result"] == "tempfail"]
    assert len(blocked) == 2 and all(str(x["reason"]).startswith("blocked: account locked") for x in blocked)
    assert "guard: account-new alice@example.org blocked" in guarded.log_text()

    out = guarded.cli("user", "unlock", USER).stdout
    assert "unlocked account" in out
    assert guard_blocks(guarded) == []
    assert login(guarded, "127.0.0.3", USER, PASSWORD).startswith("235")
    log = json.loads(guarded.cli("admin-log", "--json", "--user", USER).stdout.splitlines()[-1])
    assert log["action"] == "guard lockout lifted" and log["command"] == "smtpgate user unlock"


def test_capitalised_logins_reach_the_account_and_share_its_lockout(guarded: Server) -> None:
    # Typed from a business card: Alice@example.org got 535 and could not send as
    # Alice@... (553). Login names have no letter case now; and a guesser varying
    # the capitals gets no more guesses than with one spelling.
    capitalised = "Alice@" + USER.split("@")[1]
    with smtplib.SMTP("127.0.0.1", guarded.submission, local_hostname="phone.test") as s:
        s.starttls(context=guarded.client_context())
        assert s.login(capitalised, PASSWORD)[0] == 235
        assert s.sendmail(capitalised, [BOB], f"From: {capitalised}\r\n"
                          "Subject: capitals\r\n\r\nHello.\r\n") == {}
    r = connect(guarded, "127.0.0.3")
    spellings = [capitalised, "ALICE@example.org", "aLiCe@example.org", USER]
    for i in range(LOCKOUT):
        assert r.cmd(f"AUTH PLAIN {plain(spellings[i], f'guess{i}')}") == str(R.AUTH_FAILED)
    for name in spellings:
        assert r.cmd(f"AUTH PLAIN {plain(name, PASSWORD)}") == str(R.AUTH_ACCOUNT_LOCKED)
    r.close()
    assert [(b["kind"], b["key"]) for b in guard_blocks(guarded)] == [("account-new", USER)]
    assert "unlocked account" in guarded.cli("user", "unlock", capitalised).stdout
    assert guard_blocks(guarded) == []


def _scram_guess_and_hang_up(server: Server, source: str, password: str) -> str:
    """SCRAM-SHA-256 with a wrong password; hang up on the server's e= verdict."""
    import base64

    from scramp import ScramClient

    client = ScramClient(["SCRAM-SHA-256"], USER, password)
    r = connect(server, source)
    first = base64.b64encode(client.get_client_first().encode()).decode()
    reply = r.cmd(f"AUTH SCRAM-SHA-256 {first}")
    if not reply.startswith("334 "):
        r.close()
        return reply
    client.set_server_first(base64.b64decode(reply[4:]).decode())
    verdict = r.cmd(base64.b64encode(client.get_client_final().encode()).decode())
    r.close()  # before the 535
    return base64.b64decode(verdict[4:]).decode() if verdict.startswith("334 ") else verdict


def test_scram_guesses_abandoned_before_the_535_still_count(guarded: Server) -> None:
    for i in range(LOCKOUT):
        assert _scram_guess_and_hang_up(guarded, "127.0.0.3", f"guess{i}") == "e=invalid-proof"
    deadline = time.monotonic() + 10
    while not guard_blocks(guarded):  # counted after the hang-up, asynchronously
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert login(guarded, "127.0.0.3", USER, PASSWORD) == str(R.AUTH_ACCOUNT_LOCKED)
    failures = [x for x in auth_log(guarded) if x["result"] == "failure"]
    assert len(failures) == LOCKOUT and all("connection closed" in str(x["reason"]) for x in failures)


def test_spraying_one_password_many_accounts_is_blocked_early(guarded: Server) -> None:
    targets = [USER, BOB, CAROL] + [f"user{i}@example.org" for i in range(7)]
    replies = [login(guarded, "127.0.0.5", name, "Summer2024!") for name in targets]
    refused = [x for x in replies if x == str(R.AUTH_FAILED)]
    blocked = [x for x in replies if x == str(R.AUTH_BLOCKED)]
    assert len(refused) == 3 and len(blocked) == len(targets) - 3, replies
    assert replies.index(str(R.AUTH_BLOCKED)) == 3  # blocked right at the threshold
    # The block covers the address, even with a right password ...
    assert login(guarded, "127.0.0.5", BOB, BOB_PASSWORD) == str(R.AUTH_BLOCKED)
    # ... and nobody else.
    assert login(guarded, "127.0.0.6", BOB, BOB_PASSWORD).startswith("235")
    kinds = {(b["kind"], b["key"]) for b in guard_blocks(guarded)}
    assert ("address", "127.0.0.5") in kinds
    # Blocked attempts cost no hashing: they were refused before the look-up,
    # and are logged as such (fail2ban and the report count them).
    records = [x for x in auth_log(guarded) if x["client_ip"] == "127.0.0.5"]
    assert sum(str(x["reason"]).startswith("blocked: address blocked") for x in records) == 8


def test_many_addresses_against_one_account_throttle_new_addresses(guarded: Server) -> None:
    assert login(guarded, "127.0.0.7", BOB, BOB_PASSWORD).startswith("235")  # known
    for source in ("127.0.1.1", "127.0.1.2", "127.0.1.3"):
        assert login(guarded, source, BOB, "wrong password") == str(R.AUTH_FAILED)
    # Three distinct new addresses failed (below the lockout threshold of 4):
    # new addresses must now wait throttle_interval after the last failure.
    assert login(guarded, "127.0.1.4", BOB, BOB_PASSWORD) == str(R.AUTH_THROTTLED)
    assert login(guarded, "127.0.0.7", BOB, BOB_PASSWORD).startswith("235")
    assert ("throttle", BOB) in {(b["kind"], b["key"]) for b in guard_blocks(guarded)}


# --- sending policy ----------------------------------------------------------------------


def test_rate_limits_n_plus_first_message_is_450_and_other_accounts_unaffected(guarded: Server) -> None:
    r = authed(guarded, "127.0.0.2", USER, PASSWORD)
    for _ in range(3):
        assert send(r, USER, ["x@example.net"])[-1].startswith("250")
    assert r.cmd(f"MAIL FROM:<{USER}>") == str(R.MESSAGE_RATE_EXCEEDED)
    r.close()
    # A new session does not reset the count.
    r = authed(guarded, "127.0.0.2", USER, PASSWORD)
    assert r.cmd(f"MAIL FROM:<{USER}>") == str(R.MESSAGE_RATE_EXCEEDED)
    r.close()
    # Bob is unaffected; his recipients are limited to 6 per hour.
    r = authed(guarded, "127.0.0.3", BOB, BOB_PASSWORD)
    assert send(r, BOB, [f"r{i}@example.net" for i in range(4)])[-1].startswith("250")
    out = send(r, BOB, [f"s{i}@example.net" for i in range(4)])
    assert out[1:3] == ["250 2.1.5 Recipient OK"] * 2 and out[3] == str(R.RECIPIENT_RATE_EXCEEDED)
    r.close()
    assert "message rate limit" in guarded.log_text() and "recipient rate limit" in guarded.log_text()
    # A per-account override takes effect at the next MAIL.
    guarded.cli("user", "limits", USER, "--messages-per-hour", "0")
    r = authed(guarded, "127.0.0.2", USER, PASSWORD)
    assert send(r, USER, ["x@example.net"])[-1].startswith("250")
    r.close()


def test_sender_ownership_envelope_and_header_with_alias_and_granted_domain(guarded: Server) -> None:
    r = authed(guarded, "127.0.0.2", CAROL, CAROL_PASSWORD)
    assert r.cmd(f"MAIL FROM:<{BOB}>") == str(R.SENDER_NOT_OWNED)
    out = send(r, CAROL, ["x@example.net"], from_header=f"Bob <{BOB}>")
    assert out[-1] == str(R.FROM_NOT_OWNED)
    assert r.cmd("MAIL FROM:<info@example.org>") == str(R.SENDER_NOT_OWNED)
    r.close()
    guarded.cli("user", "alias", "add", CAROL, "info@example.org")
    guarded.cli("user", "domain", "grant", CAROL, "Example.NET")
    r = authed(guarded, "127.0.0.2", CAROL, CAROL_PASSWORD)
    assert send(r, "info@example.org", ["x@example.net"])[-1].startswith("250")
    assert send(r, "anyone@example.net", ["x@example.net"],
                from_header='"Sales" <sales@EXAMPLE.net>')[-1].startswith("250")
    assert send(r, CAROL, ["x@example.net"], from_header=f"Bob <{BOB}>")[-1] == str(R.FROM_NOT_OWNED)
    r.close()
    guarded.wait_for_mail(2)
    guarded.cli("user", "alias", "del", CAROL, "info@example.org")
    r = authed(guarded, "127.0.0.2", CAROL, CAROL_PASSWORD)
    assert r.cmd("MAIL FROM:<info@example.org>") == str(R.SENDER_NOT_OWNED)
    r.close()
    actions = [json.loads(x)["action"] for x in guarded.cli("admin-log", "--json").stdout.splitlines()]
    assert {"alias added", "domain granted", "alias removed"} <= set(actions)


def test_sender_ownership_log_only_mode(tmp_path: Path, backend: BackendSetup) -> None:
    srv = make_backend_server(
        tmp_path / "srv", backend, '\n[policy]\nsender_ownership = "log"\nfrom_header = "log"\n',
        [(USER, PASSWORD)],
    )
    try:
        r = authed(srv, "127.0.0.2", USER, PASSWORD)
        assert send(r, BOB, ["x@example.net"], from_header=BOB)[-1].startswith("250")
        r.close()
        assert "not owned by the account (logged only)" in srv.log_text()
    finally:
        srv.stop()


# --- conditional access ----------------------------------------------------------------------


def test_conditional_access_refusals_are_535_with_the_reason_in_the_log(guarded: Server) -> None:
    guarded.cli("user", "access", BOB, "--network", "127.0.0.10/32")
    assert login(guarded, "127.0.0.11", BOB, BOB_PASSWORD) == str(R.AUTH_FAILED)
    assert login(guarded, "127.0.0.10", BOB, BOB_PASSWORD).startswith("235")
    guarded.cli("user", "access", BOB, "--any-network", "--listener", "submission")
    assert login(guarded, "127.0.0.10", BOB, BOB_PASSWORD) == str(R.AUTH_FAILED)  # implicit TLS
    assert login(guarded, "127.0.0.10", BOB, BOB_PASSWORD, implicit=False).startswith("235")
    guarded.cli("user", "access", BOB, "--any-listener", "--require-oauth")
    assert login(guarded, "127.0.0.10", BOB, BOB_PASSWORD) == str(R.AUTH_FAILED)
    reasons = [str(x["reason"]) for x in auth_log(guarded) if x["result"] == "failure"]
    assert reasons == [
        "access policy: address 127.0.0.11 not in the account's networks",
        "access policy: listener submissions not allowed for account",
        "access policy: account requires OAuth, not PLAIN",
    ]
    # Refusals that do not depend on the password never lock the account.
    assert not any(b["kind"].startswith("account") for b in guard_blocks(guarded))


# --- credentials -----------------------------------------------------------------------------------


def _new_app_password(out: str) -> str:
    line = next(x for x in out.splitlines() if "app password" in x and ": " in x)
    return line.rsplit(": ", 1)[1].strip()


def test_app_passwords_scope_logging_revocation_and_expiry(guarded: Server) -> None:
    out = guarded.cli("app-password", "add", USER, "laptop", "--scope", "net:127.0.0.8/32",
                      "--mechanism", "PLAIN").stdout
    laptop = _new_app_password(out)
    assert login(guarded, "127.0.0.8", USER, laptop).startswith("235")
    assert login(guarded, "127.0.0.9", USER, laptop) == str(R.AUTH_FAILED)  # network scope
    assert login(guarded, "127.0.0.8", USER, laptop, mech="LOGIN") == str(R.AUTH_FAILED)
    records = auth_log(guarded)
    assert (records[0]["result"], records[0]["reason"]) == ("success", "app password 'laptop'")
    assert [x["reason"] for x in records[1:]] == [
        "access policy: app password 'laptop' not allowed from 127.0.0.9",
        "access policy: app password 'laptop' not allowed with LOGIN",
    ]
    listed = json.loads(guarded.cli("app-password", "list", USER, "--json").stdout)
    assert listed["name"] == "laptop" and listed["last_address"] == "127.0.0.8"
    assert laptop not in guarded.cli("app-password", "list").stdout
    # The main password still works; the app password stops at revocation.
    guarded.cli("app-password", "revoke", USER, "laptop")
    assert login(guarded, "127.0.0.8", USER, laptop) == str(R.AUTH_FAILED)
    assert login(guarded, "127.0.0.8", USER, PASSWORD).startswith("235")
    # Expiry.
    short = _new_app_password(
        guarded.cli("app-password", "add", USER, "short", "--expires", "1s").stdout
    )
    time.sleep(1.2)
    assert login(guarded, "127.0.0.8", USER, short) == str(R.AUTH_FAILED)
    assert auth_log(guarded)[-1]["reason"] == "app password 'short' expired"
    # Never a secret in the admin log.
    admin = guarded.cli("admin-log", "--json").stdout
    assert laptop not in admin and short not in admin and PASSWORD not in admin


def test_rotation_new_app_password_and_old_secret_expires_after_grace(
    guarded: Server, backend: BackendSetup
) -> None:
    phone = _new_app_password(guarded.cli("app-password", "add", BOB, "phone").stdout)
    out = guarded.cli("user", "rotate", BOB, "--app", "phone", "--grace", "2s").stdout
    new_phone = _new_app_password(out)
    assert new_phone != phone
    assert login(guarded, "127.0.0.2", BOB, phone).startswith("235")  # within the grace
    assert login(guarded, "127.0.0.2", BOB, new_phone).startswith("235")
    # The account password itself: `user rotate` without --app.
    out = guarded.cli("user", "rotate", BOB, "--grace", "2s").stdout
    device = _new_app_password(out)
    assert login(guarded, "127.0.0.2", BOB, BOB_PASSWORD).startswith("235")
    time.sleep(2.3)
    assert login(guarded, "127.0.0.2", BOB, phone) == str(R.AUTH_FAILED)
    assert login(guarded, "127.0.0.2", BOB, BOB_PASSWORD) == str(R.AUTH_FAILED)
    assert login(guarded, "127.0.0.2", BOB, new_phone).startswith("235")
    assert login(guarded, "127.0.0.2", BOB, device).startswith("235")
    reasons = [str(x["reason"]) for x in auth_log(guarded) if x["result"] == "failure"]
    assert reasons[0].startswith("app password 'phone (rotated ")
    assert reasons[1].startswith("password expired at ")
    line = next(x for x in guarded.cli("user", "list").stdout.splitlines() if BOB in x)
    assert "EXPIRED" in line
    # A new password ends the expiry (changed in the directory, for a directory account).
    backend.set_password(guarded, BOB, "ochre lantern river 77")
    assert login(guarded, "127.0.0.2", BOB, "ochre lantern river 77").startswith("235")


def test_password_policy_on_user_add(guarded: Server, backend: BackendSetup) -> None:
    weak = guarded.cli("user", "add", "dave@example.org", "--password-stdin", stdin="password1234\n",
                       check=False)
    if backend.name in ("ldap", "active_directory"):
        # The name is checked before the password: the directory holds accounts.
        assert weak.returncode == 1 and "live in the directory" in weak.stderr
        return
    assert weak.returncode == 1 and "too weak" in weak.stderr
    mine = guarded.cli("user", "add", "dave@example.org", "--password-stdin",
                       stdin="dave@example.org-2024-xyz\n", check=False)
    assert mine.returncode == 1 and "account name" in mine.stderr


# --- restart --------------------------------------------------------------------------------------


def _descendants(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids = [int(x) for x in (task / "children").read_text().split()]
        except OSError:
            continue
        for kid in kids:
            out += [kid, *_descendants(kid)]
    return out


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state in ("Z", "X")


def _kill_and_restart(server: Server) -> None:
    """kill -9 the server and its worker processes (a crash), then start it again."""
    assert server.proc is not None
    victims = [server.proc.pid, *_descendants(server.proc.pid)]
    for pid in victims:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    server.proc.wait(timeout=10)
    server.proc = None
    deadline = time.monotonic() + 10
    while not all(_gone(pid) for pid in victims):
        assert time.monotonic() < deadline, "workers did not die"
        time.sleep(0.02)
    server.start()
    # Server.start() only sees a port accept a connection, which can succeed
    # before the restarted server listens (a loopback self-connect on an
    # ephemeral port); a 220 greeting over TLS is proof.
    deadline = time.monotonic() + 30
    while True:
        try:
            connect(server, "127.0.0.1").close()
            return
        except OSError:
            assert time.monotonic() < deadline, server.log_text()
            time.sleep(0.1)


def test_locks_blocks_and_counters_survive_kill_9(guarded: Server) -> None:
    assert login(guarded, "127.0.0.2", USER, PASSWORD).startswith("235")  # known address
    for name in (BOB, CAROL, "x@example.org"):  # spraying: 127.0.0.5 gets blocked
        login(guarded, "127.0.0.5", name, "Summer2024!")
    for i in range(LOCKOUT - 1):  # one failure short of the lockout
        assert login(guarded, "127.0.0.3", USER, f"guess{i}") == str(R.AUTH_FAILED)
    r = authed(guarded, "127.0.0.4", CAROL, CAROL_PASSWORD)
    for _ in range(3):  # the whole hourly message budget
        assert send(r, CAROL, ["x@example.net"])[-1].startswith("250")
    r.close()

    _kill_and_restart(guarded)
    assert login(guarded, "127.0.0.5", BOB, BOB_PASSWORD) == str(R.AUTH_BLOCKED)  # block
    assert login(guarded, "127.0.0.3", USER, "guess-last") == str(R.AUTH_FAILED)  # counter ...
    assert login(guarded, "127.0.0.3", USER, PASSWORD) == str(R.AUTH_ACCOUNT_LOCKED)  # ... locks
    assert login(guarded, "127.0.0.2", USER, PASSWORD).startswith("235")  # known address
    r = authed(guarded, "127.0.0.4", CAROL, CAROL_PASSWORD)
    assert r.cmd(f"MAIL FROM:<{CAROL}>") == str(R.MESSAGE_RATE_EXCEEDED)  # rate counter
    r.close()

    _kill_and_restart(guarded)
    assert login(guarded, "127.0.0.3", USER, PASSWORD) == str(R.AUTH_ACCOUNT_LOCKED)  # lock
    assert login(guarded, "127.0.0.5", CAROL, CAROL_PASSWORD) == str(R.AUTH_BLOCKED)


def test_allowlisted_network_is_exempt(tmp_path: Path, backend: BackendSetup) -> None:
    srv = make_guarded(tmp_path / "srv", allowlist='["127.0.2.0/24"]', backend=backend)
    try:
        for name in [USER, BOB, CAROL, "x@example.org", "y@example.org"]:
            assert login(srv, "127.0.2.1", name, "Summer2024!") == str(R.AUTH_FAILED)
        assert login(srv, "127.0.2.1", BOB, BOB_PASSWORD).startswith("235")
        assert guard_blocks(srv) == []
        assert "guard.allowlist: the guard ignores 127.0.2.0/24" in srv.log_text()
    finally:
        srv.stop()



def _known(server: Server, account: str, address: str, *, wait: float = 10) -> bool:
    """Whether the guard holds ``address`` as known for ``account``, waiting up to
    ``wait`` seconds for it to become so (a login's success is recorded after its 235)."""
    import sqlite3

    deadline = time.monotonic() + wait
    while True:
        with sqlite3.connect(server.config.parent / "guard.sqlite") as db:
            row = db.execute("SELECT 1 FROM known WHERE account = ? AND address = ?",
                             (account, address)).fetchone()
        if row is not None or time.monotonic() >= deadline:
            return row is not None
        time.sleep(0.1)


def test_a_password_reset_and_a_name_added_again_forget_the_known_addresses(
    tmp_path: Path,
) -> None:
    """An intruder who logged in with a stolen password made their address a known
    one; after ``user passwd`` it stayed known, so their guesses at the new password
    counted against the higher ``known_lockout_threshold`` and the lockout for new
    addresses never held them. The same for a name removed and added again (another
    person). Both now forget the account's known addresses (the owner's next login
    makes theirs known again); guesses from there are held at ``lockout_threshold``."""
    srv = make_guarded(tmp_path / "srv")
    new_password = "a brand new passphrase 42"
    try:
        assert login(srv, "127.0.0.3", USER, PASSWORD).startswith("235")
        assert _known(srv, USER, "127.0.0.3")
        srv.cli("user", "passwd", USER, "--password-stdin", stdin=new_password + "\n")
        assert not _known(srv, USER, "127.0.0.3", wait=0)
        for i in range(LOCKOUT):
            assert login(srv, "127.0.0.3", USER, f"guess{i}") == str(R.AUTH_FAILED)
        assert login(srv, "127.0.0.3", USER, new_password) == str(R.AUTH_ACCOUNT_LOCKED)
        actions = [json.loads(x)["action"]
                   for x in srv.cli("admin-log", "--json", "--user", USER).stdout.splitlines()]
        assert "guard known addresses forgotten" in actions, actions

        assert login(srv, "127.0.0.5", BOB, BOB_PASSWORD).startswith("235")
        assert _known(srv, BOB, "127.0.0.5")
        srv.cli("user", "remove", BOB)
        srv.add_user(BOB, "another person's passphrase")
        for i in range(LOCKOUT):
            assert login(srv, "127.0.0.5", BOB, f"guess{i}") == str(R.AUTH_FAILED)
        assert login(srv, "127.0.0.5", BOB, "another person's passphrase") == str(
            R.AUTH_ACCOUNT_LOCKED)
        # Carol's known address is hers still.
        assert login(srv, "127.0.0.6", CAROL, CAROL_PASSWORD).startswith("235")
        assert _known(srv, CAROL, "127.0.0.6")
    finally:
        srv.stop()
