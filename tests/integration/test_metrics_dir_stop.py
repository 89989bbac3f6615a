"""``smtpgate.metrics/`` (the processes' metric files, beside the pid file) is the
server's while it runs; a clean stop removes it and the counts of its processes,
which are gone (the next start would empty it), so that the state directory keeps
no leftover of a stopped server. It stayed, mode 0755, even with every count file
gone. It is never removed while another server uses it (the pid file names that
one), nor with a file in it the counting did not write."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.integration.conftest import Server, make_server


def _state(srv: Server) -> tuple[Path, Path]:
    """The pid file and the metrics directory beside it."""
    [pid] = srv.root.rglob("smtpgate.pid")
    return pid, pid.with_name("smtpgate.metrics")


def _started(tmp_path: Path, extra: str = "") -> Server:
    srv = make_server(tmp_path / "srv", extra)
    srv.start()
    return srv


@pytest.mark.parametrize("extra", ["", "\n[server]\nworkers = 1\n"],
                         ids=["supervised", "single"])
def test_a_stop_removes_the_metrics_directory(tmp_path: Path, extra: str) -> None:
    srv = _started(tmp_path, extra)
    pid, metrics = _state(srv)
    assert any(n.startswith("counter_") for n in os.listdir(metrics))
    assert srv.stop() == 0
    assert not pid.exists()
    assert not metrics.exists(), os.listdir(metrics)


def test_a_stop_keeps_it_when_another_server_took_it_over(tmp_path: Path) -> None:
    srv = _started(tmp_path)
    pid, metrics = _state(srv)
    pid.write_text("1\n")  # another server's now (its start wrote the pid file)
    assert srv.stop() == 0
    assert metrics.is_dir()


def test_a_stop_keeps_files_it_did_not_write(tmp_path: Path) -> None:
    srv = _started(tmp_path)
    _, metrics = _state(srv)
    (metrics / "notes").write_text("x")
    assert srv.stop() == 0
    assert os.listdir(metrics) == ["notes"]  # the counts went, the stranger stayed
