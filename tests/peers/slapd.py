"""A private OpenLDAP server (Debian ``slapd``) for the LDAP backend tests.

Runs from a temp dir, never the system service: a generated ``slapd.conf``
(mdb backend, the core/cosine/inetorgperson/misc schemas), a CA and a server
certificate made here, StartTLS on an ``ldap://`` port and an ``ldaps://``
port, both on free loopback ports. ACLs as a real site has them: passwords are
usable for binds only, the service account ``cn=smtpgate,ou=services`` reads
the people, nobody else reads anything. ``stop()``/``start()`` keep the data,
for the outage tests.
"""

from __future__ import annotations

import atexit
import base64
import datetime as dt
import hashlib
import ipaddress
import itertools
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.ports import free_port as _free_port

SUFFIX = "dc=example,dc=org"
PEOPLE = f"ou=people,{SUFFIX}"
ROOT_DN = f"cn=admin,{SUFFIX}"
ROOT_PW = "root secret for tests"
SERVICE_DN = f"cn=smtpgate,ou=services,{SUFFIX}"
SERVICE_PW = "service account secret"
SCHEMAS = ("core", "cosine", "inetorgperson", "misc")


def ssha(password: str) -> str:
    """An RFC 2307 ``{SSHA}`` userPassword value."""
    salt = os.urandom(8)
    digest = hashlib.sha1(password.encode() + salt).digest()
    return "{SSHA}" + base64.b64encode(digest + salt).decode()


def _write_ca_and_cert(d: Path) -> None:
    """ca.pem (a CA), cert.pem + key.pem (signed by it, for localhost and 127.0.0.1)."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "slapd test CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
            key_encipherment=False, data_encipherment=False, key_agreement=False,
            encipher_only=False, decipher_only=False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    (d / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (d / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    os.chmod(d / "key.pem", 0o600)


class Slapd:
    """One slapd in ``root``; ``start()`` loads the base entries the first time."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = _free_port()
        self.tls_port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        root.mkdir(parents=True, exist_ok=True)
        (root / "db").mkdir(exist_ok=True)
        _write_ca_and_cert(root)
        (root / "service.pw").write_text(SERVICE_PW + "\n")
        os.chmod(root / "service.pw", 0o600)
        self._write_conf()
        self._load(self._base_ldif())

    @property
    def ca(self) -> Path:
        return self.root / "ca.pem"

    @property
    def url(self) -> str:
        return f"ldap://127.0.0.1:{self.port}"

    @property
    def ldaps_url(self) -> str:
        return f"ldaps://127.0.0.1:{self.tls_port}"

    @property
    def log(self) -> Path:
        return self.root / "slapd.log"

    def binds(self, dn: str) -> int:
        """Simple binds as ``dn`` the server received so far (from its stats log)."""
        needle = f'BIND dn="{dn}" method=128'.lower()
        return self.log.read_text(errors="replace").lower().count(needle)

    @property
    def conf(self) -> Path:
        return self.root / "slapd.conf"

    def _write_conf(self) -> None:
        r = self.root
        includes = "\n".join(f"include /etc/ldap/schema/{s}.schema" for s in SCHEMAS)
        self.conf.write_text(f"""{includes}
modulepath /usr/lib/ldap
moduleload back_mdb
pidfile {r}/slapd.pid
argsfile {r}/slapd.args
TLSCACertificateFile {r}/ca.pem
TLSCertificateFile {r}/cert.pem
TLSCertificateKeyFile {r}/key.pem
database mdb
maxsize 104857600
suffix "{SUFFIX}"
rootdn "{ROOT_DN}"
rootpw {ssha(ROOT_PW)}
directory {r}/db
access to attrs=userPassword
    by anonymous auth
    by * none
access to dn.subtree="{PEOPLE}"
    by dn.exact="{SERVICE_DN}" read
    by self read
    by * none
access to *
    by self read
    by * none
""")

    def _base_ldif(self) -> str:
        return f"""dn: {SUFFIX}
objectClass: dcObject
objectClass: organization
o: Example
dc: example

dn: ou=services,{SUFFIX}
objectClass: organizationalUnit
ou: services

dn: {SERVICE_DN}
objectClass: organizationalRole
objectClass: simpleSecurityObject
cn: smtpgate
userPassword: {ssha(SERVICE_PW)}

dn: {PEOPLE}
objectClass: organizationalUnit
ou: people

"""

    def _load(self, ldif: str) -> None:
        path = self.root / "base.ldif"
        path.write_text(ldif)
        subprocess.run(["slapadd", "-f", str(self.conf), "-l", str(path)], check=True,
                       capture_output=True, timeout=60)

    def start(self) -> None:
        urls = [f"ldap://127.0.0.1:{self.port}/", f"ldaps://127.0.0.1:{self.tls_port}/",
                # The same server on a name its certificate does not hold.
                f"ldaps://127.0.0.2:{self.tls_port}/"]
        # -d stats: one line per connection and operation (the tests count binds).
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                ["slapd", "-f", str(self.conf), "-d", "stats", "-h", " ".join(urls)],
                stdout=subprocess.DEVNULL, stderr=log,
            )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("slapd exited:\n" + self.log.read_text(errors="replace"))
            try:
                self.tool("ldapwhoami", "-H", self.url, "-x")
                return
            except subprocess.CalledProcessError:
                time.sleep(0.05)
        raise RuntimeError("slapd did not answer")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=20)
        self.proc = None

    def tool(self, *argv: str, stdin: str | None = None) -> str:
        """Run an ldap-utils command (ldapadd, ldappasswd, ...); raises on failure."""
        env = {**os.environ, "LDAPTLS_CACERT": str(self.ca)}
        return subprocess.run(list(argv), input=stdin, capture_output=True, text=True,
                              check=True, env=env, timeout=30).stdout

    def admin(self, program: str, *args: str, stdin: str | None = None) -> str:
        """An ldap-utils command bound as the root DN over StartTLS."""
        return self.tool(program, "-H", self.url, "-ZZ", "-x", "-D", ROOT_DN, "-w", ROOT_PW,
                         *args, stdin=stdin)

    def add(self, ldif: str) -> None:
        self.admin("ldapadd", stdin=ldif)

    def modify(self, ldif: str) -> None:
        self.admin("ldapmodify", stdin=ldif)

    def set_password(self, dn: str, password: str) -> None:
        """The RFC 3062 password modify operation, as an administrator does it."""
        self.admin("ldappasswd", "-s", password, dn)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.root / "db", ignore_errors=True)


_shared: Slapd | None = None
_shared_lock = threading.Lock()
_ous = itertools.count(1)


def shared_slapd() -> Slapd:
    """The test process's slapd, started on first use, stopped at exit (one per
    session: each user of it works in an ``ou`` of its own, ``new_ou``)."""
    global _shared
    for tool in ("slapd", "slapadd", "ldapadd", "ldappasswd"):
        if shutil.which(tool) is None and not Path("/usr/sbin", tool).exists():
            _missing(tool)
    with _shared_lock:
        if _shared is None:
            root = Path(tempfile.mkdtemp(prefix="smtpgate-slapd-"))
            server = Slapd(root / "slapd")
            server.start()
            atexit.register(lambda: (server.close(), shutil.rmtree(root, ignore_errors=True)))
            _shared = server
        return _shared


def new_ou(server: Slapd) -> str:
    """A fresh, empty ``ou`` under the people, for one test's users."""
    ou = f"ou=t{next(_ous)}-{os.getpid()},{PEOPLE}"
    server.add(f"dn: {ou}\nobjectClass: organizationalUnit\nou: {ou.split(',')[0][3:]}\n")
    return ou


def person_ldif(dn: str, mail: str, password: str | None, *extra: str) -> str:
    """An inetOrgPerson with a mailbox address (and more ``attr: value`` lines)."""
    uid = dn.split(",")[0].split("=", 1)[1]
    lines = [f"dn: {dn}", "objectClass: inetOrgPerson", "objectClass: inetLocalMailRecipient",
             f"uid: {uid}", f"cn: {uid}", f"sn: {uid}", f"mail: {mail}", *extra]
    if password is not None:
        lines.append(f"userPassword: {ssha(password)}")
    return "\n".join(lines) + "\n"


def _missing(tool: str) -> None:
    import pytest

    if os.environ.get("SMTPGATE_CI") or os.environ.get("CI"):
        pytest.fail(f"peer program {tool!r} is not installed (make test installs slapd, ldap-utils)")
    pytest.skip(f"{tool} not installed")
