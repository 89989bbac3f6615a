"""Verification lanes in the real server (docs/protection.md, "Who verifies first"):
a guess from a new address is verified on a lower-priority thread and still answered
535; the owner's verification from a known address runs at normal priority. Observed
through the nice value of the server's threads (/proc), never through a timing."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from smtpgate.auth.verify_scheduler import UNTRUSTED_NICE
from smtpgate.smtp import replies as R

from .conftest import PASSWORD, USER, Server, make_server
from .test_protection import login

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="nice is per thread on Linux only")


def server_pids(server: Server) -> list[int]:
    """The serving process and its workers."""
    assert server.proc is not None
    root = server.proc.pid
    pids = [root]
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        if int(fields[1]) == root:  # the parent's pid
            pids.append(int(stat.parent.name))
    return pids


def nice_of(stat: Path) -> int:
    return int(stat.read_text().rsplit(")", 1)[1].split()[16])


def lowered_threads(server: Server) -> int:
    """Threads of the server's processes running at a lower priority than the
    process itself (the untrusted lane's)."""
    count = 0
    for pid in server_pids(server):
        try:
            base = nice_of(Path(f"/proc/{pid}/stat"))
        except OSError:
            continue
        for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
            try:
                count += nice_of(stat) > base
            except OSError:
                continue
    return count


def test_guesses_run_on_lower_priority_threads_and_the_owner_does_not(tmp_path: Path) -> None:
    if os.getpriority(os.PRIO_PROCESS, 0) >= UNTRUSTED_NICE:
        pytest.skip("the suite runs at the untrusted lane's priority already: nothing to lower")
    srv = make_server(tmp_path / "srv")
    srv.add_user(USER, PASSWORD)
    srv.start()
    try:
        # The owner's first login from 127.0.0.2: a new address, so the untrusted lane.
        assert login(srv, "127.0.0.2", USER, PASSWORD).startswith("235 ")
        assert lowered_threads(srv) >= 1
        # A restart empties the credential cache; the guard still knows 127.0.0.2.
        srv.stop()
        srv.start()
        assert lowered_threads(srv) == 0
        assert login(srv, "127.0.0.2", USER, PASSWORD).startswith("235 ")  # Argon2id again
        assert lowered_threads(srv) == 0  # at normal priority: the trusted lane
        # A guess from elsewhere: the same reply as ever, verified at lower priority.
        assert login(srv, "127.0.0.3", USER, "wrong password") == str(R.AUTH_FAILED)
        assert login(srv, "127.0.0.3", "nobody@example.org", "wrong") == str(R.AUTH_FAILED)
        assert lowered_threads(srv) >= 1
        assert login(srv, "127.0.0.2", USER, PASSWORD).startswith("235 ")
    finally:
        if srv.proc is not None:
            srv.stop()
