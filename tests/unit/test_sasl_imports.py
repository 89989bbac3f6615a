"""STYLE.md §1: the sans-IO SASL package must not do I/O, read clocks or touch databases."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import smtpgate.sasl

SASL_DIR = Path(smtpgate.sasl.__file__).parent

FORBIDDEN = {
    "asyncio",
    "socket",
    "ssl",
    "time",
    "datetime",
    "selectors",
    "threading",
    "subprocess",
    "urllib",
    "http",
    "sqlite3",
    "psycopg",
    "psycopg2",
    "asyncpg",
    "aiosqlite",
    "sqlalchemy",
    "ldap3",
    "requests",
    "httpx",
    "OpenSSL",
}


def _imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("path", sorted(SASL_DIR.glob("*.py")), ids=lambda p: p.name)
def test_style_s1_sasl_module_imports_no_io(path: Path) -> None:
    assert _imported_roots(path) & FORBIDDEN == set()


def test_style_s1_sasl_package_has_modules() -> None:
    # Guard against the glob silently matching nothing.
    assert len(list(SASL_DIR.glob("*.py"))) >= 4
