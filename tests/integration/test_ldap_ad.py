"""Active Directory accounts, against a real Samba AD domain controller.

The DC (``tests/peers/samba_ad.py``) is provisioned once per test run. The
first tests query it with ldap3 and the filters the ``active_directory``
flavour generates, so a wrong preset fails here whatever the backend does; the
others log in through the real ``smtpgate serve`` (``flavour =
"active_directory"``, LDAPS with the DC's CA) with UPN and sAMAccountName
names, a disabled account, ``proxyAddresses`` as sender addresses, a nested
group, and LDAP injection in the login name.
"""

from __future__ import annotations

import json
import smtplib
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import ldap3
import pytest

from smtpgate.ldap_presets import AD_PRESET, escape_filter_value, group_filter
from tests.integration.conftest import IN_CI, Server, make_server, require_tool
from tests.peers import samba_ad
from tests.peers.samba_ad import (
    ALICE,
    BASE_DN,
    BOB,
    CAROL,
    DAVE,
    ERIN,
    FRANK,
    GRACE,
    LATE_LOCKOUT_THRESHOLD,
    LOCKOUT_THRESHOLD,
    LOCKOUT_WINDOW_MINUTES,
    MAIL_GROUP_DN,
    SERVICE_DN,
    SERVICE_PASSWORD,
    ADUser,
    SambaAD,
)

pytestmark = [pytest.mark.interop, pytest.mark.slow]

@pytest.fixture(scope="session")
def dc() -> Iterator[SambaAD]:
    """The test run's DC (one per run, shared with the protection suite's AD set-up)."""
    why = samba_ad.available()
    if why is not None:
        if IN_CI:
            pytest.fail(f"Samba AD DC tests cannot run: {why} (make test installs samba-ad-dc)")
        pytest.skip(why)
    yield samba_ad.shared_samba_ad()


# --- the preset's filters, straight against the DC -----------------------------------


def test_a_password_with_a_nul_never_binds(dc: SambaAD, tmp_path: Path) -> None:
    """Samba compares a simple bind's password up to its first NUL, so the
    password followed by NUL and anything is "right" there: a NUL (AUTH LOGIN
    can carry one) is no password, and no bind is made for it."""
    from smtpgate.auth.ldap_directory import LdapDirectory
    from smtpgate.config import LdapConfig

    (tmp_path / "svc.pw").write_text(SERVICE_PASSWORD + "\n")
    cfg = LdapConfig.model_validate({
        "flavour": "active_directory", "url": dc.ldaps_url, "ca_file": dc.ca_file,
        "bind_dn": SERVICE_DN, "bind_password_file": tmp_path / "svc.pw",
        "base_dn": BASE_DN})
    directory = LdapDirectory(cfg, bind_password=SERVICE_PASSWORD, ca_file=dc.ca_file)
    try:
        entry = directory.find(ALICE.upn)
        assert entry is not None
        assert directory.bind(entry.dn, ALICE.password)
        assert not directory.bind(entry.dn, ALICE.password + "\0whatever")
    finally:
        directory.close()


@pytest.fixture(scope="module")
def service(dc: SambaAD) -> Iterator[ldap3.Connection]:
    """The service account's connection over verified LDAPS, as smtpgate makes it."""
    tls = ldap3.Tls(ca_certs_file=str(dc.ca_file), validate=ssl.CERT_REQUIRED)
    server = ldap3.Server(dc.address, port=636, use_ssl=True, tls=tls, connect_timeout=5)
    with samba_ad.bound(server, SERVICE_DN, SERVICE_PASSWORD) as conn:
        conn.raise_exceptions = False
        yield conn


def _found(conn: ldap3.Connection, flt: str) -> list[str]:
    conn.search(BASE_DN, flt, attributes=["sAMAccountName"])
    return sorted(str(e.sAMAccountName.value) for e in conn.entries)


def _user_filter(login: str) -> str:
    flt = AD_PRESET["user_filter"]
    assert isinstance(flt, str)
    return flt.replace("{login}", escape_filter_value(login))


def test_preset_user_filter_finds_by_upn_and_sam_account_name(service: ldap3.Connection) -> None:
    conn = service
    assert _found(conn, _user_filter(ALICE.upn)) == ["alice"]
    assert _found(conn, _user_filter(ALICE.sam)) == ["alice"]
    # Computer accounts are objectClass=user too; objectCategory=person keeps them out.
    assert _found(conn, _user_filter("DC1$")) == []


# Not NUL: Samba matches "alice\00" as "alice" (the value ends at the NUL), so
# escaping is not enough there; the backend refuses such a name before searching
# (the login tests below send one).
@pytest.mark.parametrize("login", ["*", "a*", "*)(sAMAccountName=*", "alice)(|(x=*",
                                   "\\2a", "alice\\", ")("])
def test_preset_user_filter_with_injection_matches_nobody(
    service: ldap3.Connection, login: str
) -> None:
    assert _found(service, _user_filter(login)) == []


def test_preset_enabled_filter_excludes_the_disabled_account(service: ldap3.Connection) -> None:
    enabled = AD_PRESET["enabled_filter"]
    conn = service
    assert _found(conn, f"(&(sAMAccountName={BOB.sam}){enabled})") == []
    assert _found(conn, f"(&(sAMAccountName={ALICE.sam}){enabled})") == ["alice"]


def test_preset_group_filter_follows_nested_groups(service: ldap3.Connection) -> None:
    flt = group_filter("active_directory", MAIL_GROUP_DN)
    found = _found(service, f"(&(objectCategory=person){flt})")
    assert found == ["alice", "carol"]  # alice directly, carol through Staff
    # Without the in-chain rule carol (nested) is not a member: the rule is what counts.
    assert _found(service, f"(&(objectCategory=person)(memberOf={MAIL_GROUP_DN}))") == [
        "alice"
    ]


# --- through smtpgate serve ------------------------------------------------------------

#: Most tests fail logins on purpose from one address: the guard is kept out of their
#: way (the lockout tests at the end set it up).
ALLOW_LOOPBACK = 'allowlist = ["127.0.0.0/8"]'


def _ad_server(root: Path, dc: SambaAD, extra: str = "", guard: str = ALLOW_LOOPBACK,
               url: str = "", service_password: str = SERVICE_PASSWORD,
               start: bool = True) -> Server:
    root.mkdir(parents=True, exist_ok=True)
    pw = root / "ad-bind.pw"
    pw.write_text(service_password + "\n")
    pw.chmod(0o600)
    srv = make_server(root, f"""
[accounts.ldap]
flavour = "active_directory"
url = "{url or dc.ldaps_url}"
ca_file = "{dc.ca_file}"
bind_dn = "{SERVICE_DN}"
bind_password_file = "{pw}"
base_dn = "{BASE_DN}"
{extra}
[guard]
{guard}
""")
    text = srv.config.read_text()
    srv.config.write_text(text.replace("[accounts]\n", '[accounts]\nbackend = "ldap"\n', 1))
    if start:
        srv.start()
    return srv


@pytest.fixture(scope="module")
def ad_server(dc: SambaAD, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # SCRAM on: the tests of the keys kept after a first PLAIN use this server.
    srv = _ad_server(tmp_path_factory.mktemp("ad") / "srv", dc, "scram = true")
    yield srv
    if srv.proc is not None:
        srv.stop()


@pytest.fixture(scope="module")
def group_server(dc: SambaAD, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = _ad_server(tmp_path_factory.mktemp("adg") / "srv", dc, f'group = "{MAIL_GROUP_DN}"')
    yield srv
    if srv.proc is not None:
        srv.stop()


def _client(srv: Server) -> smtplib.SMTP:
    smtp = smtplib.SMTP("127.0.0.1", srv.submission, timeout=30)
    smtp.starttls(context=srv.client_context())
    return smtp


def _plain(smtp: smtplib.SMTP, user: str, password: str) -> None:
    """One AUTH PLAIN (``login()`` would try the next mechanism after a failure)."""
    smtp.ehlo_or_helo_if_needed()
    smtp.user, smtp.password = user, password
    smtp.auth("PLAIN", smtp.auth_plain)


def _login(srv: Server, user: str, password: str) -> tuple[int, bytes]:
    with _client(srv) as smtp:
        try:
            _plain(smtp, user, password)
        except smtplib.SMTPAuthenticationError as e:
            return e.smtp_code, e.smtp_error
        return 235, b""


def test_upn_login(ad_server: Server) -> None:
    assert _login(ad_server, ALICE.upn, ALICE.password)[0] == 235


def test_sam_account_name_login(ad_server: Server) -> None:
    assert _login(ad_server, ALICE.sam, ALICE.password)[0] == 235


def test_starttls_on_389(dc: SambaAD, tmp_path: Path) -> None:
    srv = _ad_server(tmp_path / "srv", dc, url=dc.ldap_url, extra="starttls = true")
    try:
        assert _login(srv, ALICE.upn, ALICE.password)[0] == 235
    finally:
        srv.stop()


def test_a_wrong_service_account_password_stops_start_up(dc: SambaAD, tmp_path: Path) -> None:
    srv = _ad_server(tmp_path / "srv", dc, service_password="not-the-password", start=False)
    check = srv.cli("config", "check", check=False)
    assert check.returncode != 0
    assert "accounts.ldap.bind_password_file" in check.stdout + check.stderr
    with pytest.raises(RuntimeError, match="accounts.ldap.bind_password_file"):
        srv.start()


def test_wrong_password_is_535(ad_server: Server) -> None:
    assert _login(ad_server, ALICE.upn, "not-the-password")[0] == 535


def test_disabled_account_is_refused_like_a_wrong_password(ad_server: Server) -> None:
    """userAccountControl ACCOUNTDISABLE: the right password gets exactly the reply
    a wrong one gets (a locked account reveals nothing more)."""
    refused = _login(ad_server, BOB.upn, BOB.password)
    assert refused[0] == 535
    assert refused == _login(ad_server, DAVE.upn, "not-the-password")


@pytest.mark.parametrize("login", [
    "*", "alice*", "*@example.org", "alice)(sAMAccountName=*", ")(", "alice\0",
    "alice\\", "\\2a", "alic", "alice1",
])
def test_injection_and_loose_spellings_never_log_in(ad_server: Server, login: str) -> None:
    """Filter syntax in the name is data, and a name that is not the whole of a
    login value is no login (letter case aside:
    test_a_sam_account_name_in_capitals_is_the_account)."""
    assert _login(ad_server, login, ALICE.password)[0] == 535


def test_an_address_in_capitals_is_the_account(ad_server: Server) -> None:
    """Login names that are addresses have no letter case (docs/accounts.md)."""
    assert _login(ad_server, ALICE.upn.capitalize(), ALICE.password)[0] == 235


@pytest.mark.parametrize("login", ["ALICE", "Alice"])
def test_a_sam_account_name_in_capitals_is_the_account(ad_server: Server, login: str) -> None:
    """AD compares sAMAccountName without letter case (Windows logs ALICE in as alice,
    and a phone capitalises the first letter typed); the UPN's local part is taken
    in any case too, so the two names of one account were not alike. The account
    is the UPN whatever the spelling."""
    assert _login(ad_server, login, ALICE.password)[0] == 235
    lines = (ad_server.root / "auth.log").read_text().splitlines()
    record = json.loads(lines[-1])
    assert record["result"] == "success"
    assert record["username"] == ALICE.upn


def _mail_from(srv: Server, user: ADUser, sender: str) -> int:
    with _client(srv) as smtp:
        _plain(smtp, user.upn, user.password)
        code, _ = smtp.mail(sender)
        smtp.rset()
        return code



@pytest.mark.parametrize("sender", [
    "alice@example.org",          # mail, and SMTP: (primary)
    "a.liddell@example.org",      # smtp:
    "wonder@example.org",         # sMtP: (the type is case-insensitive)
])
def test_proxy_addresses_of_type_smtp_are_owned(ad_server: Server, sender: str) -> None:
    assert _mail_from(ad_server, ALICE, sender) == 250


@pytest.mark.parametrize("sender", [
    "forged@example.org",         # inside an X500: value
    "sip-only@example.org",       # sip:
    "carol@example.org",          # someone else's
])
def test_other_proxy_address_types_grant_nothing(ad_server: Server, sender: str) -> None:
    assert _mail_from(ad_server, ALICE, sender) == 553


def test_a_upn_that_is_no_mail_address_of_the_user_is_not_a_sender(
    ad_server: Server, dc: SambaAD
) -> None:
    """AD does not make a UPN a mail address: it is a login name, and in a domain
    whose UPNs and mail addresses differ it may be someone else's address. Only
    mail and the smtp: proxyAddresses are the user's (docs/directories.md); the
    UPN was owned as the account's name, so kim could send as kyle's address."""
    kyle = ADUser("kyle", "kyle@example.org", "Kyle-Pass-Word-1!", mail="k.one@example.org")
    kim = ADUser("kim", "k.one.upn@example.org", "Kim-Pass-Word-1!", mail="kim@example.org")
    _add_ad_user(dc, kyle)
    _add_ad_user(dc, kim)
    with dc.admin() as conn:  # kyle's old address, kept when he renamed: kim's UPN now
        conn.modify(kyle.dn, {"proxyAddresses": [(ldap3.MODIFY_REPLACE, [
            "SMTP:k.one@example.org", "smtp:k.one.upn@example.org"])]})
        assert conn.result["result"] == 0, conn.result
    assert _mail_from(ad_server, kim, "kim@example.org") == 250
    assert _mail_from(ad_server, kim, kim.upn) == 553
    assert _mail_from(ad_server, kyle, "k.one@example.org") == 250
    # A UPN that is also one of the user's addresses stays a sender (alice's is).
    assert _mail_from(ad_server, ALICE, ALICE.upn) == 250


def test_mail_attribute_is_owned_beside_proxy_addresses(ad_server: Server) -> None:
    """``mail`` has no type prefix: it counts as it is, though ``address_prefixes``
    filters the typed ``proxyAddresses`` values."""
    assert _mail_from(ad_server, DAVE, "d.mail@example.org") == 250


def test_sam_account_name_login_owns_the_same_addresses(ad_server: Server) -> None:
    with _client(ad_server) as smtp:
        _plain(smtp, ALICE.sam, ALICE.password)
        assert smtp.mail("a.liddell@example.org")[0] == 250


def test_swaks_sends_as_a_proxy_address_with_the_sam_account_name(ad_server: Server) -> None:
    before = len(ad_server.delivered())
    proc = subprocess.run(
        [require_tool("swaks"), "-s", "127.0.0.1", "-p", str(ad_server.submission), "-tls",
         "--tls-verify", "--tls-ca-path", str(ad_server.ca), "-a", "PLAIN",
         "-au", ALICE.sam, "-ap", ALICE.password, "-f", "a.liddell@example.org",
         "-t", "bob@example.net", "--helo", "client.test"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "235 2.7.0" in proc.stdout
    assert len(ad_server.wait_for_mail(before + 1)) == before + 1


def _gsasl(srv: Server, user: str, password: str) -> int:
    return subprocess.run(
        [require_tool("gsasl"), "--smtp", f"--connect=127.0.0.1:{srv.submission}",
         "--starttls", f"--x509-ca-file={srv.ca}", "--hostname=localhost", "-d", "--quiet",
         "-a", user, "-p", password, "-m", "SCRAM-SHA-256-PLUS"],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, check=False,
    ).returncode


def _set_ad_password(dc: SambaAD, user: ADUser, password: str) -> None:
    with dc.admin() as conn:
        conn.modify(user.dn, {"unicodePwd": [
            (ldap3.MODIFY_REPLACE, [f'"{password}"'.encode("utf-16-le")])]})


def test_scram_after_plain_for_both_names_and_after_a_password_change(
    ad_server: Server, dc: SambaAD
) -> None:
    """SCRAM keys are derived at the first PLAIN and kept under the account's one
    identity (the UPN), so the sAMAccountName uses them too; a new password in AD
    (pwdLastSet moves) makes them stale until the next PLAIN."""
    assert _gsasl(ad_server, CAROL.upn, CAROL.password) != 0  # no keys yet
    assert _login(ad_server, CAROL.sam, CAROL.password)[0] == 235
    assert _gsasl(ad_server, CAROL.upn, CAROL.password) == 0
    assert _gsasl(ad_server, CAROL.sam, CAROL.password) == 0
    assert _gsasl(ad_server, CAROL.upn, "wrong password") != 0
    new = "Carol-New-Word-33!"
    _set_ad_password(dc, CAROL, new)
    assert _gsasl(ad_server, CAROL.upn, CAROL.password) != 0  # the old keys are stale
    assert _gsasl(ad_server, CAROL.upn, new) != 0  # none for the new password yet
    assert _login(ad_server, CAROL.upn, new)[0] == 235
    assert _gsasl(ad_server, CAROL.upn, new) == 0
    assert _gsasl(ad_server, CAROL.upn, CAROL.password) != 0
    _set_ad_password(dc, CAROL, CAROL.password)  # as the group tests expect


def _add_ad_user(dc: SambaAD, user: ADUser, pso_dn: str = "") -> None:
    """One more enabled user in CN=Users (``pso_dn``: the password settings it gets)."""
    with dc.admin() as conn:
        conn.add(user.dn, ["top", "person", "organizationalPerson", "user"], {
            "sAMAccountName": user.sam, "userPrincipalName": user.upn,
            "unicodePwd": f'"{user.password}"'.encode("utf-16-le"),
            "userAccountControl": 0x200, "mail": user.mail or user.upn,
        })
        assert conn.result["result"] == 0, conn.result
        if pso_dn:
            conn.modify(pso_dn, {"msDS-PSOAppliesTo": [(ldap3.MODIFY_ADD, [user.dn])]})


def _set_ad_attribute(dc: SambaAD, user: ADUser, name: str, value: str) -> None:
    with dc.admin() as conn:
        conn.modify(user.dn, {name: [(ldap3.MODIFY_REPLACE, [value])]})
        assert conn.result["result"] == 0, conn.result


def _scram_works(srv: Server, user: ADUser) -> bool:
    """The keys are stored after the first PLAIN's 235, off the login path."""
    deadline = time.monotonic() + 15
    while _gsasl(srv, user.upn, user.password) != 0:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def test_an_expired_account_is_refused_also_by_scram_and_the_login_cache(
    ad_server: Server, dc: SambaAD
) -> None:
    """accountExpires in the past: AD refuses the bind (data 701), but SCRAM and a
    cached PLAIN make no bind and pwdLastSet does not move, so they used to let the
    expired account in for as long as it had SCRAM keys."""
    henry = ADUser("henry", "henry@example.org", "Henry-Pass-Word-8!", mail="henry@example.org")
    _add_ad_user(dc, henry)
    assert _login(ad_server, henry.upn, henry.password)[0] == 235
    assert _scram_works(ad_server, henry)
    _set_ad_attribute(dc, henry, "accountExpires", "1")  # 1601: long past
    assert _login(ad_server, henry.upn, henry.password)[0] == 535
    assert _login(ad_server, henry.sam, henry.password)[0] == 535
    assert _gsasl(ad_server, henry.upn, henry.password) != 0
    _set_ad_attribute(dc, henry, "accountExpires", "0")  # never
    assert _login(ad_server, henry.upn, henry.password)[0] == 235
    assert _gsasl(ad_server, henry.upn, henry.password) == 0


def test_an_account_ad_has_locked_out_is_refused_also_by_scram(
    ad_server: Server, dc: SambaAD
) -> None:
    """Locked out by AD (wrong passwords straight at the DC, not through smtpgate):
    Windows refuses even the right password until the lockout ends, and so does
    smtpgate now, with no bind (msDS-User-Account-Control-Computed's UF_LOCKOUT)."""
    ivan = ADUser("ivan", "ivan@example.org", "Ivan-Pass-Word-9!", mail="ivan@example.org")
    _add_ad_user(dc, ivan, samba_ad.LOCKOUT_PSO_DN)
    assert _login(ad_server, ivan.upn, ivan.password)[0] == 235
    assert _scram_works(ad_server, ivan)
    tls = ldap3.Tls(ca_certs_file=str(dc.ca_file), validate=ssl.CERT_REQUIRED)
    server = ldap3.Server(dc.address, port=636, use_ssl=True, tls=tls, connect_timeout=5)
    for i in range(LOCKOUT_THRESHOLD):
        conn = ldap3.Connection(server, ivan.dn, f"guess-{i}", raise_exceptions=False)
        conn.open()
        assert not conn.bind()
        conn.unbind()
    assert dc.lockout_state(ivan)[1]
    assert _gsasl(ad_server, ivan.upn, ivan.password) != 0
    assert _login(ad_server, ivan.upn, ivan.password)[0] == 535
    _set_ad_attribute(dc, ivan, "lockoutTime", "0")  # an administrator unlocks it
    assert _gsasl(ad_server, ivan.upn, ivan.password) == 0


def _last_auth_record(srv: Server) -> dict[str, str]:
    record: dict[str, str] = json.loads(
        (srv.root / "auth.log").read_text().splitlines()[-1])
    return record


def test_the_auth_log_says_why_a_directory_account_is_locked(
    ad_server: Server, dc: SambaAD
) -> None:
    """The client gets the same 535 for a disabled account, a password to change
    first and a wrong password; the auth log, which only the administrator reads,
    says which (it said "account locked" for all of them)."""
    assert _login(ad_server, BOB.upn, BOB.password)[0] == 535
    assert _last_auth_record(ad_server)["reason"] == (
        "account locked: disabled in the directory (enabled_filter)")
    jill = ADUser("jill", "jill@example.org", "Jill-Pass-Word-1!", mail="jill@example.org")
    _add_ad_user(dc, jill)
    _set_ad_attribute(dc, jill, "pwdLastSet", "0")  # "must change password at next logon"
    assert _login(ad_server, jill.sam, jill.password)[0] == 535
    record = _last_auth_record(ad_server)
    assert record["reason"].startswith("account locked: locked out or password expired")
    assert "msDS-User-Account-Control-Computed 0x800000" in record["reason"]


def test_nested_group_member_logs_in(group_server: Server) -> None:
    assert _login(group_server, CAROL.upn, CAROL.password)[0] == 235
    assert _login(group_server, ALICE.upn, ALICE.password)[0] == 235


def test_non_member_is_refused(group_server: Server) -> None:
    assert _login(group_server, DAVE.upn, DAVE.password)[0] == 535
    assert _last_auth_record(group_server)["reason"] == (
        "account locked: not a member (group_filter)")


# --- AD's own lockout and the guard (docs/directories.md) ---------------------------------

#: The arithmetic of docs/directories.md for the fixture's PSO (T = 5, W = 30 min): both
#: login names share one count, so n + k = 1 + 1 = 2 < T, and
#: lockout_duration = lockout_window = (T - 1) x W. No penalty, so the test is quick.
GUARD_FOR_AD = f"""
lockout_threshold = 1
known_lockout_threshold = 1
lockout_window = {(LOCKOUT_THRESHOLD - 1) * LOCKOUT_WINDOW_MINUTES * 60}.0
lockout_duration = {(LOCKOUT_THRESHOLD - 1) * LOCKOUT_WINDOW_MINUTES * 60}.0
penalty_base = 0.0
penalty_max = 0.0
"""


def _attack(srv: Server, user: ADUser, tries: int) -> list[int]:
    codes = []
    for i in range(tries):
        name = user.upn if i % 2 == 0 else user.sam
        codes.append(_login(srv, name, f"guess-{i}")[0])
    return codes


def test_without_the_guard_smtpgate_would_lock_the_ad_account(
    ad_server: Server, dc: SambaAD
) -> None:
    """The control: AD's threshold is real, and wrong passwords through an
    unguarded smtpgate reach it (frank is then locked in the whole domain)."""
    assert dc.lockout_state(FRANK) == (0, False)
    _attack(ad_server, FRANK, 2 * LOCKOUT_THRESHOLD)
    count, locked = dc.lockout_state(FRANK)
    assert locked and count >= LOCKOUT_THRESHOLD
    assert _login(ad_server, FRANK.upn, FRANK.password)[0] == 535


def test_the_guard_keeps_ad_lockout_out_of_reach(dc: SambaAD, tmp_path: Path) -> None:
    srv = _ad_server(tmp_path / "srv", dc, guard=GUARD_FOR_AD)
    try:
        codes = _attack(srv, ERIN, 4 * LOCKOUT_THRESHOLD)
    finally:
        srv.stop()
    assert 454 in codes  # the guard took over...
    count, locked = dc.lockout_state(ERIN)
    assert count <= 1 + 1 < LOCKOUT_THRESHOLD  # ...before AD's threshold
    assert not locked
    tls = ldap3.Tls(ca_certs_file=str(dc.ca_file), validate=ssl.CERT_REQUIRED)
    server = ldap3.Server(dc.address, port=636, use_ssl=True, tls=tls, connect_timeout=5)
    with samba_ad.bound(server, ERIN.dn, ERIN.password) as conn:  # still usable in AD
        assert conn.bound


#: The guard's defaults (n = 10 from a new address, k = 30), the penalty aside: it
#: slows each attempt but changes no count, and would make the test last minutes.
NO_PENALTY = "penalty_base = 0.0\npenalty_max = 0.0\n"


def test_two_login_names_share_one_guard_count_under_the_default_settings(
    dc: SambaAD, tmp_path: Path
) -> None:
    """Wrong passwords alternating the UPN and the sAMAccountName (one AD account):
    the guard counts them under the account, so its default lockout_threshold (10)
    stops them below grace's AD threshold (15). Counted per name typed, each name
    would let 10 through: 20 bad binds, and grace locked in the whole domain."""
    assert dc.lockout_state(GRACE) == (0, False)
    srv = _ad_server(tmp_path / "srv", dc, guard=NO_PENALTY)
    try:
        codes = _attack(srv, GRACE, 2 * LATE_LOCKOUT_THRESHOLD)
        # Locked for new addresses under either name (the account, not a name).
        assert _login(srv, GRACE.sam, GRACE.password)[0] == 454
        assert _login(srv, GRACE.upn, GRACE.password)[0] == 454
    finally:
        srv.stop()
    assert codes == [535] * 10 + [454] * (2 * LATE_LOCKOUT_THRESHOLD - 10), codes
    count, locked = dc.lockout_state(GRACE)
    assert count == 10 < LATE_LOCKOUT_THRESHOLD and not locked
    tls = ldap3.Tls(ca_certs_file=str(dc.ca_file), validate=ssl.CERT_REQUIRED)
    server = ldap3.Server(dc.address, port=636, use_ssl=True, tls=tls, connect_timeout=5)
    with samba_ad.bound(server, GRACE.dn, GRACE.password) as conn:  # still usable in AD
        assert conn.bound


# --- the primary group (primaryGroupID) ----------------------------------------------------


def _primary_group_users(dc: SambaAD) -> tuple[str, dict[str, ADUser]]:
    """An OU with groups Outer > Inner and three users: one whose primary group is
    Outer, one whose primary group is Inner, one left in Domain Users. AD lists
    no user under its primary group's ``member`` (nor the group in the user's
    ``memberOf``): the link is ``primaryGroupID``, the group's RID."""
    ou = samba_ad.new_ou(dc)
    outer, inner = f"CN=PG Outer,{ou}", f"CN=PG Inner,{ou}"
    users = {
        "outer": ADUser("pgouter", "pgouter@example.org", "Pg-Outer-Pass-1!"),
        "inner": ADUser("pginner", "pginner@example.org", "Pg-Inner-Pass-2!"),
        "none": ADUser("pgnone", "pgnone@example.org", "Pg-None-Pass-3!"),
    }
    with dc.admin() as conn:
        conn.add(inner, ["top", "group"], {"sAMAccountName": "PG Inner"})
        conn.add(outer, ["top", "group"], {"sAMAccountName": "PG Outer", "member": [inner]})
        for key, user in users.items():
            dn = f"CN={user.sam},{ou}"
            conn.add(dn, ["top", "person", "organizationalPerson", "user"], {
                "sAMAccountName": user.sam, "userPrincipalName": user.upn,
                "unicodePwd": f'"{user.password}"'.encode("utf-16-le"),
                "userAccountControl": 0x200})
            assert conn.result["result"] == 0, conn.result
            group = {"outer": outer, "inner": inner}.get(key)
            if group is None:
                continue
            # A group becomes primary only for a member; AD then drops the member link.
            conn.modify(group, {"member": [(ldap3.MODIFY_ADD, [dn])]})
            conn.search(group, "(objectClass=group)", ldap3.BASE,
                        attributes=["primaryGroupToken"])
            rid = int(conn.entries[0].primaryGroupToken.value)
            conn.modify(dn, {"primaryGroupID": [(ldap3.MODIFY_REPLACE, [str(rid)])]})
            assert conn.result["result"] == 0, conn.result
    return outer, users


def test_a_primary_group_counts_as_membership(dc: SambaAD, tmp_path: Path) -> None:
    """``group`` admits the members whose primary group is the group, or a group nested
    in it: AD keeps that link in ``primaryGroupID`` only, which ``memberOf`` (and so
    the in-chain filter) never shows; ``group = "CN=Domain Users,..."`` admitted nobody."""
    outer, users = _primary_group_users(dc)
    srv = _ad_server(tmp_path / "srv", dc, f'group = "{outer}"')
    try:
        assert _login(srv, users["outer"].upn, users["outer"].password)[0] == 235
        assert _login(srv, users["inner"].sam, users["inner"].password)[0] == 235
        assert _login(srv, users["none"].upn, users["none"].password)[0] == 535
    finally:
        srv.stop()
    srv = _ad_server(tmp_path / "all", dc, f'group = "CN=Domain Users,{samba_ad.USERS_DN}"')
    try:
        assert _login(srv, users["none"].upn, users["none"].password)[0] == 235
        assert _login(srv, ALICE.upn, ALICE.password)[0] == 235
        # (AD made pgouter an ordinary member of Domain Users when its primary group moved.)
        assert _login(srv, BOB.upn, BOB.password)[0] == 535  # disabled, Domain Users or not
    finally:
        srv.stop()
