"""Running as an unprivileged user without systemd (``[server] user``, ``group``).

Started as root, ``serve`` checks and binds everything as root (ports 465 and
587, the auth front doors' unix sockets, the admin and metrics listeners), then
hands the state files it may have created to the user (``hand_over``) and drops
root for good (``drop``: supplementary groups, group, user, in that order)
before a byte is served:

- with one process, the process itself drops, right after binding;
- with several, the supervisor stays root, as nginx's and Postfix's master
  processes do: it binds each worker's own ``SO_REUSEPORT`` sockets again
  whenever it restarts one, and it reads no client input. Every worker and the
  delivery process drops as the first thing it does after the fork.

Without ``user``, a server started as root serves as root, with a warning.
docs/operations.md, "Running as an unprivileged user", has the details.
"""

from __future__ import annotations

import grp
import logging
import os
import pwd
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from smtpgate.config import Config
from smtpgate.errors import StartupError
from smtpgate.preflight import Problem

log = logging.getLogger("smtpgate")

_SQLITE_SIDE_FILES = ("", "-wal", "-shm", "-journal")


@dataclass(frozen=True, slots=True)
class RunAs:
    """Who the serving processes become."""

    user: str
    uid: int
    gid: int
    groups: tuple[int, ...]


def resolve(cfg: Config) -> RunAs | None:
    """The user to drop to; None when there is nothing to drop (no ``user``, or
    already running as that user).

    Raises:
        StartupError: the user or group does not exist, or ``user`` is set and
            the server was started neither as root nor as that user.
    """
    if not cfg.server.user:
        if os.geteuid() == 0:
            log.warning("server.user: not set: serving as root (set it to an unprivileged "
                        "user, e.g. \"smtpgate\"; docs/operations.md)")
        return None
    who = _who(cfg, cfg.server.user)
    if os.geteuid() != 0:
        if os.geteuid() == who.uid and os.getegid() == who.gid:
            return None  # started as that user already (systemd's User=)
        raise StartupError("server.user", f"running as uid {os.geteuid()}: switching to "
                                          f"{who.user!r} needs starting as root")
    _check_python(who)
    return who


def problems(cfg: Config) -> list[Problem]:
    """What ``serve`` would refuse in ``server.user`` and ``server.group`` (no such
    user or group, root, a Python the user cannot import from), for ``config check``,
    which must not pass a config that ``serve`` then stops at. Who runs the check
    does not matter: the start as root (or as the user) is ``serve``'s to check."""
    if not cfg.server.user:
        return []
    try:
        who = _who(cfg, cfg.server.user)
        _check_python(who)
    except StartupError as e:
        return [Problem("error", e.key, e.message)]
    return reload_problems(cfg, who)


def reload_problems(cfg: Config, who: RunAs) -> list[Problem]:
    """Warnings for the certificate and key files ``who`` may not read: ``serve``,
    started as root, reads them and starts, but a reload runs in the serving
    processes, as ``who``, and fails on them (a renewed certificate never served)."""
    out: list[Problem] = []
    for key, name in (("tls.cert", cfg.tls.cert), ("tls.key", cfg.tls.key)):
        path = cfg.path(name)
        closed = file_unreadable_by(path, who) if path.exists() else None
        if closed is not None:
            out.append(Problem("warning", key, (
                f"{who.user!r} cannot read {closed}" + ("" if closed == path.resolve()
                                                        else f", on the way to {path}")
                + f": serve starts (it reads it as root) but every reload runs as "
                f"{who.user!r} and fails on it, so a renewed certificate is never served; "
                f"let the user's group read it (chgrp {_group_name(who.gid)} {path}; "
                f"chmod 0640 {path}), as `smtpgate init --owner` does")))
    return out


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def file_unreadable_by(path: Path, who: RunAs) -> Path | None:
    """The directory on the way to the file ``path`` that ``who`` may not enter, or
    the file itself if ``who`` may not read it, by mode bits; None when it may."""
    return _first_refused(path, who, 0o4)


def unreadable_by(path: Path, who: RunAs) -> Path | None:
    """The first directory on the way to ``path`` that ``who`` may not enter (or, for
    ``path`` itself, list), by its mode bits; None when every one lets it through.
    A directory with an ACL is taken as readable: its mode bits do not tell."""
    return _first_refused(path, who, 0o5)


def _first_refused(path: Path, who: RunAs, last: int) -> Path | None:
    """The first of ``path``'s parents that ``who`` may not search, or ``path`` if it
    lacks the bits ``last``; None when none refuses. An ACL is taken as granting."""
    target = path.resolve()
    for item in (*reversed(target.parents), target):
        try:
            st = item.stat()
        except OSError:
            return item
        if "system.posix_acl_access" in _xattrs(item):
            continue
        if not _allowed(st, who, last if item == target else 0o1):
            return item
    return None


def _allowed(st: os.stat_result, who: RunAs, need: int) -> bool:
    """Do the mode bits of ``st`` grant ``who`` the bits ``need`` (0o4 read, 0o1
    search)? The owner's, else the group's, else the others' bits decide."""
    if st.st_uid == who.uid:
        bits = st.st_mode >> 6
    elif st.st_gid == who.gid or st.st_gid in who.groups:
        bits = st.st_mode >> 3
    else:
        bits = st.st_mode
    return bits & need == need


def _who(cfg: Config, name: str) -> RunAs:
    """``name`` and ``server.group`` looked up.

    Raises:
        StartupError: no such user or group, or the user is root.
    """
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        raise StartupError("server.user", f"no such user: {name!r}") from None
    gid = pw.pw_gid
    if cfg.server.group:
        try:
            gid = grp.getgrnam(cfg.server.group).gr_gid
        except KeyError:
            raise StartupError("server.group", f"no such group: {cfg.server.group!r}") from None
    if pw.pw_uid == 0:
        raise StartupError("server.user", f"{name!r} is root: name an unprivileged user")
    return RunAs(name, pw.pw_uid, gid, tuple(sorted(set(os.getgrouplist(name, gid)))))


def _check_python(who: RunAs) -> None:
    """Raises StartupError when ``who`` cannot read what smtpgate imports from."""
    for path in python_paths():
        closed = unreadable_by(path, who)
        if closed is not None:
            # Each process goes on importing (lazily) after it drops: a Python under
            # /root (pyenv, say) then fails with "No module named ..." in a worker.
            raise StartupError("server.user", f"{who.user!r} cannot read {closed}, on the way "
                                              f"to {path}, which smtpgate imports from after "
                                              "switching to that user: install it with a "
                                              "Python that user can read (the system's "
                                              "python3 -m venv, not one under /root)")


def python_paths() -> list[Path]:
    """Where a process that has dropped to the user still imports from: the standard
    library (with its extension modules) and the installed smtpgate."""
    import sysconfig

    import smtpgate

    paths = [Path(sysconfig.get_paths()["stdlib"]), Path(smtpgate.__file__).parent]
    return [p for p in paths if p.is_dir()]  # an embedded Python may have no such directory


def _xattrs(path: Path) -> list[str]:
    try:
        return os.listxattr(path)
    except OSError:
        return []


def state_paths(cfg: Config) -> Iterator[Path]:
    """The files and trees serve writes, which a start as root may have created:
    the SQLite databases (with their side files), the logs, the decoy secret, the
    pid and status files, the metrics directory, the spool and the Maildir."""
    from smtpgate.auth.decoy import decoy_secret_path
    from smtpgate.server import metrics_http, pidfile, status_file

    dbs = [] if cfg.state.backend == "redis" else [cfg.path(cfg.guard.database)]
    if cfg.accounts.backend != "postgresql":
        dbs.append(cfg.path(cfg.accounts.database))
    for db in dbs:
        for side in _SQLITE_SIDE_FILES:
            yield db.with_name(db.name + side)
    for f in (cfg.auth.log_file, cfg.server.log_file):
        if f is not None and str(f) not in ("", "."):
            yield cfg.path(f)
    yield decoy_secret_path(cfg)
    yield pidfile.pid_path(cfg)
    yield status_file.status_path(cfg)
    yield metrics_http.metrics_dir(cfg)
    yield cfg.path(cfg.queue.spool)
    if cfg.delivery.mode == "maildir":
        yield cfg.path(cfg.delivery.maildir)


def hand_over(cfg: Config, who: RunAs) -> None:
    """Give ``who`` the state files (trees: everything under them), and check that
    it can write the directories SQLite makes its side files in.

    Raises:
        StartupError: a database's directory, or the spool, is not writable by the user.
    """
    for path in state_paths(cfg):
        _chown_tree(path, who)
    _check_spool(cfg.path(cfg.queue.spool), who)
    for key, db in (("guard.database", cfg.path(cfg.guard.database)),
                    ("accounts.database", cfg.path(cfg.accounts.database))):
        if key == "accounts.database" and cfg.accounts.backend == "postgresql":
            continue
        if key == "guard.database" and cfg.state.backend == "redis":
            continue  # the guard's state is in Redis: no file of it is written
        if not _writable_by(db.parent, who):
            raise StartupError(key, f"{db.parent} is not writable by {who.user!r} (SQLite "
                                    "writes its journal there): chown it, or make the state "
                                    "directory with `smtpgate init --owner`")


def _check_spool(spool: Path, who: RunAs) -> None:
    """The spool and its directories that exist must be the user's to write in: a
    third user's (a restored backup, an earlier install under another uid) is not
    taken by `_chown_tree`, and each serving process would otherwise fail on it
    with a bare EACCES after the fork. One that does not exist yet is made later.

    Raises:
        StartupError: one of them is not writable (or not searchable) by the user.
    """
    for directory in (spool, spool / "queue", spool / "tmp", spool / "corrupt"):
        try:
            st = directory.stat()
        except FileNotFoundError:
            continue
        except OSError as e:
            raise StartupError("queue.spool", f"{directory}: {e.strerror}") from e
        if _writable_by(directory, who, search=True):
            continue
        raise StartupError(
            "queue.spool", f"{directory} is not writable by {who.user!r} (owned by uid "
            f"{st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o}): `chown -R {who.user} "
            f"{spool}` and start again (what is queued there is kept)")


def _chown_tree(path: Path, who: RunAs) -> None:
    """Give ``who`` the file at ``path``, or the tree under it.

    The user may own the directories walked (the state directory is theirs), so
    as root this must not be led elsewhere by a symlink swapped in meanwhile: the
    walk holds each directory open (``os.fwalk``) and changes names relative to
    it without following links; a link, a file with other links (a hard link to
    a file elsewhere) and a file of a third user are left alone.
    """
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        _chown(str(path), st, who, None)
        return
    for root, dirs, files, dir_fd in os.fwalk(path):
        if Path(root) == path:
            _chown(".", os.fstat(dir_fd), who, dir_fd)
        for name in (*dirs, *files):
            try:
                entry = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            _chown(name, entry, who, dir_fd)


def _chown(name: str, st: os.stat_result, who: RunAs, dir_fd: int | None) -> None:
    if stat.S_ISLNK(st.st_mode) or (st.st_uid, st.st_gid) == (who.uid, who.gid):
        return
    if st.st_uid not in (0, who.uid):
        return  # someone else's file: not ours to take
    if not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1:
        log.warning("server.user: %s has other hard links; left as it is", name)
        return
    os.chown(name, who.uid, who.gid, dir_fd=dir_fd, follow_symlinks=False)


def _writable_by(directory: Path, who: RunAs, *, search: bool = False) -> bool:
    """By the mode bits; with ``search``, the directory must let ``who`` in too
    (to open the files in it). A directory with an ACL is taken as writable: its
    mode bits do not tell."""
    try:
        st = directory.stat()
    except OSError:
        return False
    if search and "system.posix_acl_access" in _xattrs(directory):
        return True
    need = stat.S_IWOTH | (stat.S_IXOTH if search else 0)
    if st.st_uid == who.uid:
        bits = st.st_mode >> 6
    elif st.st_gid in who.groups or st.st_gid == who.gid:
        bits = st.st_mode >> 3
    else:
        bits = st.st_mode
    return bits & need == need


def drop(who: RunAs | None) -> None:
    """Become ``who`` for good (no way back to root); None: nothing to do.

    Raises:
        OSError: the kernel refused (then the process must not serve).
    """
    if who is None:
        return
    os.setgroups(list(who.groups))
    os.setgid(who.gid)
    os.setuid(who.uid)
    if os.getuid() != who.uid or os.geteuid() != who.uid:  # pragma: no cover - kernel bug
        raise OSError("privileges were not dropped")
    os.environ["HOME"] = pwd.getpwuid(who.uid).pw_dir
    os.environ["USER"] = os.environ["LOGNAME"] = who.user
