"""The status and pid files are written through a temporary name in the state
directory, which belongs to ``[server] user`` while the supervisor that writes
the status file every two seconds stays root.

Found by audit B on a default install: a link planted at the predictable
temporary name (``.smtpgate.status.json.<supervisor pid>``) made the supervisor
truncate and overwrite the file it pointed to (a file outside the state
directory got the status JSON within one tick): as root, with
``[server] user`` set, the service user could overwrite any file on the host.
The temporary file is now made anew (``O_EXCL | O_NOFOLLOW``) after whatever
had its name is removed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from smtpgate.server import pidfile, status_file
from smtpgate.server.status_file import ServerStatus


def planted(path: Path, tmp_path: Path) -> Path:
    """A file outside the state directory, linked from ``path``'s temporary name."""
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (path.with_name(f".{path.name}.{os.getpid()}")).symlink_to(victim)
    return victim


def test_the_status_file_is_never_written_through_a_planted_link(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    path = state / "smtpgate.status.json"
    victim = planted(path, tmp_path)
    status = ServerStatus(pid=os.getpid(), version="x", started=0.0, config_file=None,
                          config_loaded=0.0, listeners=[], auth_listeners=[], workers=2)
    status_file.write(path, status)
    assert victim.read_text() == "precious\n"
    assert not path.is_symlink() and json.loads(path.read_text())["pid"] == os.getpid()
    assert [p.name for p in state.iterdir()] == [path.name]  # no temporary file left


def test_the_pid_file_is_never_written_through_a_planted_link(tmp_path: Path) -> None:
    path = tmp_path / "smtpgate.pid"
    victim = planted(path, tmp_path)
    pidfile.write(path)
    assert victim.read_text() == "precious\n"
    assert not path.is_symlink() and path.read_text() == f"{os.getpid()}\n"
