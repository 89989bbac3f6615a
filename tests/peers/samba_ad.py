"""A private Samba Active Directory domain controller on loopback, for the tests.

`running_samba_ad` provisions a fresh domain in a short temporary directory
(``samba-tool domain provision``, about 4 s), relaxes its password policy for
the suites' passphrases and adds a lockout policy for two users, starts
``samba`` in the foreground with only its LDAP service, loads the directory
over LDAPS as the domain Administrator (users, a disabled account,
``proxyAddresses``, a nested group), yields, and always stops it and removes
the directory. `shared_samba_ad` is the one DC of a test run (about 5 s from
provisioning to the first query), stopped at exit; `new_ou` gives a test an
OU of its own on it.

AD's LDAP ports (389, and 636 for LDAPS) cannot be moved, so the DC gets a
loopback address of its own (the first free one from 127.0.0.53 up):
Linux routes all of 127/8 to ``lo``, and ``interfaces = ADDR/8`` makes Samba
bind to that address though ``lo`` only carries 127.0.0.1. The TLS
certificate is made here (a CA and a server certificate for the DC's address
and host name), so clients verify it with `SambaAD.ca_file`.

Samba's DC runs as root; like Postfix and Dovecot, the tests need root.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime as dt
import ipaddress
import itertools
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import ldap3
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

REALM = "AD.EXAMPLE.TEST"
DOMAIN = "EXAMPLE"
BASE_DN = "DC=ad,DC=example,DC=test"
HOST = "dc1"
FQDN = f"{HOST}.ad.example.test"
ADMIN_PASSWORD = "Adm1n-Pass-Word!"

USERS_DN = f"CN=Users,{BASE_DN}"
SERVICE_DN = f"CN=smtpgate-svc,{USERS_DN}"
SERVICE_PASSWORD = "Svc-Pass-Word-7!"
#: The group whose members (directly or through nested groups) may log in.
MAIL_GROUP_DN = f"CN=Mail Users,{USERS_DN}"
STAFF_GROUP_DN = f"CN=Staff,{USERS_DN}"


@dataclass(frozen=True)
class ADUser:
    sam: str
    upn: str
    password: str
    mail: str | None = None
    proxy_addresses: tuple[str, ...] = ()
    disabled: bool = False

    @property
    def dn(self) -> str:
        return f"CN={self.sam},{USERS_DN}"


#: alice: UPN differs from sAMAccountName; proxyAddresses of every kind.
ALICE = ADUser(
    "alice", "alice@example.org", "Alice-Pass-Word-1!", mail="alice@example.org",
    proxy_addresses=(
        "SMTP:alice@example.org",
        "smtp:a.liddell@example.org",
        "sMtP:wonder@example.org",
        "x400:c=US;a= ;p=Example;o=Mail;s=Alice;",
        "X500:/o=Example/ou=Exchange/cn=Recipients/cn=forged@example.org",
        "sip:sip-only@example.org",
    ),
)
#: bob: disabled through userAccountControl (ACCOUNTDISABLE); password known.
BOB = ADUser("bob", "bob@example.org", "Bob-Pass-Word-2!", mail="bob@example.org", disabled=True)
#: carol: member of Mail Users only through Staff (nested).
CAROL = ADUser("carol", "carol@example.org", "Carol-Pass-Word-3!", mail="carol@example.org")
#: dave: in no group; a mail address other than his UPN, and no proxyAddresses.
DAVE = ADUser("dave", "dave@example.org", "Dave-Pass-Word-4!", mail="d.mail@example.org")
#: erin and frank: under `LOCKOUT_PSO` (AD locks them after `LOCKOUT_THRESHOLD` bad
#: passwords); erin is attacked through a guarded smtpgate, frank through an unguarded one.
ERIN = ADUser("erin", "erin@example.org", "Erin-Pass-Word-5!", mail="erin@example.org")
FRANK = ADUser("frank", "frank@example.org", "Frank-Pass-Word-6!", mail="frank@example.org")
#: grace: under `LATE_LOCKOUT_PSO`, a threshold above the guard's default
#: ``lockout_threshold`` (10), attacked through a guard left at its defaults.
GRACE = ADUser("grace", "grace@example.org", "Grace-Pass-Word-7!", mail="grace@example.org")
USERS = (ALICE, BOB, CAROL, DAVE, ERIN, FRANK, GRACE)

#: A fine-grained password policy (PSO) applied to erin and frank only, so the
#: domain's other accounts never lock: lockout after 5 bad passwords, counted
#: until 30 quiet minutes pass.
LOCKOUT_PSO = "smtpgate-lockout"
LOCKOUT_PSO_DN = f"CN={LOCKOUT_PSO},CN=Password Settings Container,CN=System,{BASE_DN}"
LOCKOUT_THRESHOLD = 5
LOCKOUT_WINDOW_MINUTES = 30
#: The second policy, grace's: AD locks after 15 bad passwords (same window).
LATE_LOCKOUT_PSO = "smtpgate-late-lockout"
LATE_LOCKOUT_PSO_DN = f"CN={LATE_LOCKOUT_PSO},CN=Password Settings Container,CN=System,{BASE_DN}"
LATE_LOCKOUT_THRESHOLD = 15


def _port_free(address: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((address, port))
        except OSError:
            return False
        return True


def pick_address() -> str:
    """The first loopback address whose ports 389 and 636 are free, from 127.0.0.53
    up; under pytest-xdist each worker has a range of its own (gw0 from .53, gw1
    from .66), so two workers that each start a DC never race for one address."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    first = 53 + 13 * (int(worker) % 2 if worker.isdigit() else 0)
    for last in range(first, 80):
        address = f"127.0.0.{last}"
        if _port_free(address, 389) and _port_free(address, 636):
            return address
    raise RuntimeError("no loopback address 127.0.0.53-79 has ports 389 and 636 free")


def _write_tls(directory: Path, address: str) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for ``address`` and `FQDN` (Samba wants a 0600 key)."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "smtpgate test AD CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=False, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, FQDN)]))
        .issuer_name(ca_name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName(FQDN), x509.IPAddress(ipaddress.ip_address(address))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    ca_path, cert_path, key_path = directory / "ca.pem", directory / "cert.pem", directory / "key.pem"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption()))
    return ca_path, cert_path, key_path


def _smb_conf(root: Path, address: str, cert: Path, key: Path, ca: Path) -> str:
    return f"""[global]
\tnetbios name = {HOST.upper()}
\tworkgroup = {DOMAIN}
\trealm = {REALM}
\tserver role = active directory domain controller
\tserver services = ldap
\tinterfaces = {address}/8
\tbind interfaces only = yes
\tprivate dir = {root}/private
\tlock directory = {root}
\tpid directory = {root}/run
\tstate directory = {root}/state
\tcache directory = {root}/cache
\tbinddns dir = {root}/bind-dns
\tlog file = {root}/log.samba
\tidmap_ldb:use rfc2307 = yes
\ttls enabled = yes
\ttls keyfile = {key}
\ttls certfile = {cert}
\ttls cafile = {ca}
"""


@dataclass
class SambaAD:
    root: Path
    address: str
    ca_file: Path
    proc: subprocess.Popen[bytes] | None = None
    #: Seconds provisioning took (samba-tool domain provision), for the record.
    provision_seconds: float = 0.0
    users: tuple[ADUser, ...] = field(default=USERS)

    @property
    def ldaps_url(self) -> str:
        return f"ldaps://{self.address}:636"

    @property
    def ldap_url(self) -> str:
        return f"ldap://{self.address}:389"

    @property
    def smb_conf(self) -> Path:
        return self.root / "etc" / "smb.conf"

    def log(self) -> str:
        out = self.root / "samba.out"
        return out.read_text(errors="replace") if out.exists() else ""

    def provision(self) -> None:
        started = time.monotonic()
        subprocess.run(
            ["samba-tool", "domain", "provision", "--use-rfc2307", f"--realm={REALM}",
             f"--domain={DOMAIN}", "--server-role=dc", "--dns-backend=NONE",
             f"--host-name={HOST}", f"--adminpass={ADMIN_PASSWORD}", f"--targetdir={self.root}",
             f"--option=interfaces = {self.address}/8", "--option=bind interfaces only = yes"],
            check=True, capture_output=True, timeout=300,
        )
        self.provision_seconds = time.monotonic() - started
        ca, cert, key = _write_tls(self.root / "tls", self.address)
        self.ca_file = ca
        # Its own pid directory: the default (/run/samba) is one per machine, and
        # another test run's DC, or the system's, would stop this one starting.
        (self.root / "run").mkdir(exist_ok=True)
        self.smb_conf.write_text(_smb_conf(self.root, self.address, cert, key, ca))
        conf = ["-H", str(self.root / "private" / "sam.ldb"), "-s", str(self.smb_conf)]
        # The suites' passwords are passphrases ("correct horse battery"), which AD's
        # complexity rule refuses; tests also set a password back to an earlier one.
        subprocess.run(
            ["samba-tool", "domain", "passwordsettings", "set", "--complexity=off",
             "--history-length=0", "--min-pwd-age=0", "--min-pwd-length=8", *conf],
            check=True, capture_output=True, timeout=120,
        )
        subprocess.run(
            ["samba-tool", "domain", "passwordsettings", "pso", "create", LOCKOUT_PSO, "1",
             f"--account-lockout-threshold={LOCKOUT_THRESHOLD}",
             f"--reset-account-lockout-after={LOCKOUT_WINDOW_MINUTES}",
             f"--account-lockout-duration={LOCKOUT_WINDOW_MINUTES}", *conf],
            check=True, capture_output=True, timeout=120,
        )
        subprocess.run(
            ["samba-tool", "domain", "passwordsettings", "pso", "create", LATE_LOCKOUT_PSO, "2",
             f"--account-lockout-threshold={LATE_LOCKOUT_THRESHOLD}",
             f"--reset-account-lockout-after={LOCKOUT_WINDOW_MINUTES}",
             f"--account-lockout-duration={LOCKOUT_WINDOW_MINUTES}", *conf],
            check=True, capture_output=True, timeout=120,
        )

    def start(self) -> None:
        with open(self.root / "samba.out", "ab") as out:
            self.proc = subprocess.Popen(
                ["samba", "-F", "--debug-stdout", "-M", "single", "-s", str(self.smb_conf)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=out,
            )
        deadline = time.monotonic() + 60
        while not self._answers():
            if self.proc.poll() is not None:
                self.proc = None
                raise RuntimeError("samba exited:\n" + self.log())
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("samba did not answer LDAPS:\n" + self.log())
            time.sleep(0.1)

    def _answers(self) -> bool:
        try:
            with self.admin():
                return True
        except Exception:  # noqa: BLE001 - any failure means "not yet"
            return False

    @contextlib.contextmanager
    def admin(self) -> Iterator[ldap3.Connection]:
        """An ldap3 connection bound as the domain Administrator over verified LDAPS."""
        tls = ldap3.Tls(ca_certs_file=str(self.ca_file), validate=ssl.CERT_REQUIRED)
        server = ldap3.Server(self.address, port=636, use_ssl=True, tls=tls, connect_timeout=5)
        with bound(server, f"CN=Administrator,{USERS_DN}", ADMIN_PASSWORD) as conn:
            yield conn

    def load(self) -> None:
        """The service account, `USERS`, and Mail Users > Staff > carol (+ alice direct)."""
        with self.admin() as conn:
            service = ADUser("smtpgate-svc", "smtpgate-svc@example.org", SERVICE_PASSWORD)
            for user in (service, *self.users):
                attrs: dict[str, object] = {
                    "sAMAccountName": user.sam,
                    "userPrincipalName": user.upn,
                    "unicodePwd": f'"{user.password}"'.encode("utf-16-le"),
                    # NORMAL_ACCOUNT (0x200), | ACCOUNTDISABLE (0x2) when disabled.
                    "userAccountControl": 0x200 | (0x2 if user.disabled else 0),
                }
                if user.mail:
                    attrs["mail"] = user.mail
                if user.proxy_addresses:
                    attrs["proxyAddresses"] = list(user.proxy_addresses)
                conn.add(user.dn, ["top", "person", "organizationalPerson", "user"], attrs)
            conn.add(STAFF_GROUP_DN, ["top", "group"],
                     {"sAMAccountName": "Staff", "member": [CAROL.dn]})
            conn.add(MAIL_GROUP_DN, ["top", "group"],
                     {"sAMAccountName": "Mail Users", "member": [STAFF_GROUP_DN, ALICE.dn]})
            conn.modify(LOCKOUT_PSO_DN,
                        {"msDS-PSOAppliesTo": [(ldap3.MODIFY_ADD, [ERIN.dn, FRANK.dn])]})
            conn.modify(LATE_LOCKOUT_PSO_DN,
                        {"msDS-PSOAppliesTo": [(ldap3.MODIFY_ADD, [GRACE.dn])]})

    def lockout_state(self, user: ADUser) -> tuple[int, bool]:
        """The DC's ``badPwdCount`` of ``user``, and whether AD has locked it out."""
        with self.admin() as conn:
            conn.search(user.dn, "(objectClass=user)", ldap3.BASE,
                        attributes=["badPwdCount", "msDS-User-Account-Control-Computed"])
            entry = conn.entries[0]
            computed = int(entry["msDS-User-Account-Control-Computed"].value or 0)
            return int(entry.badPwdCount.value or 0), bool(computed & 0x10)  # UF_LOCKOUT

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@contextlib.contextmanager
def bound(server: ldap3.Server, dn: str, password: str) -> Iterator[ldap3.Connection]:
    """A connection bound as ``dn`` (exceptions on failure); its socket is closed after,
    also when the bind fails."""
    conn = ldap3.Connection(server, dn, password, receive_timeout=10, raise_exceptions=True)
    try:
        conn.open()
        conn.bind()
        yield conn
    finally:
        with contextlib.suppress(Exception):
            conn.unbind()
        if conn.socket is not None:
            conn.socket.close()


def available() -> str | None:
    """Why the DC cannot run here, or None."""
    for tool in ("samba", "samba-tool"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian package samba-ad-dc)"
    if os.geteuid() != 0:
        return "Samba's AD DC needs root"
    return None


_shared: SambaAD | None = None
_shared_lock = threading.Lock()
_ous = itertools.count(1)


def shared_samba_ad() -> SambaAD:
    """The test process's DC, started on first use and stopped at exit: one
    provisioning per test run, whoever needs it first (each user of it keeps to
    its own users, or an ``OU`` of its own, `new_ou`).

    Raises:
        RuntimeError: it cannot run here (`available` says why) or did not start.
    """
    global _shared
    with _shared_lock:
        if _shared is None:
            why = available()
            if why is not None:
                raise RuntimeError(why)
            stack = contextlib.ExitStack()
            _shared = stack.enter_context(running_samba_ad())
            atexit.register(stack.close)
        return _shared


def new_ou(ad: SambaAD) -> str:
    """A fresh, empty organizational unit for one test's users."""
    ou = f"OU=t{next(_ous)}-{os.getpid()},{BASE_DN}"
    with ad.admin() as conn:
        conn.add(ou, ["top", "organizationalUnit"])
    return ou


@contextlib.contextmanager
def running_samba_ad() -> Iterator[SambaAD]:
    """Provision, start, load, yield; always stop and remove."""
    root = Path(tempfile.mkdtemp(prefix="sgad-", dir="/tmp"))
    ad = SambaAD(root=root, address=pick_address(), ca_file=root / "tls" / "ca.pem")
    try:
        ad.provision()
        ad.start()
        ad.load()
        yield ad
    finally:
        ad.stop()
        shutil.rmtree(root, ignore_errors=True)
