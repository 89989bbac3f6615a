"""Architecture rules that a reviewer would otherwise have to remember."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "src" / "smtpgate"
FORBIDDEN_IN_SANS_IO = {"asyncio", "socket", "ssl", "time", "sqlite3", "selectors", "threading"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module.split(".")[0])
    return out


@pytest.mark.parametrize("package", ["smtp", "sasl", "client"])
def test_sans_io_cores_import_no_io(package: str) -> None:
    files = list((PKG / package).rglob("*.py"))
    assert files
    for f in files:
        bad = _imports(f) & FORBIDDEN_IN_SANS_IO
        assert not bad, f"{f.relative_to(PKG)} imports {bad}"


_REPLY_LITERAL = re.compile(r"""["'](?:[245]\d\d[ -]\d\.\d{1,3}\.\d{1,3}|[45]\d\d [A-Z][a-z])""")


def test_no_reply_string_literals_outside_replies_module() -> None:
    """Principle 4: every reply is a named constant in smtp/replies.py."""
    offenders = []
    for f in PKG.rglob("*.py"):
        if f.name == "replies.py" or f.parts[-2] == "client":
            continue  # the client side parses replies; it does not send them
        for n, line in enumerate(f.read_text().splitlines(), 1):
            if _REPLY_LITERAL.search(line):
                offenders.append(f"{f.relative_to(PKG)}:{n}: {line.strip()}")
    assert not offenders, "\n".join(offenders)
