"""The LDAP client (``auth/ldap_directory.py``) against a private slapd of its own
(``tests/peers/slapd.py``, with the ppolicy overlay and a default referral), for
what a directory administrator does to it that the shared slapd of the other
LDAP tests must not see: restarts under a full pool, certificates from another
CA, password policies.

Shown here: after a restart of the directory, the first login is served even
when every pooled connection is dead; a certificate the configured CA did not
sign, or one without the URL's name, an empty ``bind_password_file`` and a
``base_dn`` referred elsewhere are configuration errors naming their key, not
outages (and while serving, in the server log once); an empty password never
binds, and a password binds as sent (no SASLprep); a login more entries may
hold than a search returns is ambiguous; ppolicy's pwdReset locks the account
until its user changes the password, and the documented ``enabled_filter``
lets a ppolicy lockout end when the directory ends it; a ``group_filter`` on
a ``memberOf`` the service account may not read is said once in the log;
ppolicy's lockout and password expiry hold back logins that make no bind.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from smtpgate.auth.admin_store import AuditActor
from smtpgate.auth.credentials import SCRAM_SCHEMES
from smtpgate.auth.directory import StoreUnavailable
from smtpgate.auth.ldap_directory import LdapDirectory
from smtpgate.auth.ldap_store import LdapAccountStore
from smtpgate.auth.store import SqliteAccountStore
from smtpgate.config import AccountsConfig, LdapConfig
from tests.peers.freezing_relay import FreezingRelay
from tests.peers.slapd import (
    SERVICE_DN,
    SERVICE_PW,
    SUFFIX,
    Slapd,
    new_ou,
    person_ldif,
)

pytestmark = pytest.mark.interop

ALICE = "alice@example.org"
ALICE_PW = "alice's directory password"
ELSEWHERE = "ldap://ldap.elsewhere.test/"
#: ppolicy's default policy: a password an administrator sets must be changed.
POLICY = "cn=policy,ou=services,dc=example,dc=org"
#: Its lockout: two bad passwords lock an account for this many seconds.
LOCKOUT = 2
#: A policy of its own (pwdPolicySubentry): a password lasts this many seconds.
EXPIRING = "cn=expiring,ou=services,dc=example,dc=org"
MAX_AGE = 2


@pytest.fixture(scope="module")
def slapd() -> Iterator[Slapd]:
    if shutil.which("slapd") is None and not Path("/usr/sbin/slapd").exists():
        pytest.skip("slapd not installed")
    root = Path(tempfile.mkdtemp(prefix="smtpgate-e1-slapd-"))
    server = Slapd(root / "slapd")
    # A default referral, as a directory that is one server of several has: names
    # outside its suffix are answered with a referral to another server.
    conf = server.conf.read_text().replace(
        "modulepath", f"referral {ELSEWHERE}\nmodulepath", 1)
    # The password policy overlay, and users who may change their own password,
    # as docs/directories.md's ACL has it.
    conf = conf.replace("moduleload back_mdb",
                        "moduleload back_mdb\nmoduleload ppolicy\nmoduleload memberof")
    # The memberof overlay keeps memberOf, which an ACL hides from the service
    # account, as a directory whose administrator forgot it there does.
    conf = conf.replace("access to attrs=userPassword\n    by anonymous auth\n", (
        f'overlay ppolicy\nppolicy_default "{POLICY}"\noverlay memberof\n'
        "access to attrs=memberOf\n    by self read\n    by * none\n"
        "access to attrs=userPassword\n    by anonymous auth\n    by self write\n"
        # The service account reads the password policies (docs/directories.md).
        f'access to dn.regex="^cn=[a-z]+,ou=services,{SUFFIX}$" attrs=entry,@pwdPolicy\n'
        f'    by dn.exact="{SERVICE_DN}" read\n    by * break\n'))
    server.conf.write_text(conf)
    server.start()
    server.add(f"dn: {POLICY}\nobjectClass: organizationalRole\nobjectClass: pwdPolicy\n"
               "cn: policy\npwdAttribute: userPassword\npwdMustChange: TRUE\n"
               f"pwdLockout: TRUE\npwdMaxFailure: 2\npwdLockoutDuration: {LOCKOUT}\n")
    server.add(f"dn: {EXPIRING}\nobjectClass: organizationalRole\nobjectClass: pwdPolicy\n"
               f"cn: expiring\npwdAttribute: userPassword\npwdMaxAge: {MAX_AGE}\n")
    yield server
    server.close()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def ou(slapd: Slapd) -> str:
    ou = new_ou(slapd)
    slapd.add(person_ldif(f"uid=alice,{ou}", ALICE, ALICE_PW))
    return ou


def change_own_password(slapd: Slapd, dn: str, old: str, new: str) -> None:
    """The RFC 3062 password modify operation bound as the user, as a user's
    password tool does it (ppolicy then clears pwdReset)."""
    slapd.tool("ldappasswd", "-H", slapd.url, "-ZZ", "-x", "-D", dn, "-w", old,
               "-a", old, "-s", new)


def config(slapd: Slapd, ou: str, **extra: object) -> LdapConfig:
    return LdapConfig.model_validate({
        "url": slapd.url, "starttls": True, "ca_file": slapd.ca, "bind_dn": SERVICE_DN,
        "bind_password_file": slapd.root / "service.pw", "base_dn": ou,
        "operation_timeout": 3, "connect_timeout": 2, **extra,
    })


def fill_pools(directory: LdapDirectory, threads: int) -> None:
    """``threads`` logins at once, so each pool holds that many open connections."""
    barrier = threading.Barrier(threads)
    failures: list[BaseException] = []

    def one() -> None:
        try:
            barrier.wait()
            for _ in range(3):
                entry = directory.find(ALICE)
                assert entry is not None and directory.bind(entry.dn, ALICE_PW)
        except (AssertionError, OSError, RuntimeError) as e:  # reported below
            failures.append(e)

    workers = [threading.Thread(target=one) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not failures, failures


def test_the_first_login_after_a_directory_restart_is_served_with_a_full_pool(
    slapd: Slapd, ou: str,
) -> None:
    """Every pooled connection died with the restart: the retry must not take
    another dead one from the pool (a 454 for a directory that is up)."""
    directory = LdapDirectory(config(slapd, ou, pool_size=4), bind_password=SERVICE_PW,
                              ca_file=slapd.ca)
    try:
        fill_pools(directory, 4)
        slapd.stop()
        slapd.start()
        entry = directory.find(ALICE)  # a search on the service pool
        assert entry is not None
        assert directory.bind(entry.dn, ALICE_PW)  # a bind on the user pool
        assert directory.find(ALICE) is not None  # and the next ones too
        assert directory.bind(entry.dn, ALICE_PW)
    finally:
        directory.close()


@pytest.mark.parametrize(
    ("where", "starttls", "ca", "key", "says"),
    [
        ("ldap", True, "other", "accounts.ldap.ca_file", "certificate verify failed"),
        ("ldaps", False, "other", "accounts.ldap.ca_file", "certificate verify failed"),
        ("wrong-name", False, "slapd", "accounts.ldap.url", "127.0.0.2"),
    ],
)
def test_a_certificate_refused_is_a_configuration_error_naming_the_key(
    slapd: Slapd, ou: str, tmp_path: Path, where: str, starttls: bool, ca: str, key: str,
    says: str,
) -> None:
    """Waiting does not make a certificate from another CA (or for another name)
    acceptable: start-up and ``config check`` must say which key to fix, where an
    outage ("unavailable") would let serve start and answer 454 for ever."""
    from smtpgate.auth.ldap_directory import DirectoryMisconfigured

    url = {"ldap": slapd.url, "ldaps": slapd.ldaps_url,
           "wrong-name": f"ldaps://127.0.0.2:{slapd.tls_port}"}[where]
    ca_file = slapd.ca if ca == "slapd" else Path("/etc/ssl/certs/ca-certificates.crt")
    cfg = config(slapd, ou, url=url, starttls=starttls, ca_file=ca_file)
    directory = LdapDirectory(cfg, bind_password=SERVICE_PW, ca_file=ca_file)
    try:
        with pytest.raises(DirectoryMisconfigured) as e:
            directory.check_service_account()
        assert e.value.key == key
        assert key in str(e.value) and says in str(e.value), str(e.value)
        with pytest.raises(DirectoryMisconfigured):  # a login meets it as 454
            directory.find(ALICE)
    finally:
        directory.close()


def test_an_empty_service_password_file_is_a_configuration_error(
    slapd: Slapd, ou: str, tmp_path: Path,
) -> None:
    """An empty password would make the service account's bind unauthenticated
    (RFC 4513 §5.1.2): never sent, and not an outage either (serve would start and
    answer 454 for ever): refused naming the key."""
    from smtpgate.auth.ldap_directory import DirectoryMisconfigured

    empty = tmp_path / "service.pw"
    empty.write_text("\n")
    directory = LdapDirectory(config(slapd, ou, bind_password_file=empty), bind_password="",
                              ca_file=slapd.ca, bind_password_file=empty)
    try:
        with pytest.raises(DirectoryMisconfigured) as e:
            directory.check_service_account()
        assert e.value.key == "accounts.ldap.bind_password_file"
        assert str(empty) in str(e.value) and "empty" in str(e.value), str(e.value)
        empty.write_text(SERVICE_PW + "\n")  # written: the next connection uses it
        assert directory.find(ALICE) is not None
    finally:
        directory.close()


def test_an_empty_user_password_never_binds(slapd: Slapd, ou: str) -> None:
    """RFC 4513 §5.1.2: a simple bind with a DN and no password is unauthenticated,
    and a directory that allows it says success; no bind is sent at all."""
    directory = LdapDirectory(config(slapd, ou), bind_password=SERVICE_PW, ca_file=slapd.ca)
    try:
        entry = directory.find(ALICE)
        assert entry is not None
        before = slapd.binds(entry.dn)
        assert directory.bind(entry.dn, "") is False
        assert slapd.binds(entry.dn) == before
    finally:
        directory.close()


def test_a_login_two_entries_hold_is_refused_also_past_the_size_limit(
    slapd: Slapd, ou: str,
) -> None:
    """Two entries hold the login: refused, whichever the directory returns first,
    also when the filter matches more entries than a search returns (the second
    holder among those not returned); a temporary failure (454), not "no such user"
    (a counted 535 for the right password)."""
    from smtpgate.auth.ldap_directory import AmbiguousLogin

    for i in range(4):  # they match the filter (an address of theirs), not the login
        slapd.add(person_ldif(f"uid=list{i},{ou}", f"list{i}@example.org", "x",
                              f"mailLocalAddress: {ALICE}"))
    slapd.add(person_ldif(f"uid=alice2,{ou}", ALICE, "the impostor's password"))
    cfg = config(slapd, ou, user_filter=(
        "(&(objectClass=inetOrgPerson)(|(mail={login})(mailLocalAddress={login})))"))
    directory = LdapDirectory(cfg, bind_password=SERVICE_PW, ca_file=slapd.ca)
    try:
        with pytest.raises(AmbiguousLogin, match="more than 5 entries match"):
            directory.find(ALICE)
        slapd.admin("ldapdelete", *(f"uid=list{i},{ou}" for i in range(4)))
        with pytest.raises(AmbiguousLogin, match="2 entries hold the login"):
            directory.find(ALICE)
        slapd.admin("ldapdelete", f"uid=alice2,{ou}")
        assert directory.find(ALICE) is not None
    finally:
        directory.close()


def test_a_base_dn_the_directory_refers_elsewhere_is_a_configuration_error(
    slapd: Slapd, ou: str,
) -> None:
    """Referrals are never followed (a directory must not send the service account's
    or a user's password to another server); a base_dn answered with one is no
    outage that waiting ends, but accounts.ldap.base_dn or url to fix."""
    from smtpgate.auth.ldap_directory import DirectoryMisconfigured

    cfg = config(slapd, ou, base_dn="ou=people,dc=elsewhere,dc=test")
    directory = LdapDirectory(cfg, bind_password=SERVICE_PW, ca_file=slapd.ca)
    try:
        with pytest.raises(DirectoryMisconfigured) as e:
            directory.check_service_account()
        assert e.value.key == "accounts.ldap.base_dn"
        assert ELSEWHERE in str(e.value) and "referral" in str(e.value), str(e.value)
        with pytest.raises(DirectoryMisconfigured):  # a login meets it as 454
            directory.find(ALICE)
    finally:
        directory.close()


def test_a_password_an_administrator_reset_logs_in_only_once_changed(
    slapd: Slapd, ou: str,
) -> None:
    """OpenLDAP's ppolicy with pwdMustChange: after an administrator sets a password
    (ldappasswd), the entry has pwdReset: TRUE and the directory lets that password
    do nothing but change itself, yet its simple bind succeeds. A temporary password
    handed out by the helpdesk must not work for mail (nor become SCRAM keys):
    the account is refused like a locked one until its user has changed it."""
    dn = f"uid=alice,{ou}"
    slapd.set_password(dn, "temporary helpdesk password")
    directory = LdapDirectory(config(slapd, ou), bind_password=SERVICE_PW, ca_file=slapd.ca)
    try:
        entry = directory.find(ALICE)
        assert entry is not None
        assert not entry.enabled and "pwdReset" in entry.lock_reason, entry
        change_own_password(slapd, dn, "temporary helpdesk password", "alice's own choice")
        entry = directory.find(ALICE)
        assert entry is not None and entry.enabled, entry
        assert directory.bind(entry.dn, "alice's own choice")
    finally:
        directory.close()


def test_the_documented_set_up_ends_a_ppolicy_lockout_when_the_directory_does(
    slapd: Slapd, ou: str,
) -> None:
    """ppolicy keeps pwdAccountLockedTime on the entry after pwdLockoutDuration has
    passed, until a bind succeeds. A filter refusing any pwdAccountLockedTime
    makes no bind, so it would keep the account out for ever; docs/directories.md
    sets no enabled_filter for ppolicy's locks: ``ppolicy = true`` (the default)
    refuses the administrator's permanent lock, and a lockout while it lasts."""
    page = (Path(__file__).parents[2] / "docs" / "directories.md").read_text()
    assert not re.search(r'^enabled_filter = ".*pwdAccountLockedTime', page, re.MULTILINE)
    directory = LdapDirectory(config(slapd, ou), bind_password=SERVICE_PW, ca_file=slapd.ca)
    try:
        entry = directory.find(ALICE)
        assert entry is not None and entry.enabled
        assert [directory.bind(entry.dn, "a guess") for _ in range(2)] == [False, False]
        assert not directory.bind(entry.dn, ALICE_PW)  # locked out by the directory
        time.sleep(LOCKOUT + 1.5)
        entry = directory.find(ALICE)
        assert entry is not None and entry.enabled, entry
        assert directory.bind(entry.dn, ALICE_PW)  # the lockout is over
        slapd.modify(f"dn: {entry.dn}\nchangetype: modify\nadd: pwdAccountLockedTime\n"
                     "pwdAccountLockedTime: 000001010000Z\n")  # locked by an administrator
        entry = directory.find(ALICE)
        assert entry is not None and not entry.enabled, entry
    finally:
        directory.close()


def test_the_password_is_bound_as_sent(slapd: Slapd, ou: str) -> None:
    """The directory compares the octets it was given when the password was set
    (ldappasswd, a web form): the bind must carry the password's UTF-8 as the
    client sent it. ldap3 SASLprep's a str password by itself (NFKC, U+00A0 to a
    space), so such a password never matched; and one it cannot prepare (a
    control character) raised, a 454 and a directory 'unavailable' in the log
    for what is a wrong password."""
    dn = f"uid=alice,{ou}"
    password = "pass\u00b2word\u00a0one"  # superscript two, no-break space
    slapd.set_password(dn, password)
    directory = LdapDirectory(config(slapd, ou), bind_password=SERVICE_PW, ca_file=slapd.ca)
    try:
        assert directory.bind(dn, password)
        assert not directory.bind(dn, "pass2word one")  # SASLprep'd: another password
        assert not directory.bind(dn, "pass\x01word")  # a wrong password, not an outage
    finally:
        directory.close()


def test_a_certificate_refused_while_serving_is_in_the_server_log(
    slapd: Slapd, ou: str, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """The directory's certificate changes to another CA's while smtpgate runs:
    each login gets 454 (the auth log's record has the reason), and the server
    log must say once what to fix, as it does for an outage, not nothing."""
    from smtpgate.auth.ldap_directory import DirectoryMisconfigured

    ca = tmp_path / "ca.pem"
    ca.write_bytes(slapd.ca.read_bytes())
    directory = LdapDirectory(config(slapd, ou, ca_file=ca), bind_password=SERVICE_PW,
                              ca_file=ca)
    try:
        assert directory.find(ALICE) is not None
        ca.write_bytes(Path("/etc/ssl/certs/ca-certificates.crt").read_bytes())
        slapd.stop()
        slapd.start()  # the open connections are gone; new ones meet the "new" certificate
        caplog.clear()
        for _ in range(3):
            with pytest.raises(DirectoryMisconfigured):
                directory.find(ALICE)
        said = [r.getMessage() for r in caplog.records if r.name == "smtpgate.auth.ldap"]
        assert len(said) == 1 and "accounts.ldap.ca_file" in said[0], said
        ca.write_bytes(slapd.ca.read_bytes())
        assert directory.find(ALICE) is not None
        said = [r.getMessage() for r in caplog.records if r.name == "smtpgate.auth.ldap"]
        assert any("answering again" in s for s in said), said
    finally:
        directory.close()


def test_a_group_filter_on_a_memberof_the_service_account_cannot_read_is_logged_once(
    slapd: Slapd, ou: str, caplog: pytest.LogCaptureFixture,
) -> None:
    """The ACL hides memberOf from the service account: the filter is false for
    every entry, members included, so every login was 535 as a non-member and
    nothing said why. After a few such entries the server log says it once,
    naming the key and the attribute."""
    from smtpgate.auth.ldap_group_watch import THRESHOLD

    group = f"cn=mail,{ou}"
    users = [f"user{i}@example.org" for i in range(THRESHOLD + 1)]
    for i, name in enumerate(users):
        slapd.add(person_ldif(f"uid=user{i},{ou}", name, ALICE_PW))
    slapd.add(f"dn: {group}\nobjectClass: groupOfNames\ncn: mail\n"
              + "".join(f"member: uid=user{i},{ou}\n" for i in range(len(users))))
    held = slapd.admin("ldapsearch", "-LLL", "-b", f"uid=user0,{ou}", "-s", "base", "memberOf")
    assert f"memberOf: {group}" in held  # the overlay keeps it; the ACL hides it
    directory = LdapDirectory(config(slapd, ou, group_filter=f"(memberOf={group})"),
                              bind_password=SERVICE_PW, ca_file=slapd.ca)
    try:
        caplog.clear()
        for name in users[:THRESHOLD - 1] * 2:  # the same entries again count once
            entry = directory.find(name)
            assert entry is not None and not entry.member, entry
        assert not [r for r in caplog.records if "group_filter" in r.getMessage()]
        for name in users[THRESHOLD - 1:]:
            entry = directory.find(name)
            assert entry is not None and not entry.member, entry
        said = [r.getMessage() for r in caplog.records if "group_filter" in r.getMessage()]
        assert len(said) == 1, said
        assert "accounts.ldap.group_filter" in said[0] and "memberOf" in said[0], said
        assert "535" in said[0]
    finally:
        directory.close()


def test_a_ppolicy_lockout_and_an_expired_password_lock_the_account_without_a_bind(
    slapd: Slapd, ou: str,
) -> None:
    """A SCRAM or cached login makes no bind, so the directory's refusal of a
    locked-out account or an expired password was never seen: the account went
    on logging in. The entry's ppolicy state is now read with it: locked while
    pwdLockoutDuration lasts (and served again after it, though the attribute
    stays until a bind), and locked once pwdMaxAge has passed, the policy found
    through ppolicy_default_dn or the entry's pwdPolicySubentry."""
    bob = "bob@example.org"
    directory = LdapDirectory(config(slapd, ou, ppolicy_default_dn=POLICY),
                              bind_password=SERVICE_PW, ca_file=slapd.ca)
    try:
        entry = directory.find(ALICE)
        assert entry is not None and entry.enabled, entry
        assert [directory.bind(entry.dn, "a guess") for _ in range(2)] == [False, False]
        entry = directory.find(ALICE)  # what a SCRAM login reads; it binds nothing
        assert entry is not None and not entry.enabled, entry
        assert "pwdLockoutDuration" in entry.lock_reason, entry
        time.sleep(LOCKOUT + 1.5)
        entry = directory.find(ALICE)
        assert entry is not None and entry.enabled, entry  # over, the attribute still there
        assert directory.bind(entry.dn, ALICE_PW)

        slapd.add(person_ldif(f"uid=bob,{ou}", bob, ALICE_PW)
                  + f"pwdPolicySubentry: {EXPIRING}\n")
        entry = directory.find(bob)
        assert entry is not None and entry.enabled, entry
        time.sleep(MAX_AGE + 1)
        entry = directory.find(bob)
        assert entry is not None and not entry.enabled, entry
        assert "password expired" in entry.lock_reason, entry
        assert not directory.bind(entry.dn, ALICE_PW)  # the directory agrees
    finally:
        directory.close()


def test_operation_timeout_bounds_a_whole_look_up_of_a_directory_that_stops_answering(
    slapd: Slapd, ou: str, tmp_path: Path,
) -> None:
    """A directory that stops answering (its host frozen, a network cut that drops
    the replies: a relay that holds everything back) cost a look-up
    ``operation_timeout`` per step, ldap3's timeout bounding each socket read: the
    pooled connection's search, then the retry's StartTLS on a fresh one; and a
    password check (search, then the user's bind) more. Now the whole look-up,
    and a password check as a whole, ends after ``operation_timeout`` with 454's
    StoreUnavailable; once the directory answers again, logins are served."""
    relay = FreezingRelay(slapd.port)
    cfg = config(slapd, ou, url=f"ldap://127.0.0.1:{relay.port}", operation_timeout=2)
    directory = LdapDirectory(cfg, bind_password=SERVICE_PW, ca_file=slapd.ca)
    overlay = SqliteAccountStore(tmp_path / "overlay.sqlite", AccountsConfig())
    store = LdapAccountStore(directory, overlay)
    try:
        assert store.verify_password(ALICE, ALICE_PW)  # pooled connections: search, bind
        relay.freeze()
        for look_up in (lambda: directory.find(ALICE),
                        lambda: store.verify_password(ALICE, ALICE_PW)):
            started = time.monotonic()
            with pytest.raises(StoreUnavailable) as caught:
                look_up()
            assert time.monotonic() - started < 3.0  # not 2 s per step
            assert "no answer within 2 s" in str(caught.value)
        relay.thaw()
        deadline = time.monotonic() + 20
        while True:
            try:
                assert store.verify_password(ALICE, ALICE_PW)
                break
            except StoreUnavailable:
                assert time.monotonic() < deadline
                time.sleep(0.2)
    finally:
        store.close()
        relay.close()


@pytest.mark.parametrize("idle_timeout", [1.0, 3600.0])
def test_a_pooled_connection_a_middlebox_forgot_while_idle_is_not_used(
    slapd: Slapd, ou: str, idle_timeout: float,
) -> None:
    """A firewall, NAT or load balancer that forgets an idle connection drops what
    it carries without a word: a search sent on a pooled connection it forgot heard
    nothing until ``operation_timeout``, which left no time for the retry on a
    fresh one (454, then the fail-fast refused the next logins too). A connection
    idle longer than ``idle_timeout`` is closed, not used; the 3600 s case shows
    what a forgotten one costs when it is used."""
    relay = FreezingRelay(slapd.port)
    cfg = config(slapd, ou, url=f"ldap://127.0.0.1:{relay.port}", operation_timeout=2,
                 idle_timeout=idle_timeout)
    directory = LdapDirectory(cfg, bind_password=SERVICE_PW, ca_file=slapd.ca)
    try:
        entry = directory.find(ALICE)  # a connection in each pool
        assert entry is not None and directory.bind(entry.dn, ALICE_PW)
        relay.forget()
        time.sleep(1.5)
        started = time.monotonic()
        if idle_timeout > 10:
            with pytest.raises(StoreUnavailable, match="no answer within 2 s"):
                directory.find(ALICE)
            return
        entry = directory.find(ALICE)
        assert entry is not None and directory.bind(entry.dn, ALICE_PW)
        assert time.monotonic() - started < 1.5  # new connections, no wait on the old
    finally:
        directory.close()
        relay.close()


def test_a_wrong_password_leaves_the_scram_keys_and_the_rotate_deadline_alone(
    slapd: Slapd, ou: str, tmp_path: Path,
) -> None:
    """With ppolicy, a failed bind writes pwdFailureTime to the entry, which moves
    its entryCSN, the default password_changed_attribute: one wrong password, by
    anyone who knows the login, made the account's SCRAM keys stale (SCRAM 535
    until its next PLAIN login), dropped its cached login and lifted a ``user
    rotate`` deadline, as if the password had changed. With ppolicy the stamp is
    pwdChangedTime, which only a change of the password moves; an entry without
    one (its password set before ppolicy, or added with none of its max or min
    age) keeps entryCSN, so its password change is still seen."""
    dn = f"uid=alice,{ou}"
    directory = LdapDirectory(config(slapd, ou), bind_password=SERVICE_PW, ca_file=slapd.ca)
    overlay = SqliteAccountStore(tmp_path / "overlay.sqlite", AccountsConfig())
    store = LdapAccountStore(directory, overlay)
    scheme = SCRAM_SCHEMES["sha256"]
    try:
        # Added with a password but no pwdChangedTime: entryCSN still tells a change.
        account = store.get_account(ALICE)
        assert account is not None
        assert store.put_credentials(ALICE, {scheme: "keys"}, generation=account.generation)
        assert store.get_credential(ALICE, scheme) is not None
        change_own_password(slapd, dn, ALICE_PW, "alice's password")  # pwdChangedTime now
        assert store.get_credential(ALICE, scheme) is None

        assert store.verify_password(ALICE, "alice's password")
        account = store.get_account(ALICE)
        assert account is not None
        assert store.put_credentials(ALICE, {scheme: "keys"}, generation=account.generation)
        deadline = datetime.now(UTC) + timedelta(days=1)
        with store.transaction(AuditActor("test", "rotate")) as writer:
            writer.schedule_password_expiry(ALICE, deadline)
        before = store.get_account(ALICE)
        assert before is not None and before.password_expires == deadline

        assert not store.verify_password(ALICE, "a guess")  # pwdFailureTime written
        after = store.get_account(ALICE)
        assert after is not None
        assert store.get_credential(ALICE, scheme) is not None
        assert after.generation == before.generation  # the cached login stays
        assert after.password_expires == deadline

        time.sleep(1.1)  # pwdChangedTime has one-second resolution
        change_own_password(slapd, dn, "alice's password", "alice's new password")
        changed = store.get_account(ALICE)
        assert changed is not None
        assert store.get_credential(ALICE, scheme) is None  # stale: the password changed
        assert changed.generation != after.generation
        assert changed.password_expires is None  # the deadline is met
    finally:
        store.close()
