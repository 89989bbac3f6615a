"""Postfix and Exim as SMTP AUTH *clients* of smtpgate: the MTA of a web or
application server that relays all its mail through the submission server
(Postfix's ``relayhost`` with ``smtp_sasl_auth_enable``, Exim's ``manualroute``
smarthost with a client authenticator).

Postfix: one private instance (``postfix -c DIR``) that never listens (``master_service_disable
= inet``), takes mail from ``sendmail -C DIR`` and hands each recipient domain to
its own ``smtp`` service (`POSTFIX_ROUTES`), one per mechanism and TLS mode, all
with the certificate checked (``smtp_tls_security_level = secure``). Postfix's
client speaks SASL through Cyrus SASL (its PLAIN, LOGIN and SCRAM plugins).

Exim: no daemon. Each message is one ``exim -C CONF -odf`` run, which delivers
in the foreground. Exim re-executes itself for the delivery as ``Debian-exim``;
the unpacked binary is set-uid root, for which the loader ignores
``LD_LIBRARY_PATH`` (it finds its libraries only through it), so ``exim_path``
names a wrapper that runs a copy without the set-uid bit.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests.peers import exim as exim_peer

TEMPLATES = Path(__file__).parent / "templates"

#: Recipient domain -> (master.cf service, its ``-o`` overrides). ``wrong`` sends
#: a wrong password; ``smtps`` is implicit TLS (``smtp_tls_wrappermode``).
POSTFIX_ROUTES: dict[str, tuple[str, dict[str, str]]] = {
    "plain.test": ("sg_plain", {"smtp_sasl_mechanism_filter": "plain"}),
    "login.test": ("sg_login", {"smtp_sasl_mechanism_filter": "login"}),
    "scram1.test": ("sg_scram1", {"smtp_sasl_mechanism_filter": "scram-sha-1"}),
    "scram256.test": ("sg_scram256", {"smtp_sasl_mechanism_filter": "scram-sha-256"}),
    "best.test": ("sg_best", {}),
    "smtps.test": ("sg_smtps", {"smtp_tls_wrappermode": "yes"}),
    "wrong.test": ("sg_wrong", {"smtp_sasl_password_maps": "texthash:@DIR@/wrong_passwd"}),
}


@dataclass
class PostfixRelay:
    root: Path
    started: bool = False

    @property
    def etc(self) -> Path:
        return self.root / "etc"

    def maillog(self) -> str:
        p = self.root / "maillog"
        return p.read_text(errors="replace") if p.exists() else ""

    def start(self) -> None:
        self.started = True
        proc = subprocess.run(["script", "-q", "-e", "-c", f"postfix -c {self.etc} start",
                               "/dev/null"], capture_output=True, text=True, timeout=60,
                              check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"postfix start failed: {proc.stdout}{proc.stderr}")

    def send(self, sender: str, rcpt: str, message: str) -> None:
        subprocess.run(["/usr/sbin/sendmail", "-C", str(self.etc), "-f", sender, "--", rcpt],
                       input=message, text=True, capture_output=True, timeout=60, check=True)

    def wait_status(self, rcpt: str, timeout: float = 30) -> str:
        """The maillog line with Postfix's verdict on ``rcpt`` (sent, deferred, bounced)."""
        pattern = re.compile(rf"to=<{re.escape(rcpt)}>.*status=(sent|deferred|bounced)")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.maillog().splitlines():
                if pattern.search(line):
                    return line
            time.sleep(0.1)
        raise AssertionError(f"no verdict on {rcpt} in the maillog:\n{self.maillog()[-3000:]}")

    def stop(self) -> None:
        if not self.started:
            return
        self.started = False
        subprocess.run(["postfix", "-c", str(self.etc), "stop"], capture_output=True,
                       timeout=30, check=False)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def make_postfix_relay(submission: int, submissions: int, ca: Path, user: str,
                       password: str) -> PostfixRelay:
    """A private Postfix (not started) relaying through smtpgate's ports as ``user``."""
    root = Path(tempfile.mkdtemp(prefix="sgpfc-", dir="/tmp"))
    root.chmod(0o755)
    for d in (root / "etc", root / "spool", root / "data"):
        d.mkdir()
        d.chmod(0o755)
    shutil.chown(root / "data", "postfix", "postfix")
    (root / "data").chmod(0o700)
    nexthops = {"starttls": f"[127.0.0.1]:{submission}", "implicit": f"[127.0.0.1]:{submissions}"}
    (root / "sasl_passwd").write_text(
        "".join(f"{hop} {user}:{password}\n" for hop in nexthops.values()))
    (root / "wrong_passwd").write_text(f"{nexthops['starttls']} {user}:not-the-password-1\n")
    for f in ("sasl_passwd", "wrong_passwd"):
        (root / f).chmod(0o600)
    routes = []
    services = []
    for domain, (service, options) in POSTFIX_ROUTES.items():
        hop = nexthops["implicit" if options.get("smtp_tls_wrappermode") else "starttls"]
        routes.append(f"{domain} {service}:{hop}\n")
        lines = [f"{service} unix - - n - - smtp"]
        lines += [f"  -o {k}={v.replace('@DIR@', str(root))}" for k, v in options.items()]
        services.append("\n".join(lines))
    (root / "transport").write_text("".join(routes))
    (root / "etc" / "main.cf").write_text(f"""\
compatibility_level = 3.6
queue_directory = {root}/spool
data_directory = {root}/data
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
shlib_directory = /usr/lib/postfix
meta_directory = /etc/postfix
mail_owner = postfix
setgid_group = postdrop
myhostname = web1.example.org
mydomain = example.org
myorigin = example.org
mydestination =
alias_maps =
alias_database =
inet_interfaces = loopback-only
inet_protocols = ipv4
master_service_disable = inet
smtp_dns_support_level = disabled
smtp_host_lookup = native
maillog_file = {root}/maillog
maillog_file_prefixes = {root}
transport_maps = texthash:{root}/transport
default_transport = error:no route in this test
smtp_sasl_auth_enable = yes
smtp_sasl_password_maps = texthash:{root}/sasl_passwd
smtp_sasl_security_options = noanonymous
smtp_sasl_tls_security_options = noanonymous
smtp_tls_security_level = secure
smtp_tls_secure_cert_match = nexthop
smtp_tls_CAfile = {ca}
smtp_tls_loglevel = 1
""")
    master = (TEMPLATES / "master.cf.in").read_text().replace("@SERVICES@", "")
    (root / "etc" / "master.cf").write_text(master + "\n".join(services) + "\n")
    return PostfixRelay(root)


#: Exim's client authenticators (``plaintext`` driver) by mechanism.
EXIM_AUTHENTICATORS = {
    "PLAIN": "client_send = ^{user}^{password}",
    "LOGIN": "client_send = : {user} : {password}",
}

EXIM_CONFIG = """\
exim_path = {wrapper}
keep_environment =
primary_hostname = app.example.org
qualify_domain = example.org
spool_directory = {dir}/spool
log_file_path = {dir}/log/%slog
host_lookup =
rfc1413_hosts =

begin routers
smarthost:
  driver = manualroute
  route_list = * 127.0.0.1::{port}
  transport = submission
  self = send

begin transports
submission:
  driver = smtp
  allow_localhost
  hosts_require_auth = *
  hosts_require_tls = *
  protocol = {protocol}
  tls_verify_certificates = {ca}
  tls_verify_hosts = *
  tls_verify_cert_hostnames =

begin retry
* * F,1h,15m

begin authenticators
client_{name}:
  driver = plaintext
  public_name = {mech}
  {send}
"""


@dataclass
class EximClient:
    root: Path
    config: Path

    def mainlog(self) -> str:
        p = self.root / "log" / "mainlog"
        return p.read_text(errors="replace") if p.exists() else ""

    def send(self, sender: str, rcpt: str, message: str) -> subprocess.CompletedProcess[str]:
        """Receive ``message`` and deliver it in the foreground (``-odf``)."""
        return subprocess.run(
            [str(exim_peer.BINARY), "-C", str(self.config), "-odf", "-f", sender, "--", rcpt],
            input=message, text=True, capture_output=True, timeout=60, check=False,
            env=exim_peer.lib_env())


def make_exim_client(root: Path, port: int, implicit: bool, ca: Path, mech: str, user: str,
                     password: str, main: str = "") -> EximClient:
    """An Exim config under ``root`` that relays everything to smtpgate on ``port``;
    ``main`` is added to its main section (``dsn_from = ...``)."""
    root.mkdir(parents=True)
    root.chmod(0o755)
    for d in ("spool", "log"):
        (root / d).mkdir()
        shutil.chown(root / d, exim_peer.USER, exim_peer.USER)
    plain_copy = root / "exim4.bin"
    shutil.copy(exim_peer.BINARY, plain_copy)  # shutil.copy drops the set-uid bit
    plain_copy.chmod(0o755)
    wrapper = root / "exim4"
    wrapper.write_text(f"#!/bin/sh\nLD_LIBRARY_PATH={exim_peer.lib_env()['LD_LIBRARY_PATH']} "
                       f'exec {plain_copy} "$@"\n')
    wrapper.chmod(0o755)
    config = root / "exim.conf"
    config.write_text(main + EXIM_CONFIG.format(
        wrapper=wrapper, dir=root, port=port, protocol="smtps" if implicit else "smtp", ca=ca,
        name=mech.lower(), mech=mech,
        send=EXIM_AUTHENTICATORS[mech].format(user=user, password=password)))
    return EximClient(root, config)
