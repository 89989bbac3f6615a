"""A pid file left damaged by a crash: the real ``smtpgate`` (status, reload, serve) in
subprocesses, a real server started as the integration tests start it.

Bytes that are not UTF-8 (a block of garbage) were a UnicodeDecodeError traceback, a
number too large for a C long an OverflowError traceback: from ``status`` and
``reload``, and from ``serve``, which reads the file to refuse a second server, so
the server would not start until someone deleted the file by hand. Now such a file
"holds no process id": status and reload exit 3 saying so, and serve starts.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import Server, make_server


@pytest.fixture
def srv(tmp_path: Path) -> Iterator[Server]:
    srv = make_server(tmp_path / "srv")
    yield srv
    if srv.proc is not None:
        srv.stop()


@pytest.mark.parametrize("garbage", [b"garbage\x00\xff\xfe\n", b"99999999999999999999\n",
                                     b"\xc2\xb2\n"])
def test_a_damaged_pid_file_is_no_process(srv: Server, garbage: bytes) -> None:
    pid_file = srv.root / "smtpgate.pid"
    pid_file.write_bytes(garbage)
    status = srv.cli("status", "--json", check=False)
    assert status.returncode == 3, status.stderr
    assert "Traceback" not in status.stderr
    assert json.loads(status.stdout)["server"] == {
        "running": False, "why": f"the pid file {pid_file} holds no process id"}
    reload = srv.cli("reload", check=False)
    assert reload.returncode == 3, reload.stderr
    assert reload.stderr.startswith(f"error: the pid file {pid_file} holds no process id")
    srv.start()  # raises if serve exits instead of listening
    running = srv.cli("status", "--json", check=False)
    assert json.loads(running.stdout)["server"]["running"] is True, running.stdout
