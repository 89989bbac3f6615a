"""The config keys the pages of docs/ (and README.md) name in their prose are the
schema's: a renamed or removed key, a default changed in the code but not in a
page's table, or an inline `key = value` the server would refuse fails here, not
for the administrator who reads it.

docs/configuration.md itself is generated from the schema (tests/unit/test_config.py
keeps it current and complete) and the ```toml examples are pasted into an init
config by tests/unit/test_docs_toml.py; this covers the rest:

- code spans naming a key: `table.key`, `[table] key`, `[table].key`, `[table]`,
  `[[table]]` (a list table's index, `listeners.0.client_ca`, as `config check`
  names it, is read as `listeners.client_ca`);
- in a Markdown table with `key` and `default` columns, a literal default (a number,
  with a unit of seconds or not; a string; true or false; a list) equals the
  schema's;
- an inline `key = value` (or `[table] key = value`) whose key is a key of the
  schema has a value of that key's type.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any, get_args

import pytest
from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from smtpgate.config import Config

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md",
         *sorted(p for p in (ROOT / "docs").glob("*.md") if p.name != "configuration.md")]

#: Code spans that look like keys and are not: files, and names in the code.
NOT_KEYS = {
    "accounts.sqlite", "auth.log", "guard.sqlite", "delivery.lock",  # files
    "guard.decide", "guard.blocks_due",  # functions (protection.md, for developers)
    "auth.result",  # the tester's JSON field (tester.md)
    "policy.rates.budget_left",  # a method (protection.md)
}
FILE_SUFFIX = re.compile(r"\.(sqlite|log|gz|lock|js|css|py|pem|json|toml|md)(\.\d+)?$")


def _model_of(annotation: object) -> tuple[type[BaseModel], bool] | None:
    """The model a field holds, and whether as a list of them."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    for arg in get_args(annotation):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg, True
    return None


def schema_keys() -> dict[str, FieldInfo]:
    """Every key of the schema, dotted (a list table's keys under its own name)."""
    out: dict[str, FieldInfo] = {}

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            if name == "base_dir":
                continue
            out[prefix + name] = field
            inner = _model_of(field.annotation)
            if inner is not None:
                walk(inner[0], f"{prefix}{name}.")

    walk(Config, "")
    return out


KEYS = schema_keys()
TOP = {k for k in KEYS if "." not in k}
LIST_TABLES = {k for k, f in KEYS.items() if (m := _model_of(f.annotation)) and m[1]}
LEAVES: dict[str, list[str]] = {}
for _key in KEYS:
    LEAVES.setdefault(_key.rsplit(".", 1)[-1], []).append(_key)


def default_of(key: str) -> Any:
    field = KEYS[key]
    if field.default is not PydanticUndefined:
        return field.default
    if field.default_factory is not None:
        return field.default_factory()  # type: ignore[call-arg]
    return PydanticUndefined


def _line(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def _prose(text: str) -> str:
    """The page with its fenced blocks blanked (line numbers kept)."""
    return re.sub(r"^```.*?^```", lambda m: "\n" * m.group(0).count("\n"), text,
                  flags=re.MULTILINE | re.DOTALL)


def _canonical(key: str) -> str:
    """`listeners.0.client_ca` and `listeners.submission.client_ca` (a listener named
    as `config check` and `status` name it) as the schema has it."""
    parts = key.split(".")
    for i in range(1, len(parts) - 1):
        if ".".join(parts[:i]) in LIST_TABLES and ".".join(parts[:i + 1]) not in KEYS:
            return _canonical(".".join(parts[:i] + parts[i + 1:]))
    return key


SPAN = re.compile(r"`([^`\n]+)`")
TABLE_KEY = re.compile(r"^\[\[?([a-z_][\w.]*)\]\]?\.?\s*([a-z_]\w*)?(?:\s*=.*)?$")
DOTTED = re.compile(r"^([a-z_]\w*(?:\.[a-z_0-9]\w*)+)(?:\s*=.*)?$")


def named_keys(text: str) -> list[tuple[int, str]]:
    """(line, key) of each code span of the page's prose that names a config key."""
    text = _prose(text)
    out: list[tuple[int, str]] = []
    for m in SPAN.finditer(text):
        span = m.group(1).strip()
        if t := TABLE_KEY.match(span):
            key = f"{t.group(1)}.{t.group(2)}" if t.group(2) else t.group(1)
            if key.split(".")[0] not in TOP:
                continue  # [red] of rich markup, a Dovecot section...
        elif d := DOTTED.match(span):
            key = d.group(1)
            if key.split(".")[0] not in TOP or key in NOT_KEYS or FILE_SUFFIX.search(key):
                continue
        else:
            continue
        out.append((_line(text, m.start()), _canonical(key)))
    return out


def unknown_keys(page: Path) -> list[str]:
    text = page.read_text(encoding="utf-8")
    return [f"{page.name}:{n}: `{key}`" for n, key in named_keys(text) if key not in KEYS]


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_every_key_a_page_names_is_in_the_schema(page: Path) -> None:
    assert unknown_keys(page) == [], "not a config key (renamed? removed? or add it to NOT_KEYS)"


def test_the_pages_name_keys_at_all() -> None:
    named = {key for page in PAGES for _, key in named_keys(page.read_text(encoding="utf-8"))}
    assert {"guard.spray_accounts", "server.user", "limits.max_message_size",
            "listeners.client_ca", "auth.oauth_issuers", "metrics.listen"} <= named


def test_a_renamed_key_is_caught(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("Set `guard.spray_account` and `[limits] max_msg_size = 5`; "
                    "`[guard]` and `listeners.0.tls` exist, `auth.log` is a file.\n"
                    "```toml\n[nothing]\n```\n")
    assert unknown_keys(page) == ["page.md:1: `guard.spray_account`",
                                  "page.md:1: `limits.max_msg_size`"]


# -- defaults in the pages' tables ---------------------------------------------------

_NUMBER = re.compile(r"^(-?[\d,]*\.?\d+)\s*(s|seconds)?$")


def literal(cell: str) -> tuple[bool, Any]:
    """The literal a table cell states, or (False, None) for prose."""
    cell = cell.strip()
    if m := re.fullmatch(r"`([^`]*)`(?:\s*\((?:off|none|unset|any)\))?", cell):
        inner = m.group(1).strip()
        try:
            return True, tomllib.loads(f"x = {inner}")["x"]
        except tomllib.TOMLDecodeError:
            return True, inner  # a bare word in code: a string value
    if m := _NUMBER.match(cell):
        number = m.group(1).replace(",", "")
        return True, float(number) if "." in number else int(number)
    if cell in ("true", "false"):
        return True, cell == "true"
    return False, None


def _same(claimed: Any, actual: Any) -> bool:
    if isinstance(actual, Path):
        return str(claimed).rstrip("/") == str(actual)
    if isinstance(actual, bool) or isinstance(claimed, bool):
        return claimed is actual
    if isinstance(actual, (int, float)) and isinstance(claimed, (int, float)):
        return float(claimed) == float(actual)
    if isinstance(actual, list) and isinstance(claimed, list):
        return [str(x) for x in actual] == [str(x) for x in claimed]
    return bool(claimed == actual or (actual is None and claimed == ""))


def table_defaults(text: str) -> list[tuple[int, str, str]]:
    """(line, key, default cell) of each row of a table with key and default columns
    whose first code span in the key column names one key."""
    out: list[tuple[int, str, str]] = []
    header: list[str] | None = None
    for n, line in enumerate(_prose(text).splitlines(), 1):
        if not line.startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            header = [c.lower() for c in cells]
            continue
        if set("".join(cells)) <= set("-: ") or "default" not in header or "key" not in header:
            continue
        key_cell, default = cells[header.index("key")], cells[header.index("default")]
        m = re.match(r"`(?:\[([\w.]+)\]\s*)?([a-z_][\w.]*)", key_cell)
        if m is None:
            continue
        name = f"{m.group(1)}.{m.group(2)}" if m.group(1) else m.group(2)
        found = [name] if name in KEYS else LEAVES.get(name.rsplit(".", 1)[-1], [])
        if len(found) == 1:
            out.append((n, found[0], default))
    return out


def wrong_defaults(page: Path) -> list[str]:
    wrong = []
    for n, key, cell in table_defaults(page.read_text(encoding="utf-8")):
        stated, value = literal(cell.split(" / ")[0])
        if stated and not _same(value, default_of(key)):
            wrong.append(f"{page.name}:{n}: `{key}` default {cell!r}, the schema's "
                         f"{default_of(key)!r}")
    return wrong


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_every_default_a_table_states_is_the_schemas(page: Path) -> None:
    assert wrong_defaults(page) == []


def test_the_tables_state_defaults_at_all() -> None:
    rows = {key for page in PAGES for _, key, _ in table_defaults(page.read_text("utf-8"))}
    assert {"limits.max_message_size", "limits.messages_per_hour", "delivery.relay_data_timeout",
            "accounts.cache_ttl", "admin.listen"} <= rows


def test_a_changed_default_is_caught(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("| key | default | meaning |\n|---|---|---|\n"
                    "| `limits.max_recipients` | 50 | too few |\n"
                    "| `limits.data_timeout` | 600 s | right |\n"
                    "| `smtp.bare_line_endings` | `normalize` | wrong |\n"
                    "| `accounts.ldap.url` | (required) | prose |\n")
    assert [w.split(":")[1] for w in wrong_defaults(page)] == ["3", "5"]


# -- inline values ---------------------------------------------------------------------

INLINE = re.compile(r"`(?:\[([a-z_][\w.]*)\]\.?\s*)?([a-z_][\w.]*) = ([^`]+)`")


def bad_values(page: Path) -> list[str]:
    text = _prose(page.read_text(encoding="utf-8"))
    bad = []
    for m in INLINE.finditer(text):
        table, name, value = m.groups()
        name = _canonical(f"{table}.{name}" if table else name)
        found = [name] if name in KEYS else LEAVES.get(name.rsplit(".", 1)[-1], [])
        if not found:
            continue  # Postfix's, Dovecot's, Exim's settings
        try:
            parsed = tomllib.loads(f"x = {value}")["x"]
        except tomllib.TOMLDecodeError as e:
            bad.append(f"{page.name}:{_line(text, m.start())}: {m.group(0)}: not TOML ({e})")
            continue
        errors = []
        for key in found:
            try:
                annotation = KEYS[key].annotation
                TypeAdapter(Any if annotation is None else annotation).validate_python(parsed)
                break
            except ValidationError as e:
                errors.append(f"{key}: {e.errors()[0]['msg']}")
        else:
            bad.append(f"{page.name}:{_line(text, m.start())}: {m.group(0)}: {'; '.join(errors)}")
    return bad


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_every_inline_value_has_its_keys_type(page: Path) -> None:
    assert bad_values(page) == []


def test_a_value_of_the_wrong_type_is_caught(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text('`bare_line_endings = "normalise"`, `[guard] spray_accounts = "ten"`, '
                    '`guard.enabled = false`, `smtpd_tls_auth_only = yes`\n')
    assert [b.split(": ")[1] for b in bad_values(page)] == [
        '`bare_line_endings = "normalise"`', '`[guard] spray_accounts = "ten"`']
