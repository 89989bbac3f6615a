"""The seams of the account backend (issue 9): one factory chosen by
``[accounts].backend``, a store that never sees a password to derive from, an auth
service typed against the directory interface, and account CLI modules that call
the admin service and import one another one way."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from smtpgate.auth.accounts import open_account_store
from smtpgate.auth.store import SqliteAccountStore
from smtpgate.config import ConfigError, parse_config

from .cli_support import CONFIG, write_config

PKG = Path(__file__).resolve().parents[2] / "src" / "smtpgate"
CLI_MODULES = ("user_cmd", "user_policy_cmd", "user_sasl_cmd", "app_password_cmd",
               "admin_cmd", "report_cmd", "common")


def test_accounts_backend_defaults_to_sqlite_and_the_factory_opens_it(tmp_path: Path) -> None:
    write_config(tmp_path)
    cfg = parse_config(CONFIG, tmp_path)
    assert cfg.accounts.backend == "sqlite"
    store = open_account_store(cfg)
    try:
        assert isinstance(store, SqliteAccountStore)
        assert store.path == tmp_path / "accounts.sqlite"
    finally:
        store.close()


def test_an_unknown_backend_is_refused_naming_the_key(tmp_path: Path) -> None:
    write_config(tmp_path)
    text = CONFIG.replace("[accounts]\n", '[accounts]\nbackend = "mysql"\n')
    with pytest.raises(ConfigError) as e:
        parse_config(text, tmp_path)
    ((key, message),) = e.value.problems
    assert key == "accounts.backend"
    assert all(name in message for name in ("sqlite", "postgresql", "ldap"))


def test_the_sqlite_store_is_built_by_the_factory_only() -> None:
    """The factory, and the LDAP backend's local overlay (what smtpgate keeps about
    directory accounts lives in its own SQLite store), which the factory builds."""
    builders = sorted(
        str(f.relative_to(PKG)) for f in PKG.rglob("*.py")
        if "SqliteAccountStore(" in f.read_text() and f.name != "store.py"
    )
    assert builders == ["auth/accounts.py", "auth/ldap_store.py"]


def test_the_store_takes_no_password_to_derive_from() -> None:
    """Argon2id and SCRAM derivation live in the services: a store's writes take
    secrets. Only the read side's checks receive a password."""
    from smtpgate.auth import store as store_module

    checks = {"verify_password", "match_app_password"}
    for cls in (store_module.SqliteAccountStore, store_module._SqliteWriter):
        for name, fn in inspect.getmembers(cls, inspect.isfunction):
            if name in checks:
                continue
            assert "password" not in inspect.signature(fn).parameters, f"{cls.__name__}.{name}"
    tree = ast.parse((PKG / "auth" / "store.py").read_text())
    from_credentials = {
        a.name for n in ast.walk(tree)
        if isinstance(n, ast.ImportFrom) and n.module == "smtpgate.auth.credentials"
        for a in n.names
    }
    assert from_credentials <= {"ARGON2ID", "CRAM_MD5"}  # scheme names, never derive()
    calls = {n.func.attr for n in ast.walk(tree)
             if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)}
    assert "hash" not in calls  # PasswordHasher.hash: only verification happens here


def test_the_auth_service_uses_no_any() -> None:
    tree = ast.parse((PKG / "auth" / "service.py").read_text())
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    attrs = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    assert "Any" not in names and "Any" not in attrs


def _cli_imports(module: str) -> tuple[set[str], set[str]]:
    """(cli modules imported at module level, cli modules imported inside functions)."""
    tree = ast.parse((PKG / "cli" / f"{module}.py").read_text())
    top: set[str] = set()
    inner: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("smtpgate.cli."):
            target = (node.module or "").rsplit(".", 1)[1]
            (top if node.col_offset == 0 else inner).add(target)
    return top, inner


def test_the_account_cli_modules_import_one_way() -> None:
    graph = {}
    for m in CLI_MODULES:
        top, inner = _cli_imports(m)
        assert not inner, f"cli/{m}.py imports {sorted(inner)} inside a function"
        graph[m] = top

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in graph.get(start, set()):
            if nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})):
                return True
        return False

    for m in CLI_MODULES:
        assert not reaches(m, m, set()), f"cli/{m}.py is in an import cycle"
    assert graph["common"] == set()  # the shared opener depends on no command


def test_every_account_command_opens_the_accounts_through_the_admin_service() -> None:
    for m in CLI_MODULES[:-1]:
        text = (PKG / "cli" / f"{m}.py").read_text()
        assert "auth.store import" not in text and "SqliteAccountStore" not in text, m


def _public(cls: type) -> set[str]:
    """Public names of ``cls``, its annotated attributes (a Protocol's) included."""
    names = set(dir(cls))
    for base in cls.__mro__:
        names |= set(getattr(base, "__annotations__", {}))
    return {n for n in names if not n.startswith("_")}


def test_the_sqlite_backend_has_nothing_beyond_its_interfaces() -> None:
    """Every caller can stay on the interfaces: nothing public on the SQLite classes
    is missing from ``AccountStore`` (both sides) or ``AccountWriter``."""
    from smtpgate.auth.admin_store import AccountStore, AccountWriter
    from smtpgate.auth.sqlite_file import ThreadLocalSqlite
    from smtpgate.auth.store import _SqliteWriter

    extra = _public(SqliteAccountStore) - _public(ThreadLocalSqlite) - _public(AccountStore)
    assert extra == set()
    assert _public(_SqliteWriter) - _public(AccountWriter) == set()
    assert "verifies_passwords" in _public(AccountStore)
