"""The pid file: how ``smtpgate reload`` finds the running ``serve``.

``serve`` writes its process id (the parent's, with several workers) to
``[server] pid_file`` after it has bound its listeners, so a second instance
that fails to bind never overwrites it, and removes it when it stops. The
default is ``smtpgate.pid`` beside the account database: the state directory,
which the server can always write.
"""

from __future__ import annotations

import os
from pathlib import Path

from smtpgate.config import Config


class NotRunning(Exception):
    """No running server was found; the message says why, in plain words."""


def pid_path(cfg: Config) -> Path:
    if cfg.server.pid_file is not None:
        return cfg.path(cfg.server.pid_file)
    return cfg.path(cfg.accounts.database).parent / "smtpgate.pid"


def write(path: Path) -> None:
    """Write this process's id (atomically: a reader never sees half a number).

    Raises:
        OSError: the file cannot be written.
    """
    replace_file(path, f"{os.getpid()}\n")


def replace_file(path: Path, text: str) -> None:
    """Replace ``path`` with a new file holding ``text``, through a temporary name
    beside it, so that a reader never sees half a file.

    The state directory belongs to ``[server] user`` while the process writing
    here (the supervisor) may be root: the temporary name is predictable, so a
    link or file the user planted there is removed, never written through
    (``O_EXCL``: a name that exists again is an error, not a file to follow).

    Raises:
        OSError: the file cannot be written.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        tmp.unlink(missing_ok=True)  # a link is removed, not followed
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


def remove(path: Path) -> None:
    """Remove the file if it still names this process."""
    try:
        if path.read_text().strip() == str(os.getpid()):
            path.unlink()
    except (OSError, ValueError):
        pass


def running_pid(path: Path) -> int:
    """The pid of the ``smtpgate serve`` named in ``path``.

    Raises:
        NotRunning: no file, no such process, or the process is not smtpgate (a
            stale file whose number was reused).
    """
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        raise NotRunning(f"no pid file {path}: is smtpgate serve running with this config?") from None
    except OSError as e:
        raise NotRunning(f"cannot read the pid file {path}: {e.strerror or e}") from None
    if not text.isdigit() or int(text) <= 1:
        raise NotRunning(f"the pid file {path} holds no process id")
    pid = int(text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        raise NotRunning(f"smtpgate is not running (stale pid file {path} names process {pid})") from None
    except PermissionError:
        pass  # exists, another user's: signalling it will say so
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return pid  # no /proc: trust the file
    if b"smtpgate" not in cmdline:
        raise NotRunning(f"smtpgate is not running (stale pid file {path}: process {pid} is another program)")
    return pid
