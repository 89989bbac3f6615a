"""Dialog transcripts against the real server over implicit TLS."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.dialog_runner import DIALOG_PASSWORD, DIALOG_USER, DIALOGS, run

from .conftest import Server
from .test_attacks import Raw


@pytest.mark.parametrize("path", DIALOGS, ids=lambda p: p.stem)
def test_dialog_against_server(path: Path, server: Server) -> None:
    server.add_user(DIALOG_USER, DIALOG_PASSWORD)
    r = Raw(server.submissions, server.client_context(), implicit=True)
    try:
        run(path, r.send, r.reply)
    finally:
        r.close()
