"""A private Exim 4.96 on loopback whose SMTP AUTH goes to smtpgate's Dovecot-protocol
front door (``driver = dovecot``), started and stopped by the tests.

Exim is not installed (as a Debian package it conflicts with Postfix): ``make
exim`` unpacks ``exim4-daemon-heavy`` (the light build has no dovecot
authenticator) into ``build/exim/root`` and creates the
``Debian-exim`` user the binary runs as. Everything else lives in one temporary
directory: the config (``exim_path`` points at the unpacked binary, which Exim
re-executes for deliveries; nothing is delivered here anyway), spool, log, pid
file and a self-signed certificate. `Exim.stop` stops the daemon by its pid file
and is safe to call twice. Do not send it SIGHUP: it re-execs itself.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from smtpgate.tls.certs import write_self_signed
from tests.peers.pidfile import stop_by_pid_file
from tests.ports import free_port as _free_port

ROOT = Path(__file__).resolve().parents[2] / "build" / "exim" / "root"
BINARY = ROOT / "usr" / "sbin" / "exim4"
USER = "Debian-exim"

#: One authenticator per mechanism; the public name must be a MECH smtpgate lists.
MECHANISMS = ("PLAIN", "LOGIN", "SCRAM-SHA-256", "OAUTHBEARER")

CONFIG = """\
# A private Exim for smtpgate's front-door tests (tests/peers/exim.py).
exim_path = {binary}
keep_environment =
primary_hostname = exim.test.local
spool_directory = {dir}/spool
log_file_path = {dir}/log/%slog
pid_file_path = {dir}/exim.pid
daemon_smtp_ports = {port} : {tls_port}
tls_on_connect_ports = {tls_port}
local_interfaces = 127.0.0.1
tls_certificate = {dir}/cert.pem
tls_privatekey = {dir}/key.pem
tls_advertise_hosts = *
# AUTH only after STARTTLS.
auth_advertise_hosts = ${{if eq{{$tls_in_cipher}}{{}}{{}}{{*}}}}
host_lookup =
rfc1413_hosts =
acl_smtp_rcpt = acl_check_rcpt

begin acl
acl_check_rcpt:
  accept authenticated = *
  deny   message = authentication required

begin routers
blackhole:
  driver = redirect
  data = :blackhole:

begin authenticators
{authenticators}
"""

AUTHENTICATOR = """\
dovecot_{name}:
  driver = dovecot
  public_name = {mech}
  server_socket = {socket}
  server_set_id = $auth1
"""


def available() -> bool:
    try:
        pwd.getpwnam(USER)
    except KeyError:
        return False
    return BINARY.exists()


def lib_env() -> dict[str, str]:
    """The environment with the unpacked libraries on the loader's path."""
    libs = [str(ROOT / "usr" / "lib" / "x86_64-linux-gnu"), str(ROOT / "usr" / "lib")]
    return {**os.environ, "LD_LIBRARY_PATH": ":".join(libs)}


@dataclass
class Exim:
    root: Path
    port: int
    #: Implicit TLS (gsasl cannot STARTTLS with Exim: it sends no EHLO first).
    tls_port: int
    started: bool = False

    @property
    def config(self) -> Path:
        return self.root / "exim.conf"

    @property
    def ca(self) -> Path:
        return self.root / "cert.pem"

    def log(self) -> str:
        out = []
        for name in ("mainlog", "paniclog", "rejectlog"):
            p = self.root / "log" / name
            if p.exists():
                out.append(f"--- {name}\n{p.read_text(errors='replace')[-3000:]}")
        return "\n".join(out)

    def start(self) -> None:
        self.started = True
        proc = subprocess.run([str(BINARY), "-C", str(self.config), "-bd"], env=lib_env(),
                              capture_output=True, text=True, timeout=30, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"exim did not start: {proc.stdout}{proc.stderr}\n{self.log()}")
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    if s.recv(100).startswith(b"220"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"exim not listening on {self.port}\n{self.log()}")
            time.sleep(0.05)

    def stop(self) -> None:
        if not self.started:
            return
        self.started = False
        stop_by_pid_file(self.root / "exim.pid")

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def make_exim(auth_socket: str) -> Exim:
    """Write the configuration (not started). ``auth_socket`` is Exim's
    ``server_socket``: a unix socket path, or "IP PORT" for TCP."""
    root = Path(tempfile.mkdtemp(prefix="sgexim-", dir="/tmp"))
    root.chmod(0o755)
    for d in ("spool", "log"):
        (root / d).mkdir()
        shutil.chown(root / d, USER, USER)
    write_self_signed(root / "cert.pem", root / "key.pem", "localhost", days=90)
    shutil.chown(root / "key.pem", USER, USER)  # Exim reads it as Debian-exim
    (root / "key.pem").chmod(0o600)
    port, tls_port = _free_port(), _free_port()
    auths = "".join(
        AUTHENTICATOR.format(name=m.lower().replace("-", "_"), mech=m, socket=auth_socket)
        for m in MECHANISMS
    )
    (root / "exim.conf").write_text(CONFIG.format(
        binary=BINARY, dir=root, port=port, tls_port=tls_port, authenticators=auths))
    return Exim(root, port, tls_port)
