"""The pid file: how ``smtpgate reload`` finds the running ``serve``.

``serve`` writes its process id (the parent's, with several workers) to
``[server] pid_file`` after it has bound its listeners, so a second instance
that fails to bind never overwrites it, and removes it when it stops. The
default is ``smtpgate.pid`` beside the account database: the state directory,
which the server can always write.

Where the file is is decided once, at start-up: a reload that moves
``accounts.database`` (or edits ``server.pid_file``, which needs a restart) leaves
the pid file, the status file beside it and the metrics directory where they
were until the server restarts. The commands that look for the server
(``reload``, ``status``) read the config as it is now, so when the file is not
where that config names it they look for the ``smtpgate serve`` started with the
same config file among the running processes (``find_running``), as ``pgrep``
would, before saying that none runs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from smtpgate.config import Config


class NotRunning(Exception):
    """No running server was found; the message says why, in plain words.
    ``missing``: there was no pid file at all (the case ``find_running`` looks further)."""

    def __init__(self, message: str, *, missing: bool = False) -> None:
        super().__init__(message)
        self.missing = missing


@dataclass(frozen=True, slots=True)
class Found:
    """A running server: its pid, and whether its pid file is where the config names
    it (False: found by its config file among the processes, ``find_running``)."""

    pid: int
    at_pid_file: bool = True


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


def another_serving(path: Path) -> int | None:
    """The pid of another ``smtpgate serve`` named by the pid file ``path``, still
    running; None when the file is missing, stale, this process's, or names a process
    that is not a ``serve`` (a reused number).

    Two servers with one pid file share its directory: the status file, the metrics
    directory (which a start empties) and, by default, the spool and the databases.
    The second one must not start, as Postfix's second ``master`` does not.
    """
    try:
        pid = running_pid(path)
    except NotRunning:
        return None
    if pid == os.getpid():
        return None
    try:
        argv = [os.fsdecode(a) for a in
                Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]]
    except OSError:
        return pid  # no /proc: the file and a live process are all there is to go by
    return pid if _is_serve(argv) else None


def remove(path: Path) -> None:
    """Remove the file if it still names this process."""
    try:
        if path.read_text().strip() == str(os.getpid()):
            path.unlink()
    except (OSError, ValueError):
        pass


#: Linux's largest pid (PID_MAX_LIMIT, 2**22); a larger number names no process.
_PID_MAX = 1 << 22
_PID_DIGITS = len(str(_PID_MAX))


def running_pid(path: Path) -> int:
    """The pid of the ``smtpgate serve`` named in ``path``.

    Raises:
        NotRunning: no file, no such process, or the process is not smtpgate (a
            stale file whose number was reused).
    """
    try:
        # Bytes, and only the first few: a file left damaged by a crash (NUL blocks,
        # garbage that is not UTF-8, a huge number) was a UnicodeDecodeError or
        # OverflowError traceback from `status`, `reload` and `serve` alike.
        with path.open("rb") as f:
            raw = f.read(64)
    except FileNotFoundError:
        raise NotRunning(f"no pid file {path}: is smtpgate serve running with this config?",
                         missing=True) from None
    except OSError as e:
        raise NotRunning(f"cannot read the pid file {path}: {e.strerror or e}") from None
    text = raw.strip()
    if not (text.isdigit() and len(text) <= _PID_DIGITS and 1 < int(text) <= _PID_MAX):
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


def find_running(path: Path, config_file: Path | None) -> Found:
    """The server named by the pid file ``path``; if there is no such file, the one
    ``smtpgate serve`` process (the supervisor, not its workers) started with
    ``config_file``, the config having moved the pid file since it started.

    Raises:
        NotRunning: neither (the pid file's message), or several such processes.
    """
    try:
        return Found(running_pid(path))
    except NotRunning as e:
        if not e.missing or config_file is None:
            raise
        pids = serving(config_file)
        if not pids:
            raise
        if len(pids) > 1:
            raise NotRunning(
                f"no pid file {path}, and several smtpgate serve processes run with "
                f"{config_file}: {', '.join(map(str, pids))}") from None
        return Found(pids[0], at_pid_file=False)


def serving(config_file: Path) -> list[int]:
    """The pids of the ``smtpgate serve`` processes whose config file is
    ``config_file`` (``--config``, else ``SMTPGATE_CONFIG`` in their environment),
    parents only: a worker forked by one is not listed. Processes this user may not
    look into (another user's, without root) are not seen: nor could they be signalled."""
    try:
        target = config_file.resolve()
        entries = [d for d in Path("/proc").iterdir() if d.name.isdigit()]
    except OSError:
        return []
    found: dict[int, int] = {}  # pid: parent pid
    for d in entries:
        pid = int(d.name)
        if pid == os.getpid():
            continue
        try:
            argv = [os.fsdecode(a) for a in (d / "cmdline").read_bytes().split(b"\0")[:-1]]
            if not _is_serve(argv):
                continue
            given = _config_arg(argv) or _environ(d).get("SMTPGATE_CONFIG")
            if not given:
                continue
            where = Path(given)
            if not where.is_absolute():
                where = Path(os.readlink(d / "cwd")) / where
            if where.resolve() != target:
                continue
            stat = (d / "stat").read_text()
            found[pid] = int(stat[stat.rindex(")") + 2:].split()[1])
        except (OSError, ValueError, IndexError):
            continue  # gone, or not ours to read
    return sorted(pid for pid, parent in found.items() if parent not in found)


def _is_serve(argv: list[str]) -> bool:
    """``.../smtpgate serve ...`` or ``python -m smtpgate serve ...``."""
    if "serve" not in argv:
        return False
    before = argv[: argv.index("serve")]
    return any(Path(a).name == "smtpgate" or a == "smtpgate.cli.main" for a in before)


def _config_arg(argv: list[str]) -> str | None:
    for i, a in enumerate(argv):
        if a == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--config="):
            return a.removeprefix("--config=")
    return None


def _environ(d: Path) -> dict[str, str]:
    out = {}
    for item in (d / "environ").read_bytes().split(b"\0"):
        k, eq, v = os.fsdecode(item).partition("=")
        if eq:
            out[k] = v
    return out
