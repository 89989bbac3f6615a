"""Dialog transcripts (tests/dialogs/*.smtp): ``C:`` lines are sent, ``S:`` lines give
the expected start of the next reply's last line. The same files run against the
sans-IO engine (tests/unit/test_dialogs.py) and the real server over TLS
(tests/integration/test_dialogs.py), and document behaviour for reviewers.

Consecutive ``C:`` lines are sent in one write (a pipelined group or message data).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

DIALOGS = sorted((Path(__file__).parent / "dialogs").glob("*.smtp"))
DIALOG_USER = "dialog@example.org"
DIALOG_PASSWORD = "correct horse battery"


def steps(path: Path) -> list[tuple[bytes, str]]:
    """[(bytes to send, expected reply prefix), ...]; one step per S: line."""
    out: list[tuple[bytes, str]] = []
    pending = b""
    for raw in path.read_text().splitlines():
        if raw.startswith("#") or not raw.strip():
            continue
        kind, _, rest = raw.partition(":")
        rest = rest.removeprefix(" ")
        if kind == "C":
            pending += rest.encode() + b"\r\n"
        elif kind == "S":
            out.append((pending, rest))
            pending = b""
        else:
            raise ValueError(f"{path.name}: bad line {raw!r}")
    return out


def run(path: Path, send: Callable[[bytes], None], reply: Callable[[], str]) -> None:
    """Play one dialog; ``reply()`` returns the next complete reply (all lines)."""
    for data, expected in steps(path):
        if data:
            send(data)
        got = reply()
        last = got.splitlines()[-1]
        if expected.startswith("250 ") and " " in expected[4:] and expected[4].isalpha():
            # "250 AUTH": a multi-line EHLO reply that must contain this keyword.
            assert expected[4:] in got, f"{path.name}: expected {expected!r} in {got!r}"
            continue
        assert last.startswith(expected), f"{path.name}: sent {data!r}, expected {expected!r}, got {got!r}"
