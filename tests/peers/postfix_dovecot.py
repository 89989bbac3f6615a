"""A private Postfix + Dovecot pair on loopback, started and stopped by the tests.

Everything lives in one short temporary directory (Unix socket paths must stay
under 108 bytes, so not under pytest's long ``tmp_path``): Dovecot with its own
``base_dir`` and a passwd-file of SCRAM-SHA-256 hashes made by ``doveadm pw``;
Postfix with its own config and queue directories (``postfix -c DIR``),
``inet_interfaces = 127.0.0.1``, one smtpd service per configuration under test
on a free port (see `SERVICES`), SASL through Dovecot's socket, and nothing
ever delivered (``discard``). `PostfixDovecot.stop` stops both by the PIDs in
their pid files and is safe to call twice.

The templates are in ``templates/``; ``@NAME@`` tokens are filled in here.
Postfix and Dovecot need root (they drop to their own users), as on CI.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from smtpgate.tls.certs import write_self_signed
from tests.ports import free_port as _free_port

TEMPLATES = Path(__file__).parent / "templates"

#: The good submission service: STARTTLS required, AUTH only after it, SCRAM
#: offered (through Dovecot), CRAM-MD5 filtered out, relaying only when
#: authenticated. Each other service changes one thing.
GOOD: dict[str, str] = {
    "smtpd_tls_security_level": "encrypt",
    "smtpd_tls_auth_only": "yes",
    "smtpd_sasl_auth_enable": "yes",
    "smtpd_client_restrictions": "permit_sasl_authenticated,reject",
    "smtpd_sasl_mechanism_filter": "!cram-md5,static:all",
}

SERVICES: dict[str, dict[str, str]] = {
    "good": GOOD,
    "good-implicit": {**GOOD, "smtpd_tls_wrappermode": "yes"},
    # The classic mistake: AUTH offered (and accepted) before STARTTLS.
    "auth-in-clear": {**GOOD, "smtpd_tls_security_level": "may", "smtpd_tls_auth_only": "no"},
    # The other classic: relaying open to "trusted" networks (here: loopback).
    "open-relay": {
        **GOOD,
        "smtpd_client_restrictions": "",
        "smtpd_relay_restrictions": "permit_mynetworks,permit_sasl_authenticated,"
        "reject_unauth_destination",
        "smtpd_recipient_restrictions": "permit_mynetworks,permit_sasl_authenticated,reject",
    },
    "cram-md5": {**GOOD, "smtpd_sasl_mechanism_filter": "static:all"},
    "legacy-tls": {
        **GOOD,
        "smtpd_tls_protocols": ">=TLSv1",
        "smtpd_tls_mandatory_protocols": ">=TLSv1",
        # OpenSSL 3 refuses TLS 1.0/1.1 at security level 1 and up.
        "tls_high_cipherlist": "ALL:@SECLEVEL=0",
        "smtpd_tls_mandatory_ciphers": "high",
        "smtpd_tls_ciphers": "high",
    },
}

#: Dovecot's mechanisms; the Postfix services filter what they offer.
MECHANISMS = "plain login cram-md5 scram-sha-1 scram-sha-256"

SCRAM_USER = "scram@test.local"
SCRAM_PASSWORD = "Sc-Only-Pass1"


def _fill(template: str, values: Mapping[str, str]) -> str:
    text = (TEMPLATES / template).read_text()
    for key, value in values.items():
        text = text.replace(f"@{key}@", value)
    left = re.findall(r"@[A-Z_]+@", "\n".join(
        line for line in text.splitlines() if not line.lstrip().startswith("#")
    ))
    assert not left, f"unfilled tokens in {template}: {left}"
    return text


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie of ours would still "exist"; these daemons are not our children.
    return True


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return not _alive(pid)


@dataclass
class PostfixDovecot:
    root: Path
    ports: dict[str, int]
    users: dict[str, str] = field(default_factory=dict)
    started: bool = False

    @property
    def ca(self) -> Path:
        return self.root / "postfix" / "cert.pem"

    @property
    def postfix_dir(self) -> Path:
        return self.root / "postfix"

    @property
    def dovecot_conf(self) -> Path:
        return self.root / "dovecot" / "dovecot.conf"

    def log(self) -> str:
        out = []
        for p in (self.root / "postfix" / "maillog", self.root / "postfix" / "start.out",
                  self.root / "dovecot" / "dovecot.log", self.root / "dovecot" / "start.out"):
            if p.exists():
                out.append(f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}")
        return "\n".join(out)

    def start(self) -> None:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        self.started = True
        # The daemon keeps inherited pipes open: send its output to a file, not a pipe.
        with open(self.root / "dovecot" / "start.out", "wb") as out:
            proc = subprocess.run(["dovecot", "-c", str(self.dovecot_conf)],
                                  stdout=out, stderr=out, stdin=subprocess.DEVNULL,
                                  timeout=30, check=False)
        if proc.returncode != 0:
            raise RuntimeError("dovecot did not start:\n" + self.log())
        sock = self.root / "dovecot" / "auth-postfix"
        deadline = time.monotonic() + 20
        while not sock.exists():
            if time.monotonic() > deadline:
                raise RuntimeError("dovecot did not create its auth socket\n" + self.log())
            time.sleep(0.05)
        # Postfix reports start-up errors only to syslog (absent here); under a pty
        # ("script") it also prints them, so a failure says why.
        out_path = self.postfix_dir / "start.out"
        with open(out_path, "wb") as out:
            proc = subprocess.run(
                ["script", "-q", "-e", "-c", f"postfix -c {self.postfix_dir / 'etc'} start",
                 "/dev/null"],
                stdout=out, stderr=out, stdin=subprocess.DEVNULL, timeout=60, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"postfix start failed: {out_path.read_text(errors='replace')}"
                               f"\n{self.log()}")
        deadline = time.monotonic() + 30
        for port in self.ports.values():
            while True:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=1):
                        break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(
                            f"postfix not listening on {port}\n{self.log()}"
                        ) from None
                    time.sleep(0.05)

    def stop(self) -> None:
        """Stop Postfix and Dovecot by their PIDs; idempotent."""
        if not self.started:
            return
        self.started = False
        pf_pid = _read_pid(self.postfix_dir / "spool" / "pid" / "master.pid")
        if pf_pid is not None and _alive(pf_pid):
            subprocess.run(["postfix", "-c", str(self.postfix_dir / "etc"), "stop"],
                           capture_output=True, timeout=30, check=False)
            if not _wait_gone(pf_pid, 10):
                os.kill(pf_pid, signal.SIGKILL)
        dc_pid = _read_pid(self.root / "dovecot" / "run" / "master.pid")
        if dc_pid is not None and _alive(dc_pid):
            os.kill(dc_pid, signal.SIGTERM)
            if not _wait_gone(dc_pid, 10):
                os.kill(dc_pid, signal.SIGKILL)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def make_postfix_dovecot(services: Mapping[str, Mapping[str, str]] = SERVICES) -> PostfixDovecot:
    """Write the configuration (not started yet): one smtpd per entry of ``services``."""
    root = Path(tempfile.mkdtemp(prefix="sgpf-", dir="/tmp"))
    # Postfix and Dovecot drop to their own users, which must reach their files.
    root.chmod(0o755)
    dc = root / "dovecot"
    pf = root / "postfix"
    for d in (dc, dc / "run", dc / "state", pf, pf / "etc", pf / "spool", pf / "data"):
        d.mkdir(parents=True, exist_ok=True)
        d.chmod(0o755)
    shutil.chown(pf / "data", "postfix", "postfix")
    (pf / "data").chmod(0o700)
    write_self_signed(pf / "cert.pem", pf / "key.pem", "localhost", days=90)

    users = {SCRAM_USER: SCRAM_PASSWORD}
    lines = []
    for user, password in users.items():
        hashed = subprocess.run(
            ["doveadm", "pw", "-s", "SCRAM-SHA-256", "-p", password],
            check=True, capture_output=True, text=True, timeout=30,
        ).stdout.strip()
        lines.append(f"{user}:{hashed}::::::\n")
    (dc / "users").write_text("".join(lines))
    shutil.chown(dc / "users", "root", "dovecot")
    (dc / "users").chmod(0o640)
    (dc / "dovecot.conf").write_text(_fill("dovecot.conf.in", {
        "DIR": str(dc), "INSTANCE": root.name, "MECHANISMS": MECHANISMS,
    }))

    ports = {name: _free_port() for name in services}
    blocks = []
    for name, options in services.items():
        block = [f"127.0.0.1:{ports[name]} inet n - n - - smtpd",
                 f"  -o syslog_name=postfix/{name}"]
        block += [f"  -o {key}={value}" for key, value in options.items()]
        blocks.append("\n".join(block))
    (pf / "etc" / "main.cf").write_text(_fill("main.cf.in", {"DIR": str(pf), "DOVECOT": str(dc)}))
    (pf / "etc" / "master.cf").write_text(_fill("master.cf.in", {"SERVICES": "\n".join(blocks)}))
    return PostfixDovecot(root, ports, users)


@contextlib.contextmanager
def running(services: Mapping[str, Mapping[str, str]] = SERVICES) -> Iterator[PostfixDovecot]:
    """Configure, start, yield, and always stop and remove the pair."""
    pd = make_postfix_dovecot(services)
    try:
        pd.start()
        yield pd
    finally:
        pd.cleanup()
