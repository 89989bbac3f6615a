"""Binding workers to CPUs: which CPU each worker gets, and what happens when the
kernel refuses (``server/cpu_affinity.py``)."""

from __future__ import annotations

import os

import pytest

from smtpgate.server import cpu_affinity
from smtpgate.server.cpu_affinity import bind_worker, cpu_for


def test_workers_take_the_allowed_cpus_in_order_round_robin() -> None:
    allowed = {2, 5, 3}  # a cpuset need not start at 0 nor be contiguous
    assert [cpu_for(slot, allowed) for slot in range(5)] == [2, 3, 5, 2, 3]


def test_one_cpu_binds_nothing() -> None:
    assert cpu_for(0, {7}) is None
    assert cpu_for(3, set()) is None


def test_off_binds_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[object] = []
    monkeypatch.setattr(os, "sched_setaffinity", lambda *a: calls.append(a))
    assert bind_worker(0, "off") is None
    assert calls == []


def test_auto_binds_the_calling_process(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, set[int]]] = []
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr(os, "sched_setaffinity", lambda pid, cpus: calls.append((pid, cpus)))
    assert bind_worker(5, "auto") == 1
    assert calls == [(0, {1})]


def test_a_refusal_is_logged_and_the_worker_runs_unbound(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def refuse(pid: int, cpus: set[int]) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(os, "sched_setaffinity", refuse)
    assert bind_worker(1, "auto") is None
    assert "worker 2: cannot bind to CPU 1 (Operation not permitted); running unbound" in caplog.text
    assert cpu_affinity.log.name == "smtpgate"
