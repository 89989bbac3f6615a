"""The web admin's login attempts in the auth log (``[auth].log_file``), next to
the SMTP ones, so that fail2ban, ``smtpgate report`` and the overview's charts see
guesses at the admin page as they see guesses at submission (docs/operations.md,
"The auth log").

A record has the fields of an SMTP attempt, with values no SMTP attempt has:
``listener`` "admin" (the ``[admin]`` section), ``front_door`` "web_admin",
``mechanism`` "PASSWORD+TOTP", and ``username`` the name given prefixed
``admin:``, the guard's key for it: an admin ``root`` is not the mail account
``root``, and the report's episodes and its blocks in force name it alike. The
reason tells a wrong password from a wrong code (a right password with a wrong
code means the password is known to someone), which the login page never says.

The file is opened for each record: the admin's logins are few (each costs an
Argon2 hash and is paced by the guard), and a file rotated away needs no signal
to reach this process. A file that cannot be written is logged, never the
login's failure.
"""

from __future__ import annotations

import logging
import secrets
from pathlib import Path

from smtpgate.auth.authlog import AuthLog
from smtpgate.config import Config

log = logging.getLogger("smtpgate.web")

LISTENER = "admin"
FRONT_DOOR = "web_admin"
MECHANISM = "PASSWORD+TOTP"


def auth_log_path(cfg: Config) -> Path | None:
    """``[auth].log_file`` resolved; None when it is off (pydantic reads ``""``
    as ``Path(".")``: both mean no file)."""
    f = cfg.auth.log_file
    return None if f is None or str(f) in ("", ".") else cfg.path(f)


def record_login(path: Path | None, *, client_ip: str, client_port: int, tls: str | None,
                 name: str, result: str, reason: str) -> None:
    """Write one admin login attempt (blocking: call it in a thread). ``name`` is
    the name as given; every field is neutralised as for SMTP."""
    try:
        auth_log = AuthLog(path)
    except OSError as e:
        log.error("web admin: cannot write the auth log %s: %s", path, e.strerror or e)
        return
    try:
        auth_log.write(auth_log.make_record(
            listener=LISTENER, client_ip=client_ip, client_port=client_port, tls=tls,
            mechanism=MECHANISM, username=f"admin:{name}", result=result, reason=reason,
            session=secrets.token_hex(6), front_door=FRONT_DOOR))
    finally:
        auth_log.close()
