"""The LDAP backend end to end: `smtpgate serve` (as a default install runs it) with
its accounts in a real slapd (``tests/peers/slapd.py``), driven by swaks, gsasl
and smtplib.

Shown here: PLAIN/LOGIN logins and sending as directory users, with sender
ownership following the directory's address attributes plus local aliases;
SCRAM-SHA-256-PLUS after a first PLAIN, and what a password changed in the
directory does to the kept SCRAM keys; a directory stopped mid-test (454, then
recovery without a restart); the guard refusing before any bind reaches the
directory; a wrong service-account password and a cleartext URL refused at
start-up; LDAP filter injection in the login name; the `user ...` commands on
directory accounts.
"""

from __future__ import annotations

import base64
import json
import signal
import smtplib
import subprocess
import time
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest

from smtpgate.sasl.oauth import OAuthBearerClient, XOAuth2Client
from smtpgate.sasl.scram import ScramClient
from tests.peers.slapd import SERVICE_DN, SERVICE_PW, Slapd, shared_slapd

from .conftest import Server, free_port, make_server, require_tool
from .ldap_setup import LdapSetup
from .oauth_issuer import LocalIssuer
from .sasl_wire import WireSmtp
from .test_protection import connect
from .test_protection import login as guard_login

pytestmark = pytest.mark.interop

ALICE = "alice@example.org"
ALICE_PW = "directory password one"
SALES = "sales@example.org"  # alice's second address, in the directory
BOB = "bob@example.org"
BOB_PW = "bob's directory password"


@pytest.fixture(scope="module")
def slapd() -> Slapd:
    require_tool("swaks")
    return shared_slapd()


def _server(root: Path, extra: str = "") -> tuple[Server, LdapSetup, dict[str, str]]:
    srv = make_server(root, extra)
    setup = LdapSetup()
    setup.configure(srv)
    dns = {
        ALICE: setup.add_user(srv, ALICE, ALICE_PW, SALES),
        BOB: setup.add_user(srv, BOB, BOB_PW),
    }
    return srv, setup, dns


@pytest.fixture
def ldap_server(slapd: Slapd, tmp_path: Path) -> Iterator[tuple[Server, dict[str, str]]]:
    srv, _, dns = _server(tmp_path / "srv")
    srv.start()
    yield srv, dns
    if srv.proc is not None:
        srv.stop()


def login(server: Server, user: str, password: str, mechanism: str = "PLAIN") -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", server.submission, timeout=20) as s:
        s.starttls(context=server.client_context())
        s.ehlo("client.test")
        try:
            s.login(user, password) if mechanism == "LOGIN" else s.auth(
                "PLAIN", lambda _=None: f"\0{user}\0{password}", initial_response_ok=True
            )
        except smtplib.SMTPAuthenticationError as e:
            return e.smtp_code, e.smtp_error
        return 235, b""


def send(server: Server, user: str, password: str, sender: str) -> tuple[int, str]:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, "someone@example.net", "hello"
    msg.set_content("from the directory\n")
    with smtplib.SMTP_SSL("127.0.0.1", server.submissions, timeout=20,
                          context=server.client_context()) as s:
        s.login(user, password)
        try:
            s.send_message(msg)
        except smtplib.SMTPSenderRefused as e:
            return e.smtp_code, e.smtp_error.decode()
        return 250, ""


def gsasl(server: Server, user: str, password: str, mechanism: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_tool("gsasl"), "--smtp", f"--connect=127.0.0.1:{server.submission}",
         "--starttls", f"--x509-ca-file={server.ca}", "--hostname=localhost", "-d",
         "--quiet", "-a", user, "-p", password, "-m", mechanism],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, check=False,
    )


def scram_keys(server: Server, user: str) -> list[str]:
    rows = [json.loads(x) for x in server.cli("user", "list", "--json").stdout.splitlines()]
    return next((r["scram_keys"] for r in rows if r["name"] == user), [])


def wait_for_scram_keys(server: Server, user: str) -> None:
    """The keys are written after the 235, off the login path."""
    deadline = time.monotonic() + 15
    while "scram-sha-256" not in scram_keys(server, user):
        assert time.monotonic() < deadline, "SCRAM keys were not kept after a PLAIN login"
        time.sleep(0.1)


def until_235(server: Server, user: str, password: str, seconds: float = 30) -> None:
    """Logins once the directory is back: 454 (never 535) until the fail-fast window
    ends at a probe's answer (accounts.ldap.retry_max, 10 s at most), then 235."""
    deadline = time.monotonic() + seconds
    while (reply := login(server, user, password)) != (235, b""):
        assert reply[0] == 454 and time.monotonic() < deadline, reply
        time.sleep(0.3)


# --- logging in and sending -----------------------------------------------------------


def test_plain_and_login_then_send_as_the_directory_addresses(
    ldap_server: tuple[Server, dict[str, str]],
) -> None:
    srv, _ = ldap_server
    assert login(srv, ALICE, ALICE_PW) == (235, b"")
    assert login(srv, ALICE, ALICE_PW, "LOGIN") == (235, b"")
    assert login(srv, ALICE, "wrong password")[0] == 535
    assert login(srv, ALICE, BOB_PW)[0] == 535  # another entry's password
    # swaks, LOGIN over implicit TLS, sending as alice's directory alias.
    out = subprocess.run(
        [require_tool("swaks"), "-s", "127.0.0.1", "-p", str(srv.submissions), "-tlsc",
         "--tls-verify", "--tls-ca-path", str(srv.ca), "-a", "LOGIN", "-au", ALICE,
         "-ap", ALICE_PW, "-f", SALES, "-t", "friend@example.net"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    # Sender ownership: the directory's addresses, then a local alias granted.
    assert send(srv, ALICE, ALICE_PW, ALICE)[0] == 250
    assert send(srv, ALICE, ALICE_PW, SALES)[0] == 250
    assert send(srv, BOB, BOB_PW, SALES)[0] == 553  # alice's address, not bob's
    assert send(srv, ALICE, ALICE_PW, "info@example.org")[0] == 553
    srv.cli("user", "alias", "add", ALICE, "info@example.org")
    assert send(srv, ALICE, ALICE_PW, "info@example.org")[0] == 250
    srv.wait_for_mail(4)


def test_scram_plus_after_a_first_plain_and_after_a_password_change(
    slapd: Slapd, ldap_server: tuple[Server, dict[str, str]],
) -> None:
    srv, dns = ldap_server
    # No keys before the first PLAIN/LOGIN login: SCRAM fails like a wrong password.
    assert gsasl(srv, ALICE, ALICE_PW, "SCRAM-SHA-256-PLUS").returncode != 0
    assert scram_keys(srv, ALICE) == []
    assert login(srv, ALICE, ALICE_PW) == (235, b"")
    wait_for_scram_keys(srv, ALICE)
    out = gsasl(srv, ALICE, ALICE_PW, "SCRAM-SHA-256-PLUS")
    assert out.returncode == 0, out.stdout + out.stderr
    assert gsasl(srv, ALICE, "wrong password", "SCRAM-SHA-256-PLUS").returncode != 0

    # The password changes in the directory: the kept keys are stale.
    new = "directory password two"
    slapd.set_password(dns[ALICE], new)
    assert gsasl(srv, ALICE, ALICE_PW, "SCRAM-SHA-256-PLUS").returncode != 0  # old one
    assert gsasl(srv, ALICE, new, "SCRAM-SHA-256-PLUS").returncode != 0  # keys not made yet
    assert scram_keys(srv, ALICE) == []
    assert login(srv, ALICE, ALICE_PW)[0] == 535  # the old password, even cached
    assert login(srv, ALICE, new) == (235, b"")
    wait_for_scram_keys(srv, ALICE)
    out = gsasl(srv, ALICE, new, "SCRAM-SHA-256-PLUS")
    assert out.returncode == 0, out.stdout + out.stderr
    assert gsasl(srv, ALICE, ALICE_PW, "SCRAM-SHA-256-PLUS").returncode != 0


def test_an_entry_without_the_password_changed_attribute_keeps_no_old_password(
    slapd: Slapd, tmp_path: Path,
) -> None:
    """``password_changed_attribute`` set to one the entries do not show (here
    ``pwdChangedTime`` on a slapd without ppolicy; an ACL hiding ``entryCSN`` from
    the service account does the same): nothing tells that a password changed. Until
    2026-12 the old password then went on working after a change in the directory,
    from the verified-login cache for ``cache_ttl`` (an hour) and through SCRAM
    keys derived from it for ever. Such logins are now neither cached nor given
    SCRAM keys, and the server log says why once."""
    srv, _, dns = _server(tmp_path / "srv")
    srv.config.write_text(srv.config.read_text().replace(
        "[accounts.ldap]\n", '[accounts.ldap]\npassword_changed_attribute = "pwdChangedTime"\n', 1))
    srv.start()
    try:
        assert login(srv, ALICE, ALICE_PW) == (235, b"")
        assert login(srv, ALICE, ALICE_PW) == (235, b"")  # would be cached
        with WireSmtp(srv.submissions, srv.ca, tls="implicit") as w:
            assert w.auth(ScramClient("sha256", ALICE, ALICE_PW)).final.code == 535
        assert scram_keys(srv, ALICE) == []
        new = "directory password two"
        slapd.set_password(dns[ALICE], new)
        assert login(srv, ALICE, ALICE_PW)[0] == 535
        assert login(srv, ALICE, new) == (235, b"")
        assert "shows the service account no pwdChangedTime" in srv.log_text()
    finally:
        srv.stop()


def _ehlo_mechanisms(server: Server) -> list[str]:
    with smtplib.SMTP("127.0.0.1", server.submission, timeout=20) as s:
        s.starttls(context=server.client_context())
        s.ehlo("client.test")
        return s.esmtp_features.get("auth", "").upper().split()


def test_a_default_directory_offers_no_scram_so_the_strongest_offered_logs_in(
    slapd: Slapd, tmp_path: Path,
) -> None:
    """A bind-checked directory user has no SCRAM keys before a PLAIN/LOGIN login, so
    SCRAM offered by default sent every client that picks the strongest mechanism
    (mutt through Cyrus SASL) to a 535 for ever. Default: not offered, no keys kept;
    the first mechanism offered logs a new user in."""
    srv = make_server(tmp_path / "srv")
    setup = LdapSetup(scram=None)  # the key left out, as a default install does
    setup.configure(srv)
    setup.add_user(srv, ALICE, ALICE_PW)
    srv.start()
    try:
        offered = _ehlo_mechanisms(srv)
        assert offered and not [m for m in offered if m.startswith("SCRAM-")], offered
        # Cyrus SASL's way: the strongest offered, here the first of the list.
        with smtplib.SMTP("127.0.0.1", srv.submission, timeout=20) as s:
            s.starttls(context=srv.client_context())
            s.ehlo("client.test")
            s.user, s.password = ALICE, ALICE_PW
            authobject = getattr(s, "auth_" + offered[0].lower().replace("-", "_"))
            code, _ = s.auth(offered[0], authobject, initial_response_ok=True)
            assert code == 235
        assert scram_keys(srv, ALICE) == []  # nothing derived that nobody can use
        out = gsasl(srv, ALICE, ALICE_PW, "SCRAM-SHA-256")
        assert out.returncode != 0  # asked for anyway: not offered, not taken
    finally:
        srv.stop()
    # scram = true: offered again, keys made at the first PLAIN (the test above).
    srv2, _, _ = _server(tmp_path / "srv2")
    srv2.start()
    try:
        assert "SCRAM-SHA-256" in _ehlo_mechanisms(srv2)
    finally:
        srv2.stop()


def test_cram_md5_is_never_available_for_directory_accounts(
    ldap_server: tuple[Server, dict[str, str]],
) -> None:
    srv, _ = ldap_server
    for extra in (("--password-stdin",), ()):
        r = srv.cli("user", "cram-md5", ALICE, "--enable", *extra,
                    stdin=ALICE_PW + "\n", check=False)
        # Said plainly, not "set one with user passwd" (which the directory refuses).
        assert r.returncode == 1, r.stdout
        assert "CRAM-MD5 is not available for directory accounts" in r.stderr, r.stderr
    out = subprocess.run(
        [require_tool("swaks"), "-s", "127.0.0.1", "-p", str(srv.submissions), "-tlsc",
         "--tls-verify", "--tls-ca-path", str(srv.ca), "-a", "CRAM-MD5", "-au", ALICE,
         "-ap", ALICE_PW, "--quit-after", "AUTH"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert out.returncode != 0 and "235 " not in out.stdout, out.stdout


def test_user_commands_on_directory_accounts(
    ldap_server: tuple[Server, dict[str, str]],
) -> None:
    srv, _ = ldap_server
    for argv in (("user", "add", "carol@example.org", "--password-stdin"),
                 ("user", "passwd", ALICE, "--password-stdin")):
        r = srv.cli(*argv, stdin="a brand new password 42\n", check=False)
        assert r.returncode != 0 and "passwords live in the directory" in r.stderr, r.stderr
    # An app password, kept locally, logs in; a lock set here refuses the account.
    r = srv.cli("app-password", "add", ALICE, "phone")
    secret = next(w for w in r.stdout.split() if w.count("-") == 4 and len(w) == 24)
    assert login(srv, ALICE, secret) == (235, b"")
    srv.cli("user", "lock", ALICE, "--reason", "phished")
    assert login(srv, ALICE, ALICE_PW)[0] == 535
    srv.cli("user", "unlock", ALICE)
    assert login(srv, ALICE, ALICE_PW) == (235, b"")
    # Someone the directory does not have: nothing is made locally.
    r = srv.cli("user", "alias", "add", "ghost@example.org", "x@example.org", check=False)
    assert r.returncode != 0


# --- outages and start-up -----------------------------------------------------------------


def test_directory_down_gives_454_and_logins_recover_by_themselves(
    slapd: Slapd, ldap_server: tuple[Server, dict[str, str]],
) -> None:
    srv, _ = ldap_server
    assert login(srv, ALICE, ALICE_PW) == (235, b"")  # cached from here on
    slapd.stop()
    try:
        code, text = login(srv, ALICE, ALICE_PW)
        assert (code, text[:5]) == (454, b"4.7.0"), text
        for _ in range(5):  # never 535 for an outage
            assert login(srv, BOB, "any password")[0] == 454
    finally:
        slapd.start()
    until_235(srv, ALICE, ALICE_PW)  # no restart
    # Each worker leaves its fail-fast window at its own probe: Bob's login may land
    # on the other worker, still 454 (never 535) for up to retry_max.
    until_235(srv, BOB, BOB_PW)
    # The worker that saw the outage says it is over at its next directory operation;
    # both logins above may have landed on the other worker (the kernel picks one per
    # connection), so log in until one reaches it.
    deadline = time.monotonic() + 30
    while "answering again after" not in srv.log_text():
        assert time.monotonic() < deadline, srv.log_text()[-3000:]
        assert login(srv, ALICE, ALICE_PW)[0] in (235, 454)  # 454: its fail-fast window
        time.sleep(0.2)
    lines = [line for line in srv.log_text().splitlines() if " smtpgate.auth.ldap[" in line]
    # Once per worker that saw it (two on a 2-CPU machine), not once per failed
    # operation (six logins, several operations each); and once when it is back.
    # (The auth log keeps its one record per attempt, "auth tempfail ... reason=".)
    down = [line for line in lines if " unavailable: " in line]
    assert 1 <= len(down) <= 2, "\n".join(lines)
    assert any("answering again after" in line for line in lines), lines


def test_a_directory_back_during_a_quiet_spell_serves_the_next_login(
    slapd: Slapd, tmp_path: Path,
) -> None:
    """docs/directories.md "Fail fast": a directory back from a restart serves logins
    again within retry_max seconds. On a quiet server (no login between the outage
    and the restart) the probe that ends the fail-fast window waited for a login to
    start it, and that login got 454 from a directory up for minutes. The probe
    now starts when the window ends: it reaches the directory with no login, and
    the next login is served."""
    srv, _, _ = _server(tmp_path / "srv", "\n[server]\nworkers = 1\n")
    text = srv.config.read_text()
    srv.config.write_text(text.replace("[accounts.ldap]\n", "[accounts.ldap]\nretry_max = 2\n", 1))
    srv.start()
    try:
        assert login(srv, ALICE, ALICE_PW) == (235, b"")
        slapd.stop()
        try:
            assert login(srv, ALICE, ALICE_PW)[0] == 454  # the fail-fast window opens
        finally:
            slapd.start()
        seen = slapd.log.stat().st_size
        # The probe: an anonymous read of the root DSE, with no login to start it.
        deadline = time.monotonic() + 60
        while 'SRCH base="" scope=0' not in slapd.log.read_bytes()[seen:].decode(errors="replace"):
            assert time.monotonic() < deadline, "no probe reached the directory without a login"
            time.sleep(0.2)
        until_235(srv, ALICE, ALICE_PW)
    finally:
        srv.stop()


def test_directory_down_at_start_up_gives_454_then_logins_are_served(
    slapd: Slapd, tmp_path: Path,
) -> None:
    """A directory that is down when serve starts is an outage, not a configuration
    error: serve starts, the right password and a wrong one get 454 4.7.0 (never
    535), and logins are served once the directory is back, without a restart."""
    srv, _, _ = _server(tmp_path / "srv")
    slapd.stop()
    try:
        srv.start()
        code, text = login(srv, ALICE, ALICE_PW)
        assert (code, text[:5]) == (454, b"4.7.0"), text
        assert login(srv, BOB, "a wrong guess")[0] == 454
    finally:
        slapd.start()
    try:
        deadline = time.monotonic() + 60
        while (reply := login(srv, ALICE, ALICE_PW)) != (235, b""):
            assert reply[0] == 454 and time.monotonic() < deadline, reply
            time.sleep(0.5)
    finally:
        srv.stop()


def test_a_rotated_service_account_password_is_used_without_a_restart(
    slapd: Slapd, tmp_path: Path,
) -> None:
    """The directory's administrator changes the service account's password and the
    new one goes into bind_password_file: after the directory restarts, the new
    search connections bind with it instead of failing every login with 454."""
    srv, _, _ = _server(tmp_path / "srv")
    own = tmp_path / "service.pw"
    own.write_text(SERVICE_PW + "\n")
    srv.config.write_text(srv.config.read_text().replace(str(slapd.root / "service.pw"), str(own)))
    srv.start()
    try:
        assert login(srv, ALICE, ALICE_PW) == (235, b"")
        slapd.set_password(SERVICE_DN, "the rotated service secret")
        own.write_text("the rotated service secret\n")
        slapd.stop()
        slapd.start()  # connections bound with the old password are gone
        assert login(srv, BOB, BOB_PW) == (235, b"")  # not cached: a search and a bind
    finally:
        slapd.set_password(SERVICE_DN, SERVICE_PW)
        srv.stop()


def test_a_wrong_service_account_password_stops_start_up(slapd: Slapd, tmp_path: Path) -> None:
    srv, _, _ = _server(tmp_path / "srv")
    (tmp_path / "wrong.pw").write_text("not the service password\n")
    text = srv.config.read_text().replace(str(slapd.root / "service.pw"), str(tmp_path / "wrong.pw"))
    srv.config.write_text(text)
    check = srv.cli("config", "check", check=False)
    assert check.returncode != 0
    assert "accounts.ldap.bind_password_file" in check.stdout + check.stderr
    with pytest.raises(RuntimeError, match="accounts.ldap.bind_password_file"):
        srv.start()


def test_an_empty_service_password_file_stops_start_up(slapd: Slapd, tmp_path: Path) -> None:
    """Not an outage (serve would start and answer 454 for ever), and never sent as
    an unauthenticated bind: an error naming the key and the file."""
    srv, _, _ = _server(tmp_path / "srv")
    empty = tmp_path / "empty.pw"
    empty.write_text("")
    empty.chmod(0o600)
    srv.config.write_text(
        srv.config.read_text().replace(str(slapd.root / "service.pw"), str(empty)))
    check = srv.cli("config", "check", check=False)
    out = check.stdout + check.stderr
    assert check.returncode != 0 and "accounts.ldap.bind_password_file" in out, out
    assert f"{empty} is empty" in out and "unavailable" not in out, out
    with pytest.raises(RuntimeError, match="accounts.ldap.bind_password_file"):
        srv.start()


def test_a_base_dn_the_directory_lacks_stops_start_up_naming_the_key(
    slapd: Slapd, tmp_path: Path,
) -> None:
    # A typo in base_dn used to pass config check and serve: every name was then
    # "unknown user", every login a 535 the guard counted, with nothing in the log.
    srv, _, _ = _server(tmp_path / "srv")
    text = srv.config.read_text()
    srv.config.write_text(text.replace('base_dn = "', 'base_dn = "ou=typo,', 1))
    check = srv.cli("config", "check", check=False)
    assert check.returncode != 0
    assert "accounts.ldap.base_dn" in check.stdout + check.stderr
    with pytest.raises(RuntimeError, match="accounts.ldap.base_dn"):
        srv.start()


def test_a_base_dn_gone_while_serving_is_454_not_535(slapd: Slapd, tmp_path: Path) -> None:
    from smtpgate.auth.directory import StoreUnavailable
    from smtpgate.auth.ldap_directory import LdapDirectory
    from smtpgate.config import LdapConfig
    from tests.peers.slapd import SERVICE_DN, SERVICE_PW, new_ou, person_ldif

    ou = new_ou(slapd)
    slapd.add(person_ldif(f"uid=carol,{ou}", "carol@example.org", "carol's password"))
    cfg = LdapConfig(url=slapd.url, starttls=True, ca_file=slapd.ca, bind_dn=SERVICE_DN,
                     bind_password_file=slapd.root / "service.pw", base_dn=ou,
                     address_attributes=["mail"], operation_timeout=5)
    directory = LdapDirectory(cfg, bind_password=SERVICE_PW, ca_file=slapd.ca)
    try:
        directory.check_service_account()
        assert directory.find("carol@example.org") is not None
        slapd.admin("ldapdelete", "-r", ou)  # the subtree moved or was restored elsewhere
        with pytest.raises(StoreUnavailable, match="accounts.ldap.base_dn"):
            directory.find("carol@example.org")  # 454 for the login, never "unknown user"
    finally:
        directory.close()


def test_cleartext_to_a_remote_directory_is_refused(slapd: Slapd, tmp_path: Path) -> None:
    srv, _, _ = _server(tmp_path / "srv")
    text = srv.config.read_text()
    remote = text.replace(f'url = "{slapd.url}"', 'url = "ldap://192.0.2.10:389"').replace(
        "starttls = true", "starttls = false")
    srv.config.write_text(remote)
    check = srv.cli("config", "check", check=False)
    assert check.returncode != 0 and "cleartext" in check.stdout + check.stderr
    with pytest.raises(RuntimeError, match="cleartext"):
        srv.start()
    # The documented loosening lets it start, and is listed among the loosenings.
    srv.config.write_text(remote.replace("starttls = false", "starttls = false\nallow_cleartext = true"))
    check = srv.cli("config", "check", check=False)
    assert "accounts.ldap.allow_cleartext" in check.stdout + check.stderr


# --- attacks ------------------------------------------------------------------------------------


HOSTILE = ["*", "*@example.org", "alice@example.org)(mail=*", "al*ce@example.org",
           "alice\\@example.org", "(uid=*)", "*)(uid=*))(|(uid=*", "alice@example.org\0",
           "alice\0@example.org", "a*@example.org"]


def test_ldap_injection_in_the_login_name_never_logs_in(slapd: Slapd, tmp_path: Path) -> None:
    # The guard's penalties cut short (by default 0.5 s doubling up to 4 s, 25 s for
    # these ten failures from one address): what is checked is the directory's answer.
    srv, _, _ = _server(tmp_path / "srv", "\n[guard]\npenalty_base = 0.01\npenalty_max = 0.05\n")
    srv.start()
    try:
        for name in HOSTILE:
            r = connect(srv, "127.0.0.1")
            try:
                # AUTH LOGIN: the name travels as its own base64 string, NUL included.
                assert r.cmd("AUTH LOGIN").startswith("334")
                reply = r.cmd(base64.b64encode(name.encode()).decode())
                if reply.startswith("334"):  # a NUL may be refused at once
                    reply = r.cmd(base64.b64encode(ALICE_PW.encode()).decode())
                assert reply.startswith("535"), (name, reply)
            finally:
                r.close()
        assert login(srv, ALICE, ALICE_PW) == (235, b"")  # alice herself is unaffected
        # An address in capitals is the same login name (docs/accounts.md).
        assert login(srv, ALICE.upper(), ALICE_PW) == (235, b"")
    finally:
        srv.stop()


def test_an_idn_address_in_the_directory_logs_in_by_either_spelling(
    slapd: Slapd, tmp_path: Path
) -> None:
    """LDAP's mail is an IA5String, so a directory holds an internationalised
    domain as its A-label; the name is searched in both spellings (auth/names.py:
    the canonical one is the U-label spelling), so neither logs in as no one."""
    srv, setup, _ = _server(tmp_path / "srv")
    setup.add_user(srv, "idn@xn--bcher-kva.example", "idn directory password")
    srv.start()
    try:
        for name in ("idn@xn--bcher-kva.example", "idn@bücher.example"):
            r = connect(srv, "127.0.0.1")  # smtplib sends an ASCII AUTH PLAIN only
            try:
                plain = f"\0{name}\0idn directory password".encode()
                reply = r.cmd(f"AUTH PLAIN {base64.b64encode(plain).decode()}")
                assert reply.startswith("235"), (name, reply)
            finally:
                r.close()
    finally:
        srv.stop()


def test_the_guard_refuses_before_any_bind_reaches_the_directory(
    slapd: Slapd, tmp_path: Path,
) -> None:
    guard = "\n[guard]\nallowlist = []\nlockout_threshold = 3\npenalty_base = 0.1\npenalty_max = 0.2\n"
    srv, _, dns = _server(tmp_path / "srv", guard)
    srv.start()
    try:
        before = slapd.binds(dns[BOB])
        replies = [guard_login(srv, "127.0.0.3", BOB, f"guess {i}")[:3] for i in range(8)]
        assert replies == ["535"] * 3 + ["454"] * 5, replies
        assert slapd.binds(dns[BOB]) - before == 3  # the lockout's, and not one more
        # The right password from the attacker's address: the guard answers, no bind.
        assert guard_login(srv, "127.0.0.3", BOB, BOB_PW).startswith("454")
        assert slapd.binds(dns[BOB]) - before == 3
        # The directory counted no more than the guard allowed: it still binds.
        slapd.tool("ldapwhoami", "-H", slapd.url, "-ZZ", "-x", "-D", dns[BOB], "-w", BOB_PW)
    finally:
        srv.stop()


def test_a_login_two_entries_hold_is_454_and_not_counted_by_the_guard(
    slapd: Slapd, tmp_path: Path,
) -> None:
    """A second entry with the user's address (a copied entry, a shared mailbox given
    the same mail) is the directory's fault: the user typing the right password got
    a counted 535 until the guard blocked their address, as a wrong password. It is
    454 now (Dovecot's LDAP passdb: a temporary failure), with the entries in the
    server log, nothing counted, and the login works once the directory is fixed."""
    from tests.integration.test_metrics import sample, scrape
    from tests.peers.slapd import person_ldif

    port = free_port()
    guard = (f'\n[metrics]\nlisten = "127.0.0.1:{port}"\n'
             "\n[guard]\nallowlist = []\nlockout_threshold = 3\npenalty_base = 0.1\npenalty_max = 0.2\n")
    srv, _, dns = _server(tmp_path / "srv", guard)
    srv.start()
    try:
        twin = f"uid=bob-copy,{dns[BOB].partition(',')[2]}"
        slapd.add(person_ldif(twin, BOB, "the copy's password"))
        replies = [guard_login(srv, "127.0.0.4", BOB, BOB_PW)[:3] for _ in range(5)]
        assert replies == ["454"] * 5, replies
        records = [json.loads(x) for x in (srv.root / "auth.log").read_text().splitlines()]
        mine = [r for r in records if r.get("client_ip") == "127.0.0.4"]
        assert [r["result"] for r in mine] == ["tempfail"] * 5, mine
        assert "2 entries hold the login" in mine[0]["reason"], mine[0]
        assert twin in srv.log_text()
        # Once a minute per name and process (two workers at most), not once a try.
        assert 1 <= srv.log_text().count("logins with this name get 454") <= 2, srv.log_text()
        assert login(srv, ALICE, ALICE_PW) == (235, b"")  # only that name is affected
        # The directory answered: no backend error for an alert on outages to see
        # (anyone who learned the name could raise that rate at will).
        text = scrape(port)
        assert sample(text, "smtpgate_backend_duration_seconds_count", store="directory") > 0, text
        assert sample(text, "smtpgate_backend_errors_total", store="directory") == 0, text
        slapd.admin("ldapdelete", twin)
        # Five tries at a threshold of 3: nothing was counted, the address is not blocked.
        assert guard_login(srv, "127.0.0.4", BOB, BOB_PW).startswith("235")
    finally:
        srv.stop()


def test_both_login_names_of_an_entry_share_one_guard_count(
    slapd: Slapd, tmp_path: Path,
) -> None:
    """With ``mail`` and ``uid`` both login attributes, and two ``mail`` values, bob's
    entry has three names: wrong passwords rotating them are counted under the one
    account, so the directory sees ``lockout_threshold`` bad binds, not that many per
    name (ppolicy's pwdMaxFailure must not be reachable through smtpgate faster than
    through the guard)."""
    guard = "\n[guard]\nallowlist = []\nlockout_threshold = 3\npenalty_base = 0.0\npenalty_max = 0.0\n"
    srv, _, dns = _server(tmp_path / "srv", guard)
    text = srv.config.read_text()
    srv.config.write_text(text.replace("[accounts.ldap]\n", "[accounts.ldap]\n"
        'user_filter = "(&(objectClass=inetOrgPerson)(|(mail={login})(uid={login})))"\n'
        'login_attributes = ["mail", "uid"]\n', 1))
    uid = dns[BOB].split(",")[0].split("=", 1)[1]
    robert = "robert@example.org"
    slapd.modify(f"dn: {dns[BOB]}\nchangetype: modify\nadd: mail\nmail: {robert}\n")
    srv.start()
    try:
        assert login(srv, uid, BOB_PW) == (235, b"")  # the uid is a login of bob's
        before = slapd.binds(dns[BOB])
        names = [(uid, BOB, robert)[i % 3] for i in range(8)]
        replies = [guard_login(srv, "127.0.0.3", n, f"guess {i}")[:3] for i, n in enumerate(names)]
        assert replies == ["535"] * 3 + ["454"] * 5, replies
        assert slapd.binds(dns[BOB]) - before == 3  # not 3 per name
        # Locked for new addresses under both names; bob's own address still works.
        assert guard_login(srv, "127.0.0.3", uid, BOB_PW).startswith("454")
        assert guard_login(srv, "127.0.0.3", BOB, BOB_PW).startswith("454")
        assert guard_login(srv, "127.0.0.3", robert, BOB_PW).startswith("454")
        assert login(srv, uid, BOB_PW) == (235, b"")
        # `user unlock` by any of its addresses lifts the account's one lockout.
        srv.cli("user", "unlock", robert)
        assert guard_login(srv, "127.0.0.3", BOB, BOB_PW).startswith("235")
    finally:
        srv.stop()


def test_every_mail_value_of_an_entry_is_one_account_for_what_smtpgate_sets(
    slapd: Slapd, tmp_path: Path,
) -> None:
    """An entry with two ``mail`` values (the default ``login_attributes``) logs in
    with either; both are its one account, named by the first. Until 2026-12 a
    login with the second was an account of its own in the overlay: ``smtpgate user
    lock`` on the first let the user log in (and send) with the second, and so did
    rates, access rules and ``user rotate`` set on it; ``user list`` showed two."""
    srv, _, dns = _server(tmp_path / "srv")
    robert = "robert@example.org"
    slapd.modify(f"dn: {dns[BOB]}\nchangetype: modify\nadd: mail\nmail: {robert}\n")
    srv.start()
    try:
        assert login(srv, robert, BOB_PW) == (235, b"")
        assert send(srv, robert, BOB_PW, robert) == (250, "")
        assert send(srv, robert, BOB_PW, BOB) == (250, "")
        srv.cli("user", "lock", BOB)
        for name in (robert, robert.upper(), BOB):
            code, _ = login(srv, name, BOB_PW)
            assert code == 535, name
        rows = [json.loads(x) for x in srv.cli("user", "list", "--json").stdout.splitlines()]
        assert [r["name"] for r in rows] == [BOB], rows
        srv.cli("user", "unlock", robert)  # by either name: the same account
        assert login(srv, robert, BOB_PW) == (235, b"")
    finally:
        srv.stop()


def _scram_salt(server: Server, source: str, name: str) -> str:
    """The salt server-first shows ``name`` (the exchange is then cancelled)."""
    r = connect(server, source)
    try:
        first = base64.b64encode(f"n,,n={name},r=probe-nonce-1".encode()).decode()
        reply = r.cmd(f"AUTH SCRAM-SHA-256 {first}")
        assert reply.startswith("334 "), reply
        attrs = dict(a.split("=", 1) for a in base64.b64decode(reply[4:]).decode().split(","))
        r.cmd("*")
        return attrs["s"]
    finally:
        r.close()


def test_a_plain_login_name_in_another_case_tells_nothing_of_whether_it_exists(
    slapd: Slapd, tmp_path: Path,
) -> None:
    """A login name that is no address (``uid``, AD's ``sAMAccountName``) logs in
    without letter case, so every spelling of bob's uid shares his guard count and his
    SCRAM salt. An unknown one must do the same: when ``ghost`` and ``GHOST`` were
    counted and salted apart, three guesses at ``ghost`` then one at ``GHOST`` got
    ``535`` (a fresh count) where bob's uid in capitals got ``454``, and ``GHOST``
    showed another salt than ``ghost`` where bob's showed one: whether a uid exists
    could be read off either."""
    guard = ("\n[guard]\nallowlist = []\nlockout_threshold = 3\npenalty_base = 0.0\n"
             "penalty_max = 0.0\nspray_accounts = 50\n")
    srv, _, dns = _server(tmp_path / "srv", guard)
    text = srv.config.read_text()
    srv.config.write_text(text.replace("[accounts.ldap]\n", "[accounts.ldap]\n"
        'user_filter = "(&(objectClass=inetOrgPerson)(|(mail={login})(uid={login})))"\n'
        'login_attributes = ["mail", "uid"]\n', 1))
    uid = dns[BOB].split(",")[0].split("=", 1)[1]
    ghost = "ghost.example.org"
    srv.start()
    try:
        assert login(srv, uid, BOB_PW) == (235, b"")
        wait_for_scram_keys(srv, BOB)  # bob's salt is now his own, not a decoy's
        for i, name in enumerate((uid, ghost)):
            salts = {_scram_salt(srv, f"127.0.8.{10 * i + k}", spelling)
                     for k, spelling in enumerate((name, name.upper(), name.title()))}
            assert len(salts) == 1, (name, salts)
        for i, name in enumerate((uid, ghost)):
            source = f"127.0.9.{i + 1}"
            replies = [guard_login(srv, source, name, f"guess {k}")[:3] for k in range(3)]
            assert replies == ["535"] * 3, (name, replies)
            again = guard_login(srv, source, name.upper(), "guess 4")
            assert again.startswith("454 4.7.0 Too many failed logins for this account"), (name, again)
    finally:
        srv.stop()


def test_an_authzid_that_repeats_a_plain_login_name_logs_in(
    slapd: Slapd, tmp_path: Path,
) -> None:
    """RFC 4616 §2: an authzid equal to the authcid asks to act as oneself. Clients
    that always send one (Postfix's SMTP client through Cyrus SASL sends
    ``user\\0user\\0pass``) logged in by uid got ``535`` with the right password:
    the authzid was compared with the entry's address only (``authorization
    identity differs from account``).
    Any spelling of the name logged in with, or the account's address, will do; the
    uid of another entry is still refused, through PLAIN and SCRAM alike."""
    srv, _, dns = _server(tmp_path / "srv")
    text = srv.config.read_text()
    srv.config.write_text(text.replace("[accounts.ldap]\n", "[accounts.ldap]\n"
        'user_filter = "(&(objectClass=inetOrgPerson)(|(mail={login})(uid={login})))"\n'
        'login_attributes = ["mail", "uid"]\n', 1))
    uid = dns[BOB].split(",")[0].split("=", 1)[1]
    alice_uid = dns[ALICE].split(",")[0].split("=", 1)[1]
    srv.start()
    try:
        for authzid in (uid, uid.upper(), BOB):
            r = connect(srv, "127.0.0.1")
            try:
                reply = r.cmd("AUTH PLAIN " + base64.b64encode(
                    f"{authzid}\0{uid}\0{BOB_PW}".encode()).decode())
            finally:
                r.close()
            assert reply.startswith("235 2.7.0"), (authzid, reply)
        wait_for_scram_keys(srv, BOB)
        with WireSmtp(srv.submissions, srv.ca, tls="implicit") as w:
            done = w.auth(ScramClient("sha256", uid, BOB_PW, authzid=uid))
        assert done.final.code == 235, done
        r = connect(srv, "127.0.0.1")
        try:
            reply = r.cmd("AUTH PLAIN " + base64.b64encode(
                f"{alice_uid}\0{uid}\0{BOB_PW}".encode()).decode())
        finally:
            r.close()
        assert reply.startswith("535 5.7.8"), reply
        with WireSmtp(srv.submissions, srv.ca, tls="implicit") as w:
            done = w.auth(ScramClient("sha256", uid, BOB_PW, authzid=alice_uid))
        assert done.final.code == 535 and done.challenges[-1] == b"e=other-error", done
        refused = refused_reasons(srv)
        assert refused == ["authorization identity differs from account"] * 2, refused
    finally:
        srv.stop()


def refused_reasons(srv: Server) -> list[str]:
    """The reasons of the auth log's failed logins, in order."""
    records = [json.loads(x) for x in (srv.root / "auth.log").read_text().splitlines()]
    return [x["reason"] for x in records if x["result"] == "failure"]


def test_a_bearer_token_for_the_account_of_the_uid_named_logs_in(
    slapd: Slapd, tmp_path: Path,
) -> None:
    """docs/oauth.md: a name the client gives (OAUTHBEARER's ``a=``, XOAUTH2's
    ``user=``) must be the same account as the token's. A client set up with the
    uid it logs in with by password named that uid and got ``535`` for a good token
    of the entry's address (``token identity differs from the username given``):
    the name was compared as an address only. It is now resolved as a login name;
    another entry's uid is still refused."""
    issuer = LocalIssuer()
    jwks = issuer.write_jwks(tmp_path / "srv" / "jwks.json")
    srv, _, dns = _server(tmp_path / "srv", issuer.config(str(jwks)))
    text = srv.config.read_text()
    srv.config.write_text(text.replace("[accounts.ldap]\n", "[accounts.ldap]\n"
        'user_filter = "(&(objectClass=inetOrgPerson)(|(mail={login})(uid={login})))"\n'
        'login_attributes = ["mail", "uid"]\n', 1).replace(
        "\n[auth]\n", '\n[auth]\nmechanisms = ["OAUTHBEARER", "XOAUTH2", "PLAIN"]\n', 1))
    uid = dns[BOB].split(",")[0].split("=", 1)[1]
    alice_uid = dns[ALICE].split(",")[0].split("=", 1)[1]
    token = issuer.token(BOB)
    srv.start()
    try:
        for name in (uid, uid.upper(), BOB):
            for mech in (OAuthBearerClient(name, token), XOAuth2Client(name, token)):
                with WireSmtp(srv.submissions, srv.ca, tls="implicit") as w:
                    done = w.auth(mech)
                assert done.final.code == 235, (name, mech.name, done)
        for mech in (OAuthBearerClient(alice_uid, token), XOAuth2Client(alice_uid, token)):
            with WireSmtp(srv.submissions, srv.ca, tls="implicit") as w:
                done = w.auth(mech)
            assert done.final.code == 535, (mech.name, done)
        refused = refused_reasons(srv)
        assert refused == ["token identity differs from the username given"] * 2, refused
    finally:
        srv.stop()


def test_serve_starts_while_the_directory_is_down_and_logins_follow_it(
    slapd: Slapd, tmp_path: Path,
) -> None:
    srv, _, _ = _server(tmp_path / "srv")
    slapd.stop()
    try:
        srv.start()  # a warning, not a refusal: the directory may come back first
        assert login(srv, ALICE, ALICE_PW)[0] == 454
    finally:
        slapd.start()
    try:
        until_235(srv, ALICE, ALICE_PW)
        assert "logins get 454 4.7.0 until it answers" in srv.log_text()
    finally:
        srv.stop()


@pytest.mark.parametrize(
    ("where", "ca", "works"),
    [
        ("ldaps", "slapd", True),
        ("ldaps", "other", False),  # a certificate from a CA not configured
        ("wrong-name", "slapd", False),  # the right CA, a name the certificate lacks
    ],
)
def test_ldaps_and_the_directory_certificate_is_verified(
    slapd: Slapd, tmp_path: Path, where: str, ca: str, works: bool,
) -> None:
    srv, _, _ = _server(tmp_path / "srv")
    url = slapd.ldaps_url if where == "ldaps" else f"ldaps://127.0.0.2:{slapd.tls_port}"
    ca_file = slapd.ca if ca == "slapd" else srv.ca  # srv.ca: smtpgate's own self-signed
    text = srv.config.read_text().replace(f'url = "{slapd.url}"', f'url = "{url}"')
    text = text.replace("starttls = true", "starttls = false")
    srv.config.write_text(text.replace(f'ca_file = "{slapd.ca}"', f'ca_file = "{ca_file}"'))
    out = srv.cli("config", "check", check=False)
    check = out.stdout + out.stderr
    if not works:
        # Not an outage that waiting would end: a configuration error naming the key.
        key = "accounts.ldap.ca_file" if ca == "other" else "accounts.ldap.url"
        says = ("certificate verify failed" if ca == "other"
                else "its TLS certificate is not for '127.0.0.2'")
        assert out.returncode != 0 and key in check and says in check, check
        assert "unavailable" not in check, check
        with pytest.raises(RuntimeError, match=key):
            srv.start()
        return
    assert out.returncode == 0, check
    srv.start()
    try:
        assert login(srv, ALICE, ALICE_PW) == (235, b"")
    finally:
        srv.stop()


def test_a_directory_that_stops_answering_gives_454_not_a_hang(
    slapd: Slapd, ldap_server: tuple[Server, dict[str, str]],
) -> None:
    srv, _ = ldap_server
    assert login(srv, ALICE, ALICE_PW) == (235, b"")  # pooled connections are open
    assert slapd.proc is not None
    slapd.proc.send_signal(signal.SIGSTOP)  # connects still succeed (the kernel's backlog)
    try:
        code, text = login(srv, ALICE, ALICE_PW)
        assert (code, text[:5]) == (454, b"4.7.0"), text
    finally:
        slapd.proc.send_signal(signal.SIGCONT)
    until_235(srv, ALICE, ALICE_PW)


def test_an_enabled_filter_on_an_attribute_the_directory_lacks_is_logged_once(
    slapd: Slapd, caplog: pytest.LogCaptureFixture,
) -> None:
    """docs/directories.md's example ``enabled_filter`` tests ppolicy's
    pwdAccountLockedTime. On a slapd without the ppolicy overlay that attribute is
    unknown, ``(!(...))`` is undefined, and every entry is outside the filter: every
    login 535 as a disabled account, and nothing said why. The server log now says
    it once, naming the key and the attribute."""
    from smtpgate.auth.ldap_directory import LdapDirectory
    from smtpgate.auth.ldap_group_watch import THRESHOLD
    from smtpgate.config import LdapConfig
    from tests.peers.slapd import new_ou, person_ldif

    ou = new_ou(slapd)
    users = [f"ef{i}@example.org" for i in range(THRESHOLD)]
    for i, name in enumerate(users):
        slapd.add(person_ldif(f"uid=ef{i},{ou}", name, ALICE_PW))
    cfg = LdapConfig.model_validate({
        "url": slapd.url, "starttls": True, "ca_file": slapd.ca, "bind_dn": SERVICE_DN,
        "bind_password_file": slapd.root / "service.pw", "base_dn": ou,
        "enabled_filter": "(!(pwdAccountLockedTime=000001010000Z))"})
    directory = LdapDirectory(cfg, bind_password=SERVICE_PW, ca_file=slapd.ca)
    try:
        caplog.clear()
        for name in users:
            entry = directory.find(name)
            assert entry is not None and not entry.enabled, entry
        said = [r.getMessage() for r in caplog.records if "enabled_filter" in r.getMessage()]
        assert len(said) == 1, said
        assert "accounts.ldap.enabled_filter" in said[0], said
        assert "pwdAccountLockedTime" in said[0] and "ppolicy" in said[0], said
    finally:
        directory.close()


def test_a_directory_that_accepts_and_never_answers_costs_one_login_its_timeout_not_each(
    slapd: Slapd, tmp_path: Path,
) -> None:
    """A directory host that accepts TCP and then says nothing (frozen, blackholed)
    cost every login the whole ``operation_timeout``, one after another. Now the
    first login gets 454 after it, the next ones 454 at once (a probe, not a login,
    asks the directory meanwhile), and logins are served again once it answers."""
    from tests.peers.freezing_relay import FreezingRelay

    relay = FreezingRelay(slapd.port)
    srv, _, _ = _server(tmp_path / "srv", "\n[server]\nworkers = 1\n")
    try:
        text = srv.config.read_text().replace(
            f'url = "{slapd.url}"', f'url = "ldap://127.0.0.1:{relay.port}"')
        srv.config.write_text(text.replace("operation_timeout = 3", "operation_timeout = 2"))
        srv.start()
        assert guard_login(srv, "127.0.0.2", ALICE, ALICE_PW).startswith("235")
        relay.freeze()
        started = time.monotonic()
        assert guard_login(srv, "127.0.0.2", ALICE, ALICE_PW).startswith("454 4.7.0")
        assert time.monotonic() - started < 4  # the bound, operation_timeout
        for peer in ("127.0.0.3", "127.0.0.4", "127.0.0.5", "127.0.0.6", "127.0.0.3"):
            started = time.monotonic()
            assert guard_login(srv, peer, BOB, "a wrong guess").startswith("454 4.7.0")
            assert time.monotonic() - started < 1.0, peer  # not another timeout
            time.sleep(0.3)
        relay.thaw()
        deadline = time.monotonic() + 30
        while not (reply := guard_login(srv, "127.0.0.7", ALICE, ALICE_PW)).startswith("235"):
            assert reply.startswith("454") and time.monotonic() < deadline, reply
            time.sleep(0.5)
        assert srv.proc is not None and srv.proc.poll() is None
    finally:
        relay.close()
        if srv.proc is not None:
            srv.stop()


def test_config_check_and_status_say_a_directory_outage_once_naming_the_key(
    slapd: Slapd, tmp_path: Path,
) -> None:
    """With the directory down, ``config check`` and ``status`` printed the server's
    outage log line on stderr besides their own message; and ``status`` named
    ``accounts.ldap.url`` whatever the problem, a CA file that did not sign the
    directory's certificate included. Now each says it once, naming the key."""
    srv, _, _ = _server(tmp_path / "srv")
    text = srv.config.read_text()
    srv.config.write_text(text.replace(f'url = "{slapd.url}"', 'url = "ldap://127.0.0.1:34150"'))
    check = srv.cli("config", "check", check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    said = (check.stdout + check.stderr).count("Connection refused")
    assert said == 1, check.stdout + check.stderr
    assert "warning: accounts.ldap.url:" in check.stdout + check.stderr
    status = srv.cli("status", check=False)
    assert status.stderr == "", status.stderr
    line = next(x for x in status.stdout.splitlines() if x.startswith("accounts:"))
    assert "accounts.ldap.url" in line and "Connection refused" in line, line
    assert "retry_max" not in line, line  # the cause, not the serving process's window

    # The directory up, its certificate signed by another CA than ca_file's.
    srv.config.write_text(text.replace(f'ca_file = "{slapd.ca}"', f'ca_file = "{srv.ca}"'))
    status = srv.cli("status", "--json", check=False)
    assert status.stderr == "", status.stderr
    accounts = json.loads(status.stdout)["accounts"]
    assert accounts["key"] == "accounts.ldap.ca_file", accounts
    assert "certificate" in accounts["error"], accounts
    check = srv.cli("config", "check", check=False)
    assert check.returncode != 0
    assert (check.stdout + check.stderr).count("certificate was refused") == 1, (
        check.stdout + check.stderr)
    assert "accounts.ldap.ca_file" in check.stdout + check.stderr


def test_admin_commands_say_a_directory_outage_once_with_the_directory_hint(
    slapd: Slapd, tmp_path: Path,
) -> None:
    """With the directory down, every admin command printed the server's outage log
    line ('logins get 454 4.7.0 until it answers') on stderr, then its own error with
    the server's fail-fast note ('not asked again until it answers a probe') and the
    hint of a locked SQLite file. Now a command that needs the directory says the
    directory's error once, with the [accounts.ldap] hint; one that does not need it
    (guard list, admin-log) says nothing about it."""
    srv, _, _ = _server(tmp_path / "srv")
    text = srv.config.read_text()
    srv.config.write_text(text.replace(f'url = "{slapd.url}"', 'url = "ldap://127.0.0.1:34150"'))
    for cmd in (("user", "show", ALICE), ("user", "lock", ALICE),
                ("app-password", "list", ALICE), ("user", "alias", "list", ALICE)):
        out = srv.cli(*cmd, check=False)
        said = out.stdout + out.stderr
        assert out.returncode == 1, (cmd, said)
        assert said.count("Connection refused") == 1, (cmd, said)
        assert "454" not in said and "retry_max" not in said, (cmd, said)
        assert "hint: check [accounts.ldap]" in said and "locked" not in said, (cmd, said)
    for cmd in (("guard", "list"), ("admin-log",)):
        out = srv.cli(*cmd, check=False)
        assert out.returncode == 0 and out.stderr == "", (cmd, out.stdout + out.stderr)
