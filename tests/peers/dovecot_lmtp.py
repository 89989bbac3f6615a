"""A private Dovecot LMTP server (RFC 2033) delivering into Maildirs, for the tests.

Everything lives in one short temporary directory (unix socket paths must stay
under 108 bytes): the config, ``base_dir``, the LMTP socket ``lmtp``, and the
mailboxes ``mail/<user>/Maildir``. Users come from a passwd-file; an address not
in it is refused by Dovecot at RCPT with ``550 5.1.1 ... User doesn't exist``.
Dovecot needs root to start (it writes the mail as ``nobody``). `DovecotLmtp.stop`
stops it by the PID in its pid file and is safe to call twice.
"""

from __future__ import annotations

import contextlib
import grp
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.peers.pidfile import stop_by_pid_file

_CONF = """\
# Dovecot 2.3 as an LMTP server only, written by tests/peers/dovecot_lmtp.py.
base_dir = {dir}/run
state_dir = {dir}/state
instance_name = {instance}
protocols = lmtp
listen = 127.0.0.1
log_path = {dir}/dovecot.log
info_log_path = {dir}/dovecot.log
ssl = no
mail_location = maildir:~/Maildir
lmtp_save_to_detail_mailbox = no
passdb {{
  driver = passwd-file
  args = {dir}/users
}}
userdb {{
  driver = passwd-file
  args = {dir}/users
}}
service lmtp {{
  unix_listener {dir}/lmtp {{
    mode = 0666
  }}
}}
service anvil {{
  chroot =
}}
"""


@dataclass
class DovecotLmtp:
    root: Path
    users: tuple[str, ...]
    started: bool = False

    @property
    def socket(self) -> Path:
        return self.root / "lmtp"

    def maildir(self, user: str) -> Path:
        return self.root / "mail" / user / "Maildir"

    def messages(self, user: str) -> list[bytes]:
        new, cur = self.maildir(user) / "new", self.maildir(user) / "cur"
        files = sorted([*new.glob("*"), *cur.glob("*")]) if new.exists() else []
        return [p.read_bytes() for p in files]

    def log(self) -> str:
        path = self.root / "dovecot.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def start(self) -> None:
        self.started = True
        with open(self.root / "start.out", "wb") as out:
            proc = subprocess.run(["dovecot", "-c", str(self.root / "dovecot.conf")],
                                  stdout=out, stderr=out, stdin=subprocess.DEVNULL,
                                  timeout=30, check=False)
        if proc.returncode != 0:
            raise RuntimeError("dovecot did not start:\n"
                               + (self.root / "start.out").read_text(errors="replace"))
        deadline = time.monotonic() + 20
        while not self.socket.exists():
            if time.monotonic() > deadline:
                raise RuntimeError("dovecot did not create its LMTP socket\n" + self.log())
            time.sleep(0.05)

    def stop(self) -> None:
        if not self.started:
            return
        self.started = False
        stop_by_pid_file(self.root / "run" / "master.pid")


def make_dovecot_lmtp(users: Iterable[str]) -> DovecotLmtp:
    """Write the configuration for these addresses (not started yet)."""
    root = Path(tempfile.mkdtemp(prefix="sglm-", dir="/tmp"))
    root.chmod(0o755)
    for d in ("run", "state", "mail"):
        (root / d).mkdir()
        (root / d).chmod(0o755)
    shutil.chown(root / "mail", "nobody", "nogroup")
    uid, gid = pwd.getpwnam("nobody").pw_uid, grp.getgrnam("nogroup").gr_gid
    users = tuple(users)
    (root / "users").write_text("".join(
        f"{u}::{uid}:{gid}::{root / 'mail' / u}::\n" for u in users))
    (root / "dovecot.conf").write_text(_CONF.format(dir=root, instance=root.name))
    return DovecotLmtp(root, users)


@contextlib.contextmanager
def running(users: Iterable[str]) -> Iterator[DovecotLmtp]:
    """Configure, start, yield, and always stop and remove it."""
    server = make_dovecot_lmtp(users)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.root, ignore_errors=True)
