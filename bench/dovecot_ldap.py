"""Dovecot 2.3's auth server with its own LDAP passdb, and a client of its auth
socket that speaks as Postfix does: the login benchmark's reference.

``DovecotLdap`` writes a private instance in a temp dir (never the system
service): auth only (``protocols = none``), ``passdb { driver = ldap }`` with
``auth_bind = yes`` (search as the service account, then bind as the user: the
slapd fixture lets nobody read ``userPassword``, as a real site does), the auth
cache on (``auth_cache_size``), and one auth socket for the client. Needs root
(Dovecot drops to its own users) and the ``dovecot-ldap`` package.

``AuthClient`` is one connection to that socket, as one Postfix smtpd process
keeps one: ``VERSION``/``CPID`` handshake, then ``AUTH <id> PLAIN service=smtp
... resp=<base64>`` requests, one at a time, answered ``OK`` or ``FAIL``
(/work/shared/peers/dovecot-auth-transcript-postfix.txt).
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import os
import shutil
import subprocess
import time
from pathlib import Path

from tests.peers.pidfile import stop_by_pid_file

LDAP_MODULE = Path("/usr/lib/dovecot/modules/auth/libauthdb_ldap.so")


class DovecotLdap:
    """One Dovecot auth server in ``root`` whose passdb is the LDAP server at ``uri``."""

    def __init__(self, root: Path, *, uri: str, bind_dn: str, bind_password: str,
                 base: str, cache_size: str = "10M") -> None:
        self.root = root
        self.socket = root / "auth-client"
        root.mkdir(parents=True, exist_ok=True)
        root.chmod(0o755)
        for d in ("run", "state"):
            (root / d).mkdir(exist_ok=True)
        ext = root / "dovecot-ldap.conf.ext"
        ext.write_text(
            f"uris = {uri}\n"
            f"dn = {bind_dn}\n"
            f"dnpass = {bind_password}\n"
            "auth_bind = yes\n"
            "ldap_version = 3\n"
            f"base = {base}\n"
            "scope = subtree\n"
            "pass_filter = (&(objectClass=inetOrgPerson)(mail=%u))\n"
            "pass_attrs = mail=user\n"
        )
        shutil.chown(ext, "root", "dovecot")
        ext.chmod(0o640)
        (root / "dovecot.conf").write_text(f"""base_dir = {root}/run
state_dir = {root}/state
instance_name = {root.name}
protocols = none
listen = 127.0.0.1
log_path = {root}/dovecot.log
info_log_path = {root}/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_username_format = %Lu
# Only the smoke test's wrong password meets it; the benchmark logs in successfully.
auth_failure_delay = 0
auth_cache_size = {cache_size}
auth_cache_ttl = 1 hour
passdb {{
  driver = ldap
  args = {ext}
}}
userdb {{
  driver = static
  args = uid=nobody gid=nogroup home=/nonexistent
}}
service auth {{
  unix_listener {self.socket} {{
    mode = 0666
  }}
}}
service anvil {{
  chroot =
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
""")

    @property
    def conf(self) -> Path:
        return self.root / "dovecot.conf"

    def log(self) -> str:
        p = self.root / "dovecot.log"
        return p.read_text(errors="replace")[-3000:] if p.exists() else ""

    def start(self) -> None:
        if not LDAP_MODULE.exists():
            raise RuntimeError("Dovecot's LDAP passdb is missing: apt-get install dovecot-ldap")
        with open(self.root / "start.out", "wb") as out:
            proc = subprocess.run(["dovecot", "-c", str(self.conf)], stdout=out, stderr=out,
                                  stdin=subprocess.DEVNULL, timeout=30, check=False)
        if proc.returncode != 0:
            raise RuntimeError("dovecot did not start:\n"
                               + (self.root / "start.out").read_text(errors="replace"))
        deadline = time.monotonic() + 20
        while not self.socket.exists():
            if time.monotonic() > deadline:
                raise RuntimeError("dovecot made no auth socket:\n" + self.log())
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM to the master by its pid file (it stops its children), then wait."""
        stop_by_pid_file(self.root / "run" / "master.pid")


class AuthClient:
    """One connection to a Dovecot auth socket (see the module docstring)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._ids = itertools.count(1)
        self.mechanisms: list[str] = []

    @classmethod
    async def connect(cls, path: Path) -> AuthClient:
        reader, writer = await asyncio.open_unix_connection(str(path))
        client = cls(reader, writer)
        writer.write(f"VERSION\t1\t0\nCPID\t{os.getpid()}\n".encode())
        while True:
            line = (await reader.readline()).decode()
            if not line:
                raise ConnectionError("the auth server closed the connection in the handshake")
            fields = line.rstrip("\n").split("\t")
            if fields[0] == "MECH":
                client.mechanisms.append(fields[1])
            elif fields[0] == "DONE":
                return client

    async def plain(self, user: str, password: str, rip: str = "127.0.0.1") -> tuple[bool, str]:
        """One AUTH PLAIN request as Postfix sends it, for a client at ``rip``;
        (True, line) on ``OK``."""
        rid = next(self._ids)
        resp = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        self._writer.write(
            f"AUTH\t{rid}\tPLAIN\tservice=smtp\tnologin\tlip=127.0.0.1\trip={rip}"
            f"\tsecured\tresp={resp}\n".encode()
        )
        line = (await self._reader.readline()).decode().rstrip("\n")
        if not line:
            raise ConnectionError("the auth server closed the connection")
        verb, _, rest = line.partition("\t")
        if not rest.startswith(f"{rid}\t") and rest != str(rid):
            raise ConnectionError(f"answer for another request: {line!r}")
        return verb == "OK", line

    async def close(self) -> None:
        self._writer.close()
        try:
            await self._writer.wait_closed()
        except (ConnectionError, OSError):
            pass
