"""The decoy secret: what keys SCRAM's fake salts for unknown accounts.

Theory of operation
-------------------
A SCRAM server sends the account's salt before the client proves anything, so a
name that does not exist must get a salt too, and the same one every time, as a
real account does; otherwise two probes tell a prober which names exist.
`sasl/scram.py` derives that fake salt from this secret and the name. The secret
must therefore live as long as the installation: across restarts, across worker
processes, and across certificate renewals. (It used to be derived from the TLS
private key, which an ACME client replaces every 60 days: each renewal changed
every unknown name's salt while real accounts kept theirs.)

So it is a file of its own: ``[auth] decoy_secret_file``, by default ``decoy.key``
in the state directory (the directory of ``accounts.database``, where the pid
file goes too), holding `SECRET_BYTES` random bytes, mode 0600. ``smtpgate init``
creates it with the databases (owned by ``--owner``); ``serve`` creates a missing
one at start-up, before it forks, so a server upgraded from a version without the
file needs no step (unknown names' salts change once, then never).
docs/security.md says the same for administrators.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from smtpgate.config import Config
from smtpgate.errors import StartupError

KEY = "auth.decoy_secret_file"
#: 256 bits, the size of the HMAC-SHA-256 key it becomes.
SECRET_BYTES = 32
DEFAULT_NAME = "decoy.key"


def decoy_secret_path(cfg: Config) -> Path:
    """``auth.decoy_secret_file``, or ``decoy.key`` in the state directory."""
    if cfg.auth.decoy_secret_file is not None:
        return cfg.path(cfg.auth.decoy_secret_file)
    return cfg.path(cfg.accounts.database).parent / DEFAULT_NAME


def create_decoy_secret(path: Path) -> bool:
    """Write a new secret to ``path`` unless a file is there; True if one was written.

    Exclusive create, mode 0600, fsynced before the name appears, so two processes
    starting at once end with one secret and a crash never leaves a short file.

    Raises:
        OSError: the file cannot be created.
    """
    if path.exists():
        return False
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(SECRET_BYTES))
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # fails if another process got there first: keep theirs
        except FileExistsError:
            return False
        return True
    finally:
        tmp.unlink(missing_ok=True)


def decoy_secret_problem(data: bytes, path: Path) -> str | None:
    """Why ``data`` read from ``path`` cannot be the secret, or None."""
    if len(data) < SECRET_BYTES:
        return (
            f"{path} holds {len(data)} bytes; the decoy secret needs at least {SECRET_BYTES}"
        )
    return None


def load_decoy_secret(cfg: Config) -> bytes:
    """The decoy secret, creating its file first if there is none.

    Raises:
        StartupError: the file cannot be created or read, or is too short (key
            ``auth.decoy_secret_file``).
    """
    path = decoy_secret_path(cfg)
    try:
        create_decoy_secret(path)
        data = path.read_bytes()
    except OSError as e:
        raise StartupError(
            KEY,
            f"cannot create or read {path}: {e.strerror or e}",
            f"create it with `head -c {SECRET_BYTES} /dev/urandom > {path}` and let the "
            "user smtpgate runs as read it",
        ) from None
    problem = decoy_secret_problem(data, path)
    if problem is not None:
        raise StartupError(
            KEY, problem, "remove it and start again: serve makes a new one (unknown "
            "names' salts then change once)",
        )
    return data
