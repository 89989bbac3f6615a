"""Dialog transcripts against the sans-IO engine."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.dialog_runner import DIALOG_PASSWORD, DIALOG_USER, DIALOGS, run

from .engine_driver import ACCOUNTS, Driver


@pytest.mark.parametrize("path", DIALOGS, ids=lambda p: p.stem)
def test_dialog_against_engine(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(ACCOUNTS, DIALOG_USER, DIALOG_PASSWORD)
    d = Driver.new(tls=True)
    pending: list[str] = []

    def send(data: bytes) -> None:
        out = d.feed(data).decode()
        lines = out.split("\r\n")[:-1]
        reply: list[str] = []
        for line in lines:
            reply.append(line)
            if line[3:4] != "-":
                pending.append("\r\n".join(reply))
                reply = []

    def reply() -> str:
        return pending.pop(0)

    run(path, send, reply)
    assert not pending
